package message

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/protocols/message/pb"
	"github.com/kinmesh/kinmesh/storage"
)

// inspect runs f on a read-only transaction of d's engine, under its lock.
func (d *device) inspect(f func(t *tx)) {
	d.svc.mu.Lock()
	defer d.svc.mu.Unlock()
	f(d.svc.begin())
}

// jobsQueued returns how many delivery jobs d has ever queued.
func (d *device) jobsQueued(t testing.TB) uint64 {
	t.Helper()
	var n uint64
	d.inspect(func(tx *tx) {
		if _, err := tx.get(keyJobSeq, &n); err != nil {
			t.Fatal(err)
		}
	})
	return n
}

// share returns d's sender key in group (nil if none) and its share.
func (d *device) share(t testing.TB, group string) (*e2ee.SenderKey, keyShare) {
	t.Helper()
	var k *e2ee.SenderKey
	var ks keyShare
	d.inspect(func(tx *tx) {
		s, err := tx.keyShare(group)
		if err != nil {
			t.Fatal(err)
		}
		ks = *s
		b, err := d.svc.ns.Get(tx.ctx(), d.svc.keyMyKey(group))
		if err == nil {
			k, err = e2ee.UnmarshalSenderKey(b)
		}
		if err != nil && !errors.Is(err, storage.ErrNotFound) {
			t.Fatal(err)
		}
	})
	return k, ks
}

// memberKey returns d's receiving state for from's key in group (nil if
// none).
func (d *device) memberKey(t testing.TB, group string, from e2ee.AccountID) *e2ee.SenderKeyState {
	t.Helper()
	var st *e2ee.SenderKeyState
	d.inspect(func(tx *tx) {
		var err error
		if st, err = tx.memberKey(group, from); err != nil {
			t.Fatal(err)
		}
	})
	return st
}

// group returns d's view of group (nil if none).
func (d *device) group(t testing.TB, group string) *Group {
	t.Helper()
	var g *Group
	d.inspect(func(tx *tx) {
		var err error
		if g, err = tx.Group(group); err != nil {
			t.Fatal(err)
		}
	})
	return g
}

// waitUntil waits on d's events until cond holds.
func (d *device) waitUntil(t testing.TB, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("%s: timed out waiting until %s", d.rec.Record.Name, what)
		case <-d.events:
		}
	}
}

// sendAndSettle sends text from d to group and waits until every other
// member in to has it and d has every delivery receipt, so that no device
// queues anything more for it. It returns how many jobs d queued for it.
func sendAndSettle(t *testing.T, ctx context.Context, d *device, group, text string, to ...*device) uint64 {
	t.Helper()
	before := d.jobsQueued(t)
	if _, err := d.svc.SendGroup(ctx, group, text); err != nil {
		t.Fatalf("%s: SendGroup: %v", d.rec.Record.Name, err)
	}
	queued := d.jobsQueued(t) - before
	for _, r := range to {
		r.waitFor(t, ctx, group, fmt.Sprintf("%s has %q", r.rec.Record.Name, text), func(ms []Message) bool { return has(ms, text, StateReceived) })
	}
	d.waitFor(t, ctx, group, fmt.Sprintf("%q delivered", text), func(ms []Message) bool { return has(ms, text, StateDelivered) })
	return queued
}

