package testnet

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/kinmesh/kinmesh/node"
	"github.com/kinmesh/kinmesh/protocols/message"
)

// TestRehome: a home relay gone for over a day is replaced by another
// bootstrap relay; contacts learn the new record from the next message and
// deposit there; mail reaches the account through its new home.
func TestRehome(t *testing.T) {
	var clk clock
	n := startNet(t, Config{Relays: 4, Devices: 2, Now: clk.Now})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	a, b := contactsPair(t, ctx, n)
	acct, _ := a.Node().Account()
	homes := strings.Join(acct.HomeRelays, " ")
	spare, dead := n.Relays[3], n.Relays[1]
	if strings.Contains(homes, spare.AddrInfo().ID.String()) || !strings.Contains(homes, dead.AddrInfo().ID.String()) {
		t.Fatalf("homes %v: want relays 1-3", acct.HomeRelays)
	}
	if err := dead.Stop(); err != nil {
		t.Fatal(err)
	}
	// The node notes relay-2 down (on its clock) at the keeper's next
	// change, and needs a reservation on the spare to move there: make
	// sure of both before the clock moves.
	waitFor(ctx, t, a.Node(), "relay-2 seen down and a reservation on relay-4", func(st node.Status) bool {
		return !relayState(st, dead.AddrInfo().ID.String()).DownSince.IsZero() &&
			relayState(st, spare.AddrInfo().ID.String()).Reserved
	})
	if moved, err := a.Node().CheckHomes(ctx); err != nil || moved {
		t.Fatalf("CheckHomes right away = %v, %v; want no move", moved, err)
	}
	clk.Advance(25 * time.Hour)
	moved, err := a.Node().CheckHomes(ctx)
	if err != nil || !moved {
		t.Fatalf("CheckHomes after 25h = %v, %v; want a move", moved, err)
	}
	acct, _ = a.Node().Account()
	if !slices.ContainsFunc(acct.HomeRelays, func(h string) bool { return strings.Contains(h, spare.AddrInfo().ID.String()) }) ||
		slices.ContainsFunc(acct.HomeRelays, func(h string) bool { return strings.Contains(h, dead.AddrInfo().ID.String()) }) {
		t.Fatalf("homes after the move %v: want relay-4 instead of relay-2", acct.HomeRelays)
	}
	// b learns the new record from a's next message.
	if _, err := a.Node().Send(ctx, b.AccountID(), "new address"); err != nil {
		t.Fatal(err)
	}
	if _, err := WaitMessages(ctx, b, a.AccountID(), func(ms []message.Message) bool { return HasText(ms, "new address", "") }); err != nil {
		t.Fatal(err)
	}
	waitMailboxSessions(ctx, t, a, 3)
	if err := a.Node().MaintainPrekeys(ctx); err != nil {
		t.Fatalf("prekeys on the new home: %v", err)
	}
	aID := a.AccountID()
	if err := a.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Node().Send(ctx, aID, "found you"); err != nil {
		t.Fatal(err)
	}
	if _, err := WaitMessages(ctx, b, aID, func(ms []message.Message) bool {
		return HasText(ms, "found you", message.StateQueued) && ms[len(ms)-1].Queued == 3
	}); err != nil {
		t.Fatal(err)
	}
	if got, err := spare.MailboxItems(ctx); err != nil || got < 1 {
		t.Fatalf("new home relay holds %d items (%v), want the message", got, err)
	}
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := WaitMessages(ctx, b, aID, func(ms []message.Message) bool { return HasText(ms, "found you", message.StateDelivered) }); err != nil {
		t.Fatal(err)
	}
}

// TestContactsLearnMoveAtStart: a moves to another home relay while b is
// off. Once b is back, it learns a's new home relays from the DHT within
// moments, before any message from a (the hourly refresh alone would
// leave b's first messages to a on a's old relays for up to an hour).
func TestContactsLearnMoveAtStart(t *testing.T) {
	var clk clock
	n := startNet(t, Config{Relays: 4, Devices: 2, Now: clk.Now})
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	a, b := contactsPair(t, ctx, n)
	if err := b.Stop(); err != nil {
		t.Fatal(err)
	}
	spare := n.Relays[3].AddrInfo().ID
	moveHome(ctx, t, n, &clk, n.Relays[1])
	onSpare := func(homes []string) bool {
		return slices.ContainsFunc(homes, func(h string) bool { return strings.Contains(h, spare.String()) })
	}
	waitCond(ctx, t, "a's new record in the DHT", func() bool {
		rec, err := a.Node().LookupRecord(ctx, a.AccountID())
		return err == nil && slices.ContainsFunc(rec.Relays(), func(r peer.AddrInfo) bool { return r.ID == spare })
	})
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	waitCond(ctx, t, "b knows a's new home relays", func() bool {
		cs, err := b.Node().Contacts()
		if err != nil {
			return false
		}
		i := slices.IndexFunc(cs, func(c node.Contact) bool { return c.ID == a.AccountID() })
		return i >= 0 && onSpare(cs[i].HomeRelays)
	})
}
