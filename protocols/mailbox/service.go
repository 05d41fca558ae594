package mailbox

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/kinmesh/kinmesh/protocols/netkit"
	"github.com/kinmesh/kinmesh/storage"
)

// namespace is the store namespace the relay keeps mailboxes in.
const namespace = "mailbox"

// Service is the relay side of the mailbox protocol: it stores deposits,
// serves owner sessions and pushes new deposits to them. Create it with
// NewService; Close stops it.
type Service struct {
	h      host.Host
	store  *storage.Store
	ns     *storage.Namespace
	cfg    config
	log    *slog.Logger
	tr     tracer
	lim    *limiter                // deposits, per depositor
	srcLim *netkit.Limiter[string] // deposited bytes, per source address
	regLim *netkit.Limiter[string] // new registrations, per source address
	purges *limiter                // purges, per peer
	width  int64                   // quota bucket width, seconds

	budgets *netkit.Budgets // srcLim and regLim, kept across restarts

	ctx     context.Context // cancelled by Close
	cancel  context.CancelFunc
	ops     chan *op
	streams netkit.Streams
	wg      sync.WaitGroup // committer, janitor, commits

	mu       sync.Mutex // guards subs, sessions
	subs     map[[idRawSize]byte]map[*subscription]struct{}
	sessions int

	metas map[[idRawSize]byte]*meta // committer only: write-through cache of mailbox records

	closeOnce sync.Once
}

// NewService starts serving /kinmesh/mailbox/1.0.0 on h, keeping mailboxes
// in st's "mailbox" namespace. st must outlive the Service: close the
// Service first.
//
// Defaults (see the Option functions): the real clock; MaxAge (15 days);
// slog.Default(); no metrics; per mailbox DefaultMaxItems envelopes and
// DefaultMaxBytes bytes; per depositor DefaultDepositsPerMinute envelopes
// and DefaultDepositBytesPerMinute bytes per minute, 65,536 depositors
// tracked; per source address DefaultSourceDepositBurst bytes at once,
// then DefaultSourceDepositBytesPerHour an hour; registrations lasting
// DefaultRegistrationTTL after the owner's last authentication, and per
// source address DefaultSourceRegistrationBurst new ones at once, then
// DefaultSourceRegistrationsPerHour an hour; per peer
// DefaultPurgesPerMinute purges per minute; push queues of 256 items and 1 MiB per session; unauthenticated
// streams idle for 30 s, owner sessions idle for 3 min and writes taking
// 30 s are cut.
func NewService(h host.Host, st *storage.Store, opts ...Option) (*Service, error) {
	if h == nil || st == nil {
		return nil, errors.New("mailbox: NewService needs a host and a store")
	}
	s, err := newService(st, opts...)
	if err != nil {
		return nil, err
	}
	s.h = h
	h.SetStreamHandler(ID, s.handle)
	return s, nil
}

// newService builds a Service without a host (fuzz tests drive its stream
// loop directly).
func newService(st *storage.Store, opts ...Option) (*Service, error) {
	cfg := defaultConfig()
	for _, o := range opts {
		if err := o(&cfg); err != nil {
			return nil, err
		}
	}
	if cfg.logger == nil {
		cfg.logger = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Service{
		store: st,
		ns:    st.Namespace(namespace),
		cfg:   cfg,
		log:   cfg.logger.With("component", "mailbox"),
		tr:    tracer{cfg.tracer},
		lim:   newLimiter(cfg.now, cfg.ratePerMin, cfg.rateBytesPerMin, cfg.maxDepositors),
		// Purges count, not bytes: take passes them as size 0.
		purges: newLimiter(cfg.now, cfg.purgesPerMin, 1, cfg.maxDepositors),
		srcLim: netkit.NewLimiter[string](cfg.now, cfg.srcRate, cfg.srcBurst, cfg.maxDepositors),
		regLim: netkit.NewLimiter[string](cfg.now, cfg.regRate, cfg.regBurst, cfg.maxDepositors),
		width:  max(int64(cfg.maxAge/time.Second)/90, 1),
		ctx:    ctx,
		cancel: cancel,
		ops:    make(chan *op, 256),
		subs:   make(map[[idRawSize]byte]map[*subscription]struct{}),
		metas:  make(map[[idRawSize]byte]*meta),
	}
	s.budgets = netkit.KeepBudgets(st, namespace, s.log, map[string]*netkit.Limiter[string]{
		"source_deposit": s.srcLim, "source_registration": s.regLim,
	})
	s.wg.Add(2)
	go s.commitLoop()
	go s.janitor()
	return s, nil
}

// Close stops serving: it removes the stream handler, ends every stream
// (owner sessions see their stream reset), fails requests not yet
// committed with ErrUnavailable and waits for its goroutines. It does not
// close the store. It is safe to call more than once.
func (s *Service) Close() error {
	s.closeOnce.Do(func() {
		s.streams.Close()
		if s.h != nil {
			s.h.RemoveStreamHandler(ID)
		}
		s.cancel()
		s.streams.Wait()
		s.wg.Wait()
		s.budgets.Close()
	})
	return nil
}

// Sessions returns how many authenticated owner sessions are open.
func (s *Service) Sessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sessions
}