// TestGroupLazySenderKeys drives a group of four devices through real
// hosts and a relay: sender keys go out only when a member sends, to the
// members lacking them; a removal queues no key at all, and the next
// message of each remaining sender goes under a new key, sent to the
// remaining members only, which the removed member can't read. A leave
// works the same way.
func TestGroupLazySenderKeys(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	r := newRelay(t)
	admin, a, b, c := newDevice(t, "admin", r), newDevice(t, "a", r), newDevice(t, "b", r), newDevice(t, "c", r)
	all := []*device{admin, a, b, c}
	meet(t, ctx, all...)

	// (1) Creating and joining distribute nothing: the admin queues one
	// update per member, the members queue nothing, and no one holds
	// anyone's key.
	before := admin.jobsQueued(t)
	g, err := admin.svc.CreateGroup(ctx, "Family", []e2ee.AccountID{a.me(), b.me(), c.me()})
	if err != nil {
		t.Fatalf("CreateGroup: %v", err)
	}
	if got := admin.jobsQueued(t) - before; got != 3 {
		t.Errorf("CreateGroup queued %d jobs, want 3 (the updates, no sender key)", got)
	}
	for _, d := range all[1:] {
		d.waitUntil(t, ctx, "it has the group", func() bool { return d.group(t, g.ID) != nil })
	}
	for _, d := range all {
		if n := d.jobsQueued(t); d != admin && n != 0 {
			t.Errorf("%s queued %d jobs on joining, want 0", d.rec.Record.Name, n)
		}
		if k, _ := d.share(t, g.ID); k != nil {
			t.Errorf("%s has a sender key before sending", d.rec.Record.Name)
		}
		for _, o := range all {
			if st := d.memberKey(t, g.ID, o.me()); st != nil {
				t.Errorf("%s holds %s's key before %s sent", d.rec.Record.Name, o.rec.Record.Name, o.rec.Record.Name)
			}
		}
	}

	// The first send distributes to every other member, once.
	if got := sendAndSettle(t, ctx, a, g.ID, "hello from a", admin, b, c); got != 2*3 {
		t.Errorf("a's first send queued %d jobs, want 6 (3 keys, 3 messages)", got)
	}
	if st := b.memberKey(t, g.ID, c.me()); st != nil {
		t.Errorf("b holds c's key before c sent")
	}
	if got := sendAndSettle(t, ctx, a, g.ID, "again from a", admin, b, c); got != 3 {
		t.Errorf("a's second send queued %d jobs, want 3 (messages only)", got)
	}
	for _, d := range []*device{admin, b, c} {
		sendAndSettle(t, ctx, d, g.ID, "hello from "+d.rec.Record.Name, without(all, d)...)
	}
	old := map[*device]uint32{}
	for _, d := range all {
		k, ks := d.share(t, g.ID)
		if k == nil || ks.KeyID != k.KeyID() || len(ks.Holders) != 3 || ks.Rotate {
			t.Fatalf("%s's key share after sending: %+v, want 3 holders of its key", d.rec.Record.Name, ks)
		}
		old[d] = k.KeyID()
	}

	// (3) The removal queues no sender key: the admin queues its updates,
	// the others nothing; every remaining member's key is due for
	// rotation.
	before = admin.jobsQueued(t)
	queued := map[*device]uint64{}
	for _, d := range []*device{a, b} {
		queued[d] = d.jobsQueued(t)
	}
	if _, err := admin.svc.RemoveMembers(ctx, g.ID, []e2ee.AccountID{c.me()}); err != nil {
		t.Fatalf("RemoveMembers: %v", err)
	}
	if got := admin.jobsQueued(t) - before; got != 3 {
		t.Errorf("the removal queued %d jobs at the admin, want 3 (the updates, no sender key)", got)
	}
	for _, d := range []*device{a, b} {
		d.waitUntil(t, ctx, "c is removed", func() bool { return !slices.Contains(d.group(t, g.ID).Members, string(c.me())) })
	}
	c.waitUntil(t, ctx, "c knows it was removed", func() bool { return c.group(t, g.ID).Left })
	rest := []*device{admin, a, b}
	for _, d := range rest {
		if d != admin {
			if got := d.jobsQueued(t) - queued[d]; got != 0 {
				t.Errorf("the removal queued %d jobs at %s, want 0", got, d.rec.Record.Name)
			}
		}
		if k, ks := d.share(t, g.ID); !ks.Rotate || k.KeyID() != old[d] {
			t.Errorf("%s after the removal: key %d, share %+v; want key %d due for rotation", d.rec.Record.Name, k.KeyID(), ks, old[d])
		}
	}

	// (2) The next message of each remaining sender: a new key, sent to
	// the len(members)-1 others only, which the removed can't read.
	for _, d := range rest {
		text := "after the removal, from " + d.rec.Record.Name
		got := sendAndSettle(t, ctx, d, g.ID, text, without(rest, d)...)
		if keys := got - uint64(len(rest)-1); keys != uint64(len(rest)-1) {
			t.Errorf("%s's next send queued %d sender keys, want %d", d.rec.Record.Name, keys, len(rest)-1)
		}
		k, ks := d.share(t, g.ID)
		if k.KeyID() == old[d] || ks.KeyID != k.KeyID() || ks.Rotate || len(ks.Holders) != len(rest)-1 || slices.Contains(ks.Holders, string(c.me())) {
			t.Errorf("%s after its next send: key %d (was %d), share %+v; want a new key held by the remaining others", d.rec.Record.Name, k.KeyID(), old[d], ks)
		}
		checkReaders(t, g.ID, d, k, without(rest, d), []*device{c})
	}
	ms, err := c.svc.Messages(ctx, g.ID)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		if strings.HasPrefix(m.Text, "after the removal") {
			t.Errorf("the removed member has %q", m.Text)
		}
	}

	// A leave: the others' keys are due for rotation, nothing is sent
	// until they write, and then the one who left can't read.
	queued[a] = a.jobsQueued(t)
	if _, err := b.svc.LeaveGroup(ctx, g.ID); err != nil {
		t.Fatalf("LeaveGroup: %v", err)
	}
	for _, d := range []*device{admin, a} {
		d.waitUntil(t, ctx, "b left", func() bool { return !slices.Contains(d.group(t, g.ID).Members, string(b.me())) })
	}
	if got := a.jobsQueued(t) - queued[a]; got != 0 {
		t.Errorf("b's leave queued %d jobs at a, want 0", got)
	}
	before = a.jobsQueued(t)
	text := "after b left"
	if _, err := a.svc.SendGroup(ctx, g.ID, text); err != nil {
		t.Fatalf("SendGroup: %v", err)
	}
	if got := a.jobsQueued(t) - before; got != 2 {
		t.Errorf("a's send after the leave queued %d jobs, want 2 (a new key and the message, to the admin)", got)
	}
	admin.waitFor(t, ctx, g.ID, "the admin has a's message", func(ms []Message) bool { return has(ms, text, StateReceived) })
	k, _ := a.share(t, g.ID)
	checkReaders(t, g.ID, a, k, []*device{admin}, []*device{b, c})
}

