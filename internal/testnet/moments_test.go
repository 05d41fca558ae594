package testnet

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/kinmesh/kinmesh/node"
	"github.com/kinmesh/kinmesh/protocols/blobs"
	"github.com/kinmesh/kinmesh/protocols/moments"
	"github.com/kinmesh/kinmesh/protocols/moments/pb"
	"github.com/kinmesh/kinmesh/storage"
)

// waitFeed waits until d's moments feed satisfies cond, re-checking on
// every event d's node emits (and every 250 ms: some changes, a relay
// purge, emit none on d).
func waitFeed(ctx context.Context, t *testing.T, d *Device, what string, cond func([]moments.Moment) bool) []moments.Moment {
	t.Helper()
	nd := d.Node()
	events, stop := nd.Subscribe()
	defer stop()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		ms, _, err := nd.MomentsFeed(ctx, "", 200)
		if err != nil {
			t.Fatalf("%s: feed: %v", d.Name, err)
		}
		if cond(ms) {
			return ms
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: timed out waiting until %s; feed %+v", d.Name, what, ms)
		case <-events:
		case <-tick.C:
		}
	}
}

// waitCond waits until cond holds, checking every 50 ms.
func waitCond(ctx context.Context, t *testing.T, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting until %s", what)
		case <-tick.C:
		}
	}
}

func momentIn(ms []moments.Moment, id string) (moments.Moment, bool) {
	i := slices.IndexFunc(ms, func(m moments.Moment) bool { return m.ID == id })
	if i < 0 {
		return moments.Moment{}, false
	}
	return ms[i], true
}

func hasMoment(id string) func([]moments.Moment) bool {
	return func(ms []moments.Moment) bool { _, ok := momentIn(ms, id); return ok }
}

func noMoment(id string) func([]moments.Moment) bool {
	return func(ms []moments.Moment) bool { _, ok := momentIn(ms, id); return !ok }
}

// momentPhoto is a photo-sized random blob with marker in its middle.
func momentPhoto(size int, marker string) []byte {
	b := make([]byte, size)
	_, _ = rand.Read(b)
	copy(b[size/2:], marker)
	return b
}