// handle hands a stream to a conn, which resets or closes it itself.
func (s *Service) handle(st network.Stream) {
	if !s.streams.Enter() {
		_ = st.Reset()
		return
	}
	defer s.streams.Leave()
	if err := st.Scope().SetService(ServiceName); err != nil {
		s.log.Debug("stream refused by resource manager", "err", err)
		_ = st.Reset()
		return
	}
	c := s.newConn(st, st.Scope(), st.Conn().RemotePeer(), s.h.ID())
	c.src = netkit.MultiaddrSource(st.Conn().RemoteMultiaddr())
	c.serve()
}

// janitor forgets idle depositors and purgers once a minute.
func (s *Service) janitor() {
	defer s.wg.Done()
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
			s.lim.sweep()
			s.purges.sweep()
		}
	}
}

// subscribe registers a session for pushes to mbox.
func (s *Service) subscribe(mbox [idRawSize]byte, sub *subscription) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.subs[mbox]
	if m == nil {
		m = make(map[*subscription]struct{})
		s.subs[mbox] = m
	}
	m[sub] = struct{}{}
	s.sessions++
}

func (s *Service) unsubscribe(mbox [idRawSize]byte, sub *subscription) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.subs[mbox]
	if _, ok := m[sub]; !ok {
		return
	}
	delete(m, sub)
	if len(m) == 0 {
		delete(s.subs, mbox)
	}
	s.sessions--
}

// forgetDelivered makes mbox's open sessions forget what they delivered:
// the mailbox was purged.
func (s *Service) forgetDelivered(mbox [idRawSize]byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for sub := range s.subs[mbox] {
		sub.forget()
	}
}

// notify queues items just stored in mbox for push to its open sessions.
// A deposit's envelopes alias its request frame (viewDeposit), which may
// be many times their size: what a push queue keeps are copies, so that it
// holds no more memory than it counts.
func (s *Service) notify(mbox [idRawSize]byte, items []storedItem) {
	s.mu.Lock()
	defer s.mu.Unlock()
	subs := s.subs[mbox]
	if len(subs) == 0 {
		return
	}
	own := make([]storedItem, len(items))
	for i, it := range items {
		it.envelope = bytes.Clone(it.envelope)
		own[i] = it
	}
	for sub := range subs {
		if sub.push(own) {
			s.tr.pushOverflow()
		}
	}
}

func (s *Service) prefix(mbox [idRawSize]byte) string { return s.ns.Opaque(mbox[:]) }

func (s *Service) expired(deposited int64, now time.Time) bool {
	return now.UnixNano()-deposited >= int64(s.cfg.maxAge)
}

var errPageFull = errors.New("page full")

// fetch reads a page of mbox's items with seq > after, in seq order,
// skipping items expired on the service clock. An item that can't be read
// (its value fails to open or decode) can never be delivered: fetch skips
// it and has the committer delete it.
func (s *Service) fetch(ctx context.Context, mbox [idRawSize]byte, after uint64, limit int) (items []storedItem, more bool, bytes int, err error) {
	prefix := s.prefix(mbox) + "/"
	now := s.cfg.now()
	var unreadable []string
	opts := storage.ListOptions{
		Prefix:     prefix,
		StartAfter: itemKey(prefix[:len(prefix)-1], after),
		Corrupt: func(key string) error {
			unreadable = append(unreadable, key)
			return nil
		},
	}
	err = s.ns.List(ctx, opts, func(key string, v []byte) error {
		seq, ok := seqFromKey(key)
		if !ok {
			s.log.Warn("skipping a key that names no mailbox item", "key", key)
			return nil
		}
		dep, env, ok := decodeValue(v)
		if !ok {
			unreadable = append(unreadable, key)
			return nil
		}
		if s.expired(dep, now) {
			return nil
		}
		if len(items) == limit || (len(items) > 0 && bytes+len(env) > MaxPageBytes) {
			more = true
			return errPageFull
		}
		items = append(items, storedItem{seq: seq, deposited: dep, envelope: env})
		bytes += len(env)
		return nil
	})
	if errors.Is(err, errPageFull) {
		err = nil
	}
	s.drop(mbox, unreadable)
	if err != nil {
		return nil, false, 0, fmt.Errorf("mailbox: fetch: %w", err)
	}
	s.tr.fetched(len(items), int64(bytes))
	return items, more, bytes, nil
}

// drop has the committer delete the unreadable items keys of mbox, without
// waiting for it. Their deposit time and size are lost with them, so the
// mailbox's usage keeps counting them until their bucket expires.
func (s *Service) drop(mbox [idRawSize]byte, keys []string) {
	if len(keys) == 0 {
		return
	}
	s.log.Warn("deleting unreadable mailbox items", "items", len(keys))
	s.tr.unreadable(len(keys))
	s.submit(&op{kind: opDrop, mbox: mbox, keys: keys, done: func(*op) {}})
}

// peerTag marks connections with an open owner session, so the
// connection manager trims them last.
const peerTag = "kinmesh-mailbox-session"

func (s *Service) tagPeer(p peer.ID, delta int) {
	if s.h == nil {
		return
	}
	s.h.ConnManager().UpsertTag(p, peerTag, func(v int) int { return v + delta })
}
