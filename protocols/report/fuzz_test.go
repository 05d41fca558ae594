package report

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"reflect"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/kinmesh/kinmesh/protocols/wire"
	"github.com/kinmesh/kinmesh/storage"
)

// fuzzSeeds are valid frames, submissions and records of every kind.
func fuzzSeeds(t testing.TB) (requests, responses, submissions, records [][]byte) {
	alice, mallory := newIdentity(t), newIdentity(t)
	now := time.UnixMilli(1_790_000_000_000)
	rep := reportOf(mallory.AccountID(), now, DisclosedMessage{ID: "m1", From: mallory.AccountID(), SentAt: now, Text: "hi"})
	sup := feedbackOf(KindSupport, "help", now)
	sup.Diagnostics = json.RawMessage(`{"a":1}`)
	for _, s := range []Submission{rep, feedbackOf(KindFeedback, "nice", now), sup} {
		b, err := Encode(s)
		if err != nil {
			t.Fatal(err)
		}
		submissions = append(submissions, b)
	}
	nonce := make([]byte, nonceSize)
	purge := request{kind: reqPurge, identity: alice.Public().Marshal(), sig: alice.Sign(purgeMessage(nonce, peer.ID("relay"), alice.Public().Marshal()))}
	for _, r := range []request{{kind: reqHello}, signed(alice, submissions[0], nonce, peer.ID("relay")), purge} {
		requests = append(requests, marshal(encodeRequest(r)))
	}
	for _, r := range []response{
		{nonce: nonce},
		{receipt: &Receipt{ID: itemID(42), Duplicate: true}},
		{code: CodeRateLimited, retryAfter: time.Second},
		{code: CodeQuota},
		{purged: new(int)},
	} {
		responses = append(responses, marshal(encodeResponse(r)))
	}
	rq := signed(alice, submissions[0], nonce, peer.ID("relay"))
	records = [][]byte{(&storedItem{submission: rq.submission, identity: rq.identity, sig: rq.sig, nonce: nonce, received: now}).encode()}
	return requests, responses, submissions, records
}

func FuzzDecodeRequest(f *testing.F) {
	reqs, _, _, _ := fuzzSeeds(f)
	for _, s := range reqs {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, code := decodeRequest(b)
		if code != CodeOK {
			return
		}
		again, code := decodeRequest(marshal(encodeRequest(r)))
		if code != CodeOK {
			t.Fatalf("re-encoded request refused: %v", code)
		}
		if again.kind != r.kind || !bytes.Equal(again.submission, r.submission) || !bytes.Equal(again.identity, r.identity) || !bytes.Equal(again.sig, r.sig) {
			t.Fatalf("round trip changed the request: %+v != %+v", again, r)
		}
	})
}

func FuzzDecodeResponse(f *testing.F) {
	_, resps, _, _ := fuzzSeeds(f)
	for _, s := range resps {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := decodeResponse(b)
		if err != nil {
			return
		}
		again, err := decodeResponse(marshal(encodeResponse(r)))
		if err != nil {
			t.Fatalf("re-encoded response refused: %v", err)
		}
		if !reflect.DeepEqual(again, r) {
			t.Fatalf("round trip changed the response: %+v != %+v", again, r)
		}
	})
}

// FuzzDecodeSubmission: what the relay accepts re-encodes to the same
// submission, and the client's encoder accepts it.
func FuzzDecodeSubmission(f *testing.F) {
	_, _, subs, _ := fuzzSeeds(f)
	for _, s := range subs {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := decodeSubmission(b)
		if err != nil {
			return
		}
		enc, err := encodeSubmission(s)
		if err != nil {
			t.Fatalf("accepted submission does not encode: %v", err)
		}
		again, err := decodeSubmission(enc)
		if err != nil {
			t.Fatalf("re-encoded submission refused: %v", err)
		}
		if !reflect.DeepEqual(again, s) {
			t.Fatalf("round trip changed the submission:\n%+v\n%+v", again, s)
		}
	})
}

func FuzzDecodeStoredItem(f *testing.F) {
	_, _, _, recs := fuzzSeeds(f)
	for _, s := range recs {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		it, err := decodeStoredItem(b)
		if err != nil {
			return
		}
		again, err := decodeStoredItem(it.encode())
		if err != nil || !reflect.DeepEqual(again, it) {
			t.Fatalf("stored item round trip: %v\n%+v\n%+v", err, again, it)
		}
		_, _ = it.item(itemID(1)) // never panics
	})
}

// FuzzDecodeShareTags: stored share tags decode only when they re-encode
// to the same bytes.
func FuzzDecodeShareTags(f *testing.F) {
	f.Add(encodeShareTags(shareTags{peer: "0a1v", ip: "q9k3"}))
	f.Add(encodeShareTags(shareTags{ip: "abcd"}))
	f.Add([]byte("--------"))
	f.Add([]byte("ABCDEFGH"))
	f.Fuzz(func(t *testing.T, b []byte) {
		tags, ok := decodeShareTags(b)
		if !ok {
			return
		}
		if again := encodeShareTags(tags); !bytes.Equal(again, b) {
			t.Fatalf("share tags %q decode to %+v, which encode to %q", b, tags, again)
		}
	})
}

// memStream is an in-memory stream: reads come from in, writes go to out.
type memStream struct {
	in  io.Reader
	out bytes.Buffer
}

func (m *memStream) Read(p []byte) (int, error)  { return m.in.Read(p) }
func (m *memStream) Write(p []byte) (int, error) { return m.out.Write(p) }
func (m *memStream) SetDeadline(time.Time) error { return nil }

// FuzzServe drives the relay's stream handling with arbitrary client
// bytes: it answers or fails, never panics, every answer is a frame the
// client decodes, and nothing is ever stored (no input can carry a valid
// signature over the relay's fresh nonce).
func FuzzServe(f *testing.F) {
	reqs, _, _, _ := fuzzSeeds(f)
	var buf bytes.Buffer
	_ = wire.WriteBytes(&buf, reqs[0], maxHelloFrame)
	_ = wire.WriteBytes(&buf, reqs[1], maxSubmitFrame)
	f.Add(buf.Bytes())
	f.Add(buf.Bytes()[:len(reqs[0])+1])

	st, err := storage.Open(f.TempDir(), storage.WithSyncWrites(false), storage.WithLogger(discard))
	if err != nil {
		f.Fatal(err)
	}
	defer st.Close()
	svc, err := newService(peer.ID("relay"), st, WithLogger(discard), WithRequestRate(1<<20, 1<<20), WithIPRequestRate(1<<20, 1<<20))
	if err != nil {
		f.Fatal(err)
	}
	defer svc.Close()
	f.Fuzz(func(t *testing.T, b []byte) {
		ms := &memStream{in: bytes.NewReader(b)}
		_ = svc.serve(context.Background(), ms, nil, source{peer: "client", ip: "fuzz"})
		rd := wire.NewReader(&ms.out)
		for {
			frame, err := rd.ReadBytes(maxResponseFrame)
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("relay wrote a bad frame: %v", err)
			}
			if _, err := decodeResponse(frame); err != nil {
				t.Fatalf("relay wrote an undecodable response: %v", err)
			}
		}
		if r, fb := svc.Len(); r+fb != 0 {
			t.Fatalf("relay stored %d items from unsigned input", r+fb)
		}
	})
}
