package prekeys

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kinmesh/kinmesh/protocols/e2ee"
)

// TestPublishFetchSession: an owner publishes, someone fetches its bundle
// and both ends of a session work.
func TestPublishFetchSession(t *testing.T) {
	clk := newClock()
	r := startRelay(t, clk)
	bob := newAccount(t, clk.Now(), 5, 5)
	owner := newClient(t, r)
	st := mustPublish(t, owner, r, bob, bob.store.Upload())
	if x, q := st.Counts(); x != 5 || q != 5 || st.AddedOneTime != 5 || st.AddedPQOneTime != 5 {
		t.Fatalf("after publish: counts %d/%d added %d/%d, want 5/5 added 5/5", x, q, st.AddedOneTime, st.AddedPQOneTime)
	}
	if !st.ReplacedSigned || !st.ReplacedLastResort {
		t.Fatalf("first publish: replaced signed=%v last-resort=%v, want both", st.ReplacedSigned, st.ReplacedLastResort)
	}
	if got := r.svc.Accounts(); got != 1 {
		t.Fatalf("Accounts() = %d, want 1", got)
	}

	alice := newAccount(t, clk.Now(), 0, 0)
	fetcher := newClient(t, r)
	b := mustFetch(t, fetcher, r, bob)
	if b.OneTimePrekey == nil || b.PQPrekey.LastResort {
		t.Fatalf("bundle without one-time keys: one-time %v, pq last-resort %v", b.OneTimePrekey != nil, b.PQPrekey.LastResort)
	}
	consumed := establish(t, alice.id, bob, b)
	want := []e2ee.PrekeyID{b.OneTimePrekey.ID, b.PQPrekey.ID}
	slices.Sort(consumed)
	slices.Sort(want)
	if !slices.Equal(consumed, want) {
		t.Fatalf("Respond consumed %v, want the bundle's one-time keys %v", consumed, want)
	}
	if st := mustStatus(t, owner, r, bob); len(st.OneTimeIDs) != 4 || len(st.PQOneTimeIDs) != 4 {
		t.Fatalf("after one fetch: %d/%d one-time keys, want 4/4", len(st.OneTimeIDs), len(st.PQOneTimeIDs))
	}

	// Account ids never appear in the store's keys.
	for _, k := range r.keys(t) {
		if strings.Contains(k, string(bob.ID())) {
			t.Fatalf("store key %q contains the account id", k)
		}
	}
}

func TestFetchUnknownAccount(t *testing.T) {
	r := startRelay(t, nil)
	c := newClient(t, r)
	a := newAccount(t, time.Now(), 0, 0)
	_, err := c.Fetch(testCtx(t), r.ID(), a.ID())
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("Fetch of an unknown account: %v, want ErrNotFound", err)
	}
	if _, err := c.Status(testCtx(t), r.ID(), a.id); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Status of an unknown account: %v, want ErrNotFound", err)
	}
	if _, err := c.Fetch(testCtx(t), r.ID(), "not-an-account"); !errors.Is(err, ErrMalformed) {
		t.Fatalf("Fetch of a malformed account id: %v, want ErrMalformed", err)
	}
}

