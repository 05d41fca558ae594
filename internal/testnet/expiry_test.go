package testnet

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kinmesh/kinmesh/protocols/message"
)

// clock is real time plus an offset the test moves forward.
type clock struct{ offset atomic.Int64 }

func (c *clock) Now() time.Time          { return time.Now().Add(time.Duration(c.offset.Load())) }
func (c *clock) Advance(d time.Duration) { c.offset.Add(int64(d)) }

// TestFifteenDayExpiry: a message waiting 14 days 23 hours is still
// delivered; one waiting 15 days is gone from the relays, never reaches
// the recipient, and the sender sees it expired.
func TestFifteenDayExpiry(t *testing.T) {
	var clk clock
	n := startNet(t, Config{Relays: 2, Devices: 2, Now: clk.Now})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	a, b := contactsPair(t, ctx, n)
	bID := b.AccountID()
	queued := func(text string) {
		t.Helper()
		if _, err := a.Node().Send(ctx, bID, text); err != nil {
			t.Fatal(err)
		}
		if _, err := WaitMessages(ctx, a, bID, func(ms []message.Message) bool {
			return HasText(ms, text, message.StateQueued) && ms[len(ms)-1].Queued == 2
		}); err != nil {
			t.Fatal(err)
		}
	}

	if err := b.Stop(); err != nil {
		t.Fatal(err)
	}
	queued("still fresh")
	clk.Advance(14*24*time.Hour + 23*time.Hour)
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := WaitMessages(ctx, a, bID, func(ms []message.Message) bool { return HasText(ms, "still fresh", message.StateDelivered) }); err != nil {
		t.Fatal(err)
	}
	if n, err := a.Node().ExpireNow(); err != nil || n != 0 {
		t.Fatalf("ExpireNow after delivery = %d, %v; want 0", n, err)
	}

	if err := b.Stop(); err != nil {
		t.Fatal(err)
	}
	queued("too late")
	// Each relay holds the message for b (and maybe a stale copy of the
	// first one, deposited again just before its receipt came back:
	// harmless, b drops duplicates).
	for _, r := range n.Relays {
		if got, err := r.MailboxItems(ctx); err != nil || got < 1 {
			t.Fatalf("%s holds %d items (%v), want at least 1", r.Name, got, err)
		}
	}
	clk.Advance(15 * 24 * time.Hour)
	for _, r := range n.Relays {
		if _, err := r.Relay().Store().Sweep(ctx); err != nil {
			t.Fatal(err)
		}
		if got, err := r.MailboxItems(ctx); err != nil || got != 0 {
			t.Fatalf("%s holds %d items after 15 days (%v), want 0", r.Name, got, err)
		}
	}
	if got, err := a.Node().ExpireNow(); err != nil || got != 1 {
		t.Fatalf("ExpireNow = %d, %v; want 1", got, err)
	}
	ms, _ := a.Node().Messages(ctx, bID)
	if !HasText(ms, "too late", message.StateExpired) {
		t.Fatalf("sender's view: %+v, want \"too late\" expired", ms)
	}
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	// b drains its mailboxes at start; nothing may come. Wait for its
	// mailbox sessions to be up (the drain happens before), then look.
	if err := n.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	waitMailboxSessions(ctx, t, b, 2)
	got, _ := b.Node().Messages(ctx, a.AccountID())
	if HasText(got, "too late", "") {
		t.Fatal("an expired message reached the recipient")
	}
}

// waitMailboxSessions waits until d has its mailbox open on want relays.
func waitMailboxSessions(ctx context.Context, t *testing.T, d *Device, want int) {
	t.Helper()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if d.Node().MailboxSessions() >= want {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: mailbox sessions never opened", d.Name)
		case <-tick.C:
		}
	}
}
