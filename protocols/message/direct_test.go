package message

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// sendAndWatch sends text from a to b and returns every state a's events
// showed for it until it was delivered.
func sendAndWatch(t *testing.T, ctx context.Context, a, b *device, text string) []State {
	t.Helper()
	m, err := a.svc.Send(ctx, b.me(), text)
	if err != nil {
		t.Fatal(err)
	}
	var states []State
	for {
		select {
		case e := <-a.events:
			if e.Type != "state" || e.Message == nil || e.Message.ID != m.ID {
				continue
			}
			states = append(states, e.Message.State)
			if e.Message.State == StateDelivered {
				return states
			}
		case <-ctx.Done():
			t.Fatalf("%q: states %v, never delivered", text, states)
		}
	}
}

// pooledIDs returns the ids of the direct streams a keeps to dev.
func pooledIDs(a *device, dev peer.ID) []string {
	p := &a.svc.eng.direct
	p.mu.Lock()
	defer p.mu.Unlock()
	var ids []string
	for _, x := range p.idle[dev] {
		ids = append(ids, x.st.ID())
	}
	return ids
}

// TestDirectStreamReused: consecutive messages to a connected device go
// on the stream the first one opened; and when the device's engine
// restarts (its streams reset), the next message still goes directly, on
// a fresh stream, never waiting on a relay.
func TestDirectStreamReused(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	_, a, b := pair(t, ctx)
	connect(t, ctx, a, b)
	sendAndWatch(t, ctx, a, b, "one")
	first := pooledIDs(a, b.h.ID())
	if len(first) != 1 {
		t.Fatalf("a keeps %d streams to b after one message, want 1", len(first))
	}
	for _, text := range []string{"two", "three"} {
		sendAndWatch(t, ctx, a, b, text)
		if got := pooledIDs(a, b.h.ID()); len(got) != 1 || got[0] != first[0] {
			t.Fatalf("after %q a keeps streams %v, want the first one, %v", text, got, first)
		}
	}

	// b's engine restarts on the same host and connection: the stream a
	// keeps is reset by b's side.
	restart(t, b)
	states := sendAndWatch(t, ctx, a, b, "after the restart")
	for _, st := range states {
		if st == StateQueued {
			t.Fatalf("states %v: the message waited on a relay instead of going directly", states)
		}
	}
	if got := pooledIDs(a, b.h.ID()); len(got) != 1 || got[0] == first[0] {
		t.Fatalf("a keeps streams %v, want one fresh stream (not %s)", got, first[0])
	}
}

// TestStoredStateFollowsEvents: whenever a state event arrives, reading
// the conversation shows that state or a later one. The transport record
// behind "sent" doesn't wait for its write (storage.Batch.CommitAsync), so
// this fails if a read could still find the older state.
func TestStoredStateFollowsEvents(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	_, a, b := pair(t, ctx)
	connect(t, ctx, a, b)
	checked := map[State]int{}
	for i := range 40 {
		m, err := a.svc.Send(ctx, b.me(), fmt.Sprint("message ", i))
		if err != nil {
			t.Fatal(err)
		}
		for delivered := false; !delivered; {
			var e Event
			select {
			case e = <-a.events:
			case <-ctx.Done():
				t.Fatalf("message %d never delivered", i)
			}
			if e.Type != "state" || e.Message == nil || e.Message.ID != m.ID {
				continue
			}
			ms, err := a.svc.Messages(ctx, string(b.me()))
			if err != nil {
				t.Fatal(err)
			}
			k := slices.IndexFunc(ms, func(x Message) bool { return x.ID == m.ID })
			if k < 0 {
				t.Fatalf("message %s not stored", m.ID)
			}
			if got := ms[k].State; got.rank() < e.Message.State.rank() {
				t.Fatalf("after the %s event the store says %s", e.Message.State, got)
			}
			checked[e.Message.State]++
			delivered = e.Message.State == StateDelivered
		}
	}
	if checked[StateSent] == 0 {
		t.Fatalf("no sent event checked (%v)", checked)
	}
}
