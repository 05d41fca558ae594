package message

import (
	"context"
	"crypto/rand"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/protocols/message/pb"
)

// TestDirectLimiter: a peer's bucket lets through a prefix of each frame
// while it has tokens, refills at its rate up to its burst, and is the
// peer's own; when every tracked peer is busy a new one still gets a
// full bucket, in place of the peer used least recently.
func TestDirectLimiter(t *testing.T) {
	now := time.Unix(1000, 0)
	l := newDirectLimiter(func() time.Time { return now }, 10, 20, 2)
	a, b, c := peer.ID("a"), peer.ID("b"), peer.ID("c")
	steps := []struct {
		name    string
		advance time.Duration
		p       peer.ID
		n, want int
	}{
		{"a's burst", 0, a, 16, 16},
		{"a's burst runs out mid-frame", 0, a, 16, 4},
		{"a has nothing left", 0, a, 1, 0},
		{"b has its own bucket", 0, b, 20, 20},
		{"half a second refills a by 5", 500 * time.Millisecond, a, 64, 5},
		{"c finds both busy and takes b's place", 0, c, 20, 20},
		{"a keeps its empty bucket", 0, a, 1, 0},
		{"a refills to its burst, no more", 10 * time.Second, a, 64, 20},
	}
	for _, s := range steps {
		now = now.Add(s.advance)
		if got := l.take(s.p, s.n); got != s.want {
			t.Fatalf("%s: took %d of %d, want %d", s.name, got, s.n, s.want)
		}
	}
	if got, want := l.refused.Load(), int64(16-4+1+64-5+1+64-20); got != want {
		t.Fatalf("refused %d, want %d", got, want)
	}
}

// TestDirectRateLimited: a peer over a device's limit gets RATE_LIMITED
// for the envelopes over it, unopened, and only it: others keep their own
// limit. A real sender over the limit backs off and every message still
// arrives exactly once, whether the refused envelopes go through the
// relay meanwhile or, the relay down, come again directly after the
// sender's rest.
func TestDirectRateLimited(t *testing.T) {
	for _, tt := range []struct {
		name      string
		relayDown bool
	}{
		{"relay up", false},
		{"relay down", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			defer cancel()
			r := newRelay(t)
			slow := func(c *Config) { c.DirectRate, c.DirectBurst = 2, 3 }
			a, b := newDevice(t, "a", r), newDeviceOn(t, "b", newHost(t), slow, r)
			mallory := newDevice(t, "mallory")
			meet(t, ctx, a, b)

			envs := make([][]byte, 5)
			for i := range envs {
				envs[i] = fmt.Appendf(nil, "not an envelope %d", i)
			}
			ack, err := deliverRaw(t, mallory, b, frame(t, &pb.Deliver{RequestId: 1, Envelopes: envs}))
			if err != nil {
				t.Fatal(err)
			}
			want := []pb.DeliverAck_Status{pb.DeliverAck_MALFORMED, pb.DeliverAck_MALFORMED, pb.DeliverAck_MALFORMED, pb.DeliverAck_RATE_LIMITED, pb.DeliverAck_RATE_LIMITED}
			if !slices.Equal(ack.Statuses, want) {
				t.Fatalf("statuses %v, want %v", ack.Statuses, want)
			}
			if got := b.svc.limits.in.refused.Load(); got != 2 {
				t.Fatalf("b refused %d envelopes, want 2", got)
			}

			if tt.relayDown {
				// Deposits fail: the refused envelopes can only go directly.
				if err := r.mb.Close(); err != nil {
					t.Fatal(err)
				}
			}
			connect(t, ctx, a, b)
			// One message at a time, each in an envelope of its own: the
			// 4th is over b's limit for a.
			var texts []string
			for i := range 6 {
				text := fmt.Sprint("one by one ", i)
				texts = append(texts, text)
				states := sendAndWatch(t, ctx, a, b, text)
				if i == 0 && slices.Contains(states, StateQueued) {
					t.Fatalf("a's first message went %v: limited by mallory's traffic", states)
				}
			}
			// Then a burst, from 4 goroutines.
			var wg sync.WaitGroup
			errs := make(chan error, 40)
			for g := range 4 {
				wg.Go(func() {
					for i := range 10 {
						if _, err := a.svc.Send(ctx, b.me(), fmt.Sprintf("burst %d.%d", g, i)); err != nil {
							errs <- err
						}
					}
				})
				for i := range 10 {
					texts = append(texts, fmt.Sprintf("burst %d.%d", g, i))
				}
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
			delivered := func(ms []Message) bool {
				n := 0
				for _, m := range ms {
					if m.State == StateDelivered {
						n++
					}
				}
				return n == len(texts)
			}
			a.waitFor(t, ctx, string(b.me()), "all delivered", delivered)
			got := b.waitFor(t, ctx, string(a.me()), "all received", func(ms []Message) bool { return len(ms) >= len(texts) })
			var gotTexts []string
			for _, m := range got {
				gotTexts = append(gotTexts, m.Text)
			}
			slices.Sort(gotTexts)
			slices.Sort(texts)
			if !slices.Equal(gotTexts, texts) {
				t.Fatalf("b has %d messages %q, want each of %d once", len(gotTexts), gotTexts, len(texts))
			}
			if got := b.svc.limits.in.refused.Load(); got <= 2 {
				t.Fatal("b never refused a's envelopes: the test didn't exceed its limit")
			}
		})
	}
}

