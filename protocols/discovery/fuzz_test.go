package discovery

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"maps"
	"reflect"
	"testing"
	"time"

	"github.com/cloudflare/circl/oprf"
	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/kinmesh/kinmesh/protocols/wire"
	"github.com/kinmesh/kinmesh/protocols/wire/wiretest"
	"github.com/kinmesh/kinmesh/storage"
)

// fuzzSeeds are valid frames and records of every kind.
func fuzzSeeds(t testing.TB) (requests, bodies, responses, records [][]byte) {
	a := newAccount(t, "seed")
	id := a.id.Public().Marshal()
	el := bytes.Repeat([]byte{0x42}, elementSize)
	for _, b := range []ownerBody{
		{op: opSendCode, number: "+351912345678"},
		{op: opVerifyCode, code: "123456", record: a.record.Raw},
		{op: opStatus},
		{op: opUpdateRecord, record: a.record.Raw},
		{op: opUnenrol},
		{op: opEvaluate, blinded: [][]byte{el, el}},
	} {
		enc := encodeOwnerBody(b)
		bodies = append(bodies, enc)
		requests = append(requests, marshal(encodeRequest(request{kind: reqOwner, identity: id, body: enc, sig: make([]byte, 64)})))
	}
	requests = append(requests,
		marshal(encodeRequest(request{kind: reqHello})),
		marshal(encodeRequest(request{kind: reqList, since: 7, limit: 100})),
		marshal(encodeRequest(request{kind: reqList, since: 7, limit: 100, base: 9})),
		marshal(encodeRequest(request{kind: reqList, base: 9})),
	)
	var y Output
	y[0] = 1
	pk := testKey(t)
	for _, r := range []response{
		{nonce: make([]byte, nonceSize)},
		{code: CodeRateLimited, retryAfter: time.Second},
		{status: &Status{Verified: true, VerifiedAt: time.Unix(5, 0), Pending: true, CodeExpires: time.Unix(9, 0), AttemptsLeft: 3, EvaluationsLeft: 9, PublicKey: pk}},
		{code: CodeWrongCode, status: &Status{AttemptsLeft: 2, PublicKey: pk}},
		{eval: &evaluation{elements: [][]byte{el}, proof: make([]byte, proofSize)}},
		{page: &Page{PublicKey: pk, Version: 9, Next: 9, Total: 1, Entries: []Entry{{Seq: 3, ID: y.ID(), Box: y.seal(a.record.Raw)}, {Seq: 9, ID: EntryID{1}}}}},
	} {
		responses = append(responses, marshal(encodeResponse(r)))
	}
	// A page and an evaluation whose entries come in two bodies, which
	// protobuf merges: counted together.
	two := func(m []byte, field protowire.Number) []byte {
		var body []byte
		wire.EachBytes(m, field, func(v []byte) bool { body = v; return false })
		return append(bytes.Clone(m), wiretest.Submessage(field, body)...)
	}
	responses = append(responses,
		two(responses[len(responses)-1], fieldRespPage),
		two(responses[len(responses)-2], fieldRespEvaluation),
	)
	bodies = append(bodies, two(bodies[len(bodies)-1], fieldOwnerEvaluate))
	records = [][]byte{
		storedLink{output: y, verifiedAt: time.Unix(7, 0)}.encode(),
		storedPending{output: y, code: "000111", expires: time.Unix(8, 0), attempts: 2}.encode(),
		encodeLock(time.Unix(9, 0)),
		encodeOwner("abc"),
		storedEntry{id: y.ID(), box: []byte("box")}.encode(),
		storedEntry{id: y.ID(), deleted: time.Unix(10, 0)}.encode(),
		meta{lastSeq: 9, floor: 3, entries: 4}.encode(),
	}
	return requests, bodies, responses, records
}

// testKey returns a fresh public key.
func testKey(t testing.TB) PublicKey {
	_, pk := testKeyPair(t)
	return pk
}

// testKeyPair returns a fresh private key and its public key.
func testKeyPair(t testing.TB) (*oprf.PrivateKey, PublicKey) {
	t.Helper()
	k, err := oprf.GenerateKey(suite, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pk, err := publicKeyOf(k)
	if err != nil {
		t.Fatal(err)
	}
	return k, pk
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
		if !reflect.DeepEqual(normReq(again), normReq(r)) {
			t.Fatalf("round trip changed the request: %+v != %+v", again, r)
		}
	})
}

