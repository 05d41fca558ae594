package message

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"

	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/protocols/message/pb"
	"github.com/kinmesh/kinmesh/protocols/wire"
)

func has(ms []Message, text string, st State) bool {
	for _, m := range ms {
		if m.Text == text && (st == "" || m.State == st) {
			return true
		}
	}
	return false
}

func TestDirectAndRelayed(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r := newRelay(t)
	a, b := newDevice(t, "a", r), newDevice(t, "b", r)
	meet(t, ctx, a, b)

	// b is reachable: a dials it, hands the envelope over; b's receipt
	// makes it delivered.
	a.h.Peerstore().AddAddrs(b.h.ID(), b.h.Addrs(), time.Hour)
	if err := a.h.Connect(ctx, peer.AddrInfo{ID: b.h.ID(), Addrs: b.h.Addrs()}); err != nil {
		t.Fatal(err)
	}
	m, err := a.svc.Send(ctx, b.me(), "direct")
	if err != nil {
		t.Fatal(err)
	}
	a.waitFor(t, ctx, string(b.me()), "delivered", func(ms []Message) bool { return has(ms, "direct", StateDelivered) })
	got := b.waitFor(t, ctx, string(a.me()), "received", func(ms []Message) bool { return has(ms, "direct", StateReceived) })
	if got[0].ID != m.ID || got[0].From != string(a.me()) || !got[0].Incoming {
		t.Fatalf("recipient's copy %+v, want id %s from %s", got[0], m.ID, a.me())
	}

	// b goes away: the next message waits on b's relay, then arrives.
	if err := b.svc.Close(); err != nil {
		t.Fatal(err)
	}
	a.h.Network().ClosePeer(b.h.ID())
	if _, err := a.svc.Send(ctx, b.me(), "relayed"); err != nil {
		t.Fatal(err)
	}
	a.waitFor(t, ctx, string(b.me()), "queued", func(ms []Message) bool { return has(ms, "relayed", StateQueued) })
}

