package calls

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/kinmesh/kinmesh/storage"
)

// history keeps calls that are no longer live (and a record of each live
// one, so a crash leaves a trace): in memory, and in the store namespace
// when there is one. Keys are "c/<start, unix ns, 16 hex>/<id>", so a
// listing is in start order and no key names an account.
type history struct {
	ns  *storage.Namespace // nil: memory only
	max int

	mu    sync.Mutex
	calls map[string]Info   // by id
	keys  map[string]string // id → store key
}

func historyKey(i Info) string {
	return fmt.Sprintf("c/%016x/%s", uint64(i.StartedAt.UnixNano()), i.ID)
}

// loadHistory reads the kept calls. A call still live in the record (the
// node stopped, or crashed, during it) is marked failed, reason shutdown.
func loadHistory(ctx context.Context, ns *storage.Namespace, max int, now time.Time) (*history, error) {
	h := &history{ns: ns, max: max, calls: map[string]Info{}, keys: map[string]string{}}
	if ns == nil {
		return h, nil
	}
	var stale []Info
	err := ns.List(ctx, storage.ListOptions{Prefix: "c/"}, func(k string, v []byte) error {
		var i Info
		if err := json.Unmarshal(v, &i); err != nil || i.ID == "" {
			return nil // not ours to judge: skip it
		}
		if !i.State.Final() {
			i.State, i.Reason = StateFailed, ReasonShutdown
			if i.EndedAt.IsZero() {
				i.EndedAt = now
			}
			stale = append(stale, i)
		}
		h.calls[i.ID], h.keys[i.ID] = i, k
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("calls: load history: %w", err)
	}
	for _, i := range stale {
		h.put(ctx, i)
	}
	h.prune(ctx)
	return h, nil
}

// put records (or updates) a call.
func (h *history) put(ctx context.Context, i Info) {
	h.mu.Lock()
	key := historyKey(i)
	h.calls[i.ID], h.keys[i.ID] = i, key
	h.mu.Unlock()
	if h.ns == nil {
		return
	}
	b, err := json.Marshal(i)
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_ = h.ns.Put(ctx, key, b)
	h.prune(ctx)
}

// prune drops the oldest calls beyond max.
func (h *history) prune(ctx context.Context) {
	h.mu.Lock()
	if len(h.calls) <= h.max {
		h.mu.Unlock()
		return
	}
	all := h.listLocked()
	var drop []string
	for _, i := range all[h.max:] {
		drop = append(drop, h.keys[i.ID])
		delete(h.calls, i.ID)
		delete(h.keys, i.ID)
	}
	h.mu.Unlock()
	if h.ns == nil {
		return
	}
	for _, k := range drop {
		_ = h.ns.Delete(ctx, k)
	}
}

func (h *history) get(id string) (Info, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	i, ok := h.calls[id]
	return i, ok
}

// list returns every kept call, newest first.
func (h *history) list() []Info {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.listLocked()
}

func (h *history) listLocked() []Info {
	out := make([]Info, 0, len(h.calls))
	for _, i := range h.calls {
		out = append(out, i)
	}
	slices.SortFunc(out, func(a, b Info) int {
		if c := b.StartedAt.Compare(a.StartedAt); c != 0 {
			return c
		}
		return strings.Compare(b.ID, a.ID)
	})
	return out
}
