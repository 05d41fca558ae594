package message

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/protocols/message/pb"
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

// TestInlineReceipts: a direct delivery that asks for them gets the
// device's delivery receipts in the answer, for its sender's messages,
// and again when the same message comes again (the answer was lost, so
// the sender, which still has it as not sent, delivers it again: as the
// same envelope or sealed afresh). Not inline: to a delivery that didn't
// ask, or from a host that isn't a device of the messages' sender.
func TestInlineReceipts(t *testing.T) {
	ctx, r, a, b := talking(t)

	// A message from a, encrypted and sealed by a's engine but not sent.
	c, id := encryptText(t, a, b, "answer lost")
	item := e2ee.BatchItem{Type: c.Type, Payload: c.Payload}
	env := sealBatch(t, a, b, item)

	// receipt delivers env from host (a's or another) and returns the ids
	// of the receipts that came back inline, decrypted by a.
	receipt := func(from *device, env []byte, want bool) [][]byte {
		t.Helper()
		ack, err := deliverRaw(t, from, b, frame(t, &pb.Deliver{RequestId: 1, Envelopes: [][]byte{env}, WantReceipts: want}))
		if err != nil {
			t.Fatal(err)
		}
		if len(ack.Statuses) != 1 || ack.Statuses[0] != pb.DeliverAck_OK {
			t.Fatalf("statuses %v, want OK", ack.Statuses)
		}
		var ids [][]byte
		a.svc.mu.Lock()
		defer a.svc.mu.Unlock()
		tx := a.svc.begin()
		for _, r := range ack.Receipts {
			in, err := tx.decrypt(e2ee.EnvelopeContent{Sender: b.id.Public(), Type: e2ee.ContentType(r.Type), Payload: r.Payload})
			if err != nil {
				t.Fatalf("inline receipt: %v", err)
			}
			if in.content.GetReceipt().GetKind() != pb.Receipt_DELIVERED {
				t.Fatalf("inline content %v, want a delivery receipt", in.content)
			}
			ids = append(ids, in.content.GetReceipt().GetIds()...)
		}
		if err := tx.commit(); err != nil {
			t.Fatal(err)
		}
		return ids
	}
	one := func(ids [][]byte, when string) {
		t.Helper()
		if len(ids) != 1 || !bytes.Equal(ids[0], id) {
			t.Fatalf("%s: inline receipt for %x, want for %x", when, ids, id)
		}
	}
	one(receipt(a, env, true), "first delivery")
	one(receipt(a, env, true), "the same envelope again")
	one(receipt(a, sealBatch(t, a, b, item), true), "sealed afresh")
	if ids := receipt(a, env, false); len(ids) != 0 {
		t.Fatalf("receipts for %x to a delivery that didn't ask", ids)
	}
	other := newDevice(t, "other", r)
	if ids := receipt(other, env, true); len(ids) != 0 {
		t.Fatalf("receipts for %x inline to a host that isn't a's device", ids)
	}
	ms, err := b.svc.Messages(ctx, string(a.me()))
	if err != nil {
		t.Fatal(err)
	}
	if n := len(slices.DeleteFunc(ms, func(m Message) bool { return m.Text != "answer lost" })); n != 1 {
		t.Fatalf("b stored the message %d times", n)
	}
}

// TestStreamEnvelopesDirect: a Deliver frame that brings a stream
// sealer's encapsulation makes its stream envelopes (and those of the
// later frames on the stream) open; a stream envelope on a stream that
// brought none is malformed; an encapsulation that can't be used resets
// the stream, and nothing is stored.
func TestStreamEnvelopesDirect(t *testing.T) {
	ctx, _, a, b := talking(t)

	sealed := func(text string) e2ee.EnvelopeContent {
		t.Helper()
		c, _ := encryptText(t, a, b, text)
		return c
	}
	sealer, err := e2ee.NewStreamSealer(b.rec.MailboxKey)
	if err != nil {
		t.Fatal(err)
	}
	env := func(c e2ee.EnvelopeContent) []byte {
		t.Helper()
		e, err := sealer.Seal(c)
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	has := func(text string) bool {
		ms, err := b.svc.Messages(ctx, string(a.me()))
		if err != nil {
			t.Fatal(err)
		}
		return slices.ContainsFunc(ms, func(m Message) bool { return m.Text == text })
	}

	// No encapsulation on this stream: the stream envelope can't open.
	ack, err := deliverRaw(t, a, b, frame(t, &pb.Deliver{RequestId: 1, Envelopes: [][]byte{env(sealed("unopenable"))}}))
	if err != nil || len(ack.Statuses) != 1 || ack.Statuses[0] != pb.DeliverAck_MALFORMED {
		t.Fatalf("a stream envelope without the stream's encapsulation: %v, %v; want MALFORMED", ack, err)
	}
	// A broken encapsulation resets the stream.
	if _, err := deliverRaw(t, a, b, frame(t, &pb.Deliver{RequestId: 2, Stream: []byte("short"), Envelopes: [][]byte{env(sealed("never"))}})); err == nil {
		t.Fatal("a frame with a broken encapsulation was answered")
	}
	// With it: stored.
	ack, err = deliverRaw(t, a, b, frame(t, &pb.Deliver{RequestId: 3, Stream: sealer.Enc(), Envelopes: [][]byte{env(sealed("on the stream"))}}))
	if err != nil || len(ack.Statuses) != 1 || ack.Statuses[0] != pb.DeliverAck_OK {
		t.Fatalf("a stream envelope with the stream's encapsulation: %v, %v; want OK", ack, err)
	}
	if !has("on the stream") || has("unopenable") || has("never") {
		t.Fatal("b stores the wrong messages")
	}
}

// encryptText encrypts a text message from a to b with a's engine (its
// session steps and is committed) without sending it, and returns it as
// the content of an envelope from a, with the message's raw id.
func encryptText(t *testing.T, a, b *device, text string) (e2ee.EnvelopeContent, []byte) {
	t.Helper()
	id := newID()
	content, err := encodeContent(&Message{ID: id, SentAt: time.Now(), Seq: 2}, &pb.Content{Body: &pb.Content_Text{Text: &pb.Text{Text: text}}})
	if err != nil {
		t.Fatal(err)
	}
	a.svc.mu.Lock()
	defer a.svc.mu.Unlock()
	tx := a.svc.begin()
	typ, payload, err := tx.ratchetPairwise(b.rec, content, nil)
	if err == nil {
		err = tx.commit()
	}
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := hex.DecodeString(id)
	return e2ee.EnvelopeContent{Sender: a.id.Public(), Certificate: a.rec.Raw, Type: typ, Payload: payload}, raw
}

// talking starts a relay and two devices that are contacts, connected
// directly, with a first message delivered (so each has a session), and
// a context that ends after a minute.
func talking(t *testing.T) (context.Context, *relay, *device, *device) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	r, a, b := pair(t, ctx)
	connect(t, ctx, a, b)
	sendAndWatch(t, ctx, a, b, "first")
	return ctx, r, a, b
}