// TestOneTimeHandedOutOnce: N fetches consume N distinct keys of each
// kind, lowest first; then bundles fall back to the last-resort keys, and
// still make working sessions.
func TestOneTimeHandedOutOnce(t *testing.T) {
	clk := newClock()
	r := startRelay(t, clk)
	bob := newAccount(t, clk.Now(), 6, 4)
	c := newClient(t, r)
	mustPublish(t, c, r, bob, bob.store.Upload())

	up := bob.store.Upload()
	var wantX, wantQ []e2ee.PrekeyID
	for _, k := range up.OneTime {
		wantX = append(wantX, k.ID)
	}
	for _, k := range up.PQOneTime {
		wantQ = append(wantQ, k.ID)
	}
	var gotX, gotQ []e2ee.PrekeyID
	for range 8 {
		b := mustFetch(t, c, r, bob)
		if b.OneTimePrekey != nil {
			gotX = append(gotX, b.OneTimePrekey.ID)
		}
		if !b.PQPrekey.LastResort {
			gotQ = append(gotQ, b.PQPrekey.ID)
		}
	}
	if !slices.Equal(gotX, wantX[:6]) {
		t.Fatalf("one-time X25519 handed out %v, want %v (each once, lowest first)", gotX, wantX)
	}
	if !slices.Equal(gotQ, wantQ) {
		t.Fatalf("one-time ML-KEM handed out %v, want %v", gotQ, wantQ)
	}
	b := mustFetch(t, c, r, bob)
	if b.OneTimePrekey != nil || !b.PQPrekey.LastResort || b.PQPrekey.ID != up.LastResort.ID {
		t.Fatalf("exhausted pools: got one-time %v, pq %d (last-resort %v), want last-resort %d only", b.OneTimePrekey != nil, b.PQPrekey.ID, b.PQPrekey.LastResort, up.LastResort.ID)
	}
	alice := newAccount(t, clk.Now(), 0, 0)
	if consumed := establish(t, alice.id, bob, b); len(consumed) != 0 {
		t.Fatalf("last-resort session consumed %v, want nothing", consumed)
	}
}

