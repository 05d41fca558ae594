package presence

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// TestOnlineThenLastSeen: one beacon exchange shows each device online to
// the other; when one stops cleanly the other sees it offline, last seen
// when it left, and keeps that across its own restart.
func TestOnlineThenLastSeen(t *testing.T) {
	a, b := newDevice(t, "alice"), newDevice(t, "bob")
	befriend(a, b)
	if r := announce(t, a); r.Sent != 1 || r.Unreachable != 0 {
		t.Fatalf("alice's round %+v, want 1 sent", r)
	}
	if p := b.svc.Lookup(a.account()); !p.Online || p.LastSeen.IsZero() {
		t.Fatalf("bob sees alice %+v, want online", p)
	}
	// Bob answered with his own beacon.
	if p := a.svc.Lookup(b.account()); !p.Online {
		t.Fatalf("alice sees bob %+v, want online (from his answer)", p)
	}
	if list := a.svc.List(); len(list) != 1 || list[0].Account != b.account() || !list[0].Online {
		t.Fatalf("alice's list %+v, want bob online", list)
	}

	before := time.Now()
	b.Stop() // sends "offline" to alice
	p := a.svc.Lookup(b.account())
	if p.Online || p.LastSeen.Before(before.Add(-time.Second)) {
		t.Fatalf("after bob left alice sees %+v, want offline, last seen about %v", p, before)
	}
	a.Stop()
	a.Start()
	if q := a.svc.Lookup(b.account()); q.Online || !q.LastSeen.Equal(p.LastSeen) {
		t.Fatalf("after alice's restart she sees bob %+v, want %+v", q, p)
	}
}

// TestOnlineWindow: without new beacons a contact stops counting as
// online after the window, and its last seen stays.
func TestOnlineWindow(t *testing.T) {
	clk := &testClock{t: time.Now()}
	a := newDevice(t, "alice", WithClock(clk.Now))
	b := newDevice(t, "bob", WithClock(clk.Now))
	befriend(a, b)
	announce(t, a)
	if p := b.svc.Lookup(a.account()); !p.Online {
		t.Fatalf("bob sees alice %+v, want online", p)
	}
	clk.Advance(DefaultOnlineWindow)
	if p := b.svc.Lookup(a.account()); p.Online || p.LastSeen.IsZero() {
		t.Fatalf("a window later bob sees alice %+v, want offline with a last seen", p)
	}
}

// TestShareNobody: a user who shares with nobody sends nothing, shows
// contacts nothing, and sees nothing of them; switching on shows it at
// once, switching off again makes contacts forget it.
func TestShareNobody(t *testing.T) {
	a, b := newDevice(t, "alice"), newDevice(t, "bob", WithShare(ShareNobody))
	befriend(a, b)
	if r := announce(t, b); r != (Round{}) {
		t.Fatalf("bob (nobody) sent %+v, want nothing", r)
	}
	if r := announce(t, a); r.Sent != 1 {
		t.Fatalf("alice's round %+v, want 1 sent", r)
	}
	if p := a.svc.Lookup(b.account()); p.Online || !p.LastSeen.IsZero() {
		t.Fatalf("alice sees bob (nobody) %+v, want nothing", p)
	}
	if p := b.svc.Lookup(a.account()); p.Online || !p.LastSeen.IsZero() {
		t.Fatalf("bob (nobody) sees alice %+v, want nothing", p)
	}
	if got := b.svc.Stats().Dropped["not_sharing"]; got != 1 {
		t.Fatalf("bob dropped %d beacons as not sharing, want 1", got)
	}

	if err := b.svc.SetShare(testCtx(t), ShareContacts); err != nil {
		t.Fatal(err)
	}
	waitFor(t, a, "alice sees bob online", func() bool { return a.svc.Lookup(b.account()).Online })

	if err := b.svc.SetShare(testCtx(t), ShareNobody); err != nil {
		t.Fatal(err)
	}
	if p := a.svc.Lookup(b.account()); p.Online || !p.LastSeen.IsZero() {
		t.Fatalf("after bob hid, alice sees %+v, want nothing", p)
	}
	if err := b.svc.SetShare(context.Background(), Share(9)); !errors.Is(err, ErrInvalidSetting) {
		t.Fatalf("SetShare(9): %v, want ErrInvalidSetting", err)
	}
}

// TestHiddenWhileAway: a contact out of reach when the user hid learns
// it from the answer to its next beacon.
func TestHiddenWhileAway(t *testing.T) {
	a, b := newDevice(t, "alice"), newDevice(t, "bob")
	befriend(a, b)
	announce(t, b)
	if !a.svc.Lookup(b.account()).Online {
		t.Fatal("alice does not see bob online")
	}
	a.Stop()
	if err := b.svc.SetShare(testCtx(t), ShareNobody); err != nil {
		t.Fatal(err)
	}
	a.Start()
	if p := a.svc.Lookup(b.account()); p.LastSeen.IsZero() {
		t.Fatalf("alice forgot bob without being told: %+v", p)
	}
	announce(t, a)
	if p := a.svc.Lookup(b.account()); p.Online || !p.LastSeen.IsZero() {
		t.Fatalf("after bob's hidden answer alice sees %+v, want nothing", p)
	}
}

