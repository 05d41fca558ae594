package moments

import (
	"crypto/ed25519"
	"errors"
	"runtime"
	"slices"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/kinmesh/kinmesh/protocols/blobs"
)

// allocated returns the fewest bytes f allocated over a few runs (other
// goroutines' allocations only ever add).
func allocated(f func()) uint64 {
	best := ^uint64(0)
	for range 3 {
		var a, b runtime.MemStats
		runtime.ReadMemStats(&a)
		f()
		runtime.ReadMemStats(&b)
		best = min(best, b.TotalAlloc-a.TotalAlloc)
	}
	return best
}

// emptyEntries is n empty length-delimited entries of field num.
func emptyEntries(num protowire.Number, n int) []byte {
	var b []byte
	for range n {
		b = protowire.AppendTag(b, num, protowire.BytesType)
		b = protowire.AppendBytes(b, nil)
	}
	return b
}

func submessage(num protowire.Number, body []byte) []byte {
	return protowire.AppendBytes(protowire.AppendTag(nil, num, protowire.BytesType), body)
}

// TestRequestCountsBeforeDecoding: a request full of empty frames is
// refused before it is decoded, without allocating per frame.
func TestRequestCountsBeforeDecoding(t *testing.T) {
	topic := submessage(1, []byte(fuzzTopic))
	tests := []struct {
		name     string
		req      []byte
		want     Code
		maxAlloc uint64
	}{
		{
			name:     "a request's worth of empty frames",
			req:      submessage(fieldRequestKeep, append(topic, emptyEntries(fieldKeepFrames, (maxRequestFrame-64)/2-8)...)),
			want:     CodeTooLarge,
			maxAlloc: 16 << 10,
		},
		{
			name:     "frames over two keep bodies",
			req:      append(submessage(fieldRequestKeep, append(topic, emptyEntries(fieldKeepFrames, 40)...)), submessage(fieldRequestKeep, emptyEntries(fieldKeepFrames, 40))...),
			want:     CodeTooLarge,
			maxAlloc: 16 << 10,
		},
		{
			name:     "a request's worth of empty confirmations",
			req:      submessage(fieldRequestPurge, emptyEntries(fieldPurgeConfirm, (maxRequestFrame-64)/2-8)),
			want:     CodeTooLarge,
			maxAlloc: 16 << 10,
		},
		{
			name:     "truncated keep",
			req:      submessage(fieldRequestKeep, []byte{0x12, 0x05}),
			want:     CodeMalformed,
			maxAlloc: 16 << 10,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if len(tc.req) > maxRequestFrame {
				t.Fatalf("request of %d bytes, over the %d cap", len(tc.req), maxRequestFrame)
			}
			var code Code
			n := allocated(func() { _, code = decodeRequest(tc.req) })
			if code != tc.want {
				t.Fatalf("got %v, want %v", code, tc.want)
			}
			if n > tc.maxAlloc {
				t.Fatalf("decoding allocated %d bytes, want at most %d", n, tc.maxAlloc)
			}
		})
	}
}

// TestResponseCountsBeforeDecoding: a client refuses a reply full of empty
// items, codes or media ids before decoding it, without allocating per
// entry (any relay can send one).
func TestResponseCountsBeforeDecoding(t *testing.T) {
	packed := make([]byte, maxResponseFrame-16)
	tests := []struct {
		name string
		resp []byte
	}{
		{"empty items", emptyEntries(fieldRespItems, (maxResponseFrame-8)/2)},
		{"packed codes", submessage(fieldRespCodes, packed)},
		{"empty media ids", emptyEntries(fieldRespMedia, (maxResponseFrame-8)/2)},
		{"items one over the page", emptyEntries(fieldRespItems, MaxPageItems+1)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if len(tc.resp) > maxResponseFrame {
				t.Fatalf("response of %d bytes, over the %d cap", len(tc.resp), maxResponseFrame)
			}
			var err error
			n := allocated(func() { _, err = decodeResponse(tc.resp) })
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("got %v, want ErrProtocol", err)
			}
			if n > 16<<10 {
				t.Fatalf("decoding allocated %d bytes, want at most %d", n, 16<<10)
			}
		})
	}
}

// TestFrameCountsBeforeDecoding: a frame full of empty media proofs is
// refused before its body is decoded.
func TestFrameCountsBeforeDecoding(t *testing.T) {
	body := protowire.AppendVarint(protowire.AppendTag(nil, 1, protowire.VarintType), uint64(KindTombstone))
	body = append(body, emptyEntries(fieldFrameProofs, 8000)...)
	raw := []byte{frameVersion}
	raw = protowire.AppendVarint(raw, uint64(len(body)))
	raw = append(raw, body...)
	raw = append(raw, make([]byte, 64)...)
	if len(raw) > MaxFrameSize {
		t.Fatalf("frame of %d bytes, over the cap", len(raw))
	}
	var err error
	n := allocated(func() { _, err = parseFrame(raw) })
	if !errors.Is(err, ErrMalformed) {
		t.Fatalf("got %v, want ErrMalformed", err)
	}
	if n > 8<<10 {
		t.Fatalf("parsing allocated %d bytes, want at most %d", n, 8<<10)
	}
}

// TestRequestRoundTrip: every kind of request decodes as encoded.
func TestRequestRoundTrip(t *testing.T) {
	pub := fuzzOwner.Public().(ed25519.PublicKey)
	for _, r := range []request{
		{kind: reqRegister, owner: pub, topic: fuzzTopic, audience: pub, time: fuzzNow, sig: make([]byte, 64)},
		{kind: reqKeep, topic: fuzzTopic, frames: fuzzFrames(t)},
		{kind: reqBackfill, topic: fuzzTopic, after: 9, limit: 10, time: fuzzNow, sig: make([]byte, 64)},
		{kind: reqPurge, owner: pub, time: fuzzNow, sig: make([]byte, 64)},
		{kind: reqPurge, owner: pub, time: fuzzNow, sig: make([]byte, 64), mediaAfter: &blobs.BlobID{1}, confirmed: []blobs.BlobID{{2}, {3}}},
	} {
		t.Run(r.kind.String(), func(t *testing.T) {
			got, code := decodeRequest(marshal(encodeRequest(r)))
			if code != CodeOK || got.kind != r.kind || got.topic != r.topic || len(got.frames) != len(r.frames) || !got.time.Equal(r.time) ||
				(got.mediaAfter == nil) != (r.mediaAfter == nil) || !slices.Equal(got.confirmed, r.confirmed) {
				t.Fatalf("got %+v, %v; want %+v", got, code, r)
			}
		})
	}
}
