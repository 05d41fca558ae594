package moments

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"math"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/kinmesh/kinmesh/protocols/contact"
	"github.com/kinmesh/kinmesh/protocols/moments/pb"
	"github.com/kinmesh/kinmesh/storage"
)

// Moment and reaction ids are chosen by their authors: a friend can copy
// another author's ids into frames of its own feed. These tests play that
// friend, A, who also follows B: A's frames come first to a device V that
// follows both, and must not touch B's moment or C's comment on it.

// foreignSetup: V, A and C follow B, V follows A; V is offline (it hears
// nothing until the test hands it frames, in the order the test wants,
// as gossip or a backfill of A's feed before B's would); B posts a moment
// that A gets, so A knows its id.
func foreignSetup(t *testing.T, ctx context.Context) (r *testRelay, v, a, b, c *testDevice, m *Moment) {
	t.Helper()
	r = startRelay(t)
	n := newNet()
	v = newDevice(t, n, "vera", r)
	a = newDevice(t, n, "anton", r)
	b = newDevice(t, n, "berta", r)
	c = newDevice(t, n, "carl", r)
	befriend(a, b)
	befriend(c, b)
	befriend(v, a)
	befriend(v, b)
	distribute(t, ctx, a, b, c, v)
	v.Stop()
	v.relays = nil
	for _, d := range []*testDevice{a, b} {
		v.contacts.mu.Lock()
		v.contacts.records[d.ID()] = contact.Signed{Record: contact.Record{Identity: d.id.Public(), Name: d.name}}
		v.contacts.mu.Unlock()
	}
	m, err := b.engine().Post(ctx, "berta's moment", nil)
	if err != nil {
		t.Fatal(err)
	}
	waitMoments(t, ctx, a, "berta's moment", has(m.ID))
	return r, v, a, b, c, m
}

// ownFrame signs f on d's current topic with key (nil: d's owner key), as
// a modified client of d's account can.
func ownFrame(t *testing.T, d *testDevice, f *frame, key ed25519.PrivateKey) (topic string, raw []byte) {
	t.Helper()
	e := d.engine()
	topic = e.currentTopic()
	if key == nil {
		key = e.owner
	}
	raw, err := encodeFrame(topic, f, key)
	if err != nil {
		t.Fatal(err)
	}
	return topic, raw
}

// ownPost is a post frame of d's feed with the moment id given.
func ownPost(t *testing.T, ctx context.Context, d *testDevice, id itemID, text string) *frame {
	t.Helper()
	e := d.engine()
	e.mu.Lock()
	defer e.mu.Unlock()
	var key [32]byte
	if _, err := rand.Read(key[:]); err != nil {
		t.Fatal(err)
	}
	wrapped, next, err := e.own.sk.Encrypt(postKey{post: id, key: key}.encode())
	if err != nil {
		t.Fatal(err)
	}
	e.own.sk = next
	if err := e.ns.Put(ctx, dkOwn, e.own.encode()); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	body := &pb.PostBody{Text: text, CreatedMs: now.UnixMilli()}
	return &frame{kind: KindPost, item: id, post: id, created: now, wrappedKey: wrapped,
		sealed: seal(&key, postBodyLabel, postAD(id), marshal(body))}
}

// bFeed returns B's current topic and audience key, as A (a follower)
// holds them.
func bFeed(a, b *testDevice) epochKeys {
	ae := a.engine()
	ae.mu.Lock()
	defer ae.mu.Unlock()
	return ae.follows[b.ID()].epochs[0].epochKeys
}

// keptFrame waits until relay r keeps a frame of topic matching match,
// and returns it (read by a, a follower holding the audience key).
func keptFrame(t *testing.T, ctx context.Context, a *testDevice, r *testRelay, ep epochKeys, match func(*frame) bool) []byte {
	t.Helper()
	var got []byte
	waitFor(t, ctx, "the relay keeps the frame", func() bool {
		page, err := a.engine().cfg.Relays.Backfill(ctx, r.id, ep.topic, ep.audience, 0, 0)
		if err != nil {
			return false
		}
		for _, raw := range page.Frames {
			if f, err := parseFrame(raw); err == nil && match(f) {
				got = raw
			}
		}
		return got != nil
	})
	return got
}

