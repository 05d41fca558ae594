package moments

import (
	"crypto/ed25519"
	"encoding/binary"
	"errors"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/kinmesh/kinmesh/storage"
)

// padded re-signs a frame of ep with an unknown field of n bytes appended
// to its body: what a peer can do to any frame it signs.
func padded(t testing.TB, ep epochKeys, raw []byte, key ed25519.PrivateKey, n int) []byte {
	t.Helper()
	l, k := binary.Uvarint(raw[1:])
	body := append([]byte(nil), raw[1+k:1+k+int(l)]...)
	body = protowire.AppendTag(body, 99, protowire.BytesType)
	body = protowire.AppendBytes(body, make([]byte, n))
	out := binary.AppendUvarint([]byte{frameVersion}, uint64(len(body)))
	out = append(out, body...)
	out = append(out, ed25519.Sign(key, signedBytes(ep.topic, out))...)
	if _, err := checkFrame(out, ep.topic, feedKeys{audience: ep.audience.Public().(ed25519.PublicKey)}, time.Now(), MaxKeepAge); err != nil {
		t.Fatalf("padded frame refused: %v", err)
	}
	return out
}

// TestReactionNeedsHeldMoment: a relay keeps reactions only to moments it
// holds. A reaction that reaches it before its moment is refused with
// ErrNotHeld, and kept when retried after the moment.
func TestReactionNeedsHeldMoment(t *testing.T) {
	ctx := testCtx(t)
	r := startRelay(t)
	o := newFeedOwner(t, ctx, r)
	ep := o.register(ctx)
	other := newFeedOwner(t, ctx, r)
	oep := other.register(ctx)

	post, raw := o.post(ep)
	_, _, like := o.reaction(ep, post)
	if errs := o.keep(ctx, ep, like); !errors.Is(errs[0], ErrNotHeld) {
		t.Fatalf("a like before its moment: got %v, want ErrNotHeld", errs[0])
	}
	if _, items, _ := r.svc.Stats(); items != 0 {
		t.Fatalf("the relay keeps %d frames for a moment it does not hold", items)
	}
	// Another feed's moment does not count.
	theirs, theirRaw := other.post(oep)
	other.mustKeep(ctx, oep, theirRaw)
	_, _, cross := o.reaction(ep, theirs)
	if errs := o.keep(ctx, ep, cross); !errors.Is(errs[0], ErrNotHeld) {
		t.Fatalf("a like of another feed's moment: got %v, want ErrNotHeld", errs[0])
	}
	// The moment arrives; the like, retried, is kept.
	o.mustKeep(ctx, ep, raw)
	o.mustKeep(ctx, ep, like)
	if _, items, _ := r.svc.Stats(); items != 3 {
		t.Fatalf("the relay keeps %d frames, want 3 (two moments, a like)", items)
	}
}

// TestKeepLowDisk: below the relay's free-space floor
// (storage.WithMinFree over the file system's real free space) new
// moments are refused as unavailable, while backfill goes on and a
// tombstone, which frees space, is taken.
func TestKeepLowDisk(t *testing.T) {
	ctx := testCtx(t)
	r := startRelay(t)
	o := newFeedOwner(t, ctx, r)
	ep := o.register(ctx)
	post, raw := o.post(ep)
	o.mustKeep(ctx, ep, raw)
	free, err := r.st.FreeSpace()
	if err != nil {
		t.Fatal(err)
	}
	r.Stop()
	r.storeOpts = []storage.Option{storage.WithMinFree(free + 1<<40)}
	r.Start()
	_, raw2 := o.post(ep)
	if errs := o.keep(ctx, ep, raw2); !errors.Is(errs[0], ErrUnavailable) {
		t.Fatalf("a moment with the disk low: got %v, want ErrUnavailable", errs[0])
	}
	if got := kinds(t, o.backfill(ctx, ep)); !slices.Equal(got, []Kind{KindPost}) {
		t.Fatalf("backfill with the disk low: %v, want the first moment", got)
	}
	o.mustKeep(ctx, ep, o.tombstone(ep, post))
	if _, items, _ := r.svc.Stats(); items != 0 {
		t.Fatalf("the relay keeps %d moments after the tombstone, want 0", items)
	}
	if got := kinds(t, o.backfill(ctx, ep)); !slices.Equal(got, []Kind{KindTombstone}) {
		t.Fatalf("backfill after the tombstone: %v, want the tombstone", got)
	}
}

// TestWithdrawalsCounted: withdrawals are kept only for reactions the
// relay holds, take their reaction's place in the feed's counters, stay
// within the reactions' share of the quota, and can't be padded.
func TestWithdrawalsCounted(t *testing.T) {
	ctx := testCtx(t)
	r := startRelay(t, WithFeedQuota(10, 4, 1<<20)) // reactions may fill 3 items
	o := newFeedOwner(t, ctx, r)
	ep := o.register(ctx)
	post, raw := o.post(ep)
	o.mustKeep(ctx, ep, raw)

	// Withdrawals of reactions the relay never saw: refused, whatever
	// their item ids.
	for range 3 {
		item, dk, _ := o.reaction(ep, post)
		if errs := o.keep(ctx, ep, o.withdrawal(ep, post, item, dk)); !errors.Is(errs[0], ErrNotHeld) {
			t.Fatalf("withdrawal of a reaction never kept: got %v, want ErrNotHeld", errs[0])
		}
	}
	// A held like withdrawn: the withdrawal takes its place.
	a, dka, likeA := o.reaction(ep, post)
	o.mustKeep(ctx, ep, likeA)
	wa := o.withdrawal(ep, post, a, dka)
	if errs := o.keep(ctx, ep, padded(t, ep, wa, ep.audience, 15<<10)); !errors.Is(errs[0], ErrTooLarge) {
		t.Fatalf("withdrawal padded to 15 KiB: got %v, want ErrTooLarge", errs[0])
	}
	o.mustKeep(ctx, ep, wa)
	if _, items, bytes := r.svc.Stats(); items != 2 || bytes != uint64(len(raw)+len(wa)) {
		t.Fatalf("after a like and its withdrawal: %d items, %d bytes; want 2, %d", items, bytes, len(raw)+len(wa))
	}
	// Like, withdraw, like again: the reactions' share (3 items) runs
	// out, withdrawals included.
	b, dkb, likeB := o.reaction(ep, post)
	o.mustKeep(ctx, ep, likeB, o.withdrawal(ep, post, b, dkb))
	_, _, likeC := o.reaction(ep, post)
	if errs := o.keep(ctx, ep, likeC); !errors.Is(errs[0], ErrQuota) {
		t.Fatalf("a like over the reactions' share: got %v, want ErrQuota", errs[0])
	}
	// The author still posts.
	_, raw2 := o.post(ep)
	o.mustKeep(ctx, ep, raw2)
	if got, want := kinds(t, o.backfill(ctx, ep)), []Kind{KindPost, KindWithdraw, KindWithdraw, KindPost}; !slices.Equal(got, want) {
		t.Fatalf("backfill: got %v, want %v", got, want)
	}
}
