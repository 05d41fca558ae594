package prekeys

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/kinmesh/kinmesh/protocols/e2ee"
)

func TestSplit(t *testing.T) {
	a := newAccount(t, time.Now(), 10, 7)
	up := a.store.Upload()
	for _, tc := range []struct {
		name  string
		n     int
		sizes [][2]int
	}{
		{"one relay", 1, [][2]int{{10, 7}}},
		{"three relays", 3, [][2]int{{4, 3}, {3, 2}, {3, 2}}},
		{"more relays than keys", 12, [][2]int{{1, 1}, {1, 1}, {1, 1}, {1, 1}, {1, 1}, {1, 1}, {1, 1}, {1, 0}, {1, 0}, {1, 0}, {0, 0}, {0, 0}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			parts := Split(up, tc.n)
			if len(parts) != tc.n {
				t.Fatalf("got %d parts, want %d", len(parts), tc.n)
			}
			seen := map[e2ee.PrekeyID]bool{}
			last := e2ee.PrekeyID(0)
			for i, p := range parts {
				if got := [2]int{len(p.OneTime), len(p.PQOneTime)}; got != tc.sizes[i] {
					t.Errorf("part %d has %v keys, want %v", i, got, tc.sizes[i])
				}
				if err := p.Verify(); err != nil {
					t.Errorf("part %d does not verify: %v", i, err)
				}
				for _, k := range p.OneTime {
					if seen[k.ID] || k.ID < last {
						t.Errorf("key %d twice or out of order", k.ID)
					}
					seen[k.ID], last = true, k.ID
				}
			}
			for _, p := range parts {
				for _, k := range p.PQOneTime {
					if seen[k.ID] {
						t.Errorf("pq key %d twice", k.ID)
					}
					seen[k.ID] = true
				}
			}
			if len(seen) != 17 {
				t.Fatalf("parts cover %d keys, want 17", len(seen))
			}
		})
	}
	if Split(up, 0) != nil {
		t.Fatal("Split(up, 0) should be nil")
	}
}

// maintain runs Maintain, "persists" the store and publishes.
func maintain(t testing.TB, c *Client, a *account, relays []peer.ID, opts MaintainOptions) (*Plan, map[peer.ID]Status) {
	t.Helper()
	plan, err := c.Maintain(testCtx(t), a.id, a.store, relays, opts)
	if err != nil {
		t.Fatalf("Maintain: %v", err)
	}
	if plan.Changed {
		a.store = plan.Store
	}
	sts, err := plan.Publish(testCtx(t))
	if err != nil {
		t.Fatalf("Publish: %v", err)
	}
	return plan, sts
}

// checkDisjoint fails if a one-time key sits on two relays, or on a relay
// but not in the owner's store.
func checkDisjoint(t testing.TB, c *Client, a *account, relays []*testRelay) map[peer.ID]Status {
	t.Helper()
	inStore := idSet(a.store.Upload())
	where := map[e2ee.PrekeyID]peer.ID{}
	out := map[peer.ID]Status{}
	for _, r := range relays {
		st := mustStatus(t, c, r, a)
		out[r.ID()] = st
		for _, id := range append(slices.Clone(st.OneTimeIDs), st.PQOneTimeIDs...) {
			if p, ok := where[id]; ok {
				t.Fatalf("one-time key %d on relays %s and %s", id, p, r.ID())
			}
			where[id] = r.ID()
			if !inStore[id] {
				t.Fatalf("relay %s holds key %d the owner does not", r.ID(), id)
			}
		}
	}
	return out
}