// TestBlocked: nothing goes to a blocked contact, and its beacons are
// dropped, with an answer that doesn't say so.
func TestBlocked(t *testing.T) {
	a, b, c := newDevice(t, "alice"), newDevice(t, "bob"), newDevice(t, "carol")
	befriend(a, b, c)
	a.book.block(b.account())
	if r := announce(t, a); r.Sent != 1 || r.Skipped != 1 {
		t.Fatalf("alice's round %+v, want carol sent, bob skipped", r)
	}
	if p := b.svc.Lookup(a.account()); !p.LastSeen.IsZero() {
		t.Fatalf("blocked bob sees alice %+v, want nothing", p)
	}
	if r := announce(t, b); r.Sent != 2 {
		t.Fatalf("bob's round %+v, want 2 delivered", r)
	}
	if got := a.svc.Stats().Dropped["blocked"]; got != 1 {
		t.Fatalf("alice dropped %d beacons from blocked accounts, want 1", got)
	}
	if p := a.svc.Lookup(b.account()); !p.LastSeen.IsZero() {
		t.Fatalf("alice sees blocked bob %+v, want nothing", p)
	}
	if p := b.svc.Lookup(a.account()); !p.LastSeen.IsZero() {
		t.Fatalf("bob got an answer from alice who blocked him: %+v", p)
	}
	for _, p := range a.svc.List() {
		if p.Account == b.account() {
			t.Fatalf("alice's list shows blocked bob: %+v", p)
		}
	}
	if !c.svc.Lookup(a.account()).Online || !c.svc.Lookup(b.account()).Online {
		t.Fatal("carol does not see both online")
	}
}

// TestDroppedBeacons: beacons from strangers, forged, misaddressed,
// stale or replayed are dropped and change nothing.
func TestDroppedBeacons(t *testing.T) {
	reg := prometheus.NewRegistry()
	a := newDevice(t, "alice")
	b := newDevice(t, "bob", WithMetricsTracer(NewMetricsTracer(reg)), WithRate(1000, 1000))
	c, m := newDevice(t, "carol"), newDevice(t, "mallory")
	befriend(a, b, c)
	m.h.Peerstore().AddAddrs(b.h.ID(), b.h.Addrs(), 0)
	now := time.Now()

	good := craft(t, a, a.id, b.account(), b, statusOnline, now)
	tests := []struct {
		name   string
		from   *device
		env    []byte
		reason string
	}{
		{"stranger", m, craft(t, m, m.id, b.account(), b, statusOnline, now), "not_contact"},
		{"forged sender", m, craft(t, a, m.id, b.account(), b, statusOnline, now), "invalid"},
		{"addressed to someone else", c, craft(t, a, a.id, c.account(), b, statusOnline, now), "invalid"},
		{"sealed to someone else", a, craft(t, a, a.id, b.account(), c, statusOnline, now), "invalid"},
		{"too old", a, craft(t, a, a.id, b.account(), b, statusOnline, now.Add(-DefaultFreshness-time.Minute)), "stale"},
		{"from the future", a, craft(t, a, a.id, b.account(), b, statusOnline, now.Add(DefaultFreshness+time.Minute)), "stale"},
		{"garbage", a, []byte("not an envelope"), "invalid"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := b.svc.Stats().Dropped[tt.reason]
			reply, err := deliver(t, tt.from, b, tt.env)
			if err != nil {
				t.Fatalf("deliver: %v", err)
			}
			if len(reply) != 0 {
				t.Fatal("a dropped beacon got a beacon in answer")
			}
			if got := b.svc.Stats().Dropped[tt.reason]; got != before+1 {
				t.Fatalf("dropped[%s] = %d, want %d", tt.reason, got, before+1)
			}
			if p := b.svc.Lookup(a.account()); !p.LastSeen.IsZero() {
				t.Fatalf("bob took it: %+v", p)
			}
		})
	}

	// The good one is taken (and answered), a replay of it is not.
	reply, err := deliver(t, a, b, good)
	if err != nil || len(reply) == 0 {
		t.Fatalf("good beacon: %v, reply %d bytes", err, len(reply))
	}
	seen := b.svc.Lookup(a.account())
	if !seen.Online {
		t.Fatalf("bob sees alice %+v after a good beacon", seen)
	}
	reply, err = deliver(t, a, b, good)
	if err != nil || len(reply) != 0 {
		t.Fatalf("replay: %v, reply %d bytes, want none", err, len(reply))
	}
	if got := b.svc.Stats().Dropped["replay"]; got != 1 {
		t.Fatalf("dropped[replay] = %d, want 1", got)
	}
	// An older beacon, still fresh, doesn't undo a newer one either.
	older := craft(t, a, a.id, b.account(), b, statusOffline, now.Add(-time.Second))
	if _, err := deliver(t, a, b, older); err != nil {
		t.Fatal(err)
	}
	if p := b.svc.Lookup(a.account()); !p.Online || !p.LastSeen.Equal(seen.LastSeen) {
		t.Fatalf("an older offline beacon changed bob's view: %+v", p)
	}
	if got := testMetric(t, reg, "kinmesh_presence_received_total", "replay"); got != 2 {
		t.Fatalf("received_total{replay} = %v, want 2", got)
	}
}

