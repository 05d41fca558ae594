package backup

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"reflect"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/kinmesh/kinmesh/protocols/discovery"
	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/protocols/wire"
	"github.com/kinmesh/kinmesh/storage"
)

// fuzzKey is a fixed backup key (derived once: fuzzing must not run
// Argon2id per input).
var fuzzKey = deriveKey(Secret{}, [saltSize]byte{7}, testKDF)

// fuzzSeeds are valid frames and records of every kind.
func fuzzSeeds(t testing.TB) (requests, bodies, responses, records, blobs, contents [][]byte) {
	id, err := e2ee.NewIdentity(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pub := id.Public().Marshal()
	c := &Contents{
		CreatedAt: time.Unix(5, 0), Identity: []byte("id"), MailboxKey: []byte("mk"), MailboxAuth: []byte("ma"), Record: []byte("rec"),
		Profile:  Profile{Name: "Ada", BirthDate: "1950-01-01"},
		Contacts: []Contact{{Record: []byte("r"), Source: "invite"}}, Blocks: []Block{{Account: "a"}},
		Phone: &Phone{Number: "+351912345678"}, FormerRelays: []FormerRelay{{Relay: "/p2p/r", Since: time.Unix(3, 0)}},
	}
	enc, err := c.Encode()
	if err != nil {
		t.Fatal(err)
	}
	contents = [][]byte{enc}
	blob, err := fuzzKey.Seal(enc, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	blobs = [][]byte{blob}
	for _, b := range []body{{op: opPut, blob: blob}, {op: opStatus}, {op: opDelete}, {op: opFetch, code: "123456"}} {
		e := encodeBody(b)
		bodies = append(bodies, e)
		requests = append(requests, marshal(encodeRequest(request{kind: reqOwner, identity: pub, body: e, sig: make([]byte, 64)})))
	}
	requests = append(requests, marshal(encodeRequest(request{kind: reqHello})))
	for _, r := range []response{
		{nonce: make([]byte, nonceSize)},
		{code: CodeRateLimited, retryAfter: time.Second},
		{status: &Status{Verified: true, Held: true, UpdatedAt: time.Unix(5, 0), Size: 9, ExpiresAt: time.Unix(9, 0)}},
		{code: CodeWrongCode, status: &Status{AttemptsLeft: 2}},
		{fetched: &Fetched{Blob: blob, UpdatedAt: time.Unix(7, 0)}},
	} {
		responses = append(responses, marshal(encodeResponse(r)))
	}
	var y discovery.Output
	y[0] = 1
	records = [][]byte{
		storedBackup{owner: "o", account: "a", blob: blob, updated: time.Unix(3, 0)}.encode(),
		storedIndex{output: y, account: "a", updated: time.Unix(3, 0), size: 4}.encode(),
	}
	return
}

func FuzzDecodeRequest(f *testing.F) {
	reqs, _, _, _, _, _ := fuzzSeeds(f)
	for _, b := range reqs {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, code := decodeRequest(b)
		if code != CodeOK {
			return
		}
		back, code := decodeRequest(marshal(encodeRequest(r)))
		if code != CodeOK || !reflect.DeepEqual(back, r) {
			t.Fatalf("round trip: %+v (%v), want %+v", back, code, r)
		}
	})
}

func FuzzDecodeBody(f *testing.F) {
	_, bodies, _, _, _, _ := fuzzSeeds(f)
	for _, b := range bodies {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		o, code := decodeBody(b)
		if code != CodeOK {
			return
		}
		back, code := decodeBody(encodeBody(o))
		if code != CodeOK || back.op != o.op || back.code != o.code || !bytes.Equal(back.blob, o.blob) {
			t.Fatalf("round trip: %+v (%v), want %+v", back, code, o)
		}
	})
}

func FuzzDecodeResponse(f *testing.F) {
	_, _, resps, _, _, _ := fuzzSeeds(f)
	for _, b := range resps {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := decodeResponse(b)
		if err != nil {
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("error %v does not wrap ErrProtocol", err)
			}
			return
		}
		back, err := decodeResponse(marshal(encodeResponse(r)))
		if err != nil || back.code != r.code || (back.nonce == nil) != (r.nonce == nil) || (back.fetched == nil) != (r.fetched == nil) {
			t.Fatalf("round trip: %+v, %v; want %+v", back, err, r)
		}
	})
}

func FuzzStoredRecords(f *testing.F) {
	_, _, _, recs, _, _ := fuzzSeeds(f)
	for _, b := range recs {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if s, err := decodeStoredBackup(b); err == nil {
			if back, err := decodeStoredBackup(s.encode()); err != nil || !reflect.DeepEqual(back, s) {
				t.Fatalf("stored backup round trip: %+v, %v", back, err)
			}
		}
		if s, err := decodeStoredIndex(b); err == nil {
			if back, err := decodeStoredIndex(s.encode()); err != nil || !reflect.DeepEqual(back, s) {
				t.Fatalf("stored index round trip: %+v, %v", back, err)
			}
		}
	})
}

