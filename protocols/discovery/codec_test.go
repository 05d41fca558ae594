package discovery

import (
	"errors"
	"testing"

	"github.com/kinmesh/kinmesh/protocols/wire/wiretest"
)

// TestResponseCountsBeforeDecoding: a client refuses a page or an
// evaluation with too many entries before decoding it, without
// allocating per entry (any relay, or anyone posing as one, can send
// one).
func TestResponseCountsBeforeDecoding(t *testing.T) {
	const maxAlloc = 16 << 10
	frame := (maxResponseFrame - 16) / 2
	tests := []struct {
		name string
		resp []byte
	}{
		{"a frame of empty page entries", wiretest.Submessage(fieldRespPage, wiretest.EmptyEntries(fieldPageEntries, frame))},
		{"page entries one over the cap", wiretest.Submessage(fieldRespPage, wiretest.EmptyEntries(fieldPageEntries, MaxPageEntries+1))},
		{"page entries over two page bodies", append(
			wiretest.Submessage(fieldRespPage, wiretest.EmptyEntries(fieldPageEntries, MaxPageEntries/2+1)),
			wiretest.Submessage(fieldRespPage, wiretest.EmptyEntries(fieldPageEntries, MaxPageEntries/2))...)},
		{"a frame of empty evaluated elements", wiretest.Submessage(fieldRespEvaluation, wiretest.EmptyEntries(fieldEvalEvaluated, frame))},
		{"a page cut short", wiretest.Submessage(fieldRespPage, []byte{0x3a, 0x05})},
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
			if n > maxAlloc {
				t.Fatalf("decoding allocated %d bytes, want at most %d", n, maxAlloc)
			}
		})
	}
}

// TestOwnerBodyCountsBeforeDecoding: the relay refuses an evaluation of
// too many blinded elements before decoding the body.
func TestOwnerBodyCountsBeforeDecoding(t *testing.T) {
	const maxAlloc = 16 << 10
	tests := []struct {
		name string
		body []byte
		want Code
	}{
		{"a frame of empty elements", wiretest.Submessage(fieldOwnerEvaluate, wiretest.EmptyEntries(fieldEvaluateBlinded, (maxOwnerFrame-1024)/2)), CodeTooLarge},
		{"elements over two evaluate bodies", append(
			wiretest.Submessage(fieldOwnerEvaluate, wiretest.EmptyEntries(fieldEvaluateBlinded, MaxBatch/2+1)),
			wiretest.Submessage(fieldOwnerEvaluate, wiretest.EmptyEntries(fieldEvaluateBlinded, MaxBatch/2))...), CodeTooLarge},
		{"an evaluate body cut short", wiretest.Submessage(fieldOwnerEvaluate, []byte{0x0a, 0x20}), CodeMalformed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var code Code
			n := wiretest.Allocated(func() { _, code = decodeOwnerBody(tc.body) })
			if code != tc.want {
				t.Fatalf("got %v, want %v", code, tc.want)
			}
			if n > maxAlloc {
				t.Fatalf("decoding allocated %d bytes, want at most %d", n, maxAlloc)
			}
		})
	}
}
