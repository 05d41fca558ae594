package message

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/kinmesh/kinmesh/protocols/e2ee"
)

const (
	recMe   = e2ee.AccountID("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")
	recPeer = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
	recID   = "0123456789abcdef0123456789abcdef"
)

// recordMessages are messages of every shape a device stores.
func recordMessages() map[string]*Message {
	at := time.UnixMilli(1_780_000_000_123).Add(456)
	return map[string]*Message{
		"outgoing": {ID: recID, From: string(recMe), To: recPeer, Text: "hi", SentAt: at, Seq: 7, State: StateQueued, Queued: 3},
		"incoming": {ID: recID, From: recPeer, To: string(recMe), Text: "hello", SentAt: at, Seq: 1, State: StateReceived, Incoming: true, ReceivedAt: at.Add(time.Second)},
		"own group": {ID: recID, From: string(recMe), To: "g1", Group: "g1", Text: "all", SentAt: at, Seq: 2, State: StateSent,
			Recipients: map[string]State{recPeer: StateDelivered, "cccc": StateRead, "dddd": "a state from later"}},
		"group":        {ID: recID, From: recPeer, To: "g1", Group: "g1", Text: "x", SentAt: at, Seq: 9, State: StateReceived, Incoming: true, ReceivedAt: at},
		"failed":       {ID: recID, From: string(recMe), To: recPeer, Text: "x", SentAt: at, State: StateFailed, Reason: "blocked"},
		"other id":     {ID: "not-hex", From: string(recMe), To: recPeer, SentAt: at, State: StatePending},
		"upper hex id": {ID: "0123456789ABCDEF0123456789ABCDEF", From: string(recMe), To: recPeer, SentAt: at, State: StatePending},
		"odd parties":  {ID: recID, From: "someone", To: "else", SentAt: at, State: "made up"},
		"far future":   {ID: recID, From: recPeer, To: string(recMe), SentAt: time.UnixMilli(1 << 62), State: StateReceived, Incoming: true, ReceivedAt: at},
		"far past":     {ID: recID, From: recPeer, To: string(recMe), SentAt: time.UnixMilli(-1 << 62), State: StateReceived, Incoming: true, ReceivedAt: time.UnixMilli(0)},
		"zero time":    {ID: recID, From: string(recMe), To: recPeer, State: StatePending},
	}
}

// sameMessage compares two messages, times by instant.
func sameMessage(a, b *Message) bool {
	x, y := *a, *b
	if !x.SentAt.Equal(y.SentAt) || !x.ReceivedAt.Equal(y.ReceivedAt) {
		return false
	}
	x.SentAt, y.SentAt, x.ReceivedAt, y.ReceivedAt = time.Time{}, time.Time{}, time.Time{}, time.Time{}
	if len(x.Recipients) == 0 && len(y.Recipients) == 0 {
		x.Recipients, y.Recipients = nil, nil
	}
	return reflect.DeepEqual(x, y)
}

// TestMessageRecord: every shape of message reads back as it was
// written, and a typical one takes at most half the bytes of its JSON.
func TestMessageRecord(t *testing.T) {
	for name, m := range recordMessages() {
		b, err := encodeMessage(m, recMe)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if b[0] != recordV1 {
			t.Fatalf("%s: record starts with %#x", name, b[0])
		}
		got, err := decodeMessage(b, recMe)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !sameMessage(got, m) {
			t.Fatalf("%s: read back %+v, wrote %+v", name, got, m)
		}
		// Read by another account, the parties stay where they were.
		if name == "odd parties" {
			if got, _ := decodeMessage(b, "other"); !sameMessage(got, m) {
				t.Fatalf("%s: read back %+v by another account", name, got)
			}
		}
	}
	for _, name := range []string{"outgoing", "incoming"} {
		m := recordMessages()[name]
		b, _ := encodeMessage(m, recMe)
		j, _ := json.Marshal(m)
		if len(b)*2 > len(j) {
			t.Fatalf("%s: record of %d bytes, JSON of %d", name, len(b), len(j))
		}
	}
}