func TestSendErrors(t *testing.T) {
	ctx := context.Background()
	r := newRelay(t)
	a, b := newDevice(t, "a", r), newDevice(t, "b", r)
	tests := []struct {
		name string
		to   e2ee.AccountID
		text string
		want error
	}{
		{"unknown contact", b.me(), "hi", ErrUnknownContact},
		{"empty", b.me(), "", ErrEmpty},
		{"too long", b.me(), string(bytes.Repeat([]byte("x"), MaxTextLen+1)), ErrTooLong},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := a.svc.Send(ctx, tt.to, tt.text); !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
	a.book.Learn(b.rec)
	a.book.blocked[b.me()] = true
	if _, err := a.svc.Send(ctx, b.me(), "hi"); !errors.Is(err, ErrBlocked) {
		t.Fatalf("blocked: got %v", err)
	}
	if _, err := a.svc.SendGroup(ctx, newID(), "hi"); !errors.Is(err, ErrUnknownGroup) {
		t.Fatalf("unknown group: got %v", err)
	}
}

// deliverRaw sends frame bytes on a raw /kinmesh/msg stream and returns
// the device's answer.
func deliverRaw(t *testing.T, from, to *device, frame []byte) (*pb.DeliverAck, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	from.h.Peerstore().AddAddrs(to.h.ID(), to.h.Addrs(), time.Hour)
	s, err := from.h.NewStream(ctx, to.h.ID(), ID)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Write(frame); err != nil {
		return nil, err
	}
	var ack pb.DeliverAck
	if err := wire.NewReader(s).Read(&ack, 4096); err != nil {
		return nil, err
	}
	return &ack, nil
}

func frame(t *testing.T, m proto.Message) []byte {
	var buf bytes.Buffer
	if err := wire.Write(&buf, m, 8<<20); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestHostileDeliveries: garbage, forged and oversized deliveries get
// typed answers (or a reset), change nothing, and the device keeps working.
func TestHostileDeliveries(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r := newRelay(t)
	a, b, mallory := newDevice(t, "a", r), newDevice(t, "b", r), newDevice(t, "mallory", r)
	meet(t, ctx, a, b)
	meet(t, ctx, mallory, b)
	exchange(t, ctx, a, b, "first") // sessions both ways

	// An envelope sealed to b, claiming to be from a, but encrypted by
	// mallory's session with b: the claimed sender doesn't match.
	content, _ := encodeContent(&Message{ID: newID(), SentAt: time.Now(), Seq: 1}, &pb.Content{Body: &pb.Content_Text{Text: &pb.Text{Text: "I am a"}}})
	bundle, err := mallory.svc.cfg.Prekeys.Fetch(ctx, r.h.ID(), b.me())
	if err != nil {
		t.Fatal(err)
	}
	ss, err := e2ee.Initiate(mallory.id, bundle)
	if err != nil {
		t.Fatal(err)
	}
	ct, _, err := ss.Encrypt(content, nil)
	if err != nil {
		t.Fatal(err)
	}
	forged, err := e2ee.SealEnvelope(b.rec.MailboxKey, e2ee.EnvelopeContent{Sender: a.id.Public(), Certificate: a.rec.Raw, Type: e2ee.ContentPreKeyMessage, Payload: ct})
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name  string
		frame []byte
		want  []pb.DeliverAck_Status // nil: the stream is reset
	}{
		{"garbage envelope", frame(t, &pb.Deliver{RequestId: 1, Envelopes: [][]byte{[]byte("not an envelope")}}), []pb.DeliverAck_Status{pb.DeliverAck_MALFORMED}},
		{"forged sender", frame(t, &pb.Deliver{RequestId: 2, Envelopes: [][]byte{forged}}), []pb.DeliverAck_Status{pb.DeliverAck_MALFORMED}},
		{"too many envelopes", frame(t, &pb.Deliver{RequestId: 3, Envelopes: make([][]byte, maxDirectBatch+1)}), func() []pb.DeliverAck_Status {
			out := make([]pb.DeliverAck_Status, maxDirectBatch+1)
			for i := range out {
				out[i] = pb.DeliverAck_TOO_LARGE
			}
			return out
		}()},
		{"frame over the cap", append([]byte{0xff, 0xff, 0xff, 0x7f}, make([]byte, 64)...), nil},
		{"not protobuf", []byte{0x03, 0xff, 0xff, 0xff}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ack, err := deliverRaw(t, mallory, b, tt.frame)
			if tt.want == nil {
				if err == nil {
					t.Fatalf("got an answer %+v, want the stream reset", ack)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(ack.Statuses) != len(tt.want) {
				t.Fatalf("got %d statuses, want %d", len(ack.Statuses), len(tt.want))
			}
			for i := range tt.want {
				if ack.Statuses[i] != tt.want[i] {
					t.Fatalf("status %d = %v, want %v", i, ack.Statuses[i], tt.want[i])
				}
			}
		})
	}
	if ms, _ := b.svc.Messages(ctx, string(a.me())); len(ms) != 2 || has(ms, "I am a", "") {
		t.Fatalf("b stored %+v from hostile deliveries", ms)
	}
	// The forged first message left b's sessions with a alone: b's next
	// message to a goes in a session a holds.
	if ss, _, _ := storedSessions(t, ctx, b, a); len(ss) == 0 || slices.ContainsFunc(ss, func(s *e2ee.Session) bool { return s.Peer().AccountID() != a.me() }) {
		t.Fatalf("b's sessions with a after the forged message: %d, not all a's", len(ss))
	}
	// Still working, both ways.
	if _, err := a.svc.Send(ctx, b.me(), "still fine"); err != nil {
		t.Fatal(err)
	}
	b.waitFor(t, ctx, string(a.me()), "received", func(ms []Message) bool { return has(ms, "still fine", StateReceived) })
	if _, err := b.svc.Send(ctx, a.me(), "and back"); err != nil {
		t.Fatal(err)
	}
	a.waitFor(t, ctx, string(b.me()), "received", func(ms []Message) bool { return has(ms, "and back", StateReceived) })
}

// TestReceiptOnlyFromRecipient: a receipt naming a's message to b, sent
// by someone else, moves nothing.
func TestReceiptOnlyFromRecipient(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r := newRelay(t)
	a, b, c := newDevice(t, "a", r), newDevice(t, "b", r), newDevice(t, "c", r)
	meet(t, ctx, a, b, c)
	if err := b.svc.Close(); err != nil { // b offline: the message stays queued
		t.Fatal(err)
	}
	m, err := a.svc.Send(ctx, b.me(), "for b only")
	if err != nil {
		t.Fatal(err)
	}
	a.waitFor(t, ctx, string(b.me()), "queued", func(ms []Message) bool { return has(ms, "for b only", StateQueued) })
	c.svc.mu.Lock()
	tx := c.svc.begin()
	id, _ := hex.DecodeString(m.ID)
	if err := tx.queueReceipt(a.me(), pb.Receipt_DELIVERED, [][]byte{id}); err != nil {
		c.svc.mu.Unlock()
		t.Fatal(err)
	}
	// A text right behind the receipt, in the same lane: once a has the
	// text, it has processed the receipt.
	if _, err := tx.stageSend(a.me(), "after the receipt"); err != nil {
		c.svc.mu.Unlock()
		t.Fatal(err)
	}
	if err := tx.commit(); err != nil {
		c.svc.mu.Unlock()
		t.Fatal(err)
	}
	c.svc.mu.Unlock()
	c.svc.wake(a.me())
	a.waitFor(t, ctx, string(c.me()), "c's text", func(ms []Message) bool { return has(ms, "after the receipt", StateReceived) })
	if got, _ := a.svc.Message(m.ID); got.State != StateQueued {
		t.Fatalf("a's message went %s on a receipt from c", got.State)
	}
}

func TestSetState(t *testing.T) {
	tests := []struct {
		name       string
		from       State
		queued     int
		to         State
		toQueued   int
		want       State
		wantQueued int
		changed    bool
	}{
		{"pending to queued", StatePending, 0, StateQueued, 2, StateQueued, 2, true},
		{"queued grows", StateQueued, 2, StateQueued, 3, StateQueued, 3, true},
		{"queued never shrinks", StateQueued, 3, StateQueued, 2, StateQueued, 3, false},
		{"queued to sent", StateQueued, 3, StateSent, 0, StateSent, 0, true},
		{"sent never back to queued", StateSent, 0, StateQueued, 3, StateSent, 0, false},
		{"delivered never back to sent", StateDelivered, 0, StateSent, 0, StateDelivered, 0, false},
		{"delivered to read", StateDelivered, 0, StateRead, 0, StateRead, 0, true},
		{"read is final over delivered", StateRead, 0, StateDelivered, 0, StateRead, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := &Message{State: tt.from, Queued: tt.queued}
			if got := setState(m, "x", tt.to, tt.toQueued); got != tt.changed {
				t.Fatalf("changed = %v, want %v", got, tt.changed)
			}
			if m.State != tt.want || m.Queued != tt.wantQueued {
				t.Fatalf("got %s/%d, want %s/%d", m.State, m.Queued, tt.want, tt.wantQueued)
			}
		})
	}
	g := &Message{Group: "g", State: StatePending, Recipients: map[string]State{"a": StatePending, "b": StatePending}}
	setState(g, "a", StateDelivered, 0)
	if g.State != StatePending {
		t.Fatalf("group state %s with one member pending, want pending", g.State)
	}
	setState(g, "b", StateDelivered, 0)
	if g.State != StateDelivered {
		t.Fatalf("group state %s with all delivered, want delivered", g.State)
	}
}

// FuzzReceive: arbitrary bytes as envelopes never panic and never store a
// message or change a session.
func FuzzReceive(f *testing.F) {
	r := newRelay(f)
	a, b := newDevice(f, "a", r), newDevice(f, "b", r)
	ctx := context.Background()
	meet(f, ctx, a, b)
	env, _ := e2ee.SealEnvelope(b.rec.MailboxKey, e2ee.EnvelopeContent{Sender: a.id.Public(), Type: e2ee.ContentRatchet, Payload: []byte("x")})
	f.Add(env)
	// A batch envelope: its items reach the same decoders one by one.
	batch, err := e2ee.MarshalBatch([]e2ee.BatchItem{{Type: e2ee.ContentRatchet, Payload: []byte("x")}, {Type: e2ee.ContentRatchet, Payload: []byte("y")}})
	if err != nil {
		f.Fatal(err)
	}
	env, _ = e2ee.SealEnvelope(b.rec.MailboxKey, e2ee.EnvelopeContent{Sender: a.id.Public(), Type: e2ee.ContentBatch, Payload: batch})
	f.Add(env)
	f.Add([]byte{})
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, data []byte) {
		errs := b.svc.receive([][]byte{data}, nil, nil)
		if len(errs) != 1 {
			t.Fatalf("%d results for 1 envelope", len(errs))
		}
		if ms, _ := b.svc.Messages(ctx, string(a.me())); len(ms) != 0 {
			t.Fatalf("stored %+v from fuzz input", ms)
		}
	})
}