// sealedGarbage returns n envelopes from a sealed to b, each alone and
// unreadable: b opens each (the costly part) and answers MALFORMED.
func sealedGarbage(t *testing.T, a, b *device, n int) []unit {
	t.Helper()
	units := make([]unit, n)
	for i := range units {
		payload := make([]byte, 100)
		_, _ = rand.Read(payload)
		env, err := e2ee.SealEnvelope(b.rec.MailboxKey, e2ee.EnvelopeContent{Sender: a.id.Public(), Certificate: a.rec.Raw, Type: e2ee.ContentRatchet, Payload: payload})
		if err != nil {
			t.Fatal(err)
		}
		units[i] = unit{env: env}
	}
	return units
}

// TestDirectSenderRests: once a device answers RATE_LIMITED, the sender's
// lane hands it nothing until its rest ends (it would have sent the
// refused envelopes again at once, round after round), then delivers to
// it again.
func TestDirectSenderRests(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r := newRelay(t)
	slow := func(c *Config) { c.DirectRate, c.DirectBurst = 2, 3 }
	a, b := newDevice(t, "a", r), newDeviceOn(t, "b", newHost(t), slow, r)
	meet(t, ctx, a, b)
	connect(t, ctx, a, b)
	units := sealedGarbage(t, a, b, 10)
	lim := b.svc.limits.in

	a.svc.tryDirect(b.rec, units)
	if got, refused := lim.admitted.Load(), lim.refused.Load(); got != 3 || refused != 7 {
		t.Fatalf("first round: b admitted %d and refused %d envelopes, want 3 and 7", got, refused)
	}
	a.svc.tryDirect(b.rec, units)
	if got, refused := lim.admitted.Load(), lim.refused.Load(); got != 3 || refused != 7 {
		t.Fatalf("a round during the rest: b admitted %d and refused %d envelopes in all, want still 3 and 7", got, refused)
	}

	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for a.svc.limits.out.resting(b.h.ID()) {
		select {
		case <-ctx.Done():
			t.Fatal("a's rest for b never ends")
		case <-tick.C:
		}
	}
	a.svc.tryDirect(b.rec, units)
	if got := lim.admitted.Load(); got <= 3 {
		t.Fatalf("after the rest b admitted %d envelopes in all, want more than 3", got)
	}
}

// TestDirectNormalTrafficNotLimited: with the default limits, real
// traffic goes through untouched: bursts both ways from several
// goroutines, and lane rounds at their largest (maxDirectInFlight frames
// of maxDirectBatch envelopes in flight), round after round.
func TestDirectNormalTrafficNotLimited(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	_, a, b := pair(t, ctx)
	connect(t, ctx, a, b)

	const senders, each = 8, 50
	var wg sync.WaitGroup
	errs := make(chan error, 2*senders*each)
	for _, d := range []struct{ from, to *device }{{a, b}, {b, a}} {
		for g := range senders {
			wg.Go(func() {
				for i := range each {
					if _, err := d.from.svc.Send(ctx, d.to.me(), fmt.Sprintf("%d.%d", g, i)); err != nil {
						errs <- err
					}
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for _, d := range []struct{ from, to *device }{{a, b}, {b, a}} {
		d.from.waitFor(t, ctx, string(d.to.me()), "all delivered", func(ms []Message) bool {
			n := 0
			for _, m := range ms {
				if !m.Incoming && m.State == StateDelivered {
					n++
				}
			}
			return n == senders*each
		})
	}

	// Lane rounds at their largest: 256 envelopes, each alone (sealed to
	// b, unreadable: b opens each and answers MALFORMED), 4 frames of 64
	// in flight, 8 rounds back to back.
	units := sealedGarbage(t, a, b, maxDirectInFlight*maxDirectBatch)
	for range 8 {
		a.svc.tryDirect(b.rec, units)
		if a.svc.limits.out.resting(b.h.ID()) {
			t.Fatal("b answered a RATE_LIMITED")
		}
	}

	for _, d := range []*device{a, b} {
		if got := d.svc.limits.in.refused.Load(); got != 0 {
			t.Fatalf("%s refused %d envelopes of normal traffic", d.rec.Name, got)
		}
	}
	if got := b.svc.limits.in.admitted.Load(); got < 8*int64(len(units)) {
		t.Fatalf("b's limiter admitted %d envelopes, want at least %d", got, 8*len(units))
	}
}
