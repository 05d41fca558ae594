package message

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/protocols/message/pb"
)

// TestGroupRenameAndHandOver: the admin renames a group and every member
// sees it; then the admin leaves, and the group goes on: the member who
// has been in it longest is its admin, can change it and write to it,
// and the one who left can change nothing. A message to a group left
// with no other member fails at once rather than staying pending.
func TestGroupRenameAndHandOver(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	r := newRelay(t)
	admin, a, b := newDevice(t, "admin", r), newDevice(t, "a", r), newDevice(t, "b", r)
	meet(t, ctx, admin, a, b)
	g, err := admin.svc.CreateGroup(ctx, "Family", []e2ee.AccountID{a.me(), b.me()})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []*device{a, b} {
		d.waitUntil(t, ctx, "it has the group", func() bool { return d.group(t, g.ID) != nil })
	}
	if _, err := a.svc.RenameGroup(ctx, g.ID, "Mine"); !errors.Is(err, ErrNotMember) {
		t.Fatalf("a member renaming: %v, want %v", err, ErrNotMember)
	}
	if _, err := admin.svc.RenameGroup(ctx, g.ID, ""); !errors.Is(err, ErrBadName) {
		t.Fatalf("renaming to nothing: %v, want %v", err, ErrBadName)
	}
	if _, err := admin.svc.RenameGroup(ctx, g.ID, "Family 🏡"); err != nil {
		t.Fatal(err)
	}
	for _, d := range []*device{a, b} {
		d.waitUntil(t, ctx, "the group is renamed", func() bool { gg := d.group(t, g.ID); return gg != nil && gg.Name == "Family 🏡" })
	}

	left, err := admin.svc.LeaveGroup(ctx, g.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !left.Left || left.Admin != string(a.me()) {
		t.Fatalf("the admin's group after leaving: %+v, want left, a the admin", left)
	}
	for _, d := range []*device{a, b} {
		d.waitUntil(t, ctx, "the admin left", func() bool {
			gg := d.group(t, g.ID)
			return gg.Admin == string(a.me()) && !slices.Contains(gg.Members, string(admin.me()))
		})
	}
	if _, err := admin.svc.RenameGroup(ctx, g.ID, "Still mine"); !errors.Is(err, ErrNotMember) {
		t.Fatalf("the old admin renaming: %v, want %v", err, ErrNotMember)
	}
	if _, err := b.svc.RemoveMembers(ctx, g.ID, []e2ee.AccountID{a.me()}); !errors.Is(err, ErrNotMember) {
		t.Fatalf("b removing a: %v, want %v", err, ErrNotMember)
	}
	sendAndSettle(t, ctx, a, g.ID, "a writes on", b)
	if ms, _ := admin.svc.Messages(ctx, g.ID); has(ms, "a writes on", "") {
		t.Fatal("the admin who left has a's message")
	}

	// The new admin removes b: alone in the group, a's next message
	// fails, with a reason, instead of waiting for no one.
	if _, err := a.svc.RemoveMembers(ctx, g.ID, []e2ee.AccountID{b.me()}); err != nil {
		t.Fatal(err)
	}
	b.waitUntil(t, ctx, "b is removed", func() bool { return b.group(t, g.ID).Left })
	m, err := a.svc.SendGroup(ctx, g.ID, "anyone?")
	if err != nil {
		t.Fatal(err)
	}
	if m.State != StateFailed || m.Reason == "" {
		t.Fatalf("a message to a group with no one else: %s (%q), want failed with a reason", m.State, m.Reason)
	}
}

// TestGroupRecordsFromAdminOnly: member records in a group update are
// learned from the group's admin, not from another member's update (which
// is refused), nor from a stranger's update for a group we're not in.
func TestGroupRecordsFromAdminOnly(t *testing.T) {
	r := newRelay(t)
	admin, x, y, me := newDevice(t, "admin", r), newDevice(t, "x", r), newDevice(t, "y", r), newDevice(t, "me", r)
	group := newID()
	members := []string{string(admin.me()), string(x.me()), string(me.me())}
	update := func(from *device, version uint64, members []string) {
		me.svc.mu.Lock()
		defer me.svc.mu.Unlock()
		tx := me.svc.begin()
		tx.apply(inbound{from: from.me(), content: &pb.Content{Group: group, Body: &pb.Content_GroupUpdate{GroupUpdate: &pb.GroupUpdate{
			Name: "Family", Version: version, Members: members, Records: [][]byte{y.rec.Raw},
		}}}})
		if err := tx.commit(); err != nil {
			t.Fatal(err)
		}
	}
	update(x, 1, []string{string(x.me()), string(admin.me())}) // not us: not a group of ours
	if _, ok := me.book.Contact(y.me()); ok {
		t.Fatal("a record from a stranger's group update was learned")
	}
	update(admin, 1, members)
	if _, ok := me.book.Contact(y.me()); !ok {
		t.Fatal("y's record from the admin's update was not learned")
	}
	me.book.mu.Lock()
	delete(me.book.recs, y.me())
	me.book.mu.Unlock()
	update(x, 2, members) // a member is not the admin
	if _, ok := me.book.Contact(y.me()); ok {
		t.Fatal("a record from a member's (refused) update was learned")
	}
	if g := me.group(t, group); g.Version != 1 || g.Admin != string(admin.me()) {
		t.Fatalf("group after a member's update: %+v", g)
	}
}