// deliver hands v a frame of topic, as gossip would, and checks it applied.
func deliver(t *testing.T, v *testDevice, what, topic string, raw []byte) {
	t.Helper()
	if res := v.engine().receive(topic, raw, MaxGossipAge); res != applied {
		t.Fatalf("V applying %s: outcome %d, want applied", what, res)
	}
}

// bertasMoment returns b's moment id on v, if v shows it.
func bertasMoment(ctx context.Context, t *testing.T, v, b *testDevice, id string) (Moment, bool) {
	t.Helper()
	ms, err := v.engine().Moments(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		if m.ID == id && m.Author == string(b.ID()) {
			return m, true
		}
	}
	return Moment{}, false
}

// TestForeignTombstone: A's tombstone for B's moment id, on A's own feed,
// reaches V before B's moment: B's moment still shows on V.
func TestForeignTombstone(t *testing.T) {
	ctx := testCtx(t)
	r, v, a, b, _, m := foreignSetup(t, ctx)
	pid, _ := parseItemID(m.ID)
	post := keptFrame(t, ctx, a, r, bFeed(a, b), func(f *frame) bool { return f.kind == KindPost && f.post == pid })
	aTopic, tomb := ownFrame(t, a, &frame{kind: KindTombstone, item: pid, post: pid, created: time.Now()}, nil)
	v.Start()
	deliver(t, v, "A's tombstone", aTopic, tomb)
	v.engine().receive(bFeed(a, b).topic, post, MaxGossipAge)
	if _, ok := bertasMoment(ctx, t, v, b, m.ID); !ok {
		t.Fatal("V does not show B's moment after A's tombstone for its id")
	}
}

// TestForeignRepost: A posts on its own feed a moment with B's moment id,
// and V gets it before B's: V shows both, each as its author's; a bare id
// naming both is ambiguous.
func TestForeignRepost(t *testing.T) {
	ctx := testCtx(t)
	r, v, a, b, _, m := foreignSetup(t, ctx)
	pid, _ := parseItemID(m.ID)
	post := keptFrame(t, ctx, a, r, bFeed(a, b), func(f *frame) bool { return f.kind == KindPost && f.post == pid })
	aTopic, copied := ownFrame(t, a, ownPost(t, ctx, a, pid, "anton's copy"), nil)
	v.Start()
	deliver(t, v, "A's post with B's id", aTopic, copied)
	v.engine().receive(bFeed(a, b).topic, post, MaxGossipAge)
	got, ok := bertasMoment(ctx, t, v, b, m.ID)
	if !ok {
		t.Fatal("V does not show B's moment after A's post with its id")
	}
	if got.Text != "berta's moment" {
		t.Fatalf("B's moment on V reads %q, want %q", got.Text, "berta's moment")
	}
	ve := v.engine()
	if _, err := ve.Moment(ctx, m.ID); !errors.Is(err, ErrAmbiguous) {
		t.Fatalf("Moment(bare id of two moments): %v, want ErrAmbiguous", err)
	}
	for _, d := range []*testDevice{a, b} {
		x, err := ve.Moment(ctx, string(d.ID())+":"+m.ID)
		if err != nil || x.Author != string(d.ID()) {
			t.Fatalf("Moment(%s:id): %+v, %v; want %s's", d.name, x, err, d.name)
		}
	}
	// V's like goes to the moment named, and only there.
	if err := ve.Like(ctx, string(b.ID())+":"+m.ID); err != nil {
		t.Fatal(err)
	}
	if x, _ := ve.Moment(ctx, string(b.ID())+":"+m.ID); len(x.Likes) != 1 {
		t.Fatalf("B's moment has likes %+v, want V's", x.Likes)
	}
	if x, _ := ve.Moment(ctx, string(a.ID())+":"+m.ID); len(x.Likes) != 0 {
		t.Fatalf("A's copy got V's like: %+v", x.Likes)
	}
}

