package blobs

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"io"
	"testing"
	"time"

	"github.com/kinmesh/kinmesh/protocols/wire"
	"github.com/kinmesh/kinmesh/storage"
)

func fuzzSeeds(t testing.TB) (requests, responses [][]byte) {
	s, err := Seal(&[32]byte{1}, []byte("seed"))
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []request{
		{kind: reqPut, id: s.ID, hashes: s.Hashes, deleteKey: make([]byte, ed25519.PublicKeySize)},
		{kind: reqGet, id: s.ID, from: 0},
		{kind: reqDelete, id: s.ID, sig: make([]byte, ed25519.SignatureSize)},
		{kind: reqHas, ids: []BlobID{s.ID, {}}},
	} {
		requests = append(requests, marshal(encodeRequest(r)))
	}
	for _, r := range []response{
		{code: CodeOK},
		{code: CodeRateLimited, retryAfter: time.Second},
		{code: CodeOK, hashes: s.Hashes},
		{code: CodeOK, present: []bool{true, false}},
		{code: CodeOK, usage: &Usage{Bytes: 5, Blobs: 1}},
	} {
		responses = append(responses, marshal(encodeResponse(r)))
	}
	return requests, responses
}

func FuzzDecodeRequest(f *testing.F) {
	reqs, _ := fuzzSeeds(f)
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
		if again.kind != r.kind || again.id != r.id || again.from != r.from || !bytes.Equal(again.sig, r.sig) ||
			!bytes.Equal(again.deleteKey, r.deleteKey) || len(again.hashes) != len(r.hashes) || len(again.ids) != len(r.ids) {
			t.Fatalf("round trip changed the request: %+v != %+v", again, r)
		}
	})
}

func FuzzDecodeResponse(f *testing.F) {
	_, resps := fuzzSeeds(f)
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
		if again.code != r.code || len(again.hashes) != len(r.hashes) || len(again.present) != len(r.present) || (again.usage == nil) != (r.usage == nil) {
			t.Fatalf("round trip changed the response: %+v != %+v", again, r)
		}
	})
}

func FuzzDecodeChunk(f *testing.F) {
	f.Add(marshal(encodeChunk(0, make([]byte, ChunkSize))), 0)
	f.Add([]byte{0x08, 0x01}, 1)
	f.Fuzz(func(t *testing.T, b []byte, want int) {
		data, code := decodeChunk(b, want)
		if code == CodeOK && len(data) != ChunkSize {
			t.Fatalf("accepted a chunk of %d bytes", len(data))
		}
	})
}

func FuzzDecodeRecords(f *testing.F) {
	s, _ := Seal(&[32]byte{2}, nil)
	f.Add(meta{hashes: s.Hashes, deleteKey: make([]byte, 32), uploader: "u", created: time.Unix(5, 0), complete: true}.encode())
	f.Add(encodeUsage(Usage{Bytes: 1, Blobs: 2}))
	f.Fuzz(func(t *testing.T, b []byte) {
		if m, err := decodeMeta(b); err == nil {
			if _, err := decodeMeta(m.encode()); err != nil {
				t.Fatalf("re-encoded meta refused: %v", err)
			}
		}
		if u, err := decodeUsage(b); err == nil {
			if again, _ := decodeUsage(encodeUsage(u)); again != u {
				t.Fatalf("usage round trip: %+v != %+v", again, u)
			}
		}
	})
}

func FuzzOpen(f *testing.F) {
	s, _ := Seal(&[32]byte{3}, []byte("hello"))
	f.Add(s.Chunks[0], uint8(3))
	f.Fuzz(func(t *testing.T, chunk []byte, k uint8) {
		// Open must refuse altered input without panicking.
		_, _ = Open(&[32]byte{k}, [][]byte{chunk})
	})
}

// memStream is a stream over in-memory buffers, for FuzzServe.
type memStream struct {
	in  io.Reader
	out bytes.Buffer
}

func (m *memStream) Read(p []byte) (int, error)  { return m.in.Read(p) }
func (m *memStream) Write(p []byte) (int, error) { return m.out.Write(p) }
func (m *memStream) SetDeadline(time.Time) error { return nil }

// FuzzServe feeds arbitrary client bytes to the relay's stream handling:
// it must answer or fail, never panic, and never leave an upload claimed.
func FuzzServe(f *testing.F) {
	reqs, _ := fuzzSeeds(f)
	s, _ := Seal(&[32]byte{1}, []byte("seed"))
	var put bytes.Buffer
	_ = wire.WriteBytes(&put, reqs[0], maxRequestFrame)
	_ = wire.Write(&put, encodeChunk(0, s.Chunks[0]), maxChunkFrame)
	f.Add(put.Bytes())
	for _, r := range reqs[1:] {
		var b bytes.Buffer
		_ = wire.WriteBytes(&b, r, maxRequestFrame)
		f.Add(b.Bytes())
	}
	st, err := storage.Open(f.TempDir(), storage.WithLogger(discard))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = st.Close() })
	svc, err := newService(st, append([]Option{WithLogger(discard)}, relaxed...)...)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = svc.Close() })
	f.Fuzz(func(t *testing.T, in []byte) {
		ms := &memStream{in: bytes.NewReader(in)}
		_ = svc.serve(context.Background(), ms, nil, "fuzzer", "192.0.2.1")
		svc.mu.Lock()
		defer svc.mu.Unlock()
		if len(svc.uploading) != 0 || svc.reserved != 0 {
			t.Fatalf("upload left claimed: %d uploading, %d reserved", len(svc.uploading), svc.reserved)
		}
	})
}