// FuzzDeliverFrame: arbitrary frames into the direct handler's decoder
// never panic; the scan that counts envelopes before decoding accepts
// exactly what proto.Unmarshal accepts and counts what it decodes; a frame
// of at most maxDirectBatch envelopes decodes (and re-encodes), and one
// with more is refused undecoded.
func FuzzDeliverFrame(f *testing.F) {
	f.Add([]byte{0x00})
	f.Add([]byte{0x05, 0x08, 0x01, 0x12, 0x01, 0x00})
	f.Add(prefixed(emptyEnvelopes(maxDirectBatch + 1)))
	f.Add(prefixed(emptyEnvelopes(1 << 20))) // 2 MiB: 48 MiB decoded
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := readFrame(bufio.NewReader(bytes.NewReader(data)), maxDirectFrame, noReserve)
		if err != nil {
			return
		}
		shape, serr := scanDeliver(b)
		var want pb.Deliver
		uerr := proto.Unmarshal(b, &want)
		if (serr == nil) != (uerr == nil) {
			t.Fatalf("scan: %v; proto.Unmarshal: %v", serr, uerr)
		}
		if serr != nil {
			return
		}
		size := 0
		for _, e := range want.Envelopes {
			size += len(e)
		}
		if shape.envelopes != len(want.Envelopes) || shape.bytes != size || shape.requestID != want.RequestId {
			t.Fatalf("scan: %d envelopes of %d bytes, request %d; proto.Unmarshal: %d of %d, request %d",
				shape.envelopes, shape.bytes, shape.requestID, len(want.Envelopes), size, want.RequestId)
		}
		got, _, err := decodeDeliver(b, noReserve)
		if len(want.Envelopes) > maxDirectBatch {
			if !errors.Is(err, errTooManyEnvelopes) || got != nil {
				t.Fatalf("%d envelopes: got %v, want errTooManyEnvelopes", len(want.Envelopes), err)
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(got, &want) {
			t.Fatal("decodeDeliver and proto.Unmarshal disagree")
		}
		if _, err := proto.Marshal(got); err != nil {
			t.Fatalf("re-encode: %v", err)
		}
	})
}