func normReq(r request) request {
	for _, p := range []*[]byte{&r.identity, &r.body, &r.sig} {
		if len(*p) == 0 {
			*p = nil
		}
	}
	return r
}

func FuzzDecodeOwnerBody(f *testing.F) {
	_, bodies, _, _ := fuzzSeeds(f)
	for _, s := range bodies {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		o, code := decodeOwnerBody(b)
		if code != CodeOK {
			return
		}
		again, code := decodeOwnerBody(encodeOwnerBody(o))
		if code != CodeOK {
			t.Fatalf("re-encoded body refused: %v", code)
		}
		if again.op != o.op || again.number != o.number || again.code != o.code || !bytes.Equal(again.record, o.record) || len(again.blinded) != len(o.blinded) {
			t.Fatalf("round trip changed the body: %+v != %+v", again, o)
		}
		if o.op == opVerifyCode && !validCode(o.code) {
			t.Fatalf("accepted code %q", o.code)
		}
		if len(o.blinded) > MaxBatch {
			t.Fatalf("accepted %d blinded elements, over %d", len(o.blinded), MaxBatch)
		}
	})
}

func FuzzDecodeResponse(f *testing.F) {
	_, _, resps, _ := fuzzSeeds(f)
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
		if again.code != r.code || (again.page == nil) != (r.page == nil) || (again.eval == nil) != (r.eval == nil) || (again.status == nil) != (r.status == nil) {
			t.Fatalf("round trip changed the response: %+v != %+v", again, r)
		}
		if r.eval != nil && len(r.eval.elements) > MaxBatch {
			t.Fatalf("accepted %d evaluated elements, over %d", len(r.eval.elements), MaxBatch)
		}
		if r.page != nil {
			if len(r.page.Entries) > MaxPageEntries {
				t.Fatalf("accepted a page of %d entries, over %d", len(r.page.Entries), MaxPageEntries)
			}
			if len(again.page.Entries) != len(r.page.Entries) || again.page.Next != r.page.Next || r.page.Next > r.page.Version {
				t.Fatalf("round trip changed the page")
			}
			for _, e := range r.page.Entries {
				if e.Seq == 0 || e.Seq > r.page.Next || len(e.Box) > maxBoxSize {
					t.Fatalf("accepted entry %+v", e)
				}
			}
		}
	})
}

