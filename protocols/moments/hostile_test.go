package moments

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/kinmesh/kinmesh/protocols/blobs"
	"github.com/kinmesh/kinmesh/storage"
)

// TestDeletion: deleting a moment removes it, its reactions and its media
// from every relay and every friend.
func TestDeletion(t *testing.T) {
	ctx := testCtx(t)
	r1, r2 := startRelay(t), startRelay(t)
	n := newNet()
	a := newDevice(t, n, "grandma", r1, r2)
	b := newDevice(t, n, "mia", r1, r2)
	c := newDevice(t, n, "leo", r1, r2)
	befriend(a, b)
	befriend(a, c)
	distribute(t, ctx, a, b, c)
	m, err := a.engine().Post(ctx, "to be deleted", []MediaInput{{Type: "image/png", Data: photo(t, 300<<10, "X")}})
	if err != nil {
		t.Fatal(err)
	}
	blob, _ := blobs.ParseBlobID(m.Media[0].Blob)
	for _, d := range []*testDevice{b, c} {
		waitMoments(t, ctx, d, "the moment", has(m.ID))
	}
	if err := b.engine().Like(ctx, m.ID); err != nil {
		t.Fatal(err)
	}
	waitFor(t, ctx, "both relays keep moment and like", func() bool {
		for _, r := range []*testRelay{r1, r2} {
			if _, items, _ := r.svc.Stats(); items != 2 {
				return false
			}
		}
		return true
	})
	if err := a.engine().Delete(ctx, m.ID); err != nil {
		t.Fatal(err)
	}
	for _, d := range []*testDevice{a, b, c} {
		waitMoments(t, ctx, d, "the moment gone", hasNot(m.ID))
		if n := keysUnder(t, d.st, dkReaction); n != 0 {
			t.Errorf("%s keeps %d reactions", d.name, n)
		}
	}
	bc, _ := blobs.NewClient(b.h, blobs.WithClientLogger(discard))
	for _, r := range []*testRelay{r1, r2} {
		waitFor(t, ctx, "the relay purges moment, like and photo", func() bool {
			_, items, bytes := r.svc.Stats()
			present, err := bc.Has(ctx, r.h.ID(), []blobs.BlobID{blob})
			return items == 0 && bytes == 0 && err == nil && !present[0] && r.blobs.Usage() == blobs.Usage{}
		})
		// What remains is the tombstone and the markers, none of it content.
		scanStore(t, r.st, [][]byte{[]byte("to be deleted")})
	}
	// A replay of the moment is refused everywhere.
	if _, err := a.engine().Moment(ctx, m.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("author still has it: %v", err)
	}
}

