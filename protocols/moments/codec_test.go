package moments

import (
	"crypto/ed25519"
	"errors"
	"slices"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/kinmesh/kinmesh/protocols/wire/wiretest"

	"github.com/kinmesh/kinmesh/protocols/blobs"
)

// TestRequestCountsBeforeDecoding: a request full of empty frames is
// refused before it is decoded, without allocating per frame.
func TestRequestCountsBeforeDecoding(t *testing.T) {
	topic := wiretest.Submessage(1, []byte(fuzzTopic))
	tests := []struct {
		name     string
		req      []byte
		want     Code
		maxAlloc uint64
	}{
		{
			name:     "a request's worth of empty frames",
			req:      wiretest.Submessage(fieldRequestKeep, append(topic, wiretest.EmptyEntries(fieldKeepFrames, (maxRequestFrame-64)/2-8)...)),
			want:     CodeTooLarge,
			maxAlloc: 16 << 10,
		},
		{
			name:     "frames over two keep bodies",
			req:      append(wiretest.Submessage(fieldRequestKeep, append(topic, wiretest.EmptyEntries(fieldKeepFrames, 40)...)), wiretest.Submessage(fieldRequestKeep, wiretest.EmptyEntries(fieldKeepFrames, 40))...),
			want:     CodeTooLarge,
			maxAlloc: 16 << 10,
		},
		{
			name:     "a request's worth of empty confirmations",
			req:      wiretest.Submessage(fieldRequestPurge, wiretest.EmptyEntries(fieldPurgeConfirm, (maxRequestFrame-64)/2-8)),
			want:     CodeTooLarge,
			maxAlloc: 16 << 10,
		},
		{
			name:     "truncated keep",
			req:      wiretest.Submessage(fieldRequestKeep, []byte{0x12, 0x05}),
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
			n := wiretest.Allocated(func() { _, code = decodeRequest(tc.req) })
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
		{"empty items", wiretest.EmptyEntries(fieldRespItems, (maxResponseFrame-8)/2)},
		{"packed codes", wiretest.Submessage(fieldRespCodes, packed)},
		{"empty media ids", wiretest.EmptyEntries(fieldRespMedia, (maxResponseFrame-8)/2)},
		{"items one over the page", wiretest.EmptyEntries(fieldRespItems, MaxPageItems+1)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if len(tc.resp) > maxResponseFrame {
				t.Fatalf("response of %d bytes, over the %d cap", len(tc.resp), maxResponseFrame)
			}
			var err error
			n := wiretest.Allocated(func() { _, err = decodeResponse(tc.resp) })
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
	body = append(body, wiretest.EmptyEntries(fieldFrameProofs, 8000)...)
	raw := []byte{frameVersion}
	raw = protowire.AppendVarint(raw, uint64(len(body)))
	raw = append(raw, body...)
	raw = append(raw, make([]byte, 64)...)
	if len(raw) > MaxFrameSize {
		t.Fatalf("frame of %d bytes, over the cap", len(raw))
	}
	var err error
	n := wiretest.Allocated(func() { _, err = parseFrame(raw) })
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