// commentSetup: C comments on B's moment; it returns the comment's id and
// the frames of B's moment and C's comment as B's relay keeps them.
func commentSetup(t *testing.T, ctx context.Context, r *testRelay, a, b, c *testDevice, m *Moment) (item itemID, post, comment []byte) {
	t.Helper()
	waitMoments(t, ctx, c, "berta's moment", has(m.ID))
	cm, err := c.engine().Comment(ctx, m.ID, "carl's comment")
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := parseItemID(m.ID)
	item, _ = parseItemID(cm.ID)
	post = keptFrame(t, ctx, a, r, bFeed(a, b), func(f *frame) bool { return f.kind == KindPost && f.post == pid })
	comment = keptFrame(t, ctx, a, r, bFeed(a, b), func(f *frame) bool { return f.kind == KindReaction && f.item == item })
	return item, post, comment
}

// aWithdraws is A's withdrawal of item on B's moment, with A's own
// delete key, signed with audience.
func aWithdraws(t *testing.T, a *testDevice, topic string, audience ed25519.PrivateKey, post, item itemID) []byte {
	t.Helper()
	dk := reactionDeleteKey(a.id, item)
	raw, err := encodeFrame(topic, &frame{kind: KindWithdraw, item: item, post: post, created: time.Now(),
		deleteKey: dk.Public().(ed25519.PublicKey), proof: ed25519.Sign(dk, withdrawMessage(post, item))}, audience)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// TestForeignWithdrawal: A withdraws, on its own feed, the id of C's
// comment on B's moment, and V gets that before B's moment and C's
// comment: C's comment still shows on V.
func TestForeignWithdrawal(t *testing.T) {
	ctx := testCtx(t)
	r, v, a, b, c, m := foreignSetup(t, ctx)
	item, post, comment := commentSetup(t, ctx, r, a, b, c, m)
	pid, _ := parseItemID(m.ID)
	ae := a.engine()
	ae.mu.Lock()
	aTopic, aAudience := ae.own.cur.topic, ae.own.cur.audience
	ae.mu.Unlock()
	w := aWithdraws(t, a, aTopic, aAudience, pid, item)
	v.Start()
	deliver(t, v, "A's withdrawal", aTopic, w)
	deliver(t, v, "B's moment", bFeed(a, b).topic, post)
	v.engine().receive(bFeed(a, b).topic, comment, MaxGossipAge)
	got, ok := bertasMoment(ctx, t, v, b, m.ID)
	if !ok || len(got.Comments) != 1 || got.Comments[0].ID != item.String() {
		t.Fatalf("V shows B's moment %v with comments %+v, want C's comment", ok, got.Comments)
	}
}

// TestSameReactionID: A, in B's audience, withdraws on B's feed the id of
// C's comment with a delete key of its own, and V gets that before C's
// comment: C's comment still shows on V; C's own withdrawal takes it off.
func TestSameReactionID(t *testing.T) {
	ctx := testCtx(t)
	r, v, a, b, c, m := foreignSetup(t, ctx)
	item, post, comment := commentSetup(t, ctx, r, a, b, c, m)
	pid, _ := parseItemID(m.ID)
	ep := bFeed(a, b)
	w := aWithdraws(t, a, ep.topic, ep.audience, pid, item)
	v.Start()
	deliver(t, v, "B's moment", ep.topic, post)
	deliver(t, v, "A's withdrawal", ep.topic, w)
	v.engine().receive(ep.topic, comment, MaxGossipAge)
	got, _ := bertasMoment(ctx, t, v, b, m.ID)
	if len(got.Comments) != 1 || got.Comments[0].ID != item.String() {
		t.Fatalf("V shows comments %+v, want C's", got.Comments)
	}
	if err := c.engine().DeleteComment(ctx, m.ID, item.String()); err != nil {
		t.Fatal(err)
	}
	cw := keptFrame(t, ctx, a, r, ep, func(f *frame) bool { return f.kind == KindWithdraw && f.item == item })
	deliver(t, v, "C's withdrawal", ep.topic, cw)
	if got, _ := bertasMoment(ctx, t, v, b, m.ID); len(got.Comments) != 0 {
		t.Fatalf("V keeps C's withdrawn comment: %+v", got.Comments)
	}
}

// TestMigrateLayout1: a device store of layout 1 (everything keyed by id
// alone) keeps its moments and reactions after the upgrade, and a
// deletion marker of that layout, which may have been planted by another
// author's tombstone, no longer hides a moment.
func TestMigrateLayout1(t *testing.T) {
	ctx := testCtx(t)
	r := startRelay(t)
	n := newNet()
	a := newDevice(t, n, "anton", r)
	v := newDevice(t, n, "vera", r)
	befriend(a, v)
	distribute(t, ctx, a, v)
	m, err := a.engine().Post(ctx, "before the upgrade", nil)
	if err != nil {
		t.Fatal(err)
	}
	waitMoments(t, ctx, v, "the moment", has(m.ID))
	cm, err := v.engine().Comment(ctx, m.ID, "old comment")
	if err != nil {
		t.Fatal(err)
	}
	v.Stop()
	// What a layout 1 store held: the moment, its comment, and a marker
	// for a moment id A will use next.
	var next itemID
	if _, err := rand.Read(next[:]); err != nil {
		t.Fatal(err)
	}
	toLayout1(t, ctx, v.dir, next)
	v.Start()
	got, err := v.engine().Moment(ctx, m.ID)
	if err != nil || got.Text != "before the upgrade" || len(got.Comments) != 1 || got.Comments[0].ID != cm.ID {
		t.Fatalf("after the upgrade V has %+v, %v; want the moment with its comment", got, err)
	}
	for _, p := range []string{"p/", "pi/", "r/", "d/", "w/"} {
		if n := keysUnder(t, v.st, p); n != 0 {
			t.Errorf("%d layout 1 keys under %q left", n, p)
		}
	}
	// V's own comment still withdraws.
	if err := v.engine().DeleteComment(ctx, m.ID, cm.ID); err != nil {
		t.Fatal(err)
	}
	topic, raw := ownFrame(t, a, ownPost(t, ctx, a, next, "after the upgrade"), nil)
	deliver(t, v, "A's moment with an id a layout 1 marker names", topic, raw)
}

// toLayout1 rewrites the device store in dir as layout 1 held it, plus
// layout 1 markers that id is deleted and some reaction withdrawn.
func toLayout1(t *testing.T, ctx context.Context, dir string, deleted itemID) {
	t.Helper()
	st, err := storage.Open(dir, storage.WithLogger(discard))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ns := st.Namespace(Namespace)
	b := st.NewBatch()
	list := func(prefix string, f func(k string, v []byte)) {
		if err := ns.List(ctx, storage.ListOptions{Prefix: prefix}, func(k string, v []byte) error { f(k, v); return nil }); err != nil {
			t.Fatal(err)
		}
	}
	list("m/", func(k string, v []byte) {
		var sp pb.StoredPost
		if err := proto.Unmarshal(v, &sp); err != nil {
			t.Fatal(err)
		}
		old := fmt.Sprintf("p/%016x/%x", uint64(math.MaxInt64-sp.GetCreatedMs()), sp.GetId())
		_ = b.Put(ns, old, v)
		_ = b.Put(ns, fmt.Sprintf("pi/%x", sp.GetId()), []byte(old))
		_ = b.Delete(ns, k)
	})
	list("mi/", func(k string, _ []byte) { _ = b.Delete(ns, k) })
	list("mr/", func(k string, v []byte) {
		var sr pb.StoredReaction
		if err := proto.Unmarshal(v, &sr); err != nil {
			t.Fatal(err)
		}
		_ = b.Put(ns, fmt.Sprintf("r/%x/%x", sr.GetPost(), sr.GetItem()), v)
		_ = b.Delete(ns, k)
	})
	_ = b.Delete(ns, "v")
	_ = b.Put(ns, "d/"+deleted.String(), nil)
	_ = b.Put(ns, "w/"+deleted.String(), nil)
	if err := b.Commit(ctx); err != nil {
		t.Fatal(err)
	}
}