// relayHolds reports whether a relay's store namespace holds needle in any
// key or value (as the relay reads them: after its at-rest decryption).
func relayHolds(t *testing.T, r *Relay, ns string, needle []byte) bool {
	t.Helper()
	found := false
	err := r.Relay().Store().Namespace(ns).List(context.Background(), storage.ListOptions{}, func(k string, v []byte) error {
		if bytes.Contains(v, needle) || bytes.Contains([]byte(k), needle) {
			found = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}

// nsHolds is relayHolds for a device's store.
func nsHolds(t *testing.T, st *storage.Store, ns string, needle []byte) bool {
	t.Helper()
	found := false
	err := st.Namespace(ns).List(context.Background(), storage.ListOptions{}, func(k string, v []byte) error {
		if bytes.Contains(v, needle) {
			found = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}

// blobHeld reports, for each relay, whether it holds the medium with the
// hex blob id, asking from d's host.
func blobHeld(ctx context.Context, t *testing.T, d *Device, rs []*Relay, blobHex string) []bool {
	t.Helper()
	raw, err := hex.DecodeString(blobHex)
	if err != nil {
		t.Fatal(err)
	}
	id, err := blobs.BlobIDFromBytes(raw)
	if err != nil {
		t.Fatal(err)
	}
	c, err := blobs.NewClient(d.Node().Host())
	if err != nil {
		t.Fatal(err)
	}
	var out []bool
	for _, r := range rs {
		d.Node().Host().Peerstore().AddAddrs(r.AddrInfo().ID, r.AddrInfo().Addrs, time.Minute)
		has, err := c.Has(ctx, r.AddrInfo().ID, []blobs.BlobID{id})
		if err != nil {
			t.Fatalf("ask %s for the blob: %v", r.Name, err)
		}
		out = append(out, has[0])
	}
	return out
}

// TestMomentsOnlineAndPrivate: a moment with a photo reaches every online
// friend, who fetch and decrypt the photo; likes, a comment and an unlike
// reach the author and the friends; a non-friend sees nothing, and
// neither the relays nor the non-friend's store ever hold the caption or
// the photo's marker bytes.
func TestMomentsOnlineAndPrivate(t *testing.T) {
	n := startNet(t, Config{Relays: 2, Devices: 4})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	accounts(t, ctx, n)
	a, b, c, stranger := n.Devices[0], n.Devices[1], n.Devices[2], n.Devices[3]
	for _, d := range []*Device{b, c} {
		if err := Introduce(ctx, a, d); err != nil {
			t.Fatal(err)
		}
	}
	if err := Introduce(ctx, b, stranger); err != nil { // a friend of a friend
		t.Fatal(err)
	}
	const caption = "Sunday lunch caption-7f3a"
	const marker = "PHOTO-MARKER-9c1e"
	img := momentPhoto(300<<10, marker)
	m, err := a.Node().PostMoment(ctx, caption, []moments.MediaInput{{Type: "image/jpeg", Data: img}})
	if err != nil {
		t.Fatal(err)
	}
	if !m.Mine || m.Text != caption || len(m.Media) != 1 || m.Media[0].Size != int64(len(img)) {
		t.Fatalf("posted %+v", m)
	}
	for _, d := range []*Device{b, c} {
		ms := waitFeed(ctx, t, d, "a's moment arrives", hasMoment(m.ID))
		got, _ := momentIn(ms, m.ID)
		if got.Author != a.AccountID() || got.Text != caption || got.Mine || len(got.Media) != 1 {
			t.Fatalf("%s sees %+v", d.Name, got)
		}
		typ, data, err := d.Node().MomentMediaData(ctx, m.ID, 0)
		if err != nil {
			t.Fatalf("%s fetches the photo: %v", d.Name, err)
		}
		if typ != "image/jpeg" || !bytes.Equal(data, img) {
			t.Fatalf("%s got %s of %d bytes, want the photo", d.Name, typ, len(data))
		}
	}
	if err := b.Node().LikeMoment(ctx, m.ID); err != nil {
		t.Fatal(err)
	}
	cm, err := c.Node().CommentMoment(ctx, m.ID, "Yum!")
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []*Device{a, b, c} {
		waitFeed(ctx, t, d, "b's like and c's comment", func(ms []moments.Moment) bool {
			x, ok := momentIn(ms, m.ID)
			return ok && len(x.Likes) == 1 && x.Likes[0].From == b.AccountID() && len(x.Comments) == 1 && x.Comments[0].ID == cm.ID
		})
	}
	if err := b.Node().UnlikeMoment(ctx, m.ID); err != nil {
		t.Fatal(err)
	}
	for _, d := range []*Device{a, c} {
		waitFeed(ctx, t, d, "b's like withdrawn", func(ms []moments.Moment) bool {
			x, ok := momentIn(ms, m.ID)
			return ok && len(x.Likes) == 0 && len(x.Comments) == 1
		})
	}
	// The stranger: no moment, nothing of it in its store.
	if ms, _, err := stranger.Node().MomentsFeed(ctx, "", 0); err != nil || len(ms) != 0 {
		t.Fatalf("the non-friend's feed: %+v, %v", ms, err)
	}
	if _, err := stranger.Node().Moment(ctx, m.ID); !errors.Is(err, moments.ErrNotFound) {
		t.Fatalf("the non-friend reads the moment: %v", err)
	}
	for _, ns := range []string{moments.Namespace, "message"} {
		for _, needle := range []string{caption, marker, "Yum!"} {
			if nsHolds(t, stranger.Node().Store(), ns, []byte(needle)) {
				t.Errorf("the non-friend's %s namespace holds %q", ns, needle)
			}
		}
	}
	// The relays keep the moment and its photo, as ciphertext only.
	for _, r := range n.Relays {
		if feeds, items, _ := r.Relay().Moments().Stats(); feeds == 0 || items == 0 {
			t.Errorf("%s keeps %d feeds and %d frames, want a's", r.Name, feeds, items)
		}
		for _, ns := range []string{moments.Namespace, "blobs"} {
			for _, needle := range []string{caption, marker, "Yum!"} {
				if relayHolds(t, r, ns, []byte(needle)) {
					t.Errorf("%s's %s namespace holds %q in plaintext", r.Name, ns, needle)
				}
			}
		}
	}
	if held := blobHeld(ctx, t, stranger, n.Relays, m.Media[0].Blob); slices.Contains(held, false) {
		t.Errorf("relays holding the photo: %v, want all", held)
	}
	// Close the relays so every byte they keep is on disk, then scan.
	for _, r := range n.Relays {
		if err := r.Stop(); err != nil {
			t.Fatal(err)
		}
		for _, needle := range []string{caption, marker} {
			if path, found := scanDir(t, r.Dir, []byte(needle)); found {
				t.Errorf("%s holds %q in %s", r.Name, needle, path)
			}
		}
	}
}

// TestMomentsBackfill: a friend who was offline while moments were posted,
// liked and deleted finds them (and not the deleted one) when it comes
// back, from the author's relays.
func TestMomentsBackfill(t *testing.T) {
	n := startNet(t, Config{Relays: 2, Devices: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	a, b := contactsPair(t, ctx, n)
	first, err := a.Node().PostMoment(ctx, "before you left", nil)
	if err != nil {
		t.Fatal(err)
	}
	waitFeed(ctx, t, b, "the first moment", hasMoment(first.ID))
	if err := b.Stop(); err != nil {
		t.Fatal(err)
	}
	away, err := a.Node().PostMoment(ctx, "while you were away", []moments.MediaInput{{Type: "image/png", Data: momentPhoto(64<<10, "AWAY")}})
	if err != nil {
		t.Fatal(err)
	}
	gone, err := a.Node().PostMoment(ctx, "posted and deleted while you were away", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Node().LikeMoment(ctx, away.ID); err != nil {
		t.Fatal(err)
	}
	if err := a.Node().DeleteMoment(ctx, gone.ID); err != nil {
		t.Fatal(err)
	}
	// Wait until both relays confirmed keeping the moment.
	waitCond(ctx, t, "both relays keep the moment", func() bool {
		m, err := a.Node().Moment(ctx, away.ID)
		return err == nil && m.Relays >= 2
	})
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	// The deletion reaches the relays after the moment itself (a's outbox
	// keeps its frames in order, and only the moment's keeping is waited
	// for above), so b may backfill the deleted moment first; it must be
	// gone once the deletion arrives.
	ms := waitFeed(ctx, t, b, "the moment posted while away, with a's like, and not the deleted one", func(ms []moments.Moment) bool {
		x, ok := momentIn(ms, away.ID)
		_, deleted := momentIn(ms, gone.ID)
		return ok && len(x.Likes) == 1 && x.Likes[0].From == a.AccountID() && !deleted
	})
	if _, ok := momentIn(ms, first.ID); !ok {
		t.Fatal("b lost the first moment")
	}
	if _, data, err := b.Node().MomentMediaData(ctx, away.ID, 0); err != nil || !bytes.Contains(data, []byte("AWAY")) {
		t.Fatalf("b fetches the photo: %v", err)
	}
	// Pages: one moment each, newest first, then the end.
	p1, next, err := b.Node().MomentsFeed(ctx, "", 1)
	if err != nil || len(p1) != 1 || p1[0].ID != away.ID || next == "" {
		t.Fatalf("page 1: %+v next %q, %v", p1, next, err)
	}
	p2, next, err := b.Node().MomentsFeed(ctx, next, 1)
	if err != nil || len(p2) != 1 || p2[0].ID != first.ID || next != "" {
		t.Fatalf("page 2: %+v next %q, %v", p2, next, err)
	}
}

// TestMomentsRemovedFriend: a friend left out of the audience can't read
// the moments that follow; the others can.
func TestMomentsRemovedFriend(t *testing.T) {
	testRemovedFriend(t, func(ctx context.Context, a, c *Device) error {
		au, err := a.Node().SetMomentsAudience(ctx, moments.Audience{All: true, Exclude: []string{c.AccountID()}})
		if err != nil || !au.All || !slices.Equal(au.Exclude, []string{c.AccountID()}) {
			return fmt.Errorf("audience %+v, %v", au, err)
		}
		return nil
	})
}

// TestMomentsRemovedContact: removing a contact (DELETE /v1/contacts/{id})
// takes them out of the audience the same way; they are gone from the
// contact list, and a second removal is an unknown contact.
func TestMomentsRemovedContact(t *testing.T) {
	testRemovedFriend(t, func(ctx context.Context, a, c *Device) error {
		if err := a.Node().RemoveContact(ctx, c.AccountID()); err != nil {
			return err
		}
		cs, err := a.Node().Contacts()
		if err != nil {
			return err
		}
		for _, ct := range cs {
			if ct.ID == c.AccountID() && ct.Source == "invite" {
				return fmt.Errorf("%s still a friend after removal: %+v", c.Name, ct)
			}
		}
		// (Removing c twice may succeed: anything c sent meanwhile, its
		// moments key included, brings its record back as "message".)
		if err := a.Node().RemoveContact(ctx, "no-such-account"); !errors.Is(err, node.ErrUnknownContact) {
			return fmt.Errorf("removing an unknown contact: %v, want ErrUnknownContact", err)
		}
		return nil
	})
}

// testRemovedFriend: a's friend c stops being one (remove); c keeps the
// moment it could read and can't read the next one, which b still gets.
func testRemovedFriend(t *testing.T, remove func(ctx context.Context, a, c *Device) error) {
	n := startNet(t, Config{Relays: 1, Devices: 3})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	accounts(t, ctx, n)
	a, b, c := n.Devices[0], n.Devices[1], n.Devices[2]
	for _, d := range []*Device{b, c} {
		if err := Introduce(ctx, a, d); err != nil {
			t.Fatal(err)
		}
	}
	before, err := a.Node().PostMoment(ctx, "for everyone", nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []*Device{b, c} {
		waitFeed(ctx, t, d, "the first moment", hasMoment(before.ID))
	}
	if err := remove(ctx, a, c); err != nil {
		t.Fatal(err)
	}
	const secret = "not for c anymore 5d2e"
	after, err := a.Node().PostMoment(ctx, secret, nil)
	if err != nil {
		t.Fatal(err)
	}
	waitFeed(ctx, t, b, "the moment after c's removal", hasMoment(after.ID))
	// b's like travels the new topic too; a seeing it means the topic
	// has carried everything before it.
	if err := b.Node().LikeMoment(ctx, after.ID); err != nil {
		t.Fatal(err)
	}
	waitFeed(ctx, t, a, "b's like", func(ms []moments.Moment) bool {
		x, ok := momentIn(ms, after.ID)
		return ok && len(x.Likes) == 1
	})
	if _, err := c.Node().Moment(ctx, after.ID); !errors.Is(err, moments.ErrNotFound) {
		t.Fatalf("the removed friend reads the new moment: %v", err)
	}
	if nsHolds(t, c.Node().Store(), moments.Namespace, []byte(secret)) {
		t.Fatal("the removed friend's store holds the new moment's text")
	}
	if _, err := c.Node().Moment(ctx, before.ID); err != nil {
		t.Fatalf("the removed friend lost the moment it could read: %v", err)
	}
}

// TestMomentsDeletion: the author deletes a moment with a photo: it
// disappears from every friend's feed, its frames and photo from every
// relay; a tombstone forged by a friend is refused by the relays, and a
// friend can't delete it through the API either.
func TestMomentsDeletion(t *testing.T) {
	n := startNet(t, Config{Relays: 2, Devices: 3})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	accounts(t, ctx, n)
	a, b, mallory := n.Devices[0], n.Devices[1], n.Devices[2]
	for _, d := range []*Device{b, mallory} {
		if err := Introduce(ctx, a, d); err != nil {
			t.Fatal(err)
		}
	}
	m, err := a.Node().PostMoment(ctx, "delete me later", []moments.MediaInput{{Type: "image/jpeg", Data: momentPhoto(200<<10, "DEL-MARKER")}})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []*Device{b, mallory} {
		waitFeed(ctx, t, d, "the moment", hasMoment(m.ID))
	}
	if _, err := b.Node().CommentMoment(ctx, m.ID, "nice"); err != nil {
		t.Fatal(err)
	}
	waitCond(ctx, t, "both relays keep the moment", func() bool {
		x, err := a.Node().Moment(ctx, m.ID)
		return err == nil && x.Relays >= 2
	})

	// Mallory, a friend, forges a tombstone and hands it to the relays.
	if err := mallory.Node().DeleteMoment(ctx, m.ID); !errors.Is(err, moments.ErrNotAuthor) {
		t.Fatalf("a friend deleting the moment: %v, want ErrNotAuthor", err)
	}
	topic := followedTopic(ctx, t, mallory)
	_, forger, _ := ed25519.GenerateKey(nil)
	forged := forgeTombstone(t, topic, m.ID, forger)
	rc, err := moments.NewClient(mallory.Node().Host())
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range n.Relays {
		mallory.Node().Host().Peerstore().AddAddrs(r.AddrInfo().ID, r.AddrInfo().Addrs, time.Minute)
		errs, err := rc.Keep(ctx, r.AddrInfo().ID, topic, [][]byte{forged})
		if err != nil || len(errs) != 1 || !errors.Is(errs[0], moments.ErrUnauthorized) {
			t.Fatalf("%s and the forged tombstone: %v, %v; want ErrUnauthorized", r.Name, err, errs)
		}
	}
	for _, d := range []*Device{a, b} {
		if _, err := d.Node().Moment(ctx, m.ID); err != nil {
			t.Fatalf("%s lost the moment to a forged tombstone: %v", d.Name, err)
		}
	}
	if held := blobHeld(ctx, t, b, n.Relays, m.Media[0].Blob); slices.Contains(held, false) {
		t.Fatalf("relays holding the photo after the forgery: %v", held)
	}

	// The author deletes it.
	if err := a.Node().DeleteMoment(ctx, m.ID); err != nil {
		t.Fatal(err)
	}
	for _, d := range []*Device{a, b, mallory} {
		waitFeed(ctx, t, d, "the moment is gone", noMoment(m.ID))
		if nsHolds(t, d.Node().Store(), moments.Namespace, []byte("delete me later")) {
			t.Errorf("%s's store still holds the deleted moment", d.Name)
		}
	}
	waitCond(ctx, t, "every relay purged the moment's frames and photo", func() bool {
		for _, r := range n.Relays {
			if _, items, _ := r.Relay().Moments().Stats(); items != 0 {
				return false
			}
		}
		return !slices.Contains(blobHeld(ctx, t, b, n.Relays, m.Media[0].Blob), true)
	})
	if _, _, err := b.Node().MomentMediaData(ctx, m.ID, 0); !errors.Is(err, moments.ErrNotFound) {
		t.Fatalf("b fetches the deleted photo: %v", err)
	}
}

// TestMomentsBlockedAuthor: once a friend is blocked, its moments are
// dropped from the feed (old and new), and it can't read the moments
// posted after the block.
func TestMomentsBlockedAuthor(t *testing.T) {
	n := startNet(t, Config{Relays: 1, Devices: 3})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	accounts(t, ctx, n)
	a, b, c := n.Devices[0], n.Devices[1], n.Devices[2]
	for _, pair := range [][2]*Device{{a, b}, {a, c}, {b, c}} {
		if err := Introduce(ctx, pair[0], pair[1]); err != nil {
			t.Fatal(err)
		}
	}
	old, err := a.Node().PostMoment(ctx, "from a, before the block", nil)
	if err != nil {
		t.Fatal(err)
	}
	waitFeed(ctx, t, b, "a's moment", hasMoment(old.ID))
	if _, err := b.Node().BlockContact(ctx, a.AccountID()); err != nil {
		t.Fatal(err)
	}
	waitFeed(ctx, t, b, "a's moment dropped", noMoment(old.ID))
	fresh, err := a.Node().PostMoment(ctx, "from a, after the block", nil)
	if err != nil {
		t.Fatal(err)
	}
	waitFeed(ctx, t, c, "a's new moment reaches c", hasMoment(fresh.ID))
	if _, err := b.Node().Moment(ctx, fresh.ID); !errors.Is(err, moments.ErrNotFound) {
		t.Fatalf("b shows a moment of the blocked a: %v", err)
	}
	// b's own moments after the block reach c, not a.
	mine, err := b.Node().PostMoment(ctx, "from b, after blocking a", nil)
	if err != nil {
		t.Fatal(err)
	}
	waitFeed(ctx, t, c, "b's moment reaches c", hasMoment(mine.ID))
	if err := c.Node().LikeMoment(ctx, mine.ID); err != nil {
		t.Fatal(err)
	}
	waitFeed(ctx, t, b, "c's like", func(ms []moments.Moment) bool {
		x, ok := momentIn(ms, mine.ID)
		return ok && len(x.Likes) == 1
	})
	if _, err := a.Node().Moment(ctx, mine.ID); !errors.Is(err, moments.ErrNotFound) {
		t.Fatalf("the blocked a reads b's new moment: %v", err)
	}
}

// followedTopic returns the newest topic of the one feed d follows, from
// d's store (pb.Following under "f/").
func followedTopic(ctx context.Context, t *testing.T, d *Device) string {
	t.Helper()
	var topic string
	err := d.Node().Store().Namespace(moments.Namespace).List(ctx, storage.ListOptions{Prefix: "f/"}, func(_ string, v []byte) error {
		var f pb.Following
		if err := proto.Unmarshal(v, &f); err != nil {
			return err
		}
		var newest uint64
		for _, ep := range f.GetEpochs() {
			if ep.GetEpoch() >= newest && len(ep.GetEpochSecret()) == 32 {
				newest, topic = ep.GetEpoch(), moments.TopicName([32]byte(ep.GetEpochSecret()))
			}
		}
		return nil
	})
	if err != nil || topic == "" {
		t.Fatalf("%s follows no feed: %v", d.Name, err)
	}
	return topic
}

// forgeTombstone builds a well-formed tombstone frame for a moment on
// topic, signed by key (docs/protocol/moments.md, "Frames").
func forgeTombstone(t *testing.T, topic, momentID string, key ed25519.PrivateKey) []byte {
	t.Helper()
	id, err := hex.DecodeString(momentID)
	if err != nil {
		t.Fatal(err)
	}
	body, err := proto.Marshal(&pb.FrameBody{Kind: pb.Kind_KIND_TOMBSTONE, Item: id, Post: id, CreatedMs: time.Now().UnixMilli()})
	if err != nil {
		t.Fatal(err)
	}
	out := binary.AppendUvarint([]byte{1}, uint64(len(body)))
	out = append(out, body...)
	signed := append([]byte("kinmesh/moments/frame/v1\x00"), binary.AppendUvarint(nil, uint64(len(topic)))...)
	signed = append(signed, topic...)
	signed = append(signed, out...)
	return append(out, ed25519.Sign(key, signed)...)
}

// TestMomentsAccountDeletion: deleting the account purges its moments
// feed and every photo from each home relay.
func TestMomentsAccountDeletion(t *testing.T) {
	n := startNet(t, Config{Relays: 2, Devices: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	a, b := contactsPair(t, ctx, n)
	m, err := a.Node().PostMoment(ctx, "gone with the account", []moments.MediaInput{{Type: "image/jpeg", Data: momentPhoto(100<<10, "ACCT-MARKER")}})
	if err != nil {
		t.Fatal(err)
	}
	waitFeed(ctx, t, b, "the moment", hasMoment(m.ID))
	waitCond(ctx, t, "both relays keep the moment", func() bool {
		x, err := a.Node().Moment(ctx, m.ID)
		return err == nil && x.Relays >= 2
	})
	feedsBefore := map[string]int{}
	for _, r := range n.Relays {
		feedsBefore[r.Name], _, _ = r.Relay().Moments().Stats() // a's and b's
	}
	res, err := a.Node().DeleteAccount(ctx)
	if err != nil || len(res.Pending) != 0 {
		t.Fatalf("deletion %+v, %v", res, err)
	}
	for _, r := range n.Relays {
		if feeds, items, _ := r.Relay().Moments().Stats(); feeds != feedsBefore[r.Name]-1 || items != 0 {
			t.Errorf("%s keeps %d feeds (%d before), %d frames; want a's feed and frames gone", r.Name, feeds, feedsBefore[r.Name], items)
		}
	}
	if held := blobHeld(ctx, t, b, n.Relays, m.Media[0].Blob); slices.Contains(held, true) {
		t.Errorf("relays holding the photo after the account's deletion: %v", held)
	}
	if got := nsKeys(t, a.Node().Store(), moments.Namespace); got != 0 {
		t.Errorf("the device's moments namespace still holds %d keys", got)
	}
}
