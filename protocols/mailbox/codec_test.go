package mailbox

import (
	"runtime"
	"slices"
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

// TestDecodeDepositAliases: a plain deposit frame's envelopes are read in
// place (viewDeposit), not copied; frames viewDeposit leaves to
// proto.Unmarshal decode all the same. FuzzDecodeRequest checks that both
// read the same from any frame.
func TestDecodeDepositAliases(t *testing.T) {
	field := func(num protowire.Number, v []byte) []byte {
		return protowire.AppendBytes(protowire.AppendTag(nil, num, protowire.BytesType), v)
	}
	id := protowire.AppendVarint(protowire.AppendTag(nil, fieldRequestID, protowire.VarintType), 7)
	mbox := make([]byte, idRawSize)
	mbox[3] = 9
	body := append(field(fieldMailbox, mbox), field(fieldEnvelopes, []byte("one"))...)
	body = append(body, field(fieldEnvelopes, []byte("two"))...)
	deposit := field(fieldRequestDeposit, body)
	unknown := protowire.AppendVarint(protowire.AppendTag(nil, 99, protowire.VarintType), 1)
	tests := []struct {
		name    string
		frame   []byte
		aliased bool
	}{
		{"plain", append(slices.Clone(id), deposit...), true},
		{"an unknown field", slices.Concat(id, unknown, deposit), true},
		{"the deposit in two parts", slices.Concat(id, field(fieldRequestDeposit, field(fieldMailbox, mbox)),
			field(fieldRequestDeposit, append(field(fieldEnvelopes, []byte("one")), field(fieldEnvelopes, []byte("two"))...))), false},
		{"the id as bytes before the real one", slices.Concat(field(fieldRequestID, []byte{1}), id, deposit), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, code := decodeRequest(tt.frame)
			if code != CodeOK || r.id != 7 || r.kind != reqDeposit || r.mbox[3] != 9 || len(r.envelopes) != 2 ||
				string(r.envelopes[0]) != "one" || string(r.envelopes[1]) != "two" {
				t.Fatalf("got %+v, %v; want request 7 depositing one and two", r, code)
			}
			end := &tt.frame[len(tt.frame)-1]
			if aliased := &r.envelopes[1][len("two")-1] == end; aliased != tt.aliased {
				t.Fatalf("envelope aliases the frame: %v, want %v", aliased, tt.aliased)
			}
			if tt.aliased && cap(r.envelopes[0]) != len("one") {
				t.Fatalf("first envelope has capacity %d: appending to it would write over the frame", cap(r.envelopes[0]))
			}
		})
	}
}
