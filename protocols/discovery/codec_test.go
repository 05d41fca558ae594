package discovery

import (
	"errors"
	"runtime"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
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
		{"a frame of empty page entries", submessage(fieldRespPage, emptyEntries(fieldPageEntries, frame))},
		{"page entries one over the cap", submessage(fieldRespPage, emptyEntries(fieldPageEntries, MaxPageEntries+1))},
		{"page entries over two page bodies", append(
			submessage(fieldRespPage, emptyEntries(fieldPageEntries, MaxPageEntries/2+1)),
			submessage(fieldRespPage, emptyEntries(fieldPageEntries, MaxPageEntries/2))...)},
		{"a frame of empty evaluated elements", submessage(fieldRespEvaluation, emptyEntries(fieldEvalEvaluated, frame))},
		{"a page cut short", submessage(fieldRespPage, []byte{0x3a, 0x05})},
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
		{"a frame of empty elements", submessage(fieldOwnerEvaluate, emptyEntries(fieldEvaluateBlinded, (maxOwnerFrame-1024)/2)), CodeTooLarge},
		{"elements over two evaluate bodies", append(
			submessage(fieldOwnerEvaluate, emptyEntries(fieldEvaluateBlinded, MaxBatch/2+1)),
			submessage(fieldOwnerEvaluate, emptyEntries(fieldEvaluateBlinded, MaxBatch/2))...), CodeTooLarge},
		{"an evaluate body cut short", submessage(fieldOwnerEvaluate, []byte{0x0a, 0x20}), CodeMalformed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var code Code
			n := allocated(func() { _, code = decodeOwnerBody(tc.body) })
			if code != tc.want {
				t.Fatalf("got %v, want %v", code, tc.want)
			}
			if n > maxAlloc {
				t.Fatalf("decoding allocated %d bytes, want at most %d", n, maxAlloc)
			}
		})
	}
}