// TestRateLimit: a peer flooding beacons has its streams reset unread.
func TestRateLimit(t *testing.T) {
	a, b := newDevice(t, "alice"), newDevice(t, "bob", WithRate(1, 1))
	befriend(a, b)
	if _, err := deliver(t, a, b, craft(t, a, a.id, b.account(), b, statusOnline, time.Now())); err != nil {
		t.Fatal(err)
	}
	if _, err := deliver(t, a, b, craft(t, a, a.id, b.account(), b, statusOnline, time.Now().Add(time.Millisecond))); err == nil {
		t.Fatal("second beacon within the limit was answered")
	}
	if got := b.svc.Stats().Dropped["rate_limited"]; got != 1 {
		t.Fatalf("dropped[rate_limited] = %d, want 1", got)
	}
}

// TestUnreachable: a contact whose device is gone counts as unreachable
// and is retried later, not every round.
func TestUnreachable(t *testing.T) {
	a, b := newDevice(t, "alice", WithTimeouts(time.Second, time.Second)), newDevice(t, "bob")
	befriend(a, b)
	b.Stop()
	_ = b.h.Close()
	if r := announce(t, a); r.Unreachable != 1 {
		t.Fatalf("round %+v, want bob unreachable", r)
	}
	if r := a.svc.round(testCtx(t), false); r.Skipped != 1 || r.Unreachable != 0 {
		t.Fatalf("next due round %+v, want bob skipped until his retry", r)
	}
	if st := a.svc.Stats(); st.Unreachable != 1 {
		t.Fatalf("stats %+v, want 1 unreachable", st)
	}
}

// TestClosed: a closed service refuses work.
func TestClosed(t *testing.T) {
	a := newDevice(t, "alice")
	a.svc.Close()
	if _, err := a.svc.Announce(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Announce after Close: %v, want ErrClosed", err)
	}
	if err := a.svc.SetShare(context.Background(), ShareNobody); !errors.Is(err, ErrClosed) {
		t.Fatalf("SetShare after Close: %v, want ErrClosed", err)
	}
}

func TestParseShare(t *testing.T) {
	for _, s := range []Share{ShareContacts, ShareNobody} {
		got, err := ParseShare(s.String())
		if err != nil || got != s {
			t.Errorf("ParseShare(%q) = %v, %v", s, got, err)
		}
	}
	if _, err := ParseShare("everyone"); !errors.Is(err, ErrInvalidSetting) {
		t.Errorf("ParseShare(everyone): %v", err)
	}
}

// TestNewContactBeaconedOnItsOwn: without Announce, a contact added while
// the service runs gets a beacon at the next check.
func TestNewContactBeaconedOnItsOwn(t *testing.T) {
	a := newDevice(t, "alice", WithCheckEvery(20*time.Millisecond))
	b := newDevice(t, "bob")
	befriend(a, b)
	waitFor(t, b, "bob sees alice online", func() bool { return b.svc.Lookup(a.account()).Online })
	waitFor(t, a, "alice sees bob online", func() bool { return a.svc.Lookup(b.account()).Online })
}

// TestKnown: the export sees every record kept, whatever the setting.
func TestKnown(t *testing.T) {
	a, b := newDevice(t, "alice"), newDevice(t, "bob")
	befriend(a, b)
	r := announce(t, a)
	if err := b.svc.SetShare(testCtx(t), ShareNobody); err != nil {
		t.Fatal(err)
	}
	if p := b.svc.Lookup(a.account()); !p.LastSeen.IsZero() {
		t.Fatalf("bob (nobody) sees %+v", p)
	}
	if k := b.svc.Known(); len(k) != 1 || k[0].Account != a.account() || k[0].LastSeen.IsZero() {
		t.Fatalf("Known() = %+v, want alice's record (round %+v, bob's stats %+v, alice's %+v)", k, r, b.svc.Stats(), a.svc.Stats())
	}
	if k := a.svc.Known(); len(k) != 0 {
		t.Fatalf("alice keeps %+v after bob hid", k)
	}
}
