package moments

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"

	"github.com/kinmesh/kinmesh/protocols/blobs"
)

// feedOwner speaks to a relay as a feed's owner and audience, with keys
// of its own and no engine: relay tests build exactly the frames they need.
type feedOwner struct {
	t      testing.TB
	r      *testRelay
	h      host.Host
	c      *Client
	bc     *blobs.Client
	owner  ed25519.PrivateKey
	secret []byte // media secret: blob delete keys
	epochs []epochKeys
}

func newFeedOwner(t testing.TB, ctx context.Context, r *testRelay) *feedOwner {
	t.Helper()
	h := newHost(t, newKey(t))
	t.Cleanup(func() { _ = h.Close() })
	if err := h.Connect(ctx, r.info()); err != nil {
		t.Fatal(err)
	}
	c, _ := NewClient(h, WithClientLogger(discard))
	bc, _ := blobs.NewClient(h, blobs.WithClientLogger(discard))
	_, owner, _ := ed25519.GenerateKey(nil)
	secret := make([]byte, 32)
	_, _ = rand.Read(secret)
	return &feedOwner{t: t, r: r, h: h, c: c, bc: bc, owner: owner, secret: secret}
}

// register starts a new epoch and registers its topic.
func (o *feedOwner) register(ctx context.Context) epochKeys {
	o.t.Helper()
	secret, err := newEpochSecret()
	if err != nil {
		o.t.Fatal(err)
	}
	ep := deriveEpoch(uint64(len(o.epochs)+1), secret)
	if err := o.c.Register(ctx, o.r.h.ID(), o.owner, ep.topic, ep.audience); err != nil {
		o.t.Fatalf("register: %v", err)
	}
	o.epochs = append(o.epochs, ep)
	return ep
}

// upload puts a sealed blob of n bytes on the relay, deletable with the
// owner's media secret.
func (o *feedOwner) upload(ctx context.Context, n int) blobs.BlobID {
	o.t.Helper()
	var key [32]byte
	_, _ = rand.Read(key[:])
	data := make([]byte, n)
	_, _ = rand.Read(data)
	sealed, err := blobs.Seal(&key, data)
	if err != nil {
		o.t.Fatal(err)
	}
	if _, err := o.bc.Put(ctx, o.r.h.ID(), sealed, blobDeleteKey(o.secret, sealed.ID).Public().(ed25519.PublicKey)); err != nil {
		o.t.Fatalf("upload: %v", err)
	}
	return sealed.ID
}

func (o *feedOwner) sign(ep epochKeys, f *frame, key ed25519.PrivateKey) []byte {
	o.t.Helper()
	raw, err := encodeFrame(ep.topic, f, key)
	if err != nil {
		o.t.Fatal(err)
	}
	return raw
}

// post is a moment with media on ep.
func (o *feedOwner) post(ep epochKeys, media ...blobs.BlobID) (itemID, []byte) {
	id := newItemID()
	return id, o.sign(ep, &frame{kind: KindPost, item: id, post: id, created: time.Now(), wrappedKey: []byte("wrapped"), sealed: []byte("sealed post body"), media: media}, o.owner)
}

// reaction is a like of post on ep, and the key that withdraws it.
func (o *feedOwner) reaction(ep epochKeys, post itemID) (itemID, ed25519.PrivateKey, []byte) {
	item := newItemID()
	_, dk, _ := ed25519.GenerateKey(nil)
	return item, dk, o.sign(ep, &frame{kind: KindReaction, item: item, post: post, created: time.Now(), deleteKey: dk.Public().(ed25519.PublicKey), sealed: []byte("sealed reaction body")}, ep.audience)
}

// withdrawal takes back reaction item of post on ep.
func (o *feedOwner) withdrawal(ep epochKeys, post, item itemID, dk ed25519.PrivateKey) []byte {
	return o.sign(ep, &frame{kind: KindWithdraw, item: item, post: post, created: time.Now(), deleteKey: dk.Public().(ed25519.PublicKey), proof: ed25519.Sign(dk, withdrawMessage(post, item))}, ep.audience)
}

