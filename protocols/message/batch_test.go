package message

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/protocols/mailbox"
	"github.com/kinmesh/kinmesh/protocols/message/pb"
)

// TestBatchedOfflineDelivery: messages queued for an offline recipient
// travel in batch envelopes (far fewer relay items than messages), and
// after its restart every message arrives exactly once, in order, and
// the sender sees each delivered.
func TestBatchedOfflineDelivery(t *testing.T) {
	const total = 300
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	r, a, b := pair(t, ctx)
	if err := b.svc.Close(); err != nil { // b offline
		t.Fatal(err)
	}
	for i := range total {
		if _, err := a.svc.Send(ctx, b.me(), fmt.Sprintf("m%03d", i)); err != nil {
			t.Fatal(err)
		}
	}
	a.waitFor(t, ctx, string(b.me()), "all queued", func(ms []Message) bool {
		return len(ms) == total && !slices.ContainsFunc(ms, func(m Message) bool { return m.State != StateQueued })
	})

	// What the relay holds: envelopes, some of them batches (how many
	// depends on how fast the lane runs; TestSealJobsGroups checks the
	// grouping).
	items, err := b.relayItems(ctx, r.h.ID(), 1000)
	if err != nil {
		t.Fatal(err)
	}
	if min := (total + e2ee.MaxBatchItems - 1) / e2ee.MaxBatchItems; len(items) < min || len(items) > total {
		t.Fatalf("relay holds %d envelopes for %d messages, want between %d and %d", len(items), total, min, total)
	}
	t.Logf("%d messages in %d envelopes", total, len(items))

	// b comes back: everything arrives once, in order, and is delivered.
	b.svc, err = New(b.svc.cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.svc.Close() })
	got := b.waitFor(t, ctx, string(a.me()), "all received", func(ms []Message) bool { return len(ms) >= total })
	if len(got) != total {
		t.Fatalf("b has %d messages, want %d", len(got), total)
	}
	for i, m := range got {
		if want := fmt.Sprintf("m%03d", i); m.Text != want {
			t.Fatalf("message %d is %q, want %q", i, m.Text, want)
		}
	}
	a.waitFor(t, ctx, string(b.me()), "all delivered", func(ms []Message) bool {
		return !slices.ContainsFunc(ms, func(m Message) bool { return m.State != StateDelivered })
	})
}

// ratchetTexts encrypts texts from a to b as a's lane would, returning
// the inner messages (a session from b's published bundle).
func ratchetTexts(t *testing.T, a, b *device, texts ...string) []e2ee.BatchItem {
	t.Helper()
	var contents [][]byte
	for i, text := range texts {
		content, err := encodeContent(&Message{ID: newID(), SentAt: time.Now(), Seq: uint64(i + 1)}, &pb.Content{Body: &pb.Content_Text{Text: &pb.Text{Text: text}}})
		if err != nil {
			t.Fatal(err)
		}
		contents = append(contents, content)
	}
	return ratchetContents(t, a, b, contents...)
}

// ratchetContents encrypts encoded contents from a to b with a session
// from b's published bundle, as a's lane would, and returns the inner
// messages.
func ratchetContents(t *testing.T, a, b *device, contents ...[]byte) []e2ee.BatchItem {
	t.Helper()
	bundle, err := a.svc.fetchBundle(b.rec)
	if err != nil {
		t.Fatal(err)
	}
	a.svc.mu.Lock()
	defer a.svc.mu.Unlock()
	tx := a.svc.begin()
	var out []e2ee.BatchItem
	for _, content := range contents {
		typ, payload, err := tx.ratchetPairwise(b.rec, content, bundle)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, e2ee.BatchItem{Type: typ, Payload: payload})
	}
	if err := tx.commit(); err != nil {
		t.Fatal(err)
	}
	return out
}

func sealBatch(t *testing.T, from, to *device, items ...e2ee.BatchItem) []byte {
	t.Helper()
	if len(items) == 1 {
		env, err := from.svc.seal(to.rec, items[0].Type, items[0].Payload)
		if err != nil {
			t.Fatal(err)
		}
		return env
	}
	b, err := e2ee.MarshalBatch(items)
	if err != nil {
		t.Fatal(err)
	}
	env, err := from.svc.seal(to.rec, e2ee.ContentBatch, b)
	if err != nil {
		t.Fatal(err)
	}
	return env
}

