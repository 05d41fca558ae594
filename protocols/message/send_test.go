package message

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"
)

// TestSessionCacheMatchesStore: after concurrent Sends both ways (send
// batches committed side by side, their syncs overlapping), every message
// arrives once, each goroutine's in its order, and the sessions a device
// holds in memory are exactly the ones its store holds: the cache is only
// ever the committed state.
func TestSessionCacheMatchesStore(t *testing.T) {
	const senders, each = 4, 10
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	_, a, b := pair(t, ctx)
	var wg sync.WaitGroup
	for _, d := range []struct{ from, to *device }{{a, b}, {b, a}} {
		for g := range senders {
			wg.Go(func() {
				for i := range each {
					if _, err := d.from.svc.Send(ctx, d.to.me(), fmt.Sprintf("%s %d %02d", d.from.rec.Name, g, i)); err != nil {
						t.Error(err)
						return
					}
				}
			})
		}
	}
	wg.Wait()
	for _, d := range []struct{ from, to *device }{{a, b}, {b, a}} {
		got := d.to.waitFor(t, ctx, string(d.from.me()), "all received", func(ms []Message) bool {
			return len(ms) >= 2*senders*each
		})
		next := map[int]int{}
		for _, m := range got {
			if !m.Incoming {
				continue
			}
			var name string
			var g, i int
			if _, err := fmt.Sscanf(m.Text, "%s %d %d", &name, &g, &i); err != nil {
				t.Fatalf("%q: %v", m.Text, err)
			}
			if i != next[g] {
				t.Fatalf("%s got %q after message %d of sender %d", d.to.rec.Name, m.Text, next[g]-1, g)
			}
			next[g]++
		}
		for g := range senders {
			if next[g] != each {
				t.Fatalf("%s has %d messages of sender %d, want %d", d.to.rec.Name, next[g], g, each)
			}
		}
		d.from.waitFor(t, ctx, string(d.to.me()), "all delivered", func(ms []Message) bool {
			return !slices.ContainsFunc(ms, func(m Message) bool { return !m.Incoming && m.State != StateDelivered && m.State != StateRead })
		})
	}
	for _, d := range []struct{ self, peer *device }{{a, b}, {b, a}} {
		d.self.svc.mu.Lock()
		cached, ok := d.self.svc.eng.sessions.get(d.peer.me())
		stored, legacy, err := d.self.svc.begin().loadSessions(d.peer.me())
		d.self.svc.mu.Unlock()
		if err != nil {
			t.Fatal(err)
		}
		if !ok || legacy || len(cached) != len(stored) || len(stored) == 0 {
			t.Fatalf("%s: %d sessions cached (%v), %d stored (legacy %v)", d.self.rec.Name, len(cached), ok, len(stored), legacy)
		}
		for i, s := range cached {
			if !bytes.Equal(s.Marshal(), stored[i].Marshal()) {
				t.Fatalf("%s: cached session %d differs from the stored one", d.self.rec.Name, i)
			}
		}
	}
}

// TestCloseWithSendsInFlight: closing the engine while Sends are queued,
// staged and syncing answers every one of them (no Send hangs, goroutines
// end: the package's leak check), and each Send that returned a message
// finds it stored after a restart.
func TestCloseWithSendsInFlight(t *testing.T) {
	const senders, each = 8, 50
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	_, a, b := pair(t, ctx)
	var (
		mu    sync.Mutex
		sent  []string
		wg    sync.WaitGroup
		ready = make(chan struct{})
		once  sync.Once
	)
	for g := range senders {
		wg.Go(func() {
			for i := range each {
				m, err := a.svc.Send(ctx, b.me(), fmt.Sprintf("%d %02d", g, i))
				if err != nil {
					if !errors.Is(err, ErrClosed) {
						t.Errorf("Send after Close: %v, want ErrClosed", err)
					}
					return
				}
				mu.Lock()
				sent = append(sent, m.ID)
				if len(sent) == 40 {
					once.Do(func() { close(ready) })
				}
				mu.Unlock()
			}
		})
	}
	<-ready
	if err := a.svc.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if len(sent) == senders*each {
		t.Fatalf("all %d Sends returned before Close: nothing was in flight", len(sent))
	}
	var err error
	a.svc, err = New(a.svc.cfg)
	if err != nil {
		t.Fatal(err)
	}
	ms, err := a.svc.Messages(ctx, string(b.me()))
	if err != nil {
		t.Fatal(err)
	}
	stored := map[string]bool{}
	for _, m := range ms {
		stored[m.ID] = true
	}
	for _, id := range sent {
		if !stored[id] {
			t.Fatalf("message %s: Send returned it, but it is not stored after a restart (%d of %d returned)", id, len(sent), senders*each)
		}
	}
	t.Logf("%d Sends returned before Close; %d messages stored", len(sent), len(ms))
}