// tombstone deletes post on ep, with its media's deletion proofs.
func (o *feedOwner) tombstone(ep epochKeys, post itemID, media ...blobs.BlobID) []byte {
	f := &frame{kind: KindTombstone, item: post, post: post, created: time.Now()}
	for _, m := range media {
		f.proofs = append(f.proofs, blobProof{id: m, sig: blobs.SignDelete(blobDeleteKey(o.secret, m), m)})
	}
	return o.sign(ep, f, o.owner)
}

// keep hands frames of ep to the relay and returns its result per frame.
func (o *feedOwner) keep(ctx context.Context, ep epochKeys, frames ...[]byte) []error {
	o.t.Helper()
	errs, err := o.c.Keep(ctx, o.r.h.ID(), ep.topic, frames)
	if err != nil {
		o.t.Fatalf("keep: %v", err)
	}
	return errs
}

// mustKeep keeps frames and fails on any refusal.
func (o *feedOwner) mustKeep(ctx context.Context, ep epochKeys, frames ...[]byte) {
	o.t.Helper()
	for i, err := range o.keep(ctx, ep, frames...) {
		if err != nil {
			o.t.Fatalf("keep frame %d: %v", i, err)
		}
	}
}

// backfill returns every frame the relay serves for ep.
func (o *feedOwner) backfill(ctx context.Context, ep epochKeys) [][]byte {
	o.t.Helper()
	var out [][]byte
	after := uint64(0)
	for {
		p, err := o.c.Backfill(ctx, o.r.h.ID(), ep.topic, ep.audience, after, 0)
		if err != nil {
			o.t.Fatalf("backfill: %v", err)
		}
		out = append(out, p.Frames...)
		if !p.More {
			return out
		}
		after = p.Next
	}
}

