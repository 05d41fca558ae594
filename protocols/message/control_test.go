package message

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/storage"
)

// TestControlWhileSyncFails: a control is handed to its feature as soon
// as the transaction that received it is written, before its sync, and
// once only. Handing it over only after the sync would lose it: the
// written transaction marks the envelope seen, so a copy that comes again
// after a failed sync (or after a process crash between write and sync,
// which the written pages survive) is a duplicate. A power loss that drops
// the write brings the envelope again and hands the control over again,
// which features are told to expect (Config.OnControl). And the copy that
// comes again is not acknowledged until the disk has what marked it seen.
func TestControlWhileSyncFails(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r := newRelay(t)
	var got atomic.Int32
	a := newDevice(t, "ada", r)
	b := newDeviceOn(t, "ben", newHost(t), func(c *Config) {
		c.OnControl = func(from e2ee.AccountID, kind string, payload []byte) {
			if kind == "test" && string(payload) == "keys" {
				got.Add(1)
			}
		}
	}, r)
	meet(t, ctx, a, b)

	var failed, syncs atomic.Int32
	var failing atomic.Bool
	failing.Store(true)
	hook := func() error {
		syncs.Add(1)
		if failing.Load() {
			failed.Add(1)
			return errors.New("disk on fire")
		}
		return nil
	}
	b.svc.eng.sync.fail.Store(&hook)

	if err := a.svc.SendControl(ctx, []e2ee.AccountID{b.me()}, "test", []byte("keys")); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, ctx, "ben's sync fails", func() bool { return failed.Load() >= 1 })
	if n := got.Load(); n != 1 {
		t.Fatalf("control handed over %d times by the time its sync failed, want 1", n)
	}
	// The sender keeps trying, and a copy that comes again is a duplicate
	// at ben: it must not be answered before ben's disk has it.
	waitUntil(t, ctx, "ben's syncs fail again", func() bool { return failed.Load() >= 3 })
	if len(a.svc.eng.jobs.recipients()) == 0 && r.held(t, ctx) == 0 {
		t.Fatal("ada's control was acknowledged (and not on the relay) while ben's disk failed")
	}
	failing.Store(false)
	waitUntil(t, ctx, "ada's control job done and the relay emptied", func() bool {
		return len(a.svc.eng.jobs.recipients()) == 0 && r.held(t, ctx) == 0
	})
	t.Logf("ben's syncs: %d (%d failed)", syncs.Load(), failed.Load())
	if n := got.Load(); n != 1 {
		t.Fatalf("control handed over %d times, want 1", n)
	}
}

// waitUntil polls cond until it holds or ctx ends.
func waitUntil(t testing.TB, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting until %s", what)
		case <-tick.C:
		}
	}
}

// held counts the envelopes r's mailboxes hold.
func (r *relay) held(t testing.TB, ctx context.Context) int {
	t.Helper()
	n := 0
	err := r.st.Namespace("mailbox").List(ctx, storage.ListOptions{}, func(key string, _ []byte) error {
		if !strings.HasSuffix(key, ".m") {
			n++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}