func keysUnder(t testing.TB, st *storage.Store, prefix string) int {
	t.Helper()
	n := 0
	if err := st.Namespace(Namespace).List(context.Background(), storage.ListOptions{Prefix: prefix}, func(string, []byte) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}

// scanStore fails if a decrypted value of the moments or blobs namespaces
// contains one of needles.
func scanStore(t testing.TB, st *storage.Store, needles [][]byte) {
	t.Helper()
	for _, ns := range []string{Namespace, blobs.Namespace} {
		err := st.Namespace(ns).List(context.Background(), storage.ListOptions{}, func(k string, v []byte) error {
			for _, nd := range needles {
				if bytes.Contains(v, nd) || bytes.Contains([]byte(k), nd) {
					t.Errorf("store namespace %s, key %q holds %q", ns, k, nd)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

// scanDir fails if a file under dir contains needle.
func scanDir(t testing.TB, dir string, needle []byte) {
	t.Helper()
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if bytes.Contains(b, needle) {
			t.Errorf("%s contains %q", p, needle)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestRelayAndOutsiderSeeCiphertext: the relay's files and decrypted store
// values, and an outsider subscribed to the topic, never see the caption or
// the photo.
func TestRelayAndOutsiderSeeCiphertext(t *testing.T) {
	ctx := testCtx(t)
	r := startRelay(t)
	n := newNet()
	// Names long enough that random ciphertext can't contain them by
	// chance (a 3-byte name turns up in megabytes of random bytes).
	const aName, bName = "grandma-NAME-3b9a", "mia-NAME-e27c"
	a := newDevice(t, n, aName, r)
	b := newDevice(t, n, bName, r)
	outsider := newDevice(t, n, "stranger", r)
	befriend(a, b)
	distribute(t, ctx, a, b)
	// The outsider learned the topic name (gossipsub announces
	// subscriptions) and listens on it raw.
	topic := a.engine().currentTopic()
	heard := make(chan []byte, 16)
	if err := outsider.router.Join(topic, func(string, peer.ID, []byte) error { return nil }, func(_ string, _ peer.ID, data []byte) { heard <- data }); err != nil {
		t.Fatal(err)
	}
	caption := "CAPTION-MARKER-8f2e"
	marker := "PHOTO-MARKER-c41d"
	m, err := a.engine().Post(ctx, caption, []MediaInput{{Type: "image/jpeg", Data: photo(t, 400<<10, marker)}})
	if err != nil {
		t.Fatal(err)
	}
	waitMoments(t, ctx, b, "the moment", has(m.ID))
	if _, err := b.engine().Comment(ctx, m.ID, "COMMENT-MARKER-77"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, ctx, "the relay keeps moment and comment", func() bool { _, items, _ := r.svc.Stats(); return items == 2 })
	select {
	case data := <-heard:
		if bytes.Contains(data, []byte(caption)) {
			t.Fatal("the outsider read the caption off the topic")
		}
	case <-ctx.Done():
		t.Fatal("the outsider heard nothing on the topic")
	}
	needles := [][]byte{[]byte(caption), []byte(marker), []byte("COMMENT-MARKER-77"), []byte(a.ID()), []byte(b.ID()), []byte(aName), []byte(bName)}
	scanStore(t, r.st, needles)
	for _, nd := range needles {
		scanDir(t, r.dir, nd)
	}
	if ms, _ := outsider.engine().Moments(ctx, 0); len(ms) != 0 {
		t.Fatalf("the outsider has %d moments", len(ms))
	}
}

// TestForgedTombstone: a tombstone not signed by the author (here by a
// friend holding the audience key) is refused by friends' validators and
// by the relay, and costs its sender score.
func TestForgedTombstone(t *testing.T) {
	ctx := testCtx(t)
	r := startRelay(t)
	n := newNet()
	a := newDevice(t, n, "grandma", r)
	b := newDevice(t, n, "mia", r)
	mallory := newDevice(t, n, "mallory", r)
	befriend(a, b)
	befriend(a, mallory)
	distribute(t, ctx, a, b, mallory)
	m, err := a.engine().Post(ctx, "keep me", nil)
	if err != nil {
		t.Fatal(err)
	}
	waitMoments(t, ctx, b, "the moment", has(m.ID))
	me := mallory.engine()
	me.mu.Lock()
	ep := me.follows[a.ID()].epochs[0]
	me.mu.Unlock()
	pid, _ := parseItemID(m.ID)
	raw := newRawPeer(t, ctx, r, ep.topic)
	// Signed with the audience key, and with a fresh key of its own.
	_, stranger, _ := ed25519.GenerateKey(nil)
	for _, key := range []ed25519.PrivateKey{ep.audience, stranger} {
		forged, err := encodeFrame(ep.topic, &frame{kind: KindTombstone, item: pid, post: pid, created: time.Now()}, key)
		if err != nil {
			t.Fatal(err)
		}
		// Straight onto the topic, with no validator of its own.
		if err := raw.topic.Publish(ctx, forged); err != nil {
			t.Fatal(err)
		}
		errs, err := me.cfg.Relays.Keep(ctx, r.h.ID(), ep.topic, [][]byte{forged})
		if err != nil || !errors.Is(errs[0], ErrUnauthorized) {
			t.Fatalf("relay keeps a forged tombstone: %v, %v; want ErrUnauthorized", err, errs)
		}
	}
	waitFor(t, ctx, "mallory's score drops at the relay", func() bool { return r.router.Score(raw.h.ID()) < 0 })
	if _, items, _ := r.svc.Stats(); items != 1 {
		t.Fatalf("the relay keeps %d frames, want the moment", items)
	}
	for _, d := range []*testDevice{a, b} {
		if _, err := d.engine().Moment(ctx, m.ID); err != nil {
			t.Fatalf("%s lost the moment to a forged tombstone: %v", d.name, err)
		}
	}
}

// rawPeer is a gossipsub peer with no validators: it publishes anything.
type rawPeer struct {
	h     host.Host
	ps    *pubsub.PubSub
	topic *pubsub.Topic
}

// newRawPeer connects a raw gossipsub peer to relay r on topic and waits
// until the relay counts it among the topic's peers.
func newRawPeer(t testing.TB, ctx context.Context, r *testRelay, topic string) *rawPeer {
	t.Helper()
	h := newHost(t, newKey(t))
	pctx, cancel := context.WithCancel(context.Background())
	ps, err := pubsub.NewGossipSub(pctx, h, pubsub.WithMessageSignaturePolicy(pubsub.StrictNoSign), pubsub.WithNoAuthor(), pubsub.WithMessageIdFn(messageID), pubsub.WithFloodPublish(true))
	if err != nil {
		t.Fatal(err)
	}
	tp, err := ps.Join(topic)
	if err != nil {
		t.Fatal(err)
	}
	sub, err := tp.Subscribe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sub.Cancel()
		_ = tp.Close()
		cancel()
		_ = h.Close()
	})
	if err := h.Connect(ctx, r.info()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, ctx, "the relay and the raw peer see each other on the topic", func() bool {
		return slices.Contains(r.router.Peers(topic), h.ID()) && slices.Contains(ps.ListPeers(topic), r.h.ID())
	})
	return &rawPeer{h: h, ps: ps, topic: tp}
}

// TestGarbageLosesScore: malformed, oversized and forged frames on a
// topic are rejected by the relay's and friends' validators, and the peer
// sending them loses score.
func TestGarbageLosesScore(t *testing.T) {
	ctx := testCtx(t)
	r := startRelay(t)
	n := newNet()
	a := newDevice(t, n, "grandma", r)
	b := newDevice(t, n, "mia", r)
	befriend(a, b)
	distribute(t, ctx, a, b)
	topic := a.engine().currentTopic()
	raw := newRawPeer(t, ctx, r, topic)
	var pid itemID
	pid[0] = 7
	_, stranger, _ := ed25519.GenerateKey(nil)
	forgedPost, _ := encodeFrame(topic, &frame{kind: KindPost, item: pid, post: pid, created: time.Now(), wrappedKey: []byte{1}, sealed: []byte{2}}, stranger)
	for _, garbage := range [][]byte{
		[]byte("not a frame"),
		append([]byte{frameVersion, 0xff, 0xff, 0xff}, make([]byte, 100)...),
		make([]byte, MaxFrameSize+1),
		forgedPost,
	} {
		if err := raw.topic.Publish(ctx, garbage); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, ctx, "the garbage sender's score goes negative at the relay", func() bool { return r.router.Score(raw.h.ID()) < scoreThresholds.GossipThreshold })
	if _, items, _ := r.svc.Stats(); items != 0 {
		t.Fatalf("the relay keeps %d garbage frames", items)
	}
	if ms, _ := b.engine().Moments(ctx, 0); len(ms) != 0 {
		t.Fatalf("a friend took garbage for %d moments", len(ms))
	}
	// Honest traffic still flows.
	m, err := a.engine().Post(ctx, "still here", nil)
	if err != nil {
		t.Fatal(err)
	}
	waitMoments(t, ctx, b, "the honest moment", has(m.ID))
}

// TestLikeFlood: a flood of reactions stops at the relay's per-moment cap
// with ErrQuota, and a flood of Keep requests at its rate limit.
func TestLikeFlood(t *testing.T) {
	ctx := testCtx(t)
	r := startRelay(t, WithReactionsPerMoment(5), WithRequestRate(600, 20))
	n := newNet()
	a := newDevice(t, n, "grandma", r)
	b := newDevice(t, n, "mia", r)
	befriend(a, b)
	distribute(t, ctx, a, b)
	m, err := a.engine().Post(ctx, "like me", nil)
	if err != nil {
		t.Fatal(err)
	}
	waitMoments(t, ctx, b, "the moment", has(m.ID))
	be := b.engine()
	be.mu.Lock()
	ep := be.follows[a.ID()].epochs[0]
	be.mu.Unlock()
	pid, _ := parseItemID(m.ID)
	var frames [][]byte
	for range 8 {
		item := newItemID()
		dk := reactionDeleteKey(b.id, item)
		f := &frame{kind: KindReaction, item: item, post: pid, created: time.Now(), deleteKey: dk.Public().(ed25519.PublicKey), sealed: []byte("0123456789012345678901234567890123456789")}
		raw, err := encodeFrame(ep.topic, f, ep.audience)
		if err != nil {
			t.Fatal(err)
		}
		frames = append(frames, raw)
	}
	errs, err := be.cfg.Relays.Keep(ctx, r.h.ID(), ep.topic, frames)
	if err != nil {
		t.Fatal(err)
	}
	for i, e := range errs {
		if want := i >= 5; errors.Is(e, ErrQuota) != want {
			t.Fatalf("reaction %d: got %v, quota refusal %v", i, e, want)
		}
	}
	var limited error
	for range 40 {
		if _, err := be.cfg.Relays.Keep(ctx, r.h.ID(), ep.topic, frames[:1]); err != nil {
			limited = err
			break
		}
	}
	if !errors.Is(limited, ErrRateLimited) || RetryAfter(limited) <= 0 {
		t.Fatalf("40 requests at once: got %v, want ErrRateLimited with a hint", limited)
	}
}

// TestBlockedAuthor: moments of a blocked account are dropped and hidden.
func TestBlockedAuthor(t *testing.T) {
	ctx := testCtx(t)
	r := startRelay(t)
	n := newNet()
	a := newDevice(t, n, "grandma", r)
	b := newDevice(t, n, "mia", r)
	c := newDevice(t, n, "leo", r)
	befriend(a, b)
	befriend(c, b)
	distribute(t, ctx, a, b, c)
	old, err := a.engine().Post(ctx, "before the block", nil)
	if err != nil {
		t.Fatal(err)
	}
	waitMoments(t, ctx, b, "the moment", has(old.ID))
	b.contacts.mu.Lock()
	b.contacts.blocked[a.ID()] = true
	b.contacts.mu.Unlock()
	if ms, _ := b.engine().Moments(ctx, 0); has(old.ID)(ms) {
		t.Fatal("a blocked author's moment is still shown")
	}
	blocked, err := a.engine().Post(ctx, "after the block", nil)
	if err != nil {
		t.Fatal(err)
	}
	fromC, err := c.engine().Post(ctx, "from leo", nil)
	if err != nil {
		t.Fatal(err)
	}
	waitMoments(t, ctx, b, "leo's moment", has(fromC.ID))
	b.engine().Backfill(ctx)
	if _, err := b.engine().Moment(ctx, blocked.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a blocked author's new moment: got %v, want ErrNotFound", err)
	}
}

// TestPurgeRelay: account deletion's purge removes the feed and its media
// from a relay with nothing but the identity.
func TestPurgeRelay(t *testing.T) {
	ctx := testCtx(t)
	r := startRelay(t)
	n := newNet()
	a := newDevice(t, n, "grandma", r)
	b := newDevice(t, n, "mia", r)
	befriend(a, b)
	distribute(t, ctx, a, b)
	for _, text := range []string{"one", "two"} {
		if _, err := a.engine().Post(ctx, text, []MediaInput{{Type: "video/mp4", Data: photo(t, 100<<10, text)}}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, ctx, "the relay keeps both", func() bool { _, items, _ := r.svc.Stats(); return items == 2 })
	a.Stop() // the account's data is gone; the identity remains
	c, _ := NewClient(b.h, WithClientLogger(discard))
	bc, _ := blobs.NewClient(b.h, blobs.WithClientLogger(discard))
	if err := PurgeRelay(ctx, c, bc, r.h.ID(), a.id); err != nil {
		t.Fatal(err)
	}
	if feeds, items, _ := r.svc.Stats(); items != 0 || feeds != 1 {
		t.Fatalf("after purge: %d feeds (want mia's), %d items", feeds, items)
	}
	if u := r.blobs.Usage(); u != (blobs.Usage{}) {
		t.Fatalf("media left after purge: %+v", u)
	}
	if err := PurgeRelay(ctx, c, bc, r.h.ID(), a.id); err != nil {
		t.Fatalf("a second purge: %v", err)
	}
}

// TestRestarts: a relay restart keeps feeds and topics; a device restart
// keeps its moments and keys.
func TestRestarts(t *testing.T) {
	ctx := testCtx(t)
	r := startRelay(t)
	n := newNet()
	a := newDevice(t, n, "grandma", r)
	b := newDevice(t, n, "mia", r)
	befriend(a, b)
	distribute(t, ctx, a, b)
	m1, err := a.engine().Post(ctx, "one", nil)
	if err != nil {
		t.Fatal(err)
	}
	waitMoments(t, ctx, b, "one", has(m1.ID))
	waitFor(t, ctx, "the relay keeps one", func() bool { _, items, _ := r.svc.Stats(); return items == 1 })
	r.Stop()
	r.Start()
	if feeds, items, _ := r.svc.Stats(); feeds != 2 || items != 1 {
		t.Fatalf("after restart the relay keeps %d feeds, %d items", feeds, items)
	}
	if !r.router.Joined(a.engine().currentTopic()) {
		t.Fatal("the relay did not rejoin the feed's topic")
	}
	for _, d := range []*testDevice{a, b} {
		d.Stop()
		d.Start()
	}
	if ms, _ := b.engine().Moments(ctx, 0); !has(m1.ID)(ms) {
		t.Fatal("mia lost the moment over a restart")
	}
	m2, err := a.engine().Post(ctx, "two", nil)
	if err != nil {
		t.Fatal(err)
	}
	// Gossip may miss a peer that reconnected within milliseconds (the
	// relay's gossipsub still tears down the old stream); the relays have
	// it, and backfill (from the cursor kept across the restart) brings it.
	waitFor(t, ctx, "the relay keeps two", func() bool { _, items, _ := r.svc.Stats(); return items == 2 })
	b.engine().Backfill(ctx)
	waitMoments(t, ctx, b, "two, after restarts", has(m2.ID))
}

// TestDropsRepaired: a friend whose gossipsub drops frames (tiny queues)
// gets every moment anyway: each drop is counted and triggers a backfill.
func TestDropsRepaired(t *testing.T) {
	ctx := testCtx(t)
	r := startRelay(t)
	n := newNet()
	a := newDevice(t, n, "grandma", r)
	b := newDeviceWith(t, n, "mia", []RouterOption{WithQueues(1, 256, 1)}, r)
	befriend(a, b)
	distribute(t, ctx, a, b)
	const posts = 40
	for i := range posts {
		if _, err := a.engine().Post(ctx, fmt.Sprint("burst ", i), nil); err != nil {
			t.Fatal(err)
		}
	}
	waitMoments(t, ctx, b, "every moment of the burst", func(ms []Moment) bool { return len(ms) == posts })
	d := b.router.Drops()
	t.Logf("drops at mia: %+v", d)
}