// TestMaintainMultiRelay: an account's home relays get disjoint one-time
// keys; a drained relay alone is topped up; a full store evicts keys no
// relay holds; an unreachable relay gets nothing and blocks eviction.
func TestMaintainMultiRelay(t *testing.T) {
	clk := newClock()
	var relays []*testRelay
	var ids []peer.ID
	for range 3 {
		r := startRelay(t, clk, relaxed...)
		relays = append(relays, r)
		ids = append(ids, r.ID())
	}
	bob := newAccount(t, clk.Now(), 0, 0)
	c := newClient(t, relays...)
	opts := MaintainOptions{Target: 10, LowWater: 4, Now: clk.Now}

	// Maintain publishes nothing by itself.
	plan, err := c.Maintain(testCtx(t), bob.id, bob.store, ids, opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Status(testCtx(t), ids[0], bob.id); !errors.Is(err, ErrNotFound) {
		t.Fatalf("relay has data before Publish: %v", err)
	}
	if !plan.Changed || plan.Generated != 30 || plan.PQGenerated != 30 || len(plan.Uploads) != 3 {
		t.Fatalf("first plan: changed %v, generated %d/%d, %d uploads; want true, 30/30, 3", plan.Changed, plan.Generated, plan.PQGenerated, len(plan.Uploads))
	}
	bob.store = plan.Store
	if _, err := plan.Publish(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	for id, st := range checkDisjoint(t, c, bob, relays) {
		if x, q := st.Counts(); x != 10 || q != 10 {
			t.Fatalf("relay %s holds %d/%d, want 10/10", id, x, q)
		}
	}

	// Nothing to do.
	plan, _ = maintain(t, c, bob, ids, opts)
	if plan.Changed || len(plan.Uploads) != 0 {
		t.Fatalf("idle plan: changed %v, %d uploads, want nothing", plan.Changed, len(plan.Uploads))
	}

	// Drain relay 0 below the low-water mark: only it is topped up.
	fetcher := newClient(t, relays...)
	for range 7 {
		mustFetch(t, fetcher, relays[0], bob)
	}
	plan, sts := maintain(t, c, bob, ids, opts)
	if plan.Generated != 7 || plan.PQGenerated != 7 || len(plan.Uploads) != 1 || plan.Uploads[ids[0]] == nil {
		t.Fatalf("top-up plan: generated %d/%d, uploads %d; want 7/7 to relay 0 only", plan.Generated, plan.PQGenerated, len(plan.Uploads))
	}
	if x, q := sts[ids[0]].Counts(); x != 10 || q != 10 {
		t.Fatalf("relay 0 after top-up: %d/%d, want 10/10", x, q)
	}
	checkDisjoint(t, c, bob, relays)

	// An unreachable relay gets nothing; the others still get theirs.
	relays[2].Stop()
	for range 7 {
		mustFetch(t, fetcher, relays[1], bob)
	}
	plan, err = c.Maintain(testCtx(t), bob.id, bob.store, ids, opts)
	if err != nil {
		t.Fatal(err)
	}
	if plan.Errors[ids[2]] == nil || plan.Uploads[ids[2]] != nil || plan.Uploads[ids[1]] == nil {
		t.Fatalf("with relay 2 down: errors %v, uploads to 1: %v, to 2: %v", plan.Errors, plan.Uploads[ids[1]] != nil, plan.Uploads[ids[2]] != nil)
	}
	bob.store = plan.Store
	if _, err := plan.Publish(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	relays[2].Start()
	checkDisjoint(t, c, bob, relays)
}

// TestMaintainEvicts: when the owner's store is full, keys handed out by
// the relays (no relay holds them) make room, lowest first.
func TestMaintainEvicts(t *testing.T) {
	clk := newClock()
	r1 := startRelay(t, clk, relaxed...)
	r2 := startRelay(t, clk, relaxed...)
	ids := []peer.ID{r1.ID(), r2.ID()}
	bob := newAccount(t, clk.Now(), 0, 0)
	c := newClient(t, r1, r2)
	opts := MaintainOptions{Target: 100, LowWater: 95, Now: clk.Now}
	maintain(t, c, bob, ids, opts)
	if x, q := bob.store.Counts(); x != 200 || q != 200 {
		t.Fatalf("store holds %d/%d, want full 200/200", x, q)
	}
	fetcher := newClient(t, r1, r2)
	var handed []e2ee.PrekeyID
	for range 10 {
		b := mustFetch(t, fetcher, r1, bob)
		handed = append(handed, b.OneTimePrekey.ID, b.PQPrekey.ID)
	}
	plan, _ := maintain(t, c, bob, ids, opts)
	if plan.Generated != 10 || plan.PQGenerated != 10 {
		t.Fatalf("generated %d/%d, want 10/10", plan.Generated, plan.PQGenerated)
	}
	slices.Sort(handed)
	evicted := slices.Sorted(slices.Values(plan.Evicted))
	if !slices.Equal(evicted, handed) {
		t.Fatalf("evicted %v, want the handed-out keys %v", evicted, handed)
	}
	checkDisjoint(t, c, bob, []*testRelay{r1, r2})
}

// TestRotationWeekly: after a week Maintain rotates and the relays serve
// the new signed prekey; an initial message made from a bundle fetched
// before still works within e2ee.PrekeyGrace, and not after.
func TestRotationWeekly(t *testing.T) {
	clk := newClock()
	r1 := startRelay(t, clk, relaxed...)
	r2 := startRelay(t, clk, relaxed...)
	ids := []peer.ID{r1.ID(), r2.ID()}
	bob := newAccount(t, clk.Now(), 0, 0)
	alice := newAccount(t, clk.Now(), 0, 0)
	c := newClient(t, r1, r2)
	opts := MaintainOptions{Target: 5, LowWater: 2, Now: clk.Now}
	maintain(t, c, bob, ids, opts)
	oldSigned := bob.store.Upload().SignedPrekey.ID

	fetcher := newClient(t, r1, r2)
	early := mustFetch(t, fetcher, r1, bob)
	late := mustFetch(t, fetcher, r2, bob)
	ad := []byte("ad")
	initial := func(b *e2ee.Bundle) []byte {
		s, err := e2ee.Initiate(alice.id, b)
		if err != nil {
			t.Fatal(err)
		}
		msg, _, err := s.Encrypt([]byte("made before the rotation"), ad)
		if err != nil {
			t.Fatal(err)
		}
		return msg
	}
	msgEarly, msgLate := initial(early), initial(late)

	clk.Advance(e2ee.SignedPrekeyRotation - time.Minute)
	if plan, _ := maintain(t, c, bob, ids, opts); plan.Rotated {
		t.Fatal("rotated before a week")
	}
	clk.Advance(time.Minute)
	plan, sts := maintain(t, c, bob, ids, opts)
	if !plan.Rotated || len(sts) != 2 {
		t.Fatalf("after a week: rotated %v, published to %d relays; want true, 2", plan.Rotated, len(sts))
	}
	newSigned := bob.store.Upload().SignedPrekey.ID
	for _, r := range []*testRelay{r1, r2} {
		if b := mustFetch(t, fetcher, r, bob); b.SignedPrekey.ID != newSigned || b.SignedPrekey.ID == oldSigned {
			t.Fatalf("relay %s serves signed prekey %d, want the new %d", r.ID(), b.SignedPrekey.ID, newSigned)
		}
	}

	// Within the grace period the old bundle's message still opens.
	_, pt, consumed, err := e2ee.Respond(bob.id, bob.store, msgEarly, ad)
	if err != nil {
		t.Fatalf("Respond to a message from the previous bundle: %v", err)
	}
	if string(pt) != "made before the rotation" {
		t.Fatalf("read %q", pt)
	}
	bob.store = bob.store.Consume(consumed...)

	// After the grace period (and the next rotation's pruning) it does not.
	clk.Advance(e2ee.PrekeyGrace + time.Hour)
	maintain(t, c, bob, ids, opts)
	if _, _, _, err := e2ee.Respond(bob.id, bob.store, msgLate, ad); !errors.Is(err, e2ee.ErrNoPrekey) {
		t.Fatalf("Respond after the grace period: %v, want ErrNoPrekey", err)
	}
}

func TestMaintainRefusesOtherStore(t *testing.T) {
	r := startRelay(t, nil)
	c := newClient(t, r)
	bob := newAccount(t, time.Now(), 0, 0)
	carol := newAccount(t, time.Now(), 0, 0)
	if _, err := c.Maintain(testCtx(t), bob.id, carol.store, []peer.ID{r.ID()}, MaintainOptions{}); !errors.Is(err, ErrMalformed) {
		t.Fatalf("Maintain with another account's store: %v, want ErrMalformed", err)
	}
	if _, err := c.Maintain(testCtx(t), bob.id, bob.store, nil, MaintainOptions{}); !errors.Is(err, ErrMalformed) {
		t.Fatalf("Maintain without relays: %v, want ErrMalformed", err)
	}
	if _, err := c.Publish(testCtx(t), r.ID(), bob.id, carol.store.Upload()); !errors.Is(err, ErrMalformed) {
		t.Fatalf("Publish of another account's upload: %v, want ErrMalformed", err)
	}
}