// TestOrphanTopic: a topic whose feed is gone (what a purge racing a
// register left behind) is an unknown topic everywhere, never a crash.
func TestOrphanTopic(t *testing.T) {
	ctx := testCtx(t)
	r := startRelay(t)
	o := newFeedOwner(t, ctx, r)
	ep := o.register(ctx)
	orphan := o.register(ctx)
	_, raw := o.post(orphan)
	fk := r.svc.ns.Opaque(o.owner.Public().(ed25519.PublicKey))
	r.svc.mu.Lock()
	ref := r.svc.topics[orphan.topic]
	delete(r.svc.feeds, fk)
	r.svc.mu.Unlock()
	if err := r.svc.validate(orphan.topic, "peer", raw); !errors.Is(err, ErrUnknownTopic) {
		t.Fatalf("validate: got %v, want ErrUnknownTopic", err)
	}
	r.svc.onGossip(orphan.topic, "peer", raw)
	if _, err := o.c.Keep(ctx, r.h.ID(), orphan.topic, [][]byte{raw}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("keep: got %v, want ErrNotFound", err)
	}
	if _, err := o.c.Backfill(ctx, r.h.ID(), orphan.topic, orphan.audience, 0, 0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("backfill: got %v, want ErrNotFound", err)
	}
	if _, err := r.svc.keep(ctx, orphan.topic, ref, raw, must(parseFrame(raw)), true); !errors.Is(err, ErrUnknownTopic) {
		t.Fatalf("keep under the lock: got %v, want ErrUnknownTopic", err)
	}
	_ = ep
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// TestPurgeRacesRegister: a purge and a register of the same feed at once
// leave either the new feed or nothing, never a topic without its feed
// (which crashed the relay on its next frame).
func TestPurgeRacesRegister(t *testing.T) {
	ctx := testCtx(t)
	r := startRelay(t)
	o := newFeedOwner(t, ctx, r)
	for i := range 20 {
		o.register(ctx)
		secret, err := newEpochSecret()
		if err != nil {
			t.Fatal(err)
		}
		late := deriveEpoch(uint64(100+i), secret)
		var wg sync.WaitGroup
		wg.Go(func() {
			if _, err := o.c.Purge(ctx, r.h.ID(), o.owner); err != nil {
				t.Errorf("purge: %v", err)
			}
		})
		wg.Go(func() {
			if err := o.c.Register(ctx, r.h.ID(), o.owner, late.topic, late.audience); err != nil {
				t.Errorf("register: %v", err)
			}
		})
		wg.Wait()
		r.svc.mu.Lock()
		for topic, ref := range r.svc.topics {
			if r.svc.feeds[ref.feed] == nil {
				t.Errorf("round %d: topic %s outlived its feed", i, topic)
			}
		}
		r.svc.mu.Unlock()
		if t.Failed() {
			t.FailNow()
		}
		_, raw := o.post(late)
		if _, err := o.c.Keep(ctx, r.h.ID(), late.topic, [][]byte{raw}); err != nil && !errors.Is(err, ErrNotFound) {
			t.Fatalf("round %d: keep on the late topic: %v", i, err)
		}
		if _, err := o.c.Purge(ctx, r.h.ID(), o.owner); err != nil {
			t.Fatal(err)
		}
	}
}

// flakyMedia fails the first fail deletions, as a busy blob store would.
type flakyMedia struct {
	MediaDeleter
	mu   sync.Mutex
	fail int
}

func (f *flakyMedia) DeleteSigned(ctx context.Context, id blobs.BlobID, sig []byte) error {
	f.mu.Lock()
	failing := f.fail > 0
	if failing {
		f.fail--
	}
	f.mu.Unlock()
	if failing {
		return fmt.Errorf("blobs: delete %s: %w", id, blobs.ErrUnavailable)
	}
	return f.MediaDeleter.DeleteSigned(ctx, id, sig)
}

// swapService replaces r's moments service by one deleting media with
// media (on the same host, store and router).
func swapService(t testing.TB, r *testRelay, media MediaDeleter) {
	t.Helper()
	if err := r.svc.Close(); err != nil {
		t.Fatal(err)
	}
	svc, err := NewService(r.h, r.st, r.router, media, append([]Option{WithLogger(discard)}, r.opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	r.svc = svc
}

// kinds lists the kinds of frames.
func kinds(t testing.TB, frames [][]byte) []Kind {
	t.Helper()
	var out []Kind
	for _, raw := range frames {
		f, err := parseFrame(raw)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, f.kind)
	}
	return out
}

// TestTombstoneRetryFinishes: a tombstone that failed partway (its marker
// committed, the moment's frames or media not yet deleted) is finished by
// its retry.
func TestTombstoneRetryFinishes(t *testing.T) {
	ctx := testCtx(t)
	r := startRelay(t)
	swapService(t, r, &flakyMedia{MediaDeleter: r.blobs, fail: 1})
	o := newFeedOwner(t, ctx, r)
	ep := o.register(ctx)
	blob := o.upload(ctx, 1000)
	post, raw := o.post(ep, blob)
	_, _, like := o.reaction(ep, post)
	o.mustKeep(ctx, ep, raw, like)

	// The blob store fails: the tombstone is unavailable, its retry
	// deletes the photo.
	tomb := o.tombstone(ep, post, blob)
	if errs := o.keep(ctx, ep, tomb); !errors.Is(errs[0], ErrUnavailable) {
		t.Fatalf("tombstone with the blob store failing: got %v, want ErrUnavailable", errs[0])
	}
	o.mustKeep(ctx, ep, tomb)
	if present, err := o.bc.Has(ctx, r.h.ID(), []blobs.BlobID{blob}); err != nil || present[0] {
		t.Fatalf("the photo outlived the retried tombstone (present %v, %v)", present, err)
	}

	// The marker committed, then the relay failed before deleting
	// anything: the retry deletes the moment and its like.
	post2, raw2 := o.post(ep)
	_, _, like2 := o.reaction(ep, post2)
	o.mustKeep(ctx, ep, raw2, like2)
	fk := r.svc.ns.Opaque(o.owner.Public().(ed25519.PublicKey))
	if err := r.svc.ns.PutTTL(ctx, keyDeleted+fk+"/"+r.svc.ns.Opaque(post2[:]), nil, MarkerTTL); err != nil {
		t.Fatal(err)
	}
	o.mustKeep(ctx, ep, o.tombstone(ep, post2))
	if _, items, bytes := r.svc.Stats(); items != 0 || bytes != 0 {
		t.Fatalf("after the retried tombstones the relay counts %d items, %d bytes; want none", items, bytes)
	}
	if got := kinds(t, o.backfill(ctx, ep)); slices.ContainsFunc(got, func(k Kind) bool { return k != KindTombstone }) {
		t.Fatalf("backfill serves %v after the tombstones, want tombstones only", got)
	}
}
