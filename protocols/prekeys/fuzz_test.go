package prekeys

import (
	"bytes"
	"context"
	"io"
	"reflect"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/protocols/wire"
	"github.com/kinmesh/kinmesh/storage"
)

// fuzzSeeds are valid frames and records of every kind.
func fuzzSeeds(t testing.TB) (requests, responses, records [][]byte) {
	a := newAccount(t, time.Unix(1_700_000_000, 0), 2, 1)
	up := a.store.Upload()
	upBytes, err := up.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	b := e2ee.Bundle{Identity: up.Identity, SignedPrekey: up.SignedPrekey, PQPrekey: up.PQOneTime[0], OneTimePrekey: &up.OneTime[0]}
	bundle, err := b.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	var acct request
	copy(acct.account[:], up.Identity.Sign)
	acct.kind = reqFetch
	id := up.Identity.Marshal()
	for _, r := range []request{
		acct,
		{kind: reqHello},
		{kind: reqOwner, op: opStatus, identity: id, sig: make([]byte, 64)},
		{kind: reqOwner, op: opPublish, identity: id, upload: upBytes, sig: make([]byte, 64)},
	} {
		requests = append(requests, marshal(encodeRequest(r)))
	}
	st := &Status{SignedPrekey: 1, SignedPrekeyCreated: time.Unix(5, 0), LastResort: 2, MaxOneTimeID: 9, OneTimeIDs: []e2ee.PrekeyID{3, 4}, PQOneTimeIDs: []e2ee.PrekeyID{5}, AddedOneTime: 2, ReplacedSigned: true}
	for _, r := range []response{
		{nonce: make([]byte, nonceSize)},
		{bundle: bundle},
		{code: CodeRateLimited, retryAfter: time.Second},
		{status: st},
		{code: CodeQuota, status: st},
	} {
		responses = append(responses, marshal(encodeResponse(r)))
	}
	sa := &storedAccount{identity: up.Identity, identityWire: id, signed: up.SignedPrekey, lastResort: up.LastResort}
	records = [][]byte{sa.encode(), counters{maxID: 7, oneTime: 3, pqs: 2}.encode(), marshal(storedFromDH(up.OneTime[0])), marshal(storedFromKEM(up.PQOneTime[0]))}
	return requests, responses, records
}

func FuzzDecodeRequest(f *testing.F) {
	reqs, _, _ := fuzzSeeds(f)
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
		if again.kind != r.kind || again.account != r.account || again.op != r.op ||
			!bytes.Equal(again.identity, r.identity) || !bytes.Equal(again.upload, r.upload) || !bytes.Equal(again.sig, r.sig) {
			t.Fatalf("round trip changed the request: %+v != %+v", again, r)
		}
	})
}

func FuzzDecodeResponse(f *testing.F) {
	_, resps, _ := fuzzSeeds(f)
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
		if again.code != r.code || !bytes.Equal(again.nonce, r.nonce) || !bytes.Equal(again.bundle, r.bundle) ||
			(again.status == nil) != (r.status == nil) {
			t.Fatalf("round trip changed the response: %+v != %+v", again, r)
		}
		if r.status != nil && !reflect.DeepEqual(normStatus(*again.status), normStatus(*r.status)) {
			t.Fatalf("round trip changed the status: %+v != %+v", *again.status, *r.status)
		}
	})
}

// normStatus makes empty and nil id lists compare equal.
func normStatus(s Status) Status {
	if len(s.OneTimeIDs) == 0 {
		s.OneTimeIDs = nil
	}
	if len(s.PQOneTimeIDs) == 0 {
		s.PQOneTimeIDs = nil
	}
	return s
}

// FuzzStoredRecords: the relay's record decoders never panic, and what
// they accept re-encodes to something they accept the same way.
func FuzzStoredRecords(f *testing.F) {
	_, _, recs := fuzzSeeds(f)
	for _, s := range recs {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if a, err := decodeStoredAccount(b); err == nil {
			again, err := decodeStoredAccount(a.encode())
			if err != nil || !again.identity.Equal(a.identity) || again.signed.ID != a.signed.ID || again.lastResort.ID != a.lastResort.ID {
				t.Fatalf("account round trip: %v", err)
			}
		}
		if c, err := decodeCounters(b); err == nil {
			if again, err := decodeCounters(c.encode()); err != nil || again != c {
				t.Fatalf("counters round trip: %+v != %+v (%v)", again, c, err)
			}
		}
		if m, err := decodeStoredPrekey(b); err == nil {
			if p, err := dhFromStored(m, true); err == nil {
				if q, err := dhFromStored(storedFromDH(p), true); err != nil || q.ID != p.ID || !q.Key.Equal(p.Key) {
					t.Fatalf("prekey round trip: %v", err)
				}
			}
			if p, err := kemFromStored(m, false); err == nil {
				if q, err := kemFromStored(storedFromKEM(p), false); err != nil || q.ID != p.ID || !bytes.Equal(q.Key.Bytes(), p.Key.Bytes()) {
					t.Fatalf("pq prekey round trip: %v", err)
				}
			}
		}
		if n, err := decodeAccountCount(b); err == nil && n < 0 {
			t.Fatalf("negative account count %d", n)
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
// bytes: it must answer or fail, never panic, and every answer must be a
// frame the client decodes.
func FuzzServe(f *testing.F) {
	reqs, _, _ := fuzzSeeds(f)
	for _, s := range reqs {
		var buf bytes.Buffer
		if err := wire.WriteBytes(&buf, s, maxOwnerFrame); err != nil {
			f.Fatal(err)
		}
		f.Add(buf.Bytes())
	}
	var buf bytes.Buffer
	_ = wire.WriteBytes(&buf, reqs[1], maxRequestFrame)
	_ = wire.WriteBytes(&buf, reqs[3], maxOwnerFrame)
	f.Add(buf.Bytes())

	st, err := storage.Open(f.TempDir(), storage.WithSyncWrites(false), storage.WithLogger(discard))
	if err != nil {
		f.Fatal(err)
	}
	defer st.Close()
	svc, err := newService(peer.ID("relay"), st, WithLogger(discard))
	if err != nil {
		f.Fatal(err)
	}
	defer svc.Close()
	f.Fuzz(func(t *testing.T, b []byte) {
		ms := &memStream{in: bytes.NewReader(b)}
		_ = svc.serve(context.Background(), ms, nil, peer.ID("client"))
		rd := wire.NewReader(&ms.out)
		for {
			frame, err := rd.ReadBytes(maxResponseFrame)
			if err == io.EOF {
				return
			}
			if err != nil {
				t.Fatalf("relay wrote a bad frame: %v", err)
			}
			if _, err := decodeResponse(frame); err != nil {
				t.Fatalf("relay wrote an undecodable response: %v", err)
			}
		}
	})
}
