package message

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"
)

// holdSyncs keeps d's engine from syncing its store until release is
// called: it stands in for a sync round that hasn't ended, so every wait
// for the disk blocks and no write generation becomes durable.
func holdSyncs(t *testing.T, d *device) (release func()) {
	t.Helper()
	y := &d.svc.eng.sync
	y.mu.Lock()
	for y.round != nil {
		r := y.round
		y.mu.Unlock()
		<-r
		y.mu.Lock()
	}
	round := make(chan struct{})
	y.round = round
	y.mu.Unlock()
	var once sync.Once
	release = func() {
		once.Do(func() {
			y.mu.Lock()
			y.round = nil
			close(round)
			y.mu.Unlock()
		})
	}
	t.Cleanup(release)
	return release
}

// sendAsync sends text from a to b in a goroutine; the channel gets Send's
// result.
func sendAsync(ctx context.Context, a, b *device, text string) <-chan error {
	done := make(chan error, 1)
	go func() {
		_, err := a.svc.Send(ctx, b.me(), text)
		done <- err
	}()
	return done
}

// TestMessageLeavesBeforeItsSync: a message encrypted within its
// session's reservation (e2ee.SendReserve, written and synced with the
// receipt that gave the session its sending chain) leaves while its own
// commit is still syncing. With the sender's disk held, the recipient
// stores it and answers, its receipt inline, while Send hasn't returned;
// the sender records nothing of that answer (sent, delivered) before the
// commit is on disk, and then shows it delivered.
// A message whose session state must be written first (the first after a
// restart: a restored chain has nothing reserved) may leave only once that
// write is on disk.
func TestMessageLeavesBeforeItsSync(t *testing.T) {
	ctx, _, a, b := talking(t)

	release := holdSyncs(t, a)
	done := sendAsync(ctx, a, b, "early")
	b.waitFor(t, ctx, string(a.me()), "b stores the message", func(ms []Message) bool {
		return slices.ContainsFunc(ms, func(m Message) bool { return m.Text == "early" })
	})
	// b answers with its delivery receipt inline; a has the answer once
	// it keeps the stream again, and must record nothing (sent, or the
	// receipt's delivered) before its commit is on disk.
	for len(pooledIDs(a, b.h.ID())) == 0 {
		select {
		case err := <-done:
			t.Fatalf("Send returned (%v) before its commit could sync", err)
		case <-ctx.Done():
			t.Fatal("a never got b's answer")
		case <-time.After(time.Millisecond):
		}
	}
	var states []State
	for drained := false; !drained; {
		select {
		case e := <-a.events:
			if e.Type == "state" && e.Message != nil && e.Message.Text == "early" {
				t.Fatalf("state %s recorded while the commit can't sync", e.Message.State)
			}
		case err := <-done:
			t.Fatalf("Send returned (%v) before its commit could sync", err)
		default:
			drained = true
		}
	}
	release()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for !slices.Contains(states, StateDelivered) {
		select {
		case e := <-a.events:
			if e.Type == "state" && e.Message != nil && e.Message.Text == "early" {
				states = append(states, e.Message.State)
			}
		case <-ctx.Done():
			t.Fatalf("states %v: never delivered", states)
		}
	}
	if slices.Contains(states, StateQueued) {
		t.Fatalf("states %v: want it delivered directly", states)
	}

	restart(t, a)
	release = holdSyncs(t, a)
	done = sendAsync(ctx, a, b, "after a restart")
	e := waitJob(t, ctx, a, b)
	if e.gen == 0 || e.leave != e.gen {
		t.Fatalf("the first message after a restart may leave at generation %d, its commit is %d: want its own commit", e.leave, e.gen)
	}
	release()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	b.waitFor(t, ctx, string(a.me()), "b stores the message after a's restart", func(ms []Message) bool {
		return slices.ContainsFunc(ms, func(m Message) bool { return m.Text == "after a restart" })
	})
}

// waitJob waits until a holds a delivery job to b written in this run and
// returns a copy of its index entry.
func waitJob(t *testing.T, ctx context.Context, a, b *device) jobEntry {
	t.Helper()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		idx := a.svc.jobIndex()
		idx.mu.Lock()
		var found *jobEntry
		if q := idx.byTo[b.me()]; q != nil {
			for _, e := range q.list {
				if !e.gone && e.gen > 0 {
					c := *e
					found = &c
				}
			}
		}
		idx.mu.Unlock()
		if found != nil {
			return *found
		}
		select {
		case <-ctx.Done():
			t.Fatal("no delivery job appeared")
		case <-tick.C:
		}
	}
}
