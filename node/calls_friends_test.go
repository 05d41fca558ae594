package node

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/kinmesh/kinmesh/protocols/calls"
	"github.com/kinmesh/kinmesh/protocols/netkit"
)

// callsNodes starts nodes with accounts on r; nobody has added anybody.
func callsNodes(t *testing.T, r *callsRelay, names ...string) []*Node {
	t.Helper()
	boot := netkit.P2PAddrs(r.h.ID(), r.h.Addrs())[:1]
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var ns []*Node
	for _, name := range names {
		n := startNode(t, Config{DataDir: filepath.Join(t.TempDir(), name), Bootstrap: boot, RelayBackoff: 50 * time.Millisecond})
		if _, err := n.CreateAccount(ctx, NewAccount{Name: name, BirthDate: "1970-01-01", AcceptPolicy: PolicyVersion}); err != nil {
			t.Fatal(err)
		}
		if err := n.WaitRelays(ctx, 1); err != nil {
			t.Fatal(err)
		}
		ns = append(ns, n)
	}
	return ns
}

// addFrom makes n add from's invite.
func addFrom(t testing.TB, n, from *Node) {
	t.Helper()
	inv, err := from.Invite()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.AddContact(context.Background(), inv.String()); err != nil {
		t.Fatal(err)
	}
}

// contactSource returns how n knows id ("" if not at all).
func contactSource(t *testing.T, n *Node, id string) string {
	t.Helper()
	cs, err := n.Contacts()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cs {
		if c.ID == id {
			return c.Source
		}
	}
	return ""
}

// wantCallRefused has caller call callee and checks the callee refuses
// with unavailable without ringing: no call event on the callee, no call
// in its history.
func wantCallRefused(t *testing.T, caller, callee *Node) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	events, stop := callee.Subscribe()
	defer stop()
	c, err := caller.Call(ctx, callee.mustAccountID(t), CallOptions{})
	if err != nil {
		t.Fatalf("Call: %v", err)
	}
	for done := false; !done; {
		select {
		case e := <-events:
			if i, ok := e.Call.(calls.Info); ok {
				t.Fatalf("the callee got %s (%s, %s): want no trace of the call", e.Type, i.Direction, i.State)
			}
		case <-c.Done():
			done = true
		case <-ctx.Done():
			t.Fatal("the call did not end")
		}
	}
	if i := c.Info(); i.State != calls.StateEnded && i.State != calls.StateFailed || i.Reason != calls.ReasonUnavailable {
		t.Fatalf("the caller's call: %s, %q; want it refused with %q", i.State, i.Reason, calls.ReasonUnavailable)
	}
	list, err := callee.Calls()
	if err != nil || len(list) != 0 {
		t.Fatalf("the callee's calls: %+v, %v; want none", list, err)
	}
}

// TestCallsOnlyFromFriends: someone who added the user but whom the user
// never added (they wrote first: Source "message") can't ring the user's
// device, and the user can't call them either, until the user adds them.
func TestCallsOnlyFromFriends(t *testing.T) {
	r := startCallsRelay(t)
	ns := callsNodes(t, r, "alice", "bob")
	a, b := ns[0], ns[1]
	aID, bID := a.mustAccountID(t), b.mustAccountID(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	addFrom(t, b, a) // bob has alice's invite; alice never adds bob
	if _, err := b.Send(ctx, aID, "hi, it's bob"); err != nil {
		t.Fatal(err)
	}
	receive(t, a, bID, "hi, it's bob")
	if got := contactSource(t, a, bID); got != "message" {
		t.Fatalf("alice knows bob as %q, want message", got)
	}

	wantCallRefused(t, b, a)
	if _, err := a.Call(ctx, bID, CallOptions{}); !errors.Is(err, calls.ErrUnknownContact) {
		t.Fatalf("alice calls bob, who is not her friend: %v, want %v", err, calls.ErrUnknownContact)
	}

	// Once alice adds bob, his calls ring.
	addFrom(t, a, b)
	events, stop := a.Subscribe()
	defer stop()
	c, err := b.Call(ctx, aID, CallOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ring := waitCallEvent(t, events, func(e Event, i calls.Info) bool { return e.Type == "call.ringing" && i.Direction == calls.DirectionIn })
	if ring.Peer != bID {
		t.Fatalf("ringing from %q, want bob", ring.Peer)
	}
	if err := b.HangUp(ctx, c.ID()); err != nil {
		t.Fatal(err)
	}
}

// TestCallsNotFromRemovedFriendInGroup: a friend the user removed, who
// stays in the address book as a fellow group member (Source "group"),
// can't ring the user's device, and the user can't call them.
func TestCallsNotFromRemovedFriendInGroup(t *testing.T) {
	r := startCallsRelay(t)
	a, b, _, _ := callsPair(t, r)
	bID := b.mustAccountID(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := a.CreateGroup(ctx, "Family", []string{bID}); err != nil {
		t.Fatal(err)
	}
	if err := a.RemoveContact(ctx, bID); err != nil {
		t.Fatal(err)
	}
	if got := contactSource(t, a, bID); got != "group" {
		t.Fatalf("alice knows bob as %q, want group", got)
	}
	wantCallRefused(t, b, a)
	if _, err := a.Call(ctx, bID, CallOptions{}); !errors.Is(err, calls.ErrUnknownContact) {
		t.Fatalf("alice calls bob, whom she removed: %v, want %v", err, calls.ErrUnknownContact)
	}
}
