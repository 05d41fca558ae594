// Package wiretest helps tests of protocol decoders build hostile frames
// and measure what decoding them allocates.
package wiretest

import (
	"runtime"

	"google.golang.org/protobuf/encoding/protowire"
)

// Allocated returns the fewest bytes f allocated over a few runs (other
// goroutines' allocations only ever add).
func Allocated(f func()) uint64 {
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

// EmptyEntries is n empty length-delimited entries of field num.
func EmptyEntries(num protowire.Number, n int) []byte {
	var b []byte
	for range n {
		b = protowire.AppendTag(b, num, protowire.BytesType)
		b = protowire.AppendBytes(b, nil)
	}
	return b
}

// Submessage is body as length-delimited field num.
func Submessage(num protowire.Number, body []byte) []byte {
	return protowire.AppendBytes(protowire.AppendTag(nil, num, protowire.BytesType), body)
}
