package testnet

import (
	"context"
	"testing"
	"time"

	"github.com/kinmesh/kinmesh/node"
)

// waitPresence waits until d's view of the contact with id satisfies
// cond, re-checking on every event d's node emits.
func waitPresence(ctx context.Context, t *testing.T, d *Device, id string, what string, cond func(node.ContactPresence) bool) node.ContactPresence {
	t.Helper()
	nd := d.Node()
	events, stop := nd.Subscribe()
	defer stop()
	for {
		p, err := nd.PresenceOf(id)
		if err != nil {
			t.Fatal(err)
		}
		if cond(p) {
			return p
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: timed out waiting until %s; presence %+v", d.Name, what, p)
		case <-events:
		}
	}
}

func hasNothing(p node.ContactPresence) bool { return !p.Online && p.LastSeen == nil }

// TestPresenceOnlineThenLastSeen: contacts see each other online (one
// beacon exchange, through the relays), and when one device stops
// cleanly the other sees it offline with a last seen.
func TestPresenceOnlineThenLastSeen(t *testing.T) {
	n := startNet(t, Config{Relays: 2, Devices: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	a, b := contactsPair(t, ctx, n)
	// New contacts get a beacon within one check (10 s) on their own.
	waitPresence(ctx, t, b, a.AccountID(), "b sees a online", func(p node.ContactPresence) bool { return p.Online })
	waitPresence(ctx, t, a, b.AccountID(), "a sees b online", func(p node.ContactPresence) bool { return p.Online })
	v, err := a.Node().Presence()
	if err != nil || v.Share != node.PresenceContacts || len(v.Contacts) != 1 || v.Contacts[0].Name != b.Name {
		t.Fatalf("a's presence view %+v, %v", v, err)
	}

	bID := b.AccountID()
	left := time.Now()
	if err := b.Stop(); err != nil {
		t.Fatal(err)
	}
	p := waitPresence(ctx, t, a, bID, "a sees b offline", func(p node.ContactPresence) bool { return !p.Online })
	if p.LastSeen == nil || p.LastSeen.Before(left.Add(-time.Minute)) || p.LastSeen.After(time.Now()) {
		t.Fatalf("b's last seen %v, want about %v", p.LastSeen, left)
	}
}

// TestPresenceNobody: with "nobody" contacts see nothing, and the user
// sees nothing of them; switching back shows it at once.
func TestPresenceNobody(t *testing.T) {
	n := startNet(t, Config{Relays: 1, Devices: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	accounts(t, ctx, n)
	a, b := n.Devices[0], n.Devices[1]
	if err := b.Node().SetPresenceShare(ctx, node.PresenceNobody); err != nil {
		t.Fatal(err)
	}
	if err := Introduce(ctx, a, b); err != nil {
		t.Fatal(err)
	}
	if r, err := b.Node().AnnouncePresence(ctx); err != nil || r.Sent+r.Unreachable != 0 {
		t.Fatalf("b (nobody) announced %+v, %v; want nothing sent", r, err)
	}
	if r, err := a.Node().AnnouncePresence(ctx); err != nil || r.Sent != 1 {
		t.Fatalf("a announced %+v, %v; want b reached", r, err)
	}
	// Announce returns once b answered: what a knows of b is final.
	if p, _ := a.Node().PresenceOf(b.AccountID()); !hasNothing(p) {
		t.Fatalf("a sees b (nobody): %+v", p)
	}
	if p, _ := b.Node().PresenceOf(a.AccountID()); !hasNothing(p) {
		t.Fatalf("b (nobody) sees a: %+v", p)
	}
	if v, _ := b.Node().Presence(); v.Share != node.PresenceNobody {
		t.Fatalf("b's view says share %q", v.Share)
	}

	if err := b.Node().SetPresenceShare(ctx, node.PresenceContacts); err != nil {
		t.Fatal(err)
	}
	waitPresence(ctx, t, a, b.AccountID(), "a sees b online after b shares again", func(p node.ContactPresence) bool { return p.Online })
	if err := b.Node().SetPresenceShare(ctx, node.PresenceNobody); err != nil {
		t.Fatal(err)
	}
	if p, _ := a.Node().PresenceOf(b.AccountID()); !hasNothing(p) {
		t.Fatalf("after b hid again a sees %+v, want nothing", p)
	}
}

// TestPresenceBlocked: nothing goes to a blocked contact and its beacons
// are dropped; neither sees the other.
func TestPresenceBlocked(t *testing.T) {
	n := startNet(t, Config{Relays: 1, Devices: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	accounts(t, ctx, n)
	a, b := n.Devices[0], n.Devices[1]
	if _, err := a.Node().BlockContact(ctx, b.AccountID()); err != nil {
		t.Fatal(err)
	}
	if err := Introduce(ctx, a, b); err != nil {
		t.Fatal(err)
	}
	if r, err := a.Node().AnnouncePresence(ctx); err != nil || r.Sent != 0 {
		t.Fatalf("a announced %+v, %v; want nothing to blocked b", r, err)
	}
	if r, err := b.Node().AnnouncePresence(ctx); err != nil || r.Sent != 1 {
		t.Fatalf("b announced %+v, %v; want a's device reached", r, err)
	}
	d, err := a.Node().Diagnostics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if d.Presence == nil || d.Presence.Dropped["blocked"] == 0 {
		t.Fatalf("a's presence counters %+v, want b's beacon dropped as blocked", d.Presence)
	}
	if p, _ := b.Node().PresenceOf(a.AccountID()); !hasNothing(p) {
		t.Fatalf("blocked b sees a: %+v", p)
	}
	if p, _ := a.Node().PresenceOf(b.AccountID()); !hasNothing(p) {
		t.Fatalf("a sees blocked b: %+v", p)
	}
	v, _ := a.Node().Presence()
	if len(v.Contacts) != 0 {
		t.Fatalf("a's presence list shows the blocked contact: %+v", v.Contacts)
	}
}
