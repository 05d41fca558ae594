package moments

import "testing"

// TestOutboxDropsReplacedHome: an own frame waiting for a home relay that
// is no home any more (the node replaced it, and purges the feed there)
// leaves the outbox rather than being retried there for MaxKeepAge.
func TestOutboxDropsReplacedHome(t *testing.T) {
	ctx := testCtx(t)
	r1, r2 := startRelay(t), startRelay(t)
	n := newNet()
	a := newDevice(t, n, "grandma", r1, r2)
	if err := a.engine().SyncAudience(ctx); err != nil {
		t.Fatal(err)
	}
	r2.Stop()
	m, err := a.engine().Post(ctx, "while relay 2 is down", nil)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, ctx, "relay 1 keeps the moment", func() bool {
		x, err := a.engine().Moment(ctx, m.ID)
		return err == nil && x.Relays == 1
	})
	if got := keysUnder(t, a.st, dkOutbox); got != 1 {
		t.Fatalf("outbox holds %d frames, want the moment for relay 2", got)
	}
	a.Stop()
	a.relays = a.relays[:1] // relay 2 replaced
	a.Start()
	waitFor(t, ctx, "the outbox empty", func() bool { return keysUnder(t, a.st, dkOutbox) == 0 })
}
