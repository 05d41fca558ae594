package moments

import (
	"crypto/ed25519"
	"errors"
	"slices"
	"testing"
	"time"
)

// TestDroppedEpochCountedOff: dropping an epoch beyond WithMaxEpochs
// deletes everything of it (its frames, its moments' reactions kept on
// later topics, their index and counter keys) and counts it all off; its
// moments' media are still reported by Purge.
func TestDroppedEpochCountedOff(t *testing.T) {
	ctx := testCtx(t)
	r := startRelay(t, WithMaxEpochs(2))
	o := newFeedOwner(t, ctx, r)
	ep1 := o.register(ctx)
	blob := o.upload(ctx, 1000)
	a, rawA := o.post(ep1, blob)
	_, rawB := o.post(ep1)
	_, rawC := o.post(ep1)
	x, dkx, likeA := o.reaction(ep1, a)
	o.mustKeep(ctx, ep1, rawA, rawB, rawC, likeA, o.withdrawal(ep1, a, x, dkx))

	// The next epoch: a moment of its own, and a late like of an old one.
	ep2 := o.register(ctx)
	d, rawD := o.post(ep2)
	_, _, lateA := o.reaction(ep2, a)
	_, _, likeD := o.reaction(ep2, d)
	o.mustKeep(ctx, ep2, rawD, lateA, likeD)
	if _, items, _ := r.svc.Stats(); items != 7 {
		t.Fatalf("before the drop: %d items, want 7", items)
	}

	o.register(ctx) // drops ep1
	if _, items, bytes := r.svc.Stats(); items != 2 || bytes != uint64(len(rawD)+len(likeD)) {
		t.Fatalf("after dropping the first epoch: %d items, %d bytes; want 2, %d (the second epoch's moment and like)", items, bytes, len(rawD)+len(likeD))
	}
	for _, prefix := range []string{keyIndex, keyReaction, keyCount} {
		want := map[string]int{keyIndex: 2, keyReaction: 1, keyCount: 1}[prefix]
		if n := keysUnder(t, r.st, prefix); n != want {
			t.Errorf("%d keys under %q, want %d (the second epoch's)", n, prefix, want)
		}
	}
	if _, err := o.c.Backfill(ctx, r.h.ID(), ep1.topic, ep1.audience, 0, 0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("backfill of the dropped epoch: got %v, want ErrNotFound", err)
	}
	if got := kinds(t, o.backfill(ctx, ep2)); !slices.Equal(got, []Kind{KindPost, KindReaction}) {
		t.Fatalf("the second epoch serves %v, want its moment and like", got)
	}
	ep3 := o.epochs[2]
	_, _, again := o.reaction(ep3, a)
	if errs := o.keep(ctx, ep3, again); !errors.Is(errs[0], ErrNotHeld) {
		t.Fatalf("a like of a dropped moment: got %v, want ErrNotHeld", errs[0])
	}
	media, err := o.c.Purge(ctx, r.h.ID(), o.owner)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(media, blob) {
		t.Fatalf("purge reports media %v, want the dropped moment's %s", media, blob)
	}
}

// TestDropResumes: an epoch drop cut short (the relay stopped after the
// feed's record dropped the epoch, before its frames went) is finished
// when the relay starts again.
func TestDropResumes(t *testing.T) {
	ctx := testCtx(t)
	r := startRelay(t, WithMaxEpochs(1))
	o := newFeedOwner(t, ctx, r)
	ep := o.register(ctx)
	for range 3 {
		_, raw := o.post(ep)
		o.mustKeep(ctx, ep, raw)
	}
	// Register the next epoch without dropping the first one's frames:
	// what a crash right after the feed's record was written leaves.
	secret, _ := newEpochSecret()
	next := deriveEpoch(2, secret)
	now := time.Now()
	pub := o.owner.Public().(ed25519.PublicKey)
	req := request{kind: reqRegister, owner: pub, topic: next.topic, audience: next.audience.Public().(ed25519.PublicKey), time: now}
	if code, dropped := r.svc.addEpoch(ctx, r.svc.ns.Opaque(pub), req); code != CodeOK || len(dropped) != 1 {
		t.Fatalf("addEpoch: %v, %d dropped", code, len(dropped))
	}
	r.Stop()
	r.Start()
	waitFor(t, ctx, "the drop finished after the restart", func() bool {
		_, items, bytes := r.svc.Stats()
		return items == 0 && bytes == 0 && keysUnder(t, r.st, keyIndex) == 0
	})
}
