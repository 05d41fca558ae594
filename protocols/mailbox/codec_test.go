package mailbox

import (
	"runtime"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
)

// TestDecodeRefusesManyEntriesUndecoded: a frame within the size cap that
// holds more envelopes or seqs than a request may is refused before it is
// decoded, so refusing it costs far less memory than the frame's size
// (decoding 2^17 seqs alone takes 1 MiB, 2^17 envelopes 3 MiB).
func TestDecodeRefusesManyEntriesUndecoded(t *testing.T) {
	const n = 1 << 17
	frame := func(bodies ...[]byte) []byte {
		b := protowire.AppendTag(nil, fieldRequestID, protowire.VarintType)
		b = protowire.AppendVarint(b, 7)
		for _, body := range bodies {
			b = append(b, body...)
		}
		return b
	}
	body := func(field protowire.Number, msg []byte) []byte {
		b := protowire.AppendTag(nil, field, protowire.BytesType)
		return protowire.AppendBytes(b, msg)
	}
	repeat := func(entry []byte, count int) []byte {
		var b []byte
		for range count {
			b = append(b, entry...)
		}
		return b
	}
	packedTag := protowire.AppendTag(nil, fieldSeqs, protowire.BytesType)
	packed := func(count int) []byte {
		return body(fieldRequestAck, protowire.AppendBytes(packedTag, make([]byte, count)))
	}
	mbox := protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), make([]byte, idRawSize))
	deposit := func(count int) []byte {
		empty := protowire.AppendBytes(protowire.AppendTag(nil, fieldEnvelopes, protowire.BytesType), nil)
		return body(fieldRequestDeposit, append(mbox, repeat(empty, count)...))
	}
	unpackedSeq := protowire.AppendVarint(protowire.AppendTag(nil, fieldSeqs, protowire.VarintType), 0)

	tests := []struct {
		name  string
		frame []byte
		kind  reqKind
	}{
		{"packed seqs", frame(packed(n)), reqAck},
		{"unpacked seqs", frame(body(fieldRequestAck, repeat(unpackedSeq, n))), reqAck},
		{"seqs over two ack bodies", frame(packed(n/2), packed(n/2)), reqAck},
		{"empty envelopes", frame(deposit(n)), reqDeposit},
		{"envelopes over two deposit bodies", frame(deposit(n/2), deposit(n/2)), reqDeposit},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if len(tt.frame) > maxRequestFrame {
				t.Fatalf("frame of %d bytes, over the cap", len(tt.frame))
			}
			r, code := decodeRequest(tt.frame)
			if code != CodeBatchTooLarge || r.id != 7 || r.kind != tt.kind {
				t.Fatalf("got request %d kind %d, code %v; want request 7 kind %d, batch_too_large", r.id, r.kind, code, tt.kind)
			}
			const runs = 10
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			for range runs {
				decodeRequest(tt.frame)
			}
			runtime.ReadMemStats(&after)
			if per := (after.TotalAlloc - before.TotalAlloc) / runs; per > 16<<10 {
				t.Fatalf("refusing a %d-byte frame allocated %d bytes, want at most 16 KiB", len(tt.frame), per)
			}
		})
	}
}