// TestRebatchedItemsOnce: a message that comes alone from one relay and
// batched with others from another (a retry sealed anew) is stored once;
// a batch's unreadable item is dropped on its own and the rest stored.
func TestRebatchedItemsOnce(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, a, b := pair(t, ctx)
	it := ratchetTexts(t, a, b, "one", "two", "three")
	garbage := e2ee.BatchItem{Type: e2ee.ContentRatchet, Payload: []byte("not a ratchet message")}
	steps := []struct {
		name string
		env  []byte
		want []string
	}{
		{"alone", sealBatch(t, a, b, it[0]), []string{"one"}},
		{"batched again with a new one", sealBatch(t, a, b, it[0], it[1]), []string{"one", "two"}},
		{"with an unreadable item", sealBatch(t, a, b, garbage, it[2], it[1]), []string{"one", "two", "three"}},
	}
	for _, s := range steps {
		if errs := b.svc.receive([][]byte{s.env}, nil, nil); errs[0] != nil {
			t.Fatalf("%s: %v", s.name, errs[0])
		}
		ms, err := b.svc.Messages(ctx, string(a.me()))
		if err != nil {
			t.Fatal(err)
		}
		var texts []string
		for _, m := range ms {
			texts = append(texts, m.Text)
		}
		if !slices.Equal(texts, s.want) {
			t.Fatalf("%s: b has %q, want %q", s.name, texts, s.want)
		}
	}
}

// TestUnitJobsGroups: consecutive jobs that went to the same places share
// batch envelopes of at most MaxBatchItems; a job that went elsewhere
// starts a new one; each envelope, sealed for the relays, opens to its
// jobs' payloads, in order.
func TestUnitJobsGroups(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r, a, b := pair(t, ctx)
	var jobs []*job
	for i := range 2*e2ee.MaxBatchItems + 10 {
		j := &job{To: b.me(), Type: e2ee.ContentRatchet, Payload: []byte(fmt.Sprintf("payload %d", i))}
		if i >= 2*e2ee.MaxBatchItems {
			j.Relays = []string{r.h.ID().String()} // already on the relay
		}
		jobs = append(jobs, j)
	}
	jobs = append(jobs, &job{To: b.me(), Content: []byte("no session yet")})
	jobs = append(jobs, &job{To: b.me(), Type: e2ee.ContentReceipt, Payload: []byte("alone")})
	units, err := a.svc.unitJobs(jobs)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.svc.sealUnits(b.rec, units); err != nil {
		t.Fatal(err)
	}
	if want := []int{e2ee.MaxBatchItems, e2ee.MaxBatchItems, 10, 1}; !slices.Equal(unitSizes(units), want) {
		t.Fatalf("units of %v jobs, want %v", unitSizes(units), want)
	}
	next := 0
	for _, u := range units {
		c, err := b.svc.cfg.Account.MailboxKey.OpenEnvelope(u.env)
		if err != nil {
			t.Fatal(err)
		}
		items, err := envelopeItems(c)
		if err != nil {
			t.Fatal(err)
		}
		for k, it := range items {
			if next == len(jobs)-2 {
				next++ // the job without a session stays out
			}
			if j := jobs[next]; u.jobs[k] != j || it.Type != j.Type || string(it.Payload) != string(j.Payload) {
				t.Fatalf("item %d of a unit is %v %q, want job %d", k, it.Type, it.Payload, next)
			}
			next++
		}
	}
	if next != len(jobs) {
		t.Fatalf("units cover %d jobs, want %d", next, len(jobs))
	}
}

func unitSizes(units []unit) []int {
	var out []int
	for _, u := range units {
		out = append(out, len(u.jobs))
	}
	return out
}

// TestRelayBackWakesLane: a relay that failed a deposit is retried as
// soon as a connection to it comes up again, not after the lane's backoff.
func TestRelayBackWakesLane(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, a, b := pair(t, ctx)
	if err := b.svc.Close(); err != nil { // b offline: mail goes to r
		t.Fatal(err)
	}
	// a's lane backs off for a minute after a failed round.
	cfg := a.svc.cfg
	a.svc.Close()
	cfg.RetryMin, cfg.RetryMax = time.Minute, time.Minute
	var err error
	if a.svc, err = New(cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.svc.Close() })

	r.mb.Close() // the relay's mailbox is down: the deposit fails
	if _, err := a.svc.Send(ctx, b.me(), "while the relay was away"); err != nil {
		t.Fatal(err)
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !a.svc.relayResting(r.h.ID()) {
		select {
		case <-ctx.Done():
			t.Fatal("the failed deposit never rested the relay")
		case <-tick.C:
		}
	}

	// The relay comes back and a reconnects: the message is queued well
	// within the minute of backoff.
	if r.mb, err = mailbox.NewService(r.h, r.st); err != nil {
		t.Fatal(err)
	}
	a.h.Network().ClosePeer(r.h.ID())
	if err := a.h.Connect(ctx, peer.AddrInfo{ID: r.h.ID(), Addrs: r.h.Addrs()}); err != nil {
		t.Fatal(err)
	}
	a.waitFor(t, ctx, string(b.me()), "queued", func(ms []Message) bool { return has(ms, "while the relay was away", StateQueued) })
}

