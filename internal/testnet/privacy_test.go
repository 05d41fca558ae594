package testnet

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/kinmesh/kinmesh/node"
	"github.com/kinmesh/kinmesh/protocols/message"
	"github.com/kinmesh/kinmesh/storage"
)

// TestBlock: a blocked contact's messages (1:1 and in a group) are
// dropped, nothing can be sent to it, and unblocking restores both.
func TestBlock(t *testing.T) {
	n := startNet(t, Config{Relays: 1, Devices: 3})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	accounts(t, ctx, n)
	a, b, c := n.Devices[0], n.Devices[1], n.Devices[2]
	for _, d := range []*Device{b, c} {
		if err := Introduce(ctx, a, d); err != nil {
			t.Fatal(err)
		}
	}
	g, err := c.Node().CreateGroup(ctx, "Cousins", []string{a.AccountID()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Node().ChangeGroup(ctx, g.ID, nil, nil); !errors.Is(err, node.ErrNothingToChange) {
		t.Fatalf("empty change: %v, want %v", err, node.ErrNothingToChange)
	}
	if _, err := a.Node().BlockContact(ctx, b.AccountID()); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Node().Send(ctx, b.AccountID(), "hi"); err == nil {
		t.Fatal("sending to a blocked contact succeeded")
	}
	if _, err := b.Node().Send(ctx, a.AccountID(), "blocked-marker"); err != nil {
		t.Fatal(err)
	}
	// c's message after b's: once a has c's, b's has been processed.
	if _, err := c.Node().Send(ctx, a.AccountID(), "from c"); err != nil {
		t.Fatal(err)
	}
	if _, err := WaitMessages(ctx, a, c.AccountID(), func(ms []message.Message) bool { return HasText(ms, "from c", "") }); err != nil {
		t.Fatal(err)
	}
	if _, err := WaitMessages(ctx, b, a.AccountID(), func(ms []message.Message) bool {
		return len(ms) == 1 && ms[0].State != message.StatePending
	}); err != nil {
		t.Fatal(err)
	}
	if ms, _ := a.Node().Messages(ctx, b.AccountID()); len(ms) != 0 {
		t.Fatalf("a shows %d messages from the blocked b", len(ms))
	}
	bs, _ := a.Node().Blocks()
	cs, _ := a.Node().Contacts()
	if len(bs) != 1 || bs[0].Contact != b.AccountID() || !slices.ContainsFunc(cs, func(c node.Contact) bool { return c.ID == b.AccountID() && c.Blocked }) {
		t.Fatalf("blocks %+v, contacts %+v", bs, cs)
	}
	// Adding b again (a fresh invite) keeps b blocked, and says so.
	inv, err := b.Node().Invite()
	if err != nil {
		t.Fatal(err)
	}
	if again, err := a.Node().AddContact(ctx, inv.String()); err != nil || !again.Blocked {
		t.Fatalf("adding the blocked b again: %+v, %v; want blocked", again, err)
	}
	if err := a.Node().UnblockContact(ctx, b.AccountID()); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Node().Send(ctx, a.AccountID(), "after unblock"); err != nil {
		t.Fatal(err)
	}
	if _, err := WaitMessages(ctx, a, b.AccountID(), func(ms []message.Message) bool { return HasText(ms, "after unblock", "") }); err != nil {
		t.Fatal(err)
	}
	if ms, _ := a.Node().Messages(ctx, b.AccountID()); HasText(ms, "blocked-marker", "") {
		t.Fatal("a message sent while blocked showed up after unblocking")
	}
}

// TestLocationSharing: a position reaches the chosen contact only, and is
// gone when the share expires or is stopped.
func TestLocationSharing(t *testing.T) {
	var clk clock
	n := startNet(t, Config{Relays: 1, Devices: 3, Now: clk.Now})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	accounts(t, ctx, n)
	a, b, c := n.Devices[0], n.Devices[1], n.Devices[2]
	for _, d := range []*Device{b, c} {
		if err := Introduce(ctx, a, d); err != nil {
			t.Fatal(err)
		}
	}
	waitLocations := func(d *Device, what string, cond func([]message.Location) bool) {
		t.Helper()
		events, stop := d.Node().Subscribe()
		defer stop()
		for {
			ls, err := d.Node().Locations(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if cond(ls) {
				return
			}
			select {
			case <-ctx.Done():
				t.Fatalf("%s: %s: have %+v", d.Name, what, ls)
			case <-events:
			}
		}
	}
	if err := a.Node().ShareLocation(ctx, []string{b.AccountID()}, 38.7223, -9.1393, 12, 15*time.Minute, false); err != nil {
		t.Fatal(err)
	}
	waitLocations(b, "a's position", func(ls []message.Location) bool {
		return len(ls) == 1 && ls[0].From == a.AccountID() && ls[0].Lat == 38.7223
	})
	// c was not chosen; a message from a to c after the share proves c
	// processed everything a sent it.
	if _, err := a.Node().Send(ctx, c.AccountID(), "hello c"); err != nil {
		t.Fatal(err)
	}
	if _, err := WaitMessages(ctx, c, a.AccountID(), func(ms []message.Message) bool { return HasText(ms, "hello c", "") }); err != nil {
		t.Fatal(err)
	}
	if ls, _ := c.Node().Locations(ctx); len(ls) != 0 {
		t.Fatalf("c, not chosen, sees %+v", ls)
	}
	clk.Advance(16 * time.Minute)
	if ls, _ := b.Node().Locations(ctx); len(ls) != 0 {
		t.Fatalf("after the share expired b still sees %+v", ls)
	}
	if err := a.Node().ShareLocation(ctx, []string{b.AccountID()}, 38.7, -9.1, 10, time.Hour, false); err != nil {
		t.Fatal(err)
	}
	waitLocations(b, "the new share", func(ls []message.Location) bool { return len(ls) == 1 })
	if err := a.Node().ShareLocation(ctx, []string{b.AccountID()}, 0, 0, 0, 0, true); err != nil {
		t.Fatal(err)
	}
	waitLocations(b, "the share stopped", func(ls []message.Location) bool { return len(ls) == 0 })
	if err := a.Node().ShareLocation(ctx, []string{b.AccountID()}, 91, 0, 0, 0, false); err == nil {
		t.Fatal("latitude 91 accepted")
	}
}

// TestExport: the export holds every category exactly as the API shows it,
// and is valid JSON of the documented shape.
func TestExport(t *testing.T) {
	n := startNet(t, Config{Relays: 1, Devices: 3})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	accounts(t, ctx, n)
	a, b, c := n.Devices[0], n.Devices[1], n.Devices[2]
	for _, d := range []*Device{b, c} {
		if err := Introduce(ctx, a, d); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.Node().Send(ctx, b.AccountID(), "to b"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Node().Send(ctx, a.AccountID(), "to a"); err != nil {
		t.Fatal(err)
	}
	g, err := a.Node().CreateGroup(ctx, "Family", []string{b.AccountID(), c.AccountID()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Node().Send(ctx, g.ID, "to all"); err != nil {
		t.Fatal(err)
	}
	if _, err := WaitMessages(ctx, a, b.AccountID(), func(ms []message.Message) bool { return HasText(ms, "to a", "") }); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Node().BlockContact(ctx, c.AccountID()); err != nil {
		t.Fatal(err)
	}
	if err := a.Node().SetPresenceShare(ctx, "nobody"); err != nil {
		t.Fatal(err)
	}
	if _, err := n.VerifyPhone(ctx, a, "+351 91 555 0202"); err != nil {
		t.Fatal(err)
	}
	// Deliveries go on while the export is taken: a message's state in it
	// is the one before, the one after, or one it passed through between.
	stateBefore := map[string]message.State{}
	for _, with := range []string{b.AccountID(), c.AccountID(), g.ID} {
		ms, _ := a.Node().Messages(ctx, with)
		for _, m := range ms {
			stateBefore[m.ID] = m.State
		}
	}
	e, err := a.Node().Export(ctx)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := json.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	var back node.Export
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&back); err != nil {
		t.Fatalf("the export does not decode into its documented shape: %v", err)
	}
	acct, _ := a.Node().Account()
	cs, _ := a.Node().Contacts()
	bs, _ := a.Node().Blocks()
	gs, _ := a.Node().Groups(ctx)
	var msgs []message.Message
	for _, with := range []string{b.AccountID(), c.AccountID(), g.ID} {
		ms, _ := a.Node().Messages(ctx, with)
		msgs = append(msgs, ms...)
	}
	hist, _ := a.Node().ConsentHistory(ctx)
	checks := []struct {
		name      string
		got, want any
	}{
		{"format", back.Format + "/" + string(rune('0'+back.Version)), node.ExportFormat + "/1"},
		{"account", back.Account.ID + back.Account.BirthDate, acct.ID + acct.BirthDate},
		{"contacts", len(back.Contacts), len(cs)},
		{"blocks", len(back.Blocks), len(bs)},
		{"groups", len(back.Groups), len(gs)},
		{"messages", len(back.Messages), len(msgs)},
		{"consent history", len(back.ConsentHistory), len(hist)},
		{"presence", back.Presence, "nobody"},
		{"phone", back.Phone != nil && back.Phone.Verified && back.Phone.Number == "+351915550202", true},
		{"recovery", back.Recovery != nil && !back.Recovery.Enabled && back.Recovery.PhoneVerified, true},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s: export has %v, the API %v", c.name, c.got, c.want)
		}
	}
	for _, m := range msgs {
		if !slices.ContainsFunc(back.Messages, func(x message.Message) bool {
			return x.ID == m.ID && x.Text == m.Text && stateBetween(stateBefore[m.ID], x.State, m.State)
		}) {
			t.Errorf("message %s (%q) missing from the export", m.ID, m.Text)
		}
	}
	for _, ec := range back.Contacts {
		if len(ec.Record) == 0 {
			t.Errorf("contact %s exported without its record", ec.ID)
		}
	}
}

// TestDeleteAccount: deleting purges the account from every home relay
// (mail, prekeys), wipes it locally, and a relay that was down gets its
// purge when it comes back.
func TestDeleteAccount(t *testing.T) {
	n := startNet(t, Config{Relays: 2, Devices: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	a, b := contactsPair(t, ctx, n)
	for _, d := range []*Device{a, b} {
		if err := d.Node().MaintainPrekeys(ctx); err != nil {
			t.Fatal(err)
		}
	}
	aID := a.AccountID()
	// Mail waiting for a on both relays.
	if err := a.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Node().Send(ctx, aID, "waiting for a"); err != nil {
		t.Fatal(err)
	}
	if _, err := WaitMessages(ctx, b, aID, func(ms []message.Message) bool {
		return len(ms) == 1 && ms[0].State == message.StateQueued && ms[0].Queued == 2
	}); err != nil {
		t.Fatal(err)
	}
	// relay-2 goes down, a deletes its account (a drains nothing first: it
	// deletes right after starting).
	down := n.Relays[1]
	if err := down.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}
	identity := accountSecrets(t, a)
	res, err := a.Node().DeleteAccount(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Deleted || len(res.Relays) != 2 || len(res.Pending) != 1 {
		t.Fatalf("deletion %+v: want deleted, 2 relays, 1 pending", res)
	}
	if _, err := a.Node().Account(); err == nil {
		t.Fatal("the account still exists locally")
	}
	for _, ns := range []string{"account", "contacts", "blocks", "message"} {
		if got := nsKeys(t, a.Node().Store(), ns); got != 0 {
			t.Errorf("namespace %s still holds %d keys", ns, got)
		}
	}
	// The relay comes back; the node's retry purges it.
	if err := down.Start(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(ctx, t, a.Node(), "relay-2 is back", func(st node.Status) bool {
		return relayState(st, down.AddrInfo().ID.String()).Connected
	})
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		p, err := a.Node().PendingPurges(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(p) == 0 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("purge still pending: %v", p)
		case <-tick.C:
		}
	}
	// Nothing of the account is left on either relay: no mail, no prekeys,
	// and no decrypted value in their stores mentions it.
	for _, r := range n.Relays {
		waitRelayEmpty(ctx, t, r)
		for _, ns := range []string{"mailbox", "prekeys"} {
			scanNamespace(t, r, ns, identity)
		}
	}
	if err := b.Node().MaintainPrekeys(ctx); err != nil {
		t.Fatal(err)
	}
}

// accountSecrets returns byte strings that identify d's account: its
// account id and its identity's public signing key.
func accountSecrets(t *testing.T, d *Device) [][]byte {
	t.Helper()
	inv, err := d.Node().Invite()
	if err != nil {
		t.Fatal(err)
	}
	return [][]byte{[]byte(inv.Record.AccountID()), inv.Record.Identity.Sign}
}

func nsKeys(t *testing.T, st *storage.Store, ns string) int {
	t.Helper()
	c := 0
	if err := st.Namespace(ns).List(context.Background(), storage.ListOptions{}, func(string, []byte) error { c++; return nil }); err != nil {
		t.Fatal(err)
	}
	return c
}

// scanNamespace fails if any key or decrypted value in r's namespace ns
// contains one of needles.
func scanNamespace(t *testing.T, r *Relay, ns string, needles [][]byte) {
	t.Helper()
	err := r.Relay().Store().Namespace(ns).List(context.Background(), storage.ListOptions{}, func(k string, v []byte) error {
		for _, nd := range needles {
			if bytes.Contains(v, nd) || bytes.Contains([]byte(k), nd) {
				t.Errorf("%s/%s still holds the account (key %q)", r.Name, ns, k)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestRemoveContactInGroup: removing a contact who shares a group keeps
// their record as a group member's: the group still reaches them, and
// they are listed with source "group", no longer a friend.
func TestRemoveContactInGroup(t *testing.T) {
	n := startNet(t, Config{Relays: 1, Devices: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	a, b := contactsPair(t, ctx, n)
	g, err := a.Node().CreateGroup(ctx, "Cousins", []string{b.AccountID()})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Node().RemoveContact(ctx, b.AccountID()); err != nil {
		t.Fatalf("RemoveContact: %v", err)
	}
	cs, err := a.Node().Contacts()
	if err != nil {
		t.Fatal(err)
	}
	if len(cs) != 1 || cs[0].ID != b.AccountID() || cs[0].Source != "group" {
		t.Fatalf("contacts after removing a group member: %+v, want b with source group", cs)
	}
	if _, err := a.Node().Send(ctx, g.ID, "still family"); err != nil {
		t.Fatal(err)
	}
	if _, err := WaitMessages(ctx, b, g.ID, func(ms []message.Message) bool {
		return HasText(ms, "still family", message.StateReceived)
	}); err != nil {
		t.Fatal(err)
	}
}

// stateBetween reports whether a message can have been in state got at
// some moment between being in before and in after: outgoing states only
// move forward (pending, queued, sent, delivered, read); any other state
// only stays.
func stateBetween(before, got, after message.State) bool {
	if got == before || got == after {
		return true
	}
	order := []message.State{message.StatePending, message.StateQueued, message.StateSent, message.StateDelivered, message.StateRead}
	b, g, a := slices.Index(order, before), slices.Index(order, got), slices.Index(order, after)
	return b >= 0 && g >= 0 && a >= 0 && b <= g && g <= a
}