// without returns ds without d.
func without(ds []*device, d *device) []*device {
	return slices.DeleteFunc(slices.Clone(ds), func(x *device) bool { return x == d })
}

// checkReaders encrypts a probe under from's current key k (without
// keeping the advanced key) and checks that readers decrypt it and
// outsiders, who hold only from's earlier keys, can't.
func checkReaders(t *testing.T, group string, from *device, k *e2ee.SenderKey, readers, outsiders []*device) {
	t.Helper()
	probe, _, err := k.Encrypt([]byte("probe"))
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range readers {
		st := r.memberKey(t, group, from.me())
		if st == nil || !slices.Contains(st.KeyIDs(), k.KeyID()) {
			t.Fatalf("%s lacks %s's key %d", r.rec.Record.Name, from.rec.Record.Name, k.KeyID())
		}
		if _, _, err := st.Decrypt(probe, time.Now()); err != nil {
			t.Errorf("%s can't read %s's new key: %v", r.rec.Record.Name, from.rec.Record.Name, err)
		}
	}
	for _, o := range outsiders {
		st := o.memberKey(t, group, from.me())
		if st == nil {
			t.Fatalf("%s never had %s's key", o.rec.Record.Name, from.rec.Record.Name)
		}
		if slices.Contains(st.KeyIDs(), k.KeyID()) {
			t.Errorf("%s holds %s's key %d, given after it was out", o.rec.Record.Name, from.rec.Record.Name, k.KeyID())
		}
		if _, _, err := st.Decrypt(probe, time.Now()); !errors.Is(err, e2ee.ErrSenderKeyUnknown) {
			t.Errorf("%s decrypting %s's new key: %v, want %v", o.rec.Record.Name, from.rec.Record.Name, err, e2ee.ErrSenderKeyUnknown)
		}
	}
}

// TestGroupKeyBeforeUpdate: with lazy distribution a member sends its key
// once, and it can overtake the admin's update that makes the sender a
// member to us (different lanes). The key is kept, used only once the
// sender is a member, and the update retries the sender's parked
// messages.
func TestGroupKeyBeforeUpdate(t *testing.T) {
	r := newRelay(t)
	admin, x, me := newDevice(t, "admin", r), newDevice(t, "x", r), newDevice(t, "me", r)
	group := newID()
	k, err := e2ee.NewSenderKey(rand.Reader, group, x.me(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	content, err := encodeContent(&Message{ID: newID(), Group: group}, &pb.Content{Body: &pb.Content_Text{Text: &pb.Text{Text: "early"}}})
	if err != nil {
		t.Fatal(err)
	}
	msg, _, err := k.Encrypt(content)
	if err != nil {
		t.Fatal(err)
	}
	me.svc.mu.Lock()
	defer me.svc.mu.Unlock()
	tx := me.svc.begin()
	dist := &pb.Content{Group: group, Body: &pb.Content_SenderKey{SenderKey: &pb.SenderKey{Distribution: k.Distribution().Marshal()}}}
	tx.apply(inbound{from: x.me(), content: dist})
	if st, err := tx.memberKey(group, x.me()); err != nil || st == nil {
		t.Fatalf("the key from a sender not known as a member: state %v, %v; want kept", st, err)
	}
	if _, _, err := tx.decryptGroup(x.id.Public(), msg); !errors.Is(err, e2ee.ErrSenderKeyUnknown) {
		t.Fatalf("decrypting before the sender is a member: %v, want %v (parked)", err, e2ee.ErrSenderKeyUnknown)
	}
	tx.keysArrived = nil
	update := &pb.Content{Group: group, Body: &pb.Content_GroupUpdate{GroupUpdate: &pb.GroupUpdate{
		Name: "Family", Version: 1, Members: []string{string(admin.me()), string(x.me()), string(me.me())},
	}}}
	tx.apply(inbound{from: admin.me(), content: update})
	if !slices.Contains(tx.keysArrived, x.me()) || slices.Contains(tx.keysArrived, admin.me()) {
		t.Errorf("senders whose parked messages the update retries: %v, want x only", tx.keysArrived)
	}
	pt, from, err := tx.decryptGroup(x.id.Public(), msg)
	if err != nil || from != x.me() || !bytes.Equal(pt, content) {
		t.Fatalf("decrypting once the sender is a member: %v from %s, want the message from x", err, from)
	}
}