// farAhead has a send b more messages than a ratchet chain can skip, and
// b receive the first: it returns a's texts, their inner messages, and the
// last one sealed (too far ahead for b).
func farAhead(t *testing.T, ctx context.Context) (a, b *device, texts []string, items []e2ee.BatchItem, last []byte) {
	t.Helper()
	_, a, b = pair(t, ctx)
	texts = make([]string, e2ee.MaxSkipPerChain+3)
	for i := range texts {
		texts[i] = fmt.Sprintf("m%04d", i)
	}
	items = ratchetTexts(t, a, b, texts...)
	if errs := b.svc.receive([][]byte{sealBatch(t, a, b, items[0])}, nil, nil); errs[0] != nil {
		t.Fatal(errs[0])
	}
	return a, b, texts, items, sealBatch(t, a, b, items[len(items)-1])
}

// TestTooFarAheadComesAgain: a message more than a ratchet chain can skip
// ahead of the last one received (another relay's copy drained ahead) is
// neither stored nor marked seen: once the ones before it came, the same
// envelope is taken.
func TestTooFarAheadComesAgain(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a, b, texts, items, last := farAhead(t, ctx)
	if errs := b.svc.receive([][]byte{last}, nil, nil); !errors.Is(errs[0], errLater) {
		t.Fatalf("a message %d ahead: %v, want errLater", len(items)-1, errs[0])
	}
	for start := 1; start < len(items)-1; start += 16 { // initial messages: ~1.4 KB each
		env := sealBatch(t, a, b, items[start:min(start+16, len(items)-1)]...)
		if errs := b.svc.receive([][]byte{env}, nil, nil); errs[0] != nil {
			t.Fatal(errs[0])
		}
	}
	if errs := b.svc.receive([][]byte{last}, nil, nil); errs[0] != nil {
		t.Fatalf("the same envelope again: %v", errs[0])
	}
	ms, err := b.svc.Messages(ctx, string(a.me()))
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != len(texts) || ms[len(ms)-1].Text != texts[len(texts)-1] {
		t.Fatalf("b has %d messages (last %q), want %d", len(ms), ms[len(ms)-1].Text, len(texts))
	}
}

// TestTooFarAheadGivesUp: a message still too far ahead a day after it
// first came is dropped as unreadable (and so acked), not left on the
// relays for 15 days: the ones before it are not coming.
func TestTooFarAheadGivesUp(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a, b, _, items, last := farAhead(t, ctx)
	for range 3 {
		if errs := b.svc.receive([][]byte{last}, nil, nil); !errors.Is(errs[0], errLater) {
			t.Fatalf("a message %d ahead, within the wait: %v, want errLater", len(items)-1, errs[0])
		}
	}
	b.svc.mu.Lock()
	b.svc.laterFor = 0 // the day has passed
	b.svc.mu.Unlock()
	if errs := b.svc.receive([][]byte{last}, nil, nil); errs[0] == nil || errors.Is(errs[0], errLater) || errors.Is(errs[0], errTransient) {
		t.Fatalf("after the wait: %v, want it unreadable", errs[0])
	}
	if errs := b.svc.receive([][]byte{last}, nil, nil); errs[0] != nil {
		t.Fatalf("the same envelope once more: %v, want nil (seen)", errs[0])
	}
	if ms, _ := b.svc.Messages(ctx, string(a.me())); len(ms) != 1 {
		t.Fatalf("b has %d messages, want the first only", len(ms))
	}
}

// pair starts a relay and two devices homed on it that are contacts.
func pair(t *testing.T, ctx context.Context) (*relay, *device, *device) {
	t.Helper()
	r := newRelay(t)
	a, b := newDevice(t, "a", r), newDevice(t, "b", r)
	meet(t, ctx, a, b)
	return r, a, b
}

