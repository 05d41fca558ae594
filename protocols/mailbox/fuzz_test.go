package mailbox

import (
	"bytes"
	"encoding/binary"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"

	"github.com/kinmesh/kinmesh/protocols/mailbox/pb"
	"github.com/kinmesh/kinmesh/protocols/wire"
	"github.com/kinmesh/kinmesh/storage"
)

// seedRequests are one valid frame of each request kind.
func seedRequests() []*pb.Request {
	mbox := make([]byte, idRawSize)
	mbox[0] = 7
	return []*pb.Request{
		depositReq(1, mbox, []byte("envelope"), []byte("another")),
		helloReq(2),
		authReq(3, make([]byte, 32), make([]byte, 64)),
		{Id: 4, Body: &pb.Request_Fetch{Fetch: &pb.Fetch{After: 5, Limit: 10}}},
		{Id: 5, Body: &pb.Request_Ack{Ack: &pb.Ack{Seqs: []uint64{1, 2, 1 << 60}}}},
		{Id: 6, Body: &pb.Request_Purge{Purge: &pb.Purge{}}},
		{Id: 7, Body: &pb.Request_Ping{Ping: &pb.Ping{}}},
	}
}

func FuzzDecodeRequest(f *testing.F) {
	for _, r := range seedRequests() {
		b, _ := proto.Marshal(r)
		f.Add(b)
	}
	f.Add([]byte{})
	f.Add([]byte{0x08, 0x00})
	// One entry over the caps, refused before decoding.
	tooMany, _ := proto.Marshal(&pb.Request{Id: 8, Body: &pb.Request_Ack{Ack: &pb.Ack{Seqs: make([]uint64, MaxAckSeqs+1)}}})
	f.Add(tooMany)
	tooMany, _ = proto.Marshal(depositReq(9, make([]byte, idRawSize), make([][]byte, MaxBatchItems+1)...))
	f.Add(tooMany)
	f.Fuzz(func(t *testing.T, b []byte) {
		viewMatchesUnmarshal(t, b)
		r, code := decodeRequest(b)
		if code != CodeOK {
			return
		}
		if r.id == 0 || r.kind == 0 {
			t.Fatalf("accepted request without id or kind: %+v", r)
		}
		// Round trip: what the client encodes from it decodes the same.
		b2, err := proto.Marshal(encodeRequest(r))
		if err != nil {
			t.Fatal(err)
		}
		r2, code := decodeRequest(b2)
		if code != CodeOK || r2.id != r.id || r2.kind != r.kind || r2.mbox != r.mbox ||
			len(r2.envelopes) != len(r.envelopes) || r2.after != r.after || r2.limit != r.limit ||
			len(r2.seqs) != len(r.seqs) || !bytes.Equal(r2.pub, r.pub) || !bytes.Equal(r2.sig, r.sig) {
			t.Fatalf("round trip changed the request: %+v → %+v (%v)", r, r2, code)
		}
	})
}

// viewMatchesUnmarshal fails if viewDeposit takes frame b and reads
// anything other than what proto.Unmarshal reads from it.
func viewMatchesUnmarshal(t *testing.T, b []byte) {
	t.Helper()
	_, n, _, ok := scanRequest(b)
	if !ok {
		return
	}
	mbox, envs, ok := viewDeposit(b, n)
	if !ok {
		return
	}
	var m pb.Request
	if err := proto.Unmarshal(b, &m); err != nil {
		t.Fatalf("viewDeposit took a frame proto.Unmarshal refuses: %v", err)
	}
	d := m.GetDeposit()
	if d == nil {
		t.Fatalf("viewDeposit took a frame whose body is %T", m.GetBody())
	}
	if !bytes.Equal(mbox, d.GetMailbox()) || len(envs) != len(d.GetEnvelopes()) {
		t.Fatalf("viewDeposit read mailbox %x and %d envelopes, proto.Unmarshal %x and %d", mbox, len(envs), d.GetMailbox(), len(d.GetEnvelopes()))
	}
	for i, e := range envs {
		if !bytes.Equal(e, d.GetEnvelopes()[i]) {
			t.Fatalf("envelope %d: viewDeposit read %x, proto.Unmarshal %x", i, e, d.GetEnvelopes()[i])
		}
	}
}