// FuzzOpen: no input makes opening panic; whatever opens re-seals to a
// backup that opens to the same contents.
func FuzzOpen(f *testing.F) {
	_, _, _, _, blobs, _ := fuzzSeeds(f)
	for _, b := range blobs {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		h, herr := ParseHeader(b)
		if herr == nil && (h.KDF.validate() != nil || CheckBlob(b) != nil) {
			t.Fatal("ParseHeader accepted what CheckBlob refuses")
		}
		got, err := fuzzKey.Open(b)
		if err != nil {
			if !errors.Is(err, ErrWrongSecret) && !errors.Is(err, ErrBadBlob) && !errors.Is(err, ErrBadContents) {
				t.Fatalf("Open: unexpected error %v", err)
			}
			return
		}
		if herr != nil {
			t.Fatalf("opened a blob ParseHeader refuses: %v", herr)
		}
		again, err := fuzzKey.Seal(got, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		if back, err := fuzzKey.Open(again); err != nil || !bytes.Equal(back, got) {
			t.Fatalf("re-sealed contents open to %d bytes, %v", len(back), err)
		}
		if len(again) != len(b) {
			t.Fatalf("re-sealed to %d bytes, the original was %d", len(again), len(b))
		}
	})
}

func FuzzContents(f *testing.F) {
	_, _, _, _, _, cs := fuzzSeeds(f)
	for _, b := range cs {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := DecodeContents(b)
		if err != nil {
			if !errors.Is(err, ErrBadContents) {
				t.Fatalf("DecodeContents: unexpected error %v", err)
			}
			return
		}
		enc, err := c.Encode()
		if err != nil {
			t.Fatalf("decoded contents don't encode: %v", err)
		}
		back, err := DecodeContents(enc)
		if err != nil {
			t.Fatal(err)
		}
		enc2, err := back.Encode()
		if err != nil || !bytes.Equal(enc, enc2) {
			t.Fatalf("contents round trip differs: %v", err)
		}
	})
}

func FuzzParseSecret(f *testing.F) {
	f.Add("AAAQ-EAYE-AUDA-OCAJ-BIFQ-YDIO-B4IB-DUKC")
	f.Add("aaaq eaye auda ocaj bifq ydio b4ib dukc")
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		sec, err := ParseSecret(s)
		if err != nil {
			if !errors.Is(err, ErrInvalidSecret) {
				t.Fatalf("ParseSecret: unexpected error %v", err)
			}
			return
		}
		back, err := ParseSecret(sec.String())
		if err != nil || !back.Equal(sec) {
			t.Fatalf("round trip of %q: %v", s, err)
		}
	})
}

// fakeLinks stands in for the discovery service in FuzzServe: every
// identity is verified, every code redeems.
type fakeLinks struct{}

func (fakeLinks) LinkOf(context.Context, e2ee.PublicIdentity) (discovery.Link, bool, error) {
	return discovery.Link{Account: "acct"}, true, nil
}

func (fakeLinks) LinkedAccount(context.Context, discovery.Output) (string, bool, error) {
	return "acct", true, nil
}

func (fakeLinks) RedeemCode(context.Context, e2ee.PublicIdentity, string) (discovery.Output, discovery.Status, error) {
	return discovery.Output{}, discovery.Status{}, nil
}

// memStream is a stream over in-memory buffers.
type memStream struct {
	in  io.Reader
	out bytes.Buffer
}

func (*memStream) SetDeadline(time.Time) error { return nil }

func (m *memStream) Read(b []byte) (int, error)  { return m.in.Read(b) }
func (m *memStream) Write(b []byte) (int, error) { return m.out.Write(b) }

// FuzzServe drives the relay's stream handling with arbitrary client
// frames: whatever arrives, it answers with frames the client decodes,
// or stops, and never panics.
func FuzzServe(f *testing.F) {
	reqs, _, _, _, _, _ := fuzzSeeds(f)
	for _, r := range reqs {
		var in bytes.Buffer
		_ = wire.WriteBytes(&in, marshal(encodeRequest(request{kind: reqHello})), maxRequestFrame)
		_ = wire.WriteBytes(&in, r, maxOwnerFrame)
		f.Add(in.Bytes())
	}
	st, err := storage.Open(f.TempDir(), storage.WithLogger(discard))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = st.Close() })
	svc, err := newService(peer.ID("relay"), st, fakeLinks{}, WithLogger(discard), WithOpRate(1<<20, 1<<20), WithPutRate(1<<20, 1<<20))
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
			if err != nil {
				if errors.Is(err, io.EOF) {
					return
				}
				t.Fatalf("relay wrote a bad frame: %v", err)
			}
			if _, err := decodeResponse(b); err != nil {
				t.Fatalf("relay wrote an undecodable response: %v", err)
			}
		}
	})
}