// FuzzDirectoryApply applies pages of arbitrary changes to a small copy
// and checks it against a plain model: a page is applied whole or, if
// the copy (or a start over's listing) would break a cap, not at all;
// a start over replaces the copy only with its last page; the copy
// never exceeds its caps and counts its bytes right; the base is the
// version of the listing's first page. Each change is 3 bytes: flags,
// id, box size (0: a deletion); flags&3 == 0 ends the page there, flags&4
// says more, flags&8 starts over, flags>>4 is how far the page's version
// is beyond its next.
func FuzzDirectoryApply(f *testing.F) {
	f.Add([]byte{1, 1, 10, 1, 2, 10, 4, 0, 0, 9, 3, 50, 1, 3, 0, 0, 0, 0})
	f.Add([]byte{1, 1, 63, 1, 2, 63, 1, 3, 63, 0, 0, 0, 8, 4, 1, 4, 0, 0, 1, 5, 1, 0, 0, 0})
	const maxEntries, maxBytes = 8, 400
	pk := testKey(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		d := newCappedDirectory(PublicKey{}, maxEntries, maxBytes)
		var held, fresh map[EntryID][]byte // the model
		held = map[EntryID][]byte{}
		size := func(m map[EntryID][]byte) (n int, sum int) {
			for _, v := range m {
				sum += len(v)
			}
			return len(m), sum
		}
		var es []Entry
		var cursor, base uint64 // the model's
		seq := uint64(0)
		for ; len(b) >= 3; b = b[3:] {
			flags := b[0]
			seq++
			es = append(es, Entry{Seq: seq, ID: entryID(uint64(b[1] % 16)), Box: bytes.Repeat([]byte{b[2]}, int(b[2]%64))})
			if flags&3 != 0 {
				continue
			}
			p := &Page{PublicKey: pk, Version: seq + uint64(flags>>4), Next: seq, More: flags&4 != 0, StartOver: flags&8 != 0, Entries: es}
			es = nil
			target := held
			switch {
			case p.StartOver:
				target = map[EntryID][]byte{}
			case fresh != nil:
				target = fresh
			}
			next := maps.Clone(target)
			for _, e := range p.Entries {
				delete(next, e.ID)
				if !e.Deleted() {
					next[e.ID] = e.Box
				}
			}
			was := stateOf(d)
			err := d.Apply(p)
			if n, sum := size(next); n > maxEntries || sum > maxBytes {
				if !errors.Is(err, ErrDirectoryTooLarge) {
					t.Fatalf("page to %d entries, %d bytes: got %v, want ErrDirectoryTooLarge", n, sum, err)
				}
				sameCopy(t, d, was)
				continue
			}
			if err != nil {
				t.Fatalf("page within the caps refused: %v", err)
			}
			switch {
			case p.StartOver || fresh != nil:
				fresh = next
			default:
				held = next
			}
			if fresh != nil && !p.More {
				held, fresh = fresh, nil
			}
			if cursor == 0 || p.StartOver {
				base = p.Version
			}
			cursor = p.Next
			if at := d.Listing(); at != (Listing{Since: cursor, Base: base}) {
				t.Fatalf("listing %+v, want since %d, base %d", at, cursor, base)
			}
			if !maps.EqualFunc(d.held.boxes, held, bytes.Equal) || (d.fresh == nil) != (fresh == nil) || (fresh != nil && !maps.EqualFunc(d.fresh.boxes, fresh, bytes.Equal)) {
				t.Fatalf("copy of %d entries (start over: %v), want %d (%v)", d.Len(), d.fresh != nil, len(held), fresh != nil)
			}
			withinCaps(t, d)
		}
	})
}

func FuzzStoredRecords(f *testing.F) {
	_, _, _, recs := fuzzSeeds(f)
	for _, s := range recs {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if l, err := decodeStoredLink(b); err == nil {
			if again, err := decodeStoredLink(l.encode()); err != nil || again != l {
				t.Fatalf("link round trip: %v", err)
			}
		}
		if p, err := decodeStoredPending(b); err == nil {
			if again, err := decodeStoredPending(p.encode()); err != nil || again != p {
				t.Fatalf("pending round trip: %v", err)
			}
		}
		if u, err := decodeLock(b); err == nil {
			if again, err := decodeLock(encodeLock(u)); err != nil || !again.Equal(u) {
				t.Fatalf("lock round trip: %v", err)
			}
		}
		if o, err := decodeOwner(b); err == nil {
			if again, err := decodeOwner(encodeOwner(o)); err != nil || again != o {
				t.Fatalf("owner round trip: %v", err)
			}
		}
		if e, err := decodeStoredEntry(b); err == nil {
			if again, err := decodeStoredEntry(e.encode()); err != nil || again.id != e.id || !bytes.Equal(again.box, e.box) {
				t.Fatalf("entry round trip: %v", err)
			}
		}
		if m, err := decodeMeta(b); err == nil {
			if again, err := decodeMeta(m.encode()); err != nil || again != m {
				t.Fatalf("meta round trip: %v", err)
			}
		}
	})
}

func FuzzParseNumber(f *testing.F) {
	for _, s := range []string{"+351912345678", "0044 20 7946 0958", "+1 (415) 555-2671", "12345", "+", "00", "+0123456789"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseNumber(s)
		if err != nil {
			return
		}
		if !n.Valid() || len(n) < 9 || len(n) > 16 || n[0] != '+' || n[1] == '0' {
			t.Fatalf("ParseNumber(%q) = %q", s, n)
		}
		for _, c := range n[1:] {
			if c < '0' || c > '9' {
				t.Fatalf("ParseNumber(%q) = %q", s, n)
			}
		}
		if again, err := ParseNumber(string(n)); err != nil || again != n {
			t.Fatalf("not idempotent: %q → %q, %v", n, again, err)
		}
	})
}

func FuzzOpenEntry(f *testing.F) {
	var y Output
	y[3] = 9
	a := newAccount(f, "seed")
	f.Add(y.seal(a.record.Raw))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, box []byte) {
		rec, err := y.Open(box)
		if err == nil && rec.Name == "" {
			t.Fatal("opened a record without a name")
		}
	})
}

