package testnet

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/kinmesh/kinmesh/protocols/message"
)

// burstSize is 10,000 in make test-long (KINMESH_LONG=1), 1,000 otherwise.
func burstSize() int {
	if v, _ := strconv.ParseBool(os.Getenv("KINMESH_LONG")); v {
		return 10_000
	}
	return 1_000
}

// TestBurst sends an unthrottled burst from one sender and checks that the
// recipient gets every message exactly once, in order, and that the
// sender sees every one delivered: nothing silently dropped.
func TestBurst(t *testing.T) {
	n := startNet(t, Config{Relays: 3, Devices: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	a, b := contactsPair(t, ctx, n)
	total := burstSize()
	start := time.Now()
	for i := range total {
		if _, err := a.Node().Send(ctx, b.AccountID(), fmt.Sprintf("burst %05d", i)); err != nil {
			t.Fatalf("Send %d: %v", i, err)
		}
	}
	sent := time.Since(start)
	got, err := WaitMessages(ctx, b, a.AccountID(), func(ms []message.Message) bool { return len(ms) >= total })
	if err != nil {
		t.Fatalf("recipient has %d of %d: %v", len(got), total, err)
	}
	received := time.Since(start)
	for i, m := range got {
		if want := fmt.Sprintf("burst %05d", i); m.Text != want || m.Seq != uint64(i+1) {
			t.Fatalf("message %d is %q (seq %d), want %q (seq %d)", i, m.Text, m.Seq, want, i+1)
		}
	}
	if len(got) != total {
		t.Fatalf("recipient has %d messages, want exactly %d", len(got), total)
	}
	if _, err := WaitMessages(ctx, a, b.AccountID(), func(ms []message.Message) bool {
		for _, m := range ms {
			if m.State != message.StateDelivered {
				return false
			}
		}
		return len(ms) == total
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d messages: sent in %s, all received after %s, all delivered after %s", total, sent, received, time.Since(start))
}
