package report

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/peerstore"
)

// bigFeedback is feedback as large as the caps allow: 8 KiB of text and
// 32 KiB of diagnostics.
func bigFeedback(t testing.TB, clk *clock) Submission {
	t.Helper()
	diag, err := json.Marshal(map[string]string{"x": strings.Repeat("d", MaxDiagnosticsSize-16)})
	if err != nil {
		t.Fatal(err)
	}
	sub := feedbackOf(KindFeedback, strings.Repeat("f", MaxTextLen), clk.Now())
	sub.Diagnostics = diag
	return sub
}

// TestFeedbackFloodLeavesReports: a flood of feedback from fresh
// identities, all from one peer, does not stop an honest report (nor
// honest feedback) from another peer: feedback has a queue of its own,
// and one peer a share of it.
func TestFeedbackFloodLeavesReports(t *testing.T) {
	clk := newClock()
	r := startRelay(t, clk, WithQueueLimits(20, DefaultMaxBytes), WithRequestRate(1000, 1000))
	flood := newClient(t, r)
	for range 25 {
		_, err := flood.Submit(testCtx(t), r.ID(), newIdentity(t), bigFeedback(t, clk))
		if err != nil && !errors.Is(err, ErrQueueFull) {
			t.Fatalf("flood: %v", err)
		}
	}
	honest, victim, abuser := newClient(t, r), newIdentity(t), newIdentity(t)
	if _, err := honest.Submit(testCtx(t), r.ID(), victim, reportOf(abuser.AccountID(), clk.Now())); err != nil {
		t.Fatalf("an honest report after the flood: %v", err)
	}
	if _, err := honest.Submit(testCtx(t), r.ID(), victim, feedbackOf(KindSupport, "help", clk.Now())); err != nil {
		t.Fatalf("an honest support request after the flood: %v", err)
	}
}

// TestSourceShares: what one peer, and what one IP address, submitted
// holds at most its share of a queue, whatever identities it signs with
// and across restarts;
// a peer from another address still gets in, and a full feedback share
// leaves the peer's reports alone.
func TestSourceShares(t *testing.T) {
	clk := newClock()
	r := startRelay(t, clk, WithFeedbackLimits(100, DefaultFeedbackMaxBytes), WithSourceShares(5, 20),
		WithRequestRate(1000, 1000), WithIPRequestRate(1000, 1000))
	// fill submits fresh-identity feedback from c until the relay refuses
	// and returns how many it took.
	fill := func(c *Client) int {
		t.Helper()
		for n := 0; n < 100; n++ {
			_, err := c.Submit(testCtx(t), r.ID(), newIdentity(t), feedbackOf(KindFeedback, "spam", clk.Now()))
			if errors.Is(err, ErrQueueFull) {
				return n
			}
			if err != nil {
				t.Fatalf("submission %d: %v", n, err)
			}
		}
		t.Fatal("100 submissions from one source, none refused")
		return 0
	}
	a := newClient(t, r)
	if n := fill(a); n != 5 {
		t.Fatalf("one peer got %d items into a 100-item queue, want its 5%% share", n)
	}
	if _, err := a.Submit(testCtx(t), r.ID(), newIdentity(t), reportOf(newIdentity(t).AccountID(), clk.Now())); err != nil {
		t.Fatalf("a report from the peer whose feedback share is full: %v", err)
	}
	total := 5
	for range 3 {
		total += fill(newClient(t, r))
	}
	if total != 20 {
		t.Fatalf("four peers from one address got %d items in, want the address's 20%% share", total)
	}
	if n := fill(newClient(t, r)); n != 0 {
		t.Fatalf("a fifth peer from a full address got %d items in, want none", n)
	}
	// A restart of the relay gives neither the peer nor the address a
	// fresh share: the items keep their sources' tags.
	r.Stop()
	r.Start()
	if n := fill(newClient(t, r)); n != 0 {
		t.Fatalf("after a restart, a peer from a full address got %d items in, want none", n)
	}

	// Another address (127.0.0.2, loopback too) has its own share.
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.2/tcp/0"), libp2p.DisableMetrics())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Close() })
	h.Peerstore().AddAddrs(r.ID(), r.h.Addrs(), peerstore.PermanentAddrTTL)
	other, err := NewClient(h, WithClientLogger(discard))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.Submit(testCtx(t), r.ID(), newIdentity(t), feedbackOf(KindFeedback, "hello", clk.Now())); err != nil {
		t.Fatalf("feedback from another address: %v", err)
	}
	if _, f := r.svc.Len(); f != 21 {
		t.Errorf("feedback queue holds %d items, want 21", f)
	}
}

// TestUrgentReserve: reports that are not urgent fill the report queue
// only up to its reserve; urgent ones (child safety, self-harm, violence)
// use the rest.
func TestUrgentReserve(t *testing.T) {
	clk := newClock()
	r := startRelay(t, clk, WithQueueLimits(10, DefaultMaxBytes), WithUrgentReserve(20), WithSourceShares(100, 100), WithRequestRate(1000, 1000))
	c, target := newClient(t, r), newIdentity(t).AccountID()
	submit := func(reason Reason) error {
		sub := reportOf(target, clk.Now())
		sub.Reason = reason
		_, err := c.Submit(testCtx(t), r.ID(), newIdentity(t), sub)
		return err
	}
	for i := range 8 {
		if err := submit(ReasonSpam); err != nil {
			t.Fatalf("report %d: %v", i, err)
		}
	}
	if err := submit(ReasonHarassment); !errors.Is(err, ErrQueueFull) {
		t.Fatalf("a 9th report that is not urgent: %v, want ErrQueueFull (the reserve)", err)
	}
	for _, reason := range []Reason{ReasonChildSafety, ReasonSelfHarm} {
		if err := submit(reason); err != nil {
			t.Fatalf("an urgent report (%s) into the reserve: %v", reason, err)
		}
	}
	if err := submit(ReasonViolence); !errors.Is(err, ErrQueueFull) {
		t.Fatalf("an urgent report into a full queue: %v, want ErrQueueFull", err)
	}
}