// TestConcurrentFetches: many requesters at once never get the same
// one-time key.
func TestConcurrentFetches(t *testing.T) {
	clk := newClock()
	r := startRelay(t, clk, relaxed...)
	bob := newAccount(t, clk.Now(), 30, 30)
	mustPublish(t, newClient(t, r), r, bob, bob.store.Upload())

	const clients, each = 8, 5
	var (
		mu    sync.Mutex
		seenX = map[e2ee.PrekeyID]int{}
		seenQ = map[e2ee.PrekeyID]int{}
		wg    sync.WaitGroup
		errs  = make(chan error, clients*each)
	)
	for range clients {
		c := newClient(t, r)
		wg.Go(func() {
			for range each {
				b, err := c.Fetch(testCtx(t), r.ID(), bob.ID())
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				if b.OneTimePrekey != nil {
					seenX[b.OneTimePrekey.ID]++
				}
				if !b.PQPrekey.LastResort {
					seenQ[b.PQPrekey.ID]++
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("Fetch: %v", err)
	}
	for id, n := range seenX {
		if n != 1 {
			t.Errorf("one-time key %d handed out %d times", id, n)
		}
	}
	for id, n := range seenQ {
		if n != 1 {
			t.Errorf("one-time pq key %d handed out %d times", id, n)
		}
	}
	if len(seenX) != 30 || len(seenQ) != 30 {
		t.Fatalf("handed out %d/%d distinct one-time keys, want 30/30", len(seenX), len(seenQ))
	}
}

// TestRestartKeepsConsumption: what was handed out stays gone after the
// relay's service and store are closed and reopened, and re-publishing the
// same upload does not bring it back.
func TestRestartKeepsConsumption(t *testing.T) {
	clk := newClock()
	r := startRelay(t, clk)
	bob := newAccount(t, clk.Now(), 5, 5)
	c := newClient(t, r)
	mustPublish(t, c, r, bob, bob.store.Upload())
	handed := map[e2ee.PrekeyID]bool{}
	for range 3 {
		b := mustFetch(t, c, r, bob)
		handed[b.OneTimePrekey.ID] = true
		handed[b.PQPrekey.ID] = true
	}
	r.Stop()
	r.Start()
	if got := r.svc.Accounts(); got != 1 {
		t.Fatalf("after restart Accounts() = %d, want 1", got)
	}
	st := mustStatus(t, c, r, bob)
	if x, q := st.Counts(); x != 2 || q != 2 {
		t.Fatalf("after restart: %d/%d one-time keys, want 2/2", x, q)
	}
	// The owner re-sends everything it still holds: nothing comes back.
	st = mustPublish(t, c, r, bob, bob.store.Upload())
	if x, q := st.Counts(); x != 2 || q != 2 || st.AddedOneTime+st.AddedPQOneTime != 0 {
		t.Fatalf("re-published: %d/%d one-time keys, %d added, want 2/2 and none", x, q, st.AddedOneTime+st.AddedPQOneTime)
	}
	for range 2 {
		b := mustFetch(t, c, r, bob)
		if handed[b.OneTimePrekey.ID] || handed[b.PQPrekey.ID] {
			t.Fatalf("key handed out twice across a restart: %d / %d", b.OneTimePrekey.ID, b.PQPrekey.ID)
		}
	}
	if b := mustFetch(t, c, r, bob); b.OneTimePrekey != nil || !b.PQPrekey.LastResort {
		t.Fatal("pools should be empty")
	}
}

// TestReplayedOldUpload: after a rotation, an old upload is stale and
// changes nothing; consumed keys never come back.
func TestReplayedOldUpload(t *testing.T) {
	clk := newClock()
	r := startRelay(t, clk)
	bob := newAccount(t, clk.Now(), 4, 4)
	c := newClient(t, r)
	old := bob.store.Upload()
	mustPublish(t, c, r, bob, old)
	mustFetch(t, c, r, bob)

	clk.Advance(e2ee.SignedPrekeyRotation)
	rotated := mustRotate(t, bob, clk.Now())
	st := mustPublish(t, c, r, bob, rotated.Upload())
	if !st.ReplacedSigned || !st.ReplacedLastResort || st.AddedOneTime+st.AddedPQOneTime != 0 {
		t.Fatalf("rotated publish: replaced %v/%v added %d, want replaced both, none added", st.ReplacedSigned, st.ReplacedLastResort, st.AddedOneTime+st.AddedPQOneTime)
	}
	before := r.keys(t)
	st, err := c.Publish(testCtx(t), r.ID(), bob.id, old)
	if !errors.Is(err, ErrStale) {
		t.Fatalf("replayed old upload: %v, want ErrStale", err)
	}
	if st.SignedPrekey != rotated.Upload().SignedPrekey.ID {
		t.Fatalf("stale answer reports signed prekey %d, want %d", st.SignedPrekey, rotated.Upload().SignedPrekey.ID)
	}
	if x, q := st.Counts(); x != 3 || q != 3 {
		t.Fatalf("after replay: %d/%d one-time keys, want 3/3", x, q)
	}
	if after := r.keys(t); !slices.Equal(before, after) {
		t.Fatalf("stale upload changed the store: %d keys before, %d after", len(before), len(after))
	}
	if b := mustFetch(t, c, r, bob); b.SignedPrekey.ID != rotated.Upload().SignedPrekey.ID {
		t.Fatalf("served signed prekey %d, want the rotated %d", b.SignedPrekey.ID, rotated.Upload().SignedPrekey.ID)
	}
}

func mustRotate(t testing.TB, a *account, now time.Time) *e2ee.PrekeyStore {
	t.Helper()
	st, err := a.store.Rotate(a.id, now, randSource)
	if err != nil {
		t.Fatal(err)
	}
	a.store = st
	return st
}

// TestStaleSignedPrekeyIgnored: an upload with new one-time keys but an
// older signed prekey adds the keys and keeps the newer signed prekey.
func TestStaleSignedPrekeyIgnored(t *testing.T) {
	clk := newClock()
	r := startRelay(t, clk)
	bob := newAccount(t, clk.Now(), 0, 0)
	c := newClient(t, r)
	oldStore := bob.store
	clk.Advance(time.Hour)
	newer := mustRotate(t, bob, clk.Now())
	mustPublish(t, c, r, bob, newer.Upload())

	// Generate one-time keys on the old store copy: fresh ids, old signed prekey.
	withKeys, err := oldStore.GenerateOneTime(bob.id, 3, 2, clk.Now(), randSource)
	if err != nil {
		t.Fatal(err)
	}
	up := withKeys.Upload()
	up.OneTime, up.PQOneTime = nil, nil
	for _, k := range newerKeys(t, bob, 3, 2, clk.Now()) {
		switch k := k.(type) {
		case e2ee.DHPrekey:
			up.OneTime = append(up.OneTime, k)
		case e2ee.KEMPrekey:
			up.PQOneTime = append(up.PQOneTime, k)
		}
	}
	st := mustPublish(t, c, r, bob, up)
	if st.ReplacedSigned || st.ReplacedLastResort {
		t.Fatal("an older signed prekey replaced a newer one")
	}
	if st.AddedOneTime != 3 || st.AddedPQOneTime != 2 {
		t.Fatalf("added %d/%d one-time keys, want 3/2", st.AddedOneTime, st.AddedPQOneTime)
	}
	if b := mustFetch(t, c, r, bob); b.SignedPrekey.ID != newer.Upload().SignedPrekey.ID {
		t.Fatalf("served signed prekey %d, want %d", b.SignedPrekey.ID, newer.Upload().SignedPrekey.ID)
	}
}

// newerKeys generates one-time keys in a's store and returns the new ones.
func newerKeys(t testing.TB, a *account, n, nPQ int, now time.Time) []any {
	t.Helper()
	before := idSet(a.store.Upload())
	st, err := a.store.GenerateOneTime(a.id, n, nPQ, now, randSource)
	if err != nil {
		t.Fatal(err)
	}
	a.store = st
	var out []any
	for _, k := range st.Upload().OneTime {
		if !before[k.ID] {
			out = append(out, k)
		}
	}
	for _, k := range st.Upload().PQOneTime {
		if !before[k.ID] {
			out = append(out, k)
		}
	}
	return out
}

// TestCaps: an account holds at most e2ee.MaxOneTimePrekeys of each kind;
// the relay at most its account cap. Over-cap publishes change nothing.
func TestCaps(t *testing.T) {
	clk := newClock()
	r := startRelay(t, clk, WithMaxAccounts(1))
	bob := newAccount(t, clk.Now(), e2ee.MaxOneTimePrekeys-1, 1)
	c := newClient(t, r)
	st := mustPublish(t, c, r, bob, bob.store.Upload())
	if x, q := st.Counts(); x != e2ee.MaxOneTimePrekeys-1 || q != 1 {
		t.Fatalf("counts %d/%d, want %d/1", x, q, e2ee.MaxOneTimePrekeys-1)
	}
	// Two more X25519 keys would exceed the cap: nothing is stored, not
	// even the one that would fit.
	bob.store = bob.store.Consume(bob.store.Upload().OneTime[0].ID, bob.store.Upload().OneTime[1].ID)
	newerKeys(t, bob, 2, 0, clk.Now())
	before := r.keys(t)
	up := bob.store.Upload()
	st, err := c.Publish(testCtx(t), r.ID(), bob.id, up)
	if !errors.Is(err, ErrQuota) {
		t.Fatalf("over-cap publish: %v, want ErrQuota", err)
	}
	if x, _ := st.Counts(); x != e2ee.MaxOneTimePrekeys-1 {
		t.Fatalf("quota answer reports %d keys, want %d", x, e2ee.MaxOneTimePrekeys-1)
	}
	if after := r.keys(t); !slices.Equal(before, after) {
		t.Fatal("over-cap publish changed the store")
	}

	carol := newAccount(t, clk.Now(), 1, 1)
	if _, err := c.Publish(testCtx(t), r.ID(), carol.id, carol.store.Upload()); !errors.Is(err, ErrQuota) {
		t.Fatalf("publish beyond the relay's account cap: %v, want ErrQuota", err)
	}
	if _, err := c.Fetch(testCtx(t), r.ID(), carol.ID()); !errors.Is(err, ErrNotFound) {
		t.Fatalf("fetch of the refused account: %v, want ErrNotFound", err)
	}
}

// TestPurge removes every record of the account, and only of it.
func TestPurge(t *testing.T) {
	clk := newClock()
	r := startRelay(t, clk)
	bob := newAccount(t, clk.Now(), 10, 10)
	carol := newAccount(t, clk.Now(), 1, 1)
	c := newClient(t, r)
	mustPublish(t, c, r, bob, bob.store.Upload())
	mustPublish(t, c, r, carol, carol.store.Upload())
	mustFetch(t, c, r, bob)
	withCarol := len(r.keys(t))

	if err := c.Purge(testCtx(t), r.ID(), bob.id); err != nil {
		t.Fatalf("Purge: %v", err)
	}
	keys := r.keys(t)
	// Left: carol's account, counters and two one-time keys, and the
	// account count.
	if len(keys) != 5 {
		t.Fatalf("after purge the store holds %d keys %v (had %d), want carol's 4 and the count", len(keys), keys, withCarol)
	}
	if got := r.svc.Accounts(); got != 1 {
		t.Fatalf("Accounts() = %d after purge, want 1", got)
	}
	if _, err := c.Fetch(testCtx(t), r.ID(), bob.ID()); !errors.Is(err, ErrNotFound) {
		t.Fatalf("fetch after purge: %v, want ErrNotFound", err)
	}
	if _, err := c.Status(testCtx(t), r.ID(), bob.id); !errors.Is(err, ErrNotFound) {
		t.Fatalf("status after purge: %v, want ErrNotFound", err)
	}
	if err := c.Purge(testCtx(t), r.ID(), bob.id); err != nil {
		t.Fatalf("second Purge: %v", err)
	}
	mustFetch(t, c, r, carol)
	if err := c.Purge(testCtx(t), r.ID(), carol.id); err != nil {
		t.Fatalf("Purge carol: %v", err)
	}
	if keys := r.keys(t); len(keys) != 1 || keys[0] != accountsKey {
		t.Fatalf("after purging everyone the store holds %v, want only the account count", keys)
	}
	r.Stop()
	r.Start()
	if got := r.svc.Accounts(); got != 0 {
		t.Fatalf("after restart Accounts() = %d, want 0", got)
	}
}

// TestFetchRateLimit: a flooding requester is refused; others are not.
func TestFetchRateLimit(t *testing.T) {
	clk := newClock()
	r := startRelay(t, clk, WithFetchRate(60, 5))
	bob := newAccount(t, clk.Now(), 20, 20)
	owner := newClient(t, r)
	mustPublish(t, owner, r, bob, bob.store.Upload())

	flood := newClient(t, r)
	for i := range 5 {
		if _, err := flood.Fetch(testCtx(t), r.ID(), bob.ID()); err != nil {
			t.Fatalf("fetch %d within the burst: %v", i, err)
		}
	}
	_, err := flood.Fetch(testCtx(t), r.ID(), bob.ID())
	if !errors.Is(err, ErrRateLimited) {
		t.Fatalf("fetch beyond the burst: %v, want ErrRateLimited", err)
	}
	if ra := RetryAfter(err); ra <= 0 || ra > 2*time.Second {
		t.Fatalf("RetryAfter = %v, want about 1s", ra)
	}
	other := newClient(t, r)
	mustFetch(t, other, r, bob)
	clk.Advance(time.Second)
	mustFetch(t, flood, r, bob)
	if st := mustStatus(t, owner, r, bob); len(st.OneTimeIDs) != 20-7 {
		t.Fatalf("%d one-time keys left, want %d (refused fetches take none)", len(st.OneTimeIDs), 20-7)
	}
}

// TestOneTimeRationing: beyond an account's one-time budget, bundles
// carry the last-resort keys and its one-time keys stay.
func TestOneTimeRationing(t *testing.T) {
	clk := newClock()
	r := startRelay(t, clk, WithFetchRate(1000, 1000), WithOneTimeRate(60, 3))
	bob := newAccount(t, clk.Now(), 10, 10)
	carol := newAccount(t, clk.Now(), 10, 10)
	c := newClient(t, r)
	mustPublish(t, c, r, bob, bob.store.Upload())
	mustPublish(t, c, r, carol, carol.store.Upload())
	for i := range 3 {
		if b := mustFetch(t, c, r, bob); b.OneTimePrekey == nil {
			t.Fatalf("fetch %d within the budget got no one-time key", i)
		}
	}
	for range 3 {
		b := mustFetch(t, c, r, bob)
		if b.OneTimePrekey != nil || !b.PQPrekey.LastResort {
			t.Fatal("fetch beyond the account's budget got one-time keys")
		}
	}
	if b := mustFetch(t, c, r, carol); b.OneTimePrekey == nil {
		t.Fatal("another account's budget was affected")
	}
	if x, q := mustStatus(t, c, r, bob).Counts(); x != 7 || q != 7 {
		t.Fatalf("%d/%d one-time keys left, want 7/7", x, q)
	}
	clk.Advance(time.Minute)
	if b := mustFetch(t, c, r, bob); b.OneTimePrekey == nil {
		t.Fatal("budget did not refill")
	}
}

// TestOneTimeFullTable: with the requester table full, a new account's
// fetch still gets one-time keys, and fetching it does not push out (and
// reset) the one-time budget of an account drained just before.
func TestOneTimeFullTable(t *testing.T) {
	clk := newClock()
	r := startRelay(t, clk, WithFetchRate(1000, 1000), WithOneTimeRate(60, 3), WithMaxTracked(1))
	bob := newAccount(t, clk.Now(), 10, 10)
	carol := newAccount(t, clk.Now(), 10, 10)
	c := newClient(t, r)
	mustPublish(t, c, r, bob, bob.store.Upload())
	mustPublish(t, c, r, carol, carol.store.Upload())
	for i := range 3 {
		if b := mustFetch(t, c, r, bob); b.OneTimePrekey == nil {
			t.Fatalf("fetch %d within the budget got no one-time key", i)
		}
	}
	if b := mustFetch(t, c, r, carol); b.OneTimePrekey == nil {
		t.Fatal("a new account got no one-time key: the full table refused it")
	}
	if b := mustFetch(t, c, r, bob); b.OneTimePrekey != nil {
		t.Fatal("a drained account got a one-time key: its budget was reset")
	}
}

// TestOwnerRateLimit: owner operations are rate-limited per peer before
// any work.
func TestOwnerRateLimit(t *testing.T) {
	clk := newClock()
	r := startRelay(t, clk, WithOwnerRate(60, 2))
	bob := newAccount(t, clk.Now(), 1, 1)
	c := newClient(t, r)
	mustPublish(t, c, r, bob, bob.store.Upload())
	mustStatus(t, c, r, bob)
	if _, err := c.Status(testCtx(t), r.ID(), bob.id); !errors.Is(err, ErrRateLimited) {
		t.Fatalf("third owner op: %v, want ErrRateLimited", err)
	}
	mustStatus(t, newClient(t, r), r, bob)
}

// TestBadBundle: the client refuses a bundle of another account or one
// that does not verify.
func TestBadBundle(t *testing.T) {
	clk := newClock()
	bob := newAccount(t, clk.Now(), 1, 1)
	mallory := newAccount(t, clk.Now(), 1, 1)
	bundleOf := func(a *account) []byte {
		up := a.store.Upload()
		b := e2ee.Bundle{Identity: up.Identity, SignedPrekey: up.SignedPrekey, PQPrekey: up.LastResort}
		out, err := b.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	forged := bundleOf(bob)
	forged[len(forged)-1] ^= 1
	for _, tc := range []struct {
		name   string
		bundle []byte
	}{
		{"another account", bundleOf(mallory)},
		{"bad signature", forged},
		{"garbage", []byte("garbage")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHost(t)
			h.SetStreamHandler(ID, func(s networkStream) {
				defer s.Close()
				rd := wireReader(s)
				if _, err := rd.ReadBytes(maxRequestFrame); err != nil {
					_ = s.Reset()
					return
				}
				_ = writeResponse(s, response{bundle: tc.bundle})
			})
			c := newClient(t)
			c.h.Peerstore().AddAddrs(h.ID(), h.Addrs(), permanent)
			_, err := c.Fetch(testCtx(t), h.ID(), bob.ID())
			if !errors.Is(err, ErrBadBundle) {
				t.Fatalf("Fetch: %v, want ErrBadBundle", err)
			}
		})
	}
}

func TestCodes(t *testing.T) {
	for c := CodeOK; c <= CodeUnavailable; c++ {
		if got := CodeOf(c.Err()); got != c {
			t.Errorf("CodeOf(%v.Err()) = %v, want %v", c, got, c)
		}
		err := fmt.Errorf("wrapped: %w", &Error{Code: c})
		if c != CodeOK && !errors.Is(err, c.Err()) {
			t.Errorf("*Error{%v} does not match its sentinel", c)
		}
	}
	if CodeOf(errors.New("other")) != CodeUnavailable {
		t.Error("CodeOf(other) is not CodeUnavailable")
	}
	if err := Code(200).Err(); !errors.Is(err, ErrProtocol) {
		t.Errorf("unknown code: %v, want ErrProtocol", err)
	}
}