// TestJobRecord: a job reads back as it was written; its in-memory fields
// stay the caller's.
func TestJobRecord(t *testing.T) {
	at := time.UnixMilli(1_780_000_000_123).Add(789)
	for name, j := range map[string]*job{
		"payload": {Seq: 5, MsgID: recID, To: recMe, Payload: []byte{1, 2, 3}, Type: 2, Created: at, Relays: []string{"r1", "r2"}, Attempts: 4, LastErr: "timeout"},
		"content": {Seq: 6, To: recMe, Group: "g1", Content: []byte("plain"), Created: at, Sent: true},
		"legacy":  {Seq: 7, MsgID: "other", To: recMe, Envelope: []byte("sealed"), Created: at},
	} {
		b, err := encodeJob(j)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		got := &job{Key: "k", gen: 3}
		if err := decodeJob(b, got); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !got.Created.Equal(j.Created) {
			t.Fatalf("%s: created %v, wrote %v", name, got.Created, j.Created)
		}
		want := *j
		want.Key, want.gen, want.Created = "k", 3, got.Created
		if !reflect.DeepEqual(*got, want) {
			t.Fatalf("%s: read back %+v, wrote %+v", name, *got, want)
		}
	}
}

// TestRecordsFromJSON: records in the JSON engines before wrote read as
// they always did.
func TestRecordsFromJSON(t *testing.T) {
	for name, m := range recordMessages() {
		if m.SentAt.Year() > 9999 || m.SentAt.Year() < 0 {
			continue // JSON can't hold it
		}
		b, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		got, err := decodeMessage(b, "anyone")
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !sameMessage(got, m) {
			t.Fatalf("%s: read %+v from JSON, want %+v", name, got, m)
		}
	}
	j := &job{Seq: 5, MsgID: recID, To: recMe, Payload: []byte{1, 2, 3}, Type: 2, Created: time.Now(), Relays: []string{"r1"}}
	b, _ := json.Marshal(j)
	var got job
	if err := decodeJob(b, &got); err != nil || got.MsgID != j.MsgID || !bytes.Equal(got.Payload, j.Payload) || !got.Created.Equal(j.Created) {
		t.Fatalf("job from JSON: %+v, %v", got, err)
	}
}

// TestRecordRejects: damaged records are errors, never messages.
func TestRecordRejects(t *testing.T) {
	// A protobuf field's tag: its number and wire type.
	varint := func(field byte) byte { return field << 3 }
	bytesField := func(field byte) byte { return field<<3 | 2 }
	good, _ := encodeMessage(recordMessages()["outgoing"], recMe)
	for name, b := range map[string][]byte{
		"empty":        nil,
		"unknown form": append([]byte{2}, good[1:]...),
		"bad protobuf": {recordV1, 0xff},
		"bad state":    {recordV1, varint(8), 99},
		"short id":     {recordV1, bytesField(1), 3, 1, 2, 3},
		"ns too large": {recordV1, varint(18), 0xc0, 0x84, 0x3d}, // 1,000,000
		"bad JSON":     []byte(`{"id":`),
	} {
		if _, err := decodeMessage(b, recMe); !errors.Is(err, errRecord) {
			t.Fatalf("%s: got %v, want errRecord", name, err)
		}
	}
	for name, b := range map[string][]byte{
		"empty":                 nil,
		"unknown form":          {2},
		"bad protobuf":          {recordV1, 0xff},
		"content type 256":      {recordV1, varint(8), 0x80, 0x02},
		"short message id":      {recordV1, bytesField(2), 3, 1, 2, 3},
		"ns too large":          {recordV1, varint(15), 0xc0, 0x84, 0x3d},
		"bad JSON":              []byte(`{"seq":`),
		"JSON of another shape": []byte(`{"seq":"x"}`),
	} {
		if err := decodeJob(b, &job{}); !errors.Is(err, errRecord) {
			t.Fatalf("job, %s: got %v, want errRecord", name, err)
		}
	}
}

