package testnet

import (
	"bytes"
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/kinmesh/kinmesh/protocols/message"
)

func accounts(t *testing.T, ctx context.Context, n *Network) {
	t.Helper()
	for _, d := range n.Devices {
		if _, err := d.CreateAccount(ctx, d.Name); err != nil {
			t.Fatalf("%s: create account: %v", d.Name, err)
		}
	}
}

// contactsPair gives every device of n an account and returns the first
// two, introduced to each other.
func contactsPair(t *testing.T, ctx context.Context, n *Network) (a, b *Device) {
	t.Helper()
	accounts(t, ctx, n)
	a, b = n.Devices[0], n.Devices[1]
	if err := Introduce(ctx, a, b); err != nil {
		t.Fatal(err)
	}
	return a, b
}

func TestOnlineMessage(t *testing.T) {
	n := startNet(t, Config{Relays: 2, Devices: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	a, b := contactsPair(t, ctx, n)
	m, err := a.Node().Send(ctx, b.AccountID(), "hello grandma")
	if err != nil {
		t.Fatalf("Send: %v", err)
	}
	if m.State != message.StatePending {
		t.Fatalf("state right after Send %q, want pending", m.State)
	}
	if _, err := WaitMessages(ctx, b, a.AccountID(), func(ms []message.Message) bool {
		return HasText(ms, "hello grandma", message.StateReceived)
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := WaitMessages(ctx, a, b.AccountID(), func(ms []message.Message) bool {
		return HasText(ms, "hello grandma", message.StateDelivered)
	}); err != nil {
		t.Fatal(err)
	}
}

func TestOfflineMessage(t *testing.T) {
	n := startNet(t, Config{Relays: 3, Devices: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	a, b := contactsPair(t, ctx, n)
	bID := b.AccountID()
	if err := b.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Node().Send(ctx, bID, "are you there?"); err != nil {
		t.Fatalf("Send: %v", err)
	}
	if _, err := WaitMessages(ctx, a, bID, func(ms []message.Message) bool {
		return len(ms) == 1 && ms[0].State == message.StateQueued && ms[0].Queued == 3
	}); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := WaitMessages(ctx, b, a.AccountID(), func(ms []message.Message) bool {
		return HasText(ms, "are you there?", message.StateReceived)
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := WaitMessages(ctx, a, bID, func(ms []message.Message) bool {
		return HasText(ms, "are you there?", message.StateDelivered)
	}); err != nil {
		t.Fatal(err)
	}
	// Delivered: gone from every relay (b acks each copy as it drains).
	for _, r := range n.Relays {
		waitRelayEmpty(ctx, t, r)
	}
}

// waitRelayEmpty waits until r holds no mailbox items.
func waitRelayEmpty(ctx context.Context, t *testing.T, r *Relay) {
	t.Helper()
	waitRelayItems(ctx, t, r, 0)
}

// waitRelayItems waits until r holds exactly want mailbox items.
func waitRelayItems(ctx context.Context, t *testing.T, r *Relay, want int) {
	t.Helper()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		got, err := r.MailboxItems(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if got == want {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s holds %d items, want %d", r.Name, got, want)
		case <-tick.C:
		}
	}
}

func TestGroupAddRemove(t *testing.T) {
	n := startNet(t, Config{Relays: 2, Devices: 4})
	// Generous: members who never met need prekey bundles from relays,
	// and a fetch that fails under load is retried with backoff.
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	accounts(t, ctx, n)
	admin, rest := n.Devices[0], n.Devices[1:]
	var ids []string
	for _, d := range rest {
		if err := Introduce(ctx, admin, d); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, d.AccountID())
	}
	g, err := admin.Node().CreateGroup(ctx, "Family", ids)
	if err != nil {
		t.Fatalf("CreateGroup: %v", err)
	}
	if _, err := admin.Node().Send(ctx, g.ID, "dinner at 7"); err != nil {
		t.Fatalf("Send to group: %v", err)
	}
	for _, d := range rest {
		if _, err := WaitMessages(ctx, d, g.ID, func(ms []message.Message) bool {
			return HasText(ms, "dinner at 7", message.StateReceived)
		}); err != nil {
			t.Fatal(err)
		}
	}
	// A member who never met the others as contacts writes to the group:
	// everyone gets it (records travel with the group).
	if _, err := rest[0].Node().Send(ctx, g.ID, "I'll bring cake"); err != nil {
		t.Fatalf("member Send: %v", err)
	}
	for _, d := range append([]*Device{admin}, rest[1:]...) {
		if _, err := WaitMessages(ctx, d, g.ID, func(ms []message.Message) bool {
			return HasText(ms, "I'll bring cake", message.StateReceived)
		}); err != nil {
			t.Fatal(err)
		}
	}
	// Remove the last member: it must not read what follows.
	removed := rest[2]
	if _, err := admin.Node().ChangeGroup(ctx, g.ID, nil, []string{removed.AccountID()}); err != nil {
		t.Fatalf("remove member: %v", err)
	}
	if _, err := admin.Node().Send(ctx, g.ID, "secret plans"); err != nil {
		t.Fatal(err)
	}
	for _, d := range rest[:2] {
		if _, err := WaitMessages(ctx, d, g.ID, func(ms []message.Message) bool {
			return HasText(ms, "secret plans", message.StateReceived)
		}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := WaitMessages(ctx, admin, g.ID, func(ms []message.Message) bool {
		for _, m := range ms {
			if m.Text == "secret plans" {
				return m.State == message.StateDelivered
			}
		}
		return false
	}); err != nil {
		t.Fatal(err)
	}
	ms, _ := removed.Node().Messages(ctx, g.ID)
	if HasText(ms, "secret plans", "") {
		t.Fatal("the removed member read a message sent after its removal")
	}
	groups, _ := removed.Node().Groups(ctx)
	if len(groups) != 1 || !groups[0].Left {
		t.Fatalf("removed member's view of the group: %+v, want Left", groups)
	}
}

// TestRelaysNeverSeePlaintext sends marked messages (1:1, online and
// offline, and to a group), then scans every file in every relay's data
// directory for the markers.
func TestRelaysNeverSeePlaintext(t *testing.T) {
	n := startNet(t, Config{Relays: 2, Devices: 3})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	accounts(t, ctx, n)
	a, b, c := n.Devices[0], n.Devices[1], n.Devices[2]
	for _, d := range []*Device{b, c} {
		if err := Introduce(ctx, a, d); err != nil {
			t.Fatal(err)
		}
	}
	online, offline, group := "MARKER-online-7f3a9c", "MARKER-offline-2b8e41", "MARKER-group-c0ffee"
	if _, err := a.Node().Send(ctx, b.AccountID(), online); err != nil {
		t.Fatal(err)
	}
	cID := c.AccountID()
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Node().Send(ctx, cID, offline); err != nil {
		t.Fatal(err)
	}
	if _, err := WaitMessages(ctx, a, cID, func(ms []message.Message) bool {
		return len(ms) == 1 && ms[0].State == message.StateQueued && ms[0].Queued == 2
	}); err != nil {
		t.Fatal(err)
	}
	g, err := a.Node().CreateGroup(ctx, "Markers", []string{b.AccountID()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Node().Send(ctx, g.ID, group); err != nil {
		t.Fatal(err)
	}
	if _, err := WaitMessages(ctx, b, g.ID, func(ms []message.Message) bool { return HasText(ms, group, "") }); err != nil {
		t.Fatal(err)
	}
	// Close the relays so every byte they keep is on disk, then scan.
	for _, r := range n.Relays {
		if err := r.Stop(); err != nil {
			t.Fatal(err)
		}
	}
	for _, r := range n.Relays {
		for _, marker := range []string{online, offline, group, "Markers", a.AccountID(), cID} {
			if path, found := scanDir(t, r.Dir, []byte(marker)); found {
				t.Errorf("%s: %q found in %s", r.Name, marker, path)
			}
		}
	}
}

// scanDir reports the first file under dir containing needle.
func scanDir(t *testing.T, dir string, needle []byte) (string, bool) {
	t.Helper()
	var hit string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || hit != "" {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if bytes.Contains(b, needle) {
			hit = path
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return hit, hit != ""
}

// TestSessionFromRelayBundles: contacts added without a prekey bundle in
// the invite: each side fetches the other's bundle from its home relays
// (consuming a one-time prekey there), establishes a session and writes.
func TestSessionFromRelayBundles(t *testing.T) {
	n := startNet(t, Config{Relays: 2, Devices: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	accounts(t, ctx, n)
	a, b := n.Devices[0], n.Devices[1]
	for _, pair := range [][2]*Device{{a, b}, {b, a}} {
		inv, err := pair[0].Node().Invite()
		if err != nil {
			t.Fatal(err)
		}
		inv.Bundle = nil // nothing to start a session with but the relays
		if _, err := pair[1].Node().AddContact(ctx, inv.String()); err != nil {
			t.Fatal(err)
		}
	}
	// The owners publish their prekeys when their engines start; wait
	// until both relays hold one-time prekeys of both accounts.
	for _, d := range []*Device{a, b} {
		if err := d.Node().MaintainPrekeys(ctx); err != nil {
			t.Fatalf("%s: publish prekeys: %v", d.Name, err)
		}
	}
	if _, err := a.Node().Send(ctx, b.AccountID(), "first contact"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Node().Send(ctx, a.AccountID(), "hello back"); err != nil {
		t.Fatal(err)
	}
	for _, w := range []struct {
		d    *Device
		with string
		text string
	}{{b, a.AccountID(), "first contact"}, {a, b.AccountID(), "hello back"}} {
		if _, err := WaitMessages(ctx, w.d, w.with, func(ms []message.Message) bool { return HasText(ms, w.text, message.StateReceived) }); err != nil {
			t.Fatal(err)
		}
	}
}