// FuzzContent: the plaintext decoder; whatever decodes re-encodes.
func FuzzContent(f *testing.F) {
	b, _ := encodeContent(&Message{ID: newID(), SentAt: time.Now(), Seq: 1}, &pb.Content{Body: &pb.Content_Text{Text: &pb.Text{Text: "hi"}}})
	f.Add(b)
	f.Fuzz(func(t *testing.T, data []byte) {
		var c pb.Content
		if proto.Unmarshal(data, &c) != nil {
			return
		}
		if _, err := proto.Marshal(&c); err != nil {
			t.Fatal(err)
		}
	})
}

// FuzzDeliverAck: arbitrary bytes as the device's answer, decoded as the
// sender decodes it and its receipts applied, never panic and never move
// a message's state.
func FuzzDeliverAck(f *testing.F) {
	r := newRelay(f)
	a, b := newDevice(f, "a", r), newDevice(f, "b", r)
	ctx := context.Background()
	meet(f, ctx, a, b)
	if err := b.svc.Close(); err != nil { // the message stays queued
		f.Fatal(err)
	}
	m, err := a.svc.Send(ctx, b.me(), "waiting")
	if err != nil {
		f.Fatal(err)
	}
	id, _ := hex.DecodeString(m.ID)
	receipt, _ := proto.Marshal(&pb.Content{Id: id, Body: &pb.Content_Receipt{Receipt: &pb.Receipt{Ids: [][]byte{id}}}})
	ack, _ := proto.Marshal(&pb.DeliverAck{RequestId: 1, Statuses: []pb.DeliverAck_Status{pb.DeliverAck_OK},
		Receipts: []*pb.InlineReceipt{{Type: uint32(e2ee.ContentRatchet), Payload: receipt}}})
	f.Add(ack)
	f.Add([]byte{})
	f.Add([]byte{0x1a, 0x02, 0x08, 0x03})
	f.Fuzz(func(t *testing.T, data []byte) {
		var ack pb.DeliverAck
		if proto.Unmarshal(data, &ack) != nil {
			return
		}
		if _, err := a.svc.recordTransport(b.rec, nil, nil, nil, ack.Receipts); err != nil {
			t.Fatal(err)
		}
		got, ok := a.svc.Message(m.ID)
		if !ok {
			t.Fatal("message gone")
		}
		if got.State.rank() > StateQueued.rank() {
			t.Fatalf("state %s from fuzz input", got.State)
		}
	})
}