// TestRecordsWrittenBefore: a device whose store holds the JSON records
// of engines before (a delivered message, an incoming one, a queued one
// with its delivery job) shows them all after a restart, finishes the
// queued one's delivery from its old job, and rewrites what changes in
// the new form.
func TestRecordsWrittenBefore(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	_, a, b := pair(t, ctx)
	exchange(t, ctx, a, b, "first") // one delivered each way
	if err := b.svc.Close(); err != nil {
		t.Fatal(err)
	}
	a.h.Network().ClosePeer(b.h.ID())
	queued, err := a.svc.Send(ctx, b.me(), "while away")
	if err != nil {
		t.Fatal(err)
	}
	a.waitFor(t, ctx, string(b.me()), "queued", func(ms []Message) bool { return has(ms, "while away", StateQueued) })
	before, err := a.svc.Messages(ctx, string(b.me()))
	if err != nil {
		t.Fatal(err)
	}

	// a stops; its records go back to JSON, as engines before wrote them.
	if err := a.svc.Close(); err != nil {
		t.Fatal(err)
	}
	ns := a.st.Namespace("message")
	var jobs []string
	for _, prefix := range []string{"m/", "j/"} {
		var keys []string
		var vals [][]byte
		if err := ns.List(ctx, listPrefix(prefix), func(k string, v []byte) error {
			var out any
			if prefix == "m/" {
				m, err := decodeMessage(v, a.me())
				if err != nil {
					return err
				}
				out = m
			} else {
				j := &job{}
				if err := decodeJob(v, j); err != nil {
					return err
				}
				out, jobs = j, append(jobs, k)
			}
			js, err := json.Marshal(out)
			keys, vals = append(keys, k), append(vals, js)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		for i, k := range keys {
			if err := ns.Put(ctx, k, vals[i]); err != nil {
				t.Fatal(err)
			}
		}
	}
	if len(jobs) == 0 {
		t.Fatal("no delivery job stored for the queued message")
	}
	restart(t, a)
	for _, k := range jobs {
		if !a.svc.jobIndex().has(k) {
			t.Fatalf("job %s not read after the restart", k)
		}
	}
	after, err := a.svc.Messages(ctx, string(b.me()))
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != len(before) {
		t.Fatalf("%d messages after the restart, %d before", len(after), len(before))
	}
	for i := range before {
		if !sameMessage(&after[i], &before[i]) {
			t.Fatalf("message %d after the restart: %+v, before %+v", i, after[i], before[i])
		}
	}

	// b comes back: the old job's envelope reaches it, and its receipt
	// moves the message, whose record is then in the new form.
	restart(t, b)
	b.waitFor(t, ctx, string(a.me()), "b gets the queued message", func(ms []Message) bool { return has(ms, "while away", StateReceived) })
	a.waitFor(t, ctx, string(b.me()), "delivered", func(ms []Message) bool { return has(ms, "while away", StateDelivered) })
	v, err := ns.Get(ctx, a.svc.keyMsg(queued))
	if err != nil || v[0] != recordV1 {
		t.Fatalf("the delivered message's record: %q, %v", v, err)
	}
}

// FuzzDecodeRecord: any bytes as a stored message or job record never
// panic; whatever decodes re-encodes and reads back the same.
func FuzzDecodeRecord(f *testing.F) {
	for _, m := range recordMessages() {
		b, _ := encodeMessage(m, recMe)
		f.Add(b)
	}
	j, _ := encodeJob(&job{Seq: 5, MsgID: recID, To: recMe, Payload: []byte{1}, Created: time.UnixMilli(1)})
	f.Add(j)
	f.Add([]byte(`{"id":"x","state":"sent","sent_at":"2026-11-30T00:00:00Z"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		if m, err := decodeMessage(data, recMe); err == nil {
			b, err := encodeMessage(m, recMe)
			if err != nil {
				if m.Queued < 0 {
					return // JSON can say anything
				}
				t.Fatalf("re-encode %+v: %v", m, err)
			}
			again, err := decodeMessage(b, recMe)
			if err != nil || !sameMessage(again, m) {
				t.Fatalf("read back %+v (%v), wrote %+v", again, err, m)
			}
		}
		var j job
		if decodeJob(data, &j) == nil {
			b, err := encodeJob(&j)
			if err != nil {
				if j.Attempts < 0 || j.Attempts > 1<<32-1 {
					return // JSON can say anything
				}
				t.Fatalf("re-encode %+v: %v", j, err)
			}
			var again job
			if err := decodeJob(b, &again); err != nil || !again.Created.Equal(j.Created) {
				t.Fatalf("read back %+v (%v), wrote %+v", again, err, j)
			}
		}
	})
}
