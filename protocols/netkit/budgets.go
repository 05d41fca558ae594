package netkit

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"time"

	"github.com/kinmesh/kinmesh/storage"
)

// Budgets keeps a relay service's budgets (the Limiters that bound what
// one source address, one account or the whole relay may use up: mail and
// media bytes, registrations, texts sent) in the relay's store, so that a
// restart doesn't hand everyone a full budget again.
//
// KeepBudgets restores each limiter from its record, then saves every
// limiter whose buckets changed once a minute, and Close saves a last
// time: a relay that is killed loses at most a minute of spending. A
// record holds the buckets that are not full, most recently used first
// and at most MaxSavedBuckets of them, and expires once even an empty
// bucket would be full again. An unreadable record is logged and left
// out: its keys start with full buckets, as if it had expired.
type Budgets struct {
	ns      *storage.Namespace
	service string
	log     *slog.Logger
	lims    map[string]*Limiter[string]

	mu    sync.Mutex        // one save at a time
	saved map[string]uint64 // each limiter's change count at its last save

	cancel context.CancelFunc
	done   chan struct{}
	once   sync.Once
}

const (
	// budgetsNamespace is the store namespace of every service's budgets.
	budgetsNamespace = "budgets"
	// MaxSavedBuckets caps the buckets one limiter's record keeps: the
	// most recently used of those not full.
	MaxSavedBuckets = 16384
	// maxBudgetKey is the longest key a record keeps (source addresses,
	// peer ids and account keys are far shorter); longer ones start full.
	maxBudgetKey = 128
	// budgetSaveInterval is how often changed budgets are saved.
	budgetSaveInterval = time.Minute
	// budgetsVersion is a record's first byte.
	budgetsVersion = 1
	// budgetEntryFixed is a record entry's size besides its key: tokens
	// and last use, 8 bytes each.
	budgetEntryFixed = 16
)

// ErrBadBudgets means a budgets record could not be decoded.
var ErrBadBudgets = errors.New("netkit: malformed budgets record")

// KeepBudgets restores lims (by name) from the records service saved
// before in st, and keeps saving them until Close. Names must be stable
// across versions: a renamed limiter starts full once.
func KeepBudgets(st *storage.Store, service string, log *slog.Logger, lims map[string]*Limiter[string]) *Budgets {
	if log == nil {
		log = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	b := &Budgets{
		ns:      st.Namespace(budgetsNamespace),
		service: service,
		log:     log,
		lims:    lims,
		saved:   make(map[string]uint64, len(lims)),
		cancel:  cancel,
		done:    make(chan struct{}),
	}
	for name, l := range lims {
		b.restore(ctx, name, l)
	}
	go b.loop(ctx)
	return b
}

// Close stops the periodic saves and saves what changed since the last
// one. The store must still be open. It is safe to call more than once.
func (b *Budgets) Close() {
	b.once.Do(func() {
		b.cancel()
		<-b.done
		b.save(context.Background())
	})
}

func (b *Budgets) loop(ctx context.Context) {
	defer close(b.done)
	t := time.NewTicker(budgetSaveInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			b.save(ctx)
		}
	}
}

func (b *Budgets) key(name string) string { return b.service + "/" + name }

func (b *Budgets) restore(ctx context.Context, name string, l *Limiter[string]) {
	v, err := b.ns.Get(ctx, b.key(name))
	if errors.Is(err, storage.ErrNotFound) {
		return
	}
	if err == nil {
		var buckets []Bucket[string]
		if buckets, err = decodeBudgets(v, MaxSavedBuckets); err == nil {
			l.Import(buckets)
			return
		}
	}
	b.log.Warn("budgets not restored: they start full", "limiter", b.key(name), "err", err)
}

// save writes the record of every limiter that changed since its last
// save.
func (b *Budgets) save(ctx context.Context) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for name, l := range b.lims {
		buckets, changes := l.Export(MaxSavedBuckets)
		if last, ok := b.saved[name]; ok && last == changes {
			continue
		}
		if err := b.put(ctx, name, l, buckets); err != nil {
			if ctx.Err() == nil {
				b.log.Warn("budgets not saved", "limiter", b.key(name), "err", err)
			}
			continue
		}
		b.saved[name] = changes
	}
}

func (b *Budgets) put(ctx context.Context, name string, l *Limiter[string], buckets []Bucket[string]) error {
	if len(buckets) == 0 {
		return b.ns.Delete(ctx, b.key(name))
	}
	// An empty bucket is full again after burst ÷ rate; until then (and a
	// save interval more) the record has something to say.
	ttl := 30 * 24 * time.Hour
	if l.rate > 0 {
		ttl = min(ttl, time.Duration(l.burst/l.rate*float64(time.Second))+budgetSaveInterval)
	}
	return b.ns.PutTTL(ctx, b.key(name), encodeBudgets(buckets), ttl)
}

// encodeBudgets: a version byte, then per bucket its key (uvarint length
// and bytes), its tokens (an IEEE 754 double) and its last use (Unix
// nanoseconds), both 8 bytes big-endian. Keys longer than maxBudgetKey are
// left out.
func encodeBudgets(buckets []Bucket[string]) []byte {
	out := []byte{budgetsVersion}
	for _, bk := range buckets {
		if len(bk.Key) > maxBudgetKey {
			continue
		}
		out = binary.AppendUvarint(out, uint64(len(bk.Key)))
		out = append(out, bk.Key...)
		out = binary.BigEndian.AppendUint64(out, math.Float64bits(bk.Tokens))
		out = binary.BigEndian.AppendUint64(out, uint64(bk.Last.UnixNano()))
	}
	return out
}

// decodeBudgets decodes a record of at most maxBuckets buckets.
func decodeBudgets(b []byte, maxBuckets int) ([]Bucket[string], error) {
	if len(b) == 0 || b[0] != budgetsVersion {
		return nil, fmt.Errorf("%w: unknown version", ErrBadBudgets)
	}
	b = b[1:]
	var out []Bucket[string]
	for len(b) > 0 {
		if len(out) == maxBuckets {
			return nil, fmt.Errorf("%w: more than %d buckets", ErrBadBudgets, maxBuckets)
		}
		n, w := binary.Uvarint(b)
		if w <= 0 || n > maxBudgetKey || uint64(len(b)-w) < n+budgetEntryFixed {
			return nil, fmt.Errorf("%w: truncated or oversized entry", ErrBadBudgets)
		}
		b = b[w:]
		key := string(b[:n])
		b = b[n:]
		tokens := math.Float64frombits(binary.BigEndian.Uint64(b))
		last := time.Unix(0, int64(binary.BigEndian.Uint64(b[8:])))
		b = b[budgetEntryFixed:]
		out = append(out, Bucket[string]{Key: key, Tokens: tokens, Last: last})
	}
	return out, nil
}