// memStream is an in-memory stream: the client's bytes in, the relay's
// answers out.
type memStream struct {
	in  io.Reader
	out bytes.Buffer
}

func (m *memStream) Read(p []byte) (int, error)  { return m.in.Read(p) }
func (m *memStream) Write(p []byte) (int, error) { return m.out.Write(p) }
func (m *memStream) SetDeadline(time.Time) error { return nil }

// FuzzServe drives the relay's stream handling with arbitrary client
// bytes: it must answer with well-formed frames or stop, never panic or
// over-read.
func FuzzServe(f *testing.F) {
	reqs, _, _, _ := fuzzSeeds(f)
	frame := func(bs ...[]byte) []byte {
		var buf bytes.Buffer
		for _, b := range bs {
			_ = wire.WriteBytes(&buf, b, maxOwnerFrame)
		}
		return buf.Bytes()
	}
	for _, r := range reqs {
		f.Add(frame(r))
		f.Add(frame(marshal(encodeRequest(request{kind: reqHello})), r))
	}
	st, err := storage.Open(f.TempDir(), storage.WithProfile(storage.ProfileRelay), storage.WithLogger(discard))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = st.Close() })
	svc, err := newService(peer.ID("relay"), st, NewConsoleGateway(), append([]Option{WithLogger(discard)}, relaxed...)...)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = svc.Close() })
	f.Fuzz(func(t *testing.T, in []byte) {
		s := &memStream{in: bytes.NewReader(in)}
		_ = svc.serve(context.Background(), s, nil, peer.ID("client"))
		rd := wire.NewReader(&s.out)
		for {
			b, err := rd.ReadBytes(maxResponseFrame)
			if err == io.EOF {
				return
			}
			if err != nil {
				t.Fatalf("relay wrote a bad frame: %v", err)
			}
			if _, err := decodeResponse(b); err != nil {
				t.Fatalf("relay wrote an undecodable response: %v", err)
			}
		}
	})
}

// FuzzFinalize hands the client's check of a relay's evaluation (the
// path evaluateBatch takes with every answer) any elements and proof for
// three blinded numbers: it fails with ErrProtocol or ErrBadProof, or
// returns the outputs the relay's key really gives, never others.
func FuzzFinalize(f *testing.F) {
	k, pk := testKeyPair(f)
	var numbers []Number
	for _, s := range []string{"+351912000001", "+351912000002", "+4915112345678"} {
		n, err := ParseNumber(s)
		if err != nil {
			f.Fatal(err)
		}
		numbers = append(numbers, n)
	}
	vc, fin, req, err := blind(pk, numbers)
	if err != nil {
		f.Fatal(err)
	}
	ev, err := oprf.NewVerifiableServer(suite, k).Evaluate(req)
	if err != nil {
		f.Fatal(err)
	}
	elems, err := marshalElements(ev.Elements)
	if err != nil {
		f.Fatal(err)
	}
	proof, err := ev.Proof.MarshalBinary()
	if err != nil {
		f.Fatal(err)
	}
	want, err := finalize(vc, fin, &evaluation{elements: elems, proof: proof}, len(numbers))
	if err != nil {
		f.Fatalf("the relay's own evaluation: %v", err)
	}
	f.Add(bytes.Join(elems, nil), proof)
	f.Add(bytes.Join(elems[:2], nil), proof)
	f.Add(bytes.Join([][]byte{elems[1], elems[0], elems[2]}, nil), proof)
	f.Add(bytes.Join(elems, nil), make([]byte, len(proof)))
	f.Fuzz(func(t *testing.T, joined, proof []byte) {
		var es [][]byte
		for len(joined) > 0 {
			n := min(len(joined), elementSize)
			es, joined = append(es, joined[:n]), joined[n:]
		}
		got, err := finalize(vc, fin, &evaluation{elements: es, proof: proof}, len(numbers))
		if err != nil {
			if !errors.Is(err, ErrProtocol) && !errors.Is(err, ErrBadProof) {
				t.Fatalf("error neither ErrProtocol nor ErrBadProof: %v", err)
			}
			return
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("accepted an evaluation that gives other outputs")
		}
	})
}