func FuzzDecodeResponse(f *testing.F) {
	seeds := []*pb.Response{
		{Id: 1, Body: &pb.Response_Error{Error: &pb.Error{Code: pb.Code_CODE_MAILBOX_FULL, RetryAfterMs: 5}}},
		depositResponse(2, []Code{CodeOK, CodeRateLimited}, time.Second),
		{Id: 3, Body: &pb.Response_Challenge{Challenge: &pb.Challenge{Nonce: make([]byte, 32), Relay: []byte("relay"), TimeUnixMs: 1}}},
		{Id: 4, Body: &pb.Response_Auth{Auth: &pb.AuthOK{}}},
		{Id: 5, Body: &pb.Response_Fetch{Fetch: &pb.FetchResult{Items: []*pb.Item{{Seq: 1, Envelope: []byte("x")}, {Seq: 3, Envelope: []byte("y")}}, More: true}}},
		{Id: 6, Body: &pb.Response_Ack{Ack: &pb.AckResult{Codes: []pb.Code{pb.Code_CODE_OK, pb.Code_CODE_NOT_FOUND}}}},
		{Id: 7, Body: &pb.Response_Purge{Purge: &pb.PurgeResult{Deleted: 9}}},
		{Id: 8, Body: &pb.Response_Pong{Pong: &pb.Pong{}}},
		{Body: &pb.Response_Push{Push: &pb.Push{Items: []*pb.Item{{Seq: 10, DepositedUnixMs: 5, Envelope: []byte("z")}}}}},
		{Body: &pb.Response_More{More: &pb.More{After: 9}}},
	}
	for _, r := range seeds {
		b, _ := proto.Marshal(r)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := decodeResponse(b)
		if err != nil {
			return
		}
		if r.kind != respError && (r.kind == respPush || r.kind == respMore) != (r.id == 0) {
			t.Fatalf("accepted %v with id %d", r.kind, r.id)
		}
		for i, it := range r.items {
			if len(it.Envelope) == 0 || len(it.Envelope) > MaxEnvelopeSize || (i > 0 && it.Seq <= r.items[i-1].Seq) {
				t.Fatalf("accepted bad items %v", r.items)
			}
		}
	})
}

func FuzzDecodeMeta(f *testing.F) {
	m := &meta{next: 42, expires: 1000}
	m.add(100, 5, 60)
	m.add(200, 7, 60)
	f.Add(encodeMeta(m))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decodeMeta(b)
		if err != nil {
			return
		}
		m2, err := decodeMeta(encodeMeta(m))
		if err != nil || m2.next != m.next || m2.expires != m.expires || len(m2.buckets) != len(m.buckets) {
			t.Fatalf("round trip: %+v → %+v, %v", m, m2, err)
		}
		// Bookkeeping on any decoded record never panics.
		m.add(150, 3, 60)
		m.remove(150, 3)
		m.prune(1<<40, 10)
		m.usage()
	})
}

func FuzzDecodeValue(f *testing.F) {
	f.Add(append(valueHead(123), "envelope"...))
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		dep, env, ok := decodeValue(b)
		if !ok {
			return
		}
		if !bytes.Equal(append(valueHead(dep), env...), b) {
			t.Fatal("value round trip differs")
		}
	})
}

// FuzzConn feeds arbitrary bytes to the relay's stream loop, as a client
// would send them, unauthenticated or (first byte odd) as an owner
// session. The loop must end (on EOF or an error) without panicking, and
// every answer it writes must be a well-formed frame.
func FuzzConn(f *testing.F) {
	for _, r := range seedRequests() {
		var buf bytes.Buffer
		_ = wire.Write(&buf, r, maxRequestFrame)
		f.Add(append([]byte{0}, buf.Bytes()...))
		f.Add(append([]byte{1}, buf.Bytes()...))
	}
	f.Add([]byte{1, 3, 0xff, 0xff, 0xff})
	f.Add(append([]byte{0}, binary.AppendUvarint(nil, maxRequestFrame+1)...))

	st, err := storage.Open(f.TempDir(), storage.WithSweepInterval(0), storage.WithGCInterval(0))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = st.Close() })
	svc, err := newService(st, WithDepositorRate(1<<30, 1<<40))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = svc.Close() })
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) == 0 {
			return
		}
		fs := &fakeStream{r: bytes.NewReader(b[1:])}
		c := svc.newConn(fs, nil, peer.ID("depositor"), peer.ID("relay"))
		if b[0]&1 == 1 {
			c.authed, c.opened = true, time.Now()
			c.mbox[0] = 7
		}
		c.serve()
		rd := wire.NewReader(bytes.NewReader(fs.w.Bytes()))
		for {
			fb, err := rd.ReadBytes(maxResponseFrame)
			if err != nil {
				break
			}
			if _, err := decodeResponse(fb); err != nil {
				t.Fatalf("relay wrote a frame its client refuses: %v", err)
			}
		}
	})
}