// TestIDTakenByAnother: a message reusing the id of one b already has from
// someone else is not stored, and b sends no delivery receipt for it, so
// its sender can't see it delivered; b's message keeps its text and
// sender.
func TestIDTakenByAnother(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r := newRelay(t)
	a, b, c := newDevice(t, "a", r), newDevice(t, "b", r), newDevice(t, "c", r)
	meet(t, ctx, a, b, c)
	sendAndWatch(t, ctx, a, b, "from a")
	ms, _ := b.svc.Messages(ctx, string(a.me()))
	if len(ms) != 1 {
		t.Fatalf("b has %d messages from a", len(ms))
	}
	content, err := encodeContent(&Message{ID: ms[0].ID, SentAt: time.Now(), Seq: 1}, &pb.Content{Body: &pb.Content_Text{Text: &pb.Text{Text: "from c"}}})
	if err != nil {
		t.Fatal(err)
	}
	env := sealBatch(t, c, b, ratchetContents(t, c, b, content)...)
	before := b.jobsQueued(t)
	if errs := b.svc.receive([][]byte{env}, nil, nil); errs[0] != nil {
		t.Fatal(errs[0])
	}
	if got := b.jobsQueued(t) - before; got != 0 {
		t.Errorf("b queued %d jobs (a receipt) for c's message with a's id, want 0", got)
	}
	if got, _ := b.svc.Message(ms[0].ID); got.From != string(a.me()) || got.Text != "from a" {
		t.Errorf("b's message %s is now %q from %s", ms[0].ID, got.Text, got.From)
	}
	if cs, _ := b.svc.Messages(ctx, string(c.me())); len(cs) != 0 {
		t.Errorf("b stored %d messages from c", len(cs))
	}
}

// TestRetireRelay: mail a contact left on a relay that is no longer one of
// the recipient's homes (the recipient moved while the sender still had
// the old record) is drained and delivered before that relay's mailbox is
// purged; the relay then holds nothing for the recipient.
func TestRetireRelay(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	old, a, b := pair(t, ctx)
	if err := b.svc.Close(); err != nil { // b offline: the message waits on old
		t.Fatal(err)
	}
	sent, err := a.svc.Send(ctx, b.me(), "left on the old home")
	if err != nil {
		t.Fatal(err)
	}
	a.waitFor(t, ctx, string(b.me()), "queued on the old home", func(ms []Message) bool {
		return len(ms) == 1 && ms[0].State == StateQueued
	})

	// b comes back having moved to another home: old is not drained as a
	// home any more.
	home := newRelay(t)
	rec := b.rec.Record
	rec.Seq++
	rec.IssuedAt = time.Now()
	rec.HomeRelays = []ma.Multiaddr{home.addr()}
	if b.rec, err = rec.Sign(b.id); err != nil {
		t.Fatal(err)
	}
	cfg := b.svc.cfg
	cfg.Account.Record = b.rec
	if b.svc, err = New(cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.svc.Close() })

	purged, err := b.svc.RetireRelay(ctx, peer.AddrInfo{ID: old.h.ID(), Addrs: old.h.Addrs()})
	if err != nil || purged != 0 {
		t.Fatalf("RetireRelay = %d, %v; want 0 left to purge, nil", purged, err)
	}
	b.waitFor(t, ctx, string(a.me()), "the message from the old home", func(ms []Message) bool {
		return len(ms) == 1 && ms[0].ID == sent.ID
	})
	a.waitFor(t, ctx, string(b.me()), "delivered", func(ms []Message) bool {
		return len(ms) == 1 && ms[0].State == StateDelivered
	})
	if items, err := b.relayItems(ctx, old.h.ID(), 0); err != nil || len(items) != 0 {
		t.Fatalf("the old home holds %d items (%v)", len(items), err)
	}
}

// relayItems fetches (up to limit; 0 for a page's worth) what d's mailbox
// on relay holds, as its owner, without acking.
func (d *device) relayItems(ctx context.Context, relay peer.ID, limit int) ([]mailbox.Item, error) {
	mc, err := mailbox.NewClient(d.h)
	if err != nil {
		return nil, err
	}
	sess, err := mc.Open(ctx, relay, d.svc.cfg.Account.MailboxAuth)
	if err != nil {
		return nil, err
	}
	defer sess.Close()
	items, _, err := sess.Fetch(ctx, 0, limit)
	return items, err
}
