package moments

import (
	"crypto/ed25519"
	"crypto/rand"
	"slices"
	"testing"

	"github.com/kinmesh/kinmesh/protocols/blobs"
	"github.com/kinmesh/kinmesh/protocols/e2ee"
)

// TestPurgeRetryReportsMedia: a purge whose answer was lost, retried,
// reports the feed's media again, until the owner confirms them.
func TestPurgeRetryReportsMedia(t *testing.T) {
	ctx := testCtx(t)
	r := startRelay(t)
	o := newFeedOwner(t, ctx, r)
	ep := o.register(ctx)
	m1, m2 := o.upload(ctx, 1000), o.upload(ctx, 2000)
	_, raw := o.post(ep, m1, m2)
	o.mustKeep(ctx, ep, raw)

	if _, err := o.c.Purge(ctx, r.h.ID(), o.owner); err != nil { // its answer lost
		t.Fatal(err)
	}
	if feeds, items, _ := r.svc.Stats(); feeds != 0 || items != 0 {
		t.Fatalf("after the purge: %d feeds, %d items", feeds, items)
	}
	media, err := o.c.Purge(ctx, r.h.ID(), o.owner)
	if err != nil {
		t.Fatal(err)
	}
	if want := []blobs.BlobID{m1, m2}; !sameIDs(media, want) {
		t.Fatalf("the retried purge reports %v, want %v", media, want)
	}
	for _, m := range media {
		if err := o.bc.Delete(ctx, r.h.ID(), m, blobs.SignDelete(blobDeleteKey(o.secret, m), m)); err != nil {
			t.Fatal(err)
		}
	}
	if err := o.c.ConfirmPurge(ctx, r.h.ID(), o.owner, media); err != nil {
		t.Fatal(err)
	}
	if media, err := o.c.Purge(ctx, r.h.ID(), o.owner); err != nil || len(media) != 0 {
		t.Fatalf("after the confirmation the purge reports %v, %v; want none", media, err)
	}
	if n := keysUnder(t, r.st, keyMedia); n != 0 {
		t.Fatalf("%d media keys left after the confirmation", n)
	}
}

// TestPurgeMediaPaged: a media list longer than one answer comes in pages
// that Purge reads to the end, and is confirmed in as many requests.
func TestPurgeMediaPaged(t *testing.T) {
	ctx := testCtx(t)
	r := startRelay(t)
	o := newFeedOwner(t, ctx, r)
	ep := o.register(ctx)
	blob := o.upload(ctx, 1000)
	_, raw := o.post(ep, blob)
	o.mustKeep(ctx, ep, raw)
	// The media of many dropped epochs' moments, listed with the feed.
	fk := r.svc.ns.Opaque(o.owner.Public().(ed25519.PublicKey))
	want := []blobs.BlobID{blob}
	for range MaxPurgeMedia/500 + 2 {
		b := r.st.NewBatch()
		for range 500 {
			var id blobs.BlobID
			_, _ = rand.Read(id[:])
			want = append(want, id)
			_ = b.Put(r.svc.ns, listedKey(r.svc.ns, fk, id[:]), id[:])
		}
		if err := b.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := o.c.Purge(ctx, r.h.ID(), o.owner); err != nil { // its answer lost
		t.Fatal(err)
	}
	media, err := o.c.Purge(ctx, r.h.ID(), o.owner)
	if err != nil {
		t.Fatal(err)
	}
	if !sameIDs(media, want) {
		t.Fatalf("the purge reports %d media, want %d", len(media), len(want))
	}
	if err := o.c.ConfirmPurge(ctx, r.h.ID(), o.owner, media); err != nil {
		t.Fatal(err)
	}
	if n := keysUnder(t, r.st, keyMedia); n != 0 {
		t.Fatalf("%d media keys left after the confirmation", n)
	}
}

func sameIDs(a, b []blobs.BlobID) bool {
	cmp := func(x, y blobs.BlobID) int { return slices.Compare(x[:], y[:]) }
	a, b = slices.SortedFunc(slices.Values(a), cmp), slices.SortedFunc(slices.Values(b), cmp)
	return slices.Equal(a, b)
}

// TestPurgeRelayConfirms: PurgeRelay, what account deletion and a move
// run, deletes the feed's media and confirms them, so the relay keeps no
// list of them.
func TestPurgeRelayConfirms(t *testing.T) {
	ctx := testCtx(t)
	r := startRelay(t)
	o := newFeedOwner(t, ctx, r)
	id, err := e2ee.NewIdentity(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	o.owner, o.secret = OwnerKey(id), MediaSecret(id)
	ep := o.register(ctx)
	m := o.upload(ctx, 1000)
	_, raw := o.post(ep, m)
	o.mustKeep(ctx, ep, raw)
	if err := PurgeRelay(ctx, o.c, o.bc, r.h.ID(), id); err != nil {
		t.Fatal(err)
	}
	if n := keysUnder(t, r.st, keyMedia); n != 0 {
		t.Fatalf("%d media keys left on the relay after PurgeRelay", n)
	}
	if media, err := o.c.Purge(ctx, r.h.ID(), o.owner); err != nil || len(media) != 0 {
		t.Fatalf("a purge after PurgeRelay reports %v, %v; want none", media, err)
	}
}
