package message

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/storage"
)

// storedSessions returns d's sessions with peer as the store holds them,
// whether they are in the legacy layout, and the keys under the peer's
// session prefix.
func storedSessions(t *testing.T, ctx context.Context, d, peer *device) ([]*e2ee.Session, bool, []string) {
	t.Helper()
	d.svc.mu.Lock()
	defer d.svc.mu.Unlock()
	ss, legacy, err := d.svc.begin().loadSessions(peer.me())
	if err != nil {
		t.Fatalf("%s: load sessions: %v", d.rec.Name, err)
	}
	var keys []string
	err = d.svc.ns.List(ctx, storage.ListOptions{Prefix: d.svc.keySessions(peer.me()) + "/"}, func(k string, _ []byte) error {
		keys = append(keys, k)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return ss, legacy, keys
}

// exchange sends one message each way and waits until both are
// delivered.
func exchange(t *testing.T, ctx context.Context, a, b *device, tag string) {
	t.Helper()
	var wg sync.WaitGroup
	for _, d := range []struct{ from, to *device }{{a, b}, {b, a}} {
		wg.Go(func() { sendAndWatch(t, ctx, d.from, d.to, fmt.Sprintf("%s from %s", tag, d.from.rec.Name)) })
	}
	wg.Wait()
}

// connect connects a's host to b's directly.
func connect(t *testing.T, ctx context.Context, a, b *device) {
	t.Helper()
	if err := a.h.Connect(ctx, peer.AddrInfo{ID: b.h.ID(), Addrs: b.h.Addrs()}); err != nil {
		t.Fatal(err)
	}
}

// restart closes d's engine and starts it again on the same store: its
// session cache starts empty.
func restart(t *testing.T, d *device) {
	t.Helper()
	if err := d.svc.Close(); err != nil {
		t.Fatal(err)
	}
	var err error
	if d.svc, err = New(d.svc.cfg); err != nil {
		t.Fatal(err)
	}
}

// TestSessionsStoredApart: each pairwise session has its own key beside a
// list of IDs, and the store holds exactly the sessions the engine uses.
// Both devices start a session at once, so each has two; after a restart
// of both (nothing cached) the conversation goes on from the store.
func TestSessionsStoredApart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	_, a, b := pair(t, ctx)
	connect(t, ctx, a, b)
	exchange(t, ctx, a, b, "first") // both initiate
	for i := range 3 {
		exchange(t, ctx, a, b, fmt.Sprint("then ", i))
	}
	check := func(when string) {
		for _, d := range []struct{ self, peer *device }{{a, b}, {b, a}} {
			ss, legacy, keys := storedSessions(t, ctx, d.self, d.peer)
			d.self.svc.mu.Lock()
			cached, _ := d.self.svc.eng.sessions.get(d.peer.me())
			d.self.svc.mu.Unlock()
			if legacy || len(ss) == 0 || len(keys) != len(ss) {
				t.Fatalf("%s, %s: %d sessions stored (legacy %v) under %d keys %v", when, d.self.rec.Name, len(ss), legacy, len(keys), keys)
			}
			for i, s := range ss {
				want := d.self.svc.keySession(d.peer.me(), sessionIDs(ss)[i])
				if !slices.Contains(keys, want) {
					t.Fatalf("%s, %s: session %d is not under %s (keys %v)", when, d.self.rec.Name, i, want, keys)
				}
				if i < len(cached) && !bytes.Equal(s.Marshal(), cached[i].Marshal()) {
					t.Fatalf("%s, %s: stored session %d differs from the one in use", when, d.self.rec.Name, i)
				}
			}
		}
	}
	check("before the restart")
	restart(t, a)
	restart(t, b)
	connect(t, ctx, a, b)
	for i := range 3 {
		exchange(t, ctx, a, b, fmt.Sprint("after the restart ", i))
	}
	check("after the restart")
}

// TestLegacySessionsMoved: sessions an older engine stored in one value
// are read, the conversation goes on with them, and the first commit that
// changes them moves them to their own keys and deletes the old value.
func TestLegacySessionsMoved(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	_, a, b := pair(t, ctx)
	connect(t, ctx, a, b)
	exchange(t, ctx, a, b, "before")

	// a's store, as an older engine would have left it. (Nothing changes
	// the sessions between the reading and Close: every message is
	// delivered.)
	ss, _, keys := storedSessions(t, ctx, a, b)
	if err := a.svc.Close(); err != nil {
		t.Fatal(err)
	}
	raw := make([][]byte, len(ss))
	for i, s := range ss {
		raw[i] = s.Marshal()
	}
	v, err := json.Marshal(raw)
	if err != nil {
		t.Fatal(err)
	}
	batch := a.st.NewBatch()
	for _, k := range append(keys, a.svc.keySessions(b.me())) {
		if err := batch.Delete(a.svc.ns, k); err != nil {
			t.Fatal(err)
		}
	}
	if err := batch.Put(a.svc.ns, a.svc.keyLegacySessions(b.me()), v); err != nil {
		t.Fatal(err)
	}
	if err := batch.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if a.svc, err = New(a.svc.cfg); err != nil {
		t.Fatal(err)
	}
	if got, legacy, _ := storedSessions(t, ctx, a, b); !legacy || len(got) != len(ss) {
		t.Fatalf("set-up: %d sessions, legacy %v; want the %d in the legacy layout", len(got), legacy, len(ss))
	}

	connect(t, ctx, a, b)
	exchange(t, ctx, a, b, "after the upgrade")
	got, legacy, keys := storedSessions(t, ctx, a, b)
	if legacy || len(got) != len(ss) || len(keys) != len(ss) {
		t.Fatalf("after a commit: %d sessions, legacy %v, keys %v; want %d in their own keys", len(got), legacy, keys, len(ss))
	}
	if _, err := a.svc.ns.Get(ctx, a.svc.keyLegacySessions(b.me())); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("the legacy value is still there (err %v)", err)
	}
	exchange(t, ctx, a, b, "later")
}

// TestSessionsCapped: a peer that starts over again and again (a
// reinstall losing its sessions, each time) leaves at most
// maxSessionsPerPeer sessions stored with us, and the keys of the ones
// dropped are deleted.
func TestSessionsCapped(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	_, a, b := pair(t, ctx)
	connect(t, ctx, a, b)
	for run := range maxSessionsPerPeer + 2 {
		// b forgets its sessions with a: its next message starts a new
		// PQXDH run with a bundle from a's relay.
		_, _, keys := storedSessions(t, ctx, b, a)
		b.svc.mu.Lock()
		batch := b.st.NewBatch()
		for _, k := range append(keys, b.svc.keySessions(a.me())) {
			if err := batch.Delete(b.svc.ns, k); err != nil {
				t.Fatal(err)
			}
		}
		err := batch.Commit(ctx)
		b.svc.eng.sessions.mu.Lock()
		delete(b.svc.eng.sessions.m, a.me())
		b.svc.eng.sessions.mu.Unlock()
		b.svc.mu.Unlock()
		if err != nil {
			t.Fatal(err)
		}
		sendAndWatch(t, ctx, b, a, fmt.Sprint("run ", run))
		ss, legacy, keys := storedSessions(t, ctx, a, b)
		want := min(run+1, maxSessionsPerPeer)
		if legacy || len(ss) != want || len(keys) != want {
			t.Fatalf("after run %d a stores %d sessions with b under %d keys (legacy %v), want %d", run, len(ss), len(keys), legacy, want)
		}
	}
	exchange(t, ctx, a, b, "after the runs")
}
