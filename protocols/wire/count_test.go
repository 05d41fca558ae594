package wire

import (
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

func TestCountRepeated(t *testing.T) {
	bytesField := func(b []byte, num protowire.Number, v []byte) []byte {
		b = protowire.AppendTag(b, num, protowire.BytesType)
		return protowire.AppendBytes(b, v)
	}
	varint := func(b []byte, num protowire.Number, v uint64) []byte {
		b = protowire.AppendTag(b, num, protowire.VarintType)
		return protowire.AppendVarint(b, v)
	}
	var packed []byte
	for _, v := range []uint64{0, 1, 127, 128, 1 << 40} {
		packed = protowire.AppendVarint(packed, v)
	}
	fixed := protowire.AppendFixed32(protowire.AppendTag(nil, 2, protowire.Fixed32Type), 7)
	tests := []struct {
		name    string
		msg     []byte
		num     protowire.Number
		varints bool
		want    int
		ok      bool
	}{
		{name: "empty", msg: nil, num: 2, want: 0, ok: true},
		{name: "bytes entries", msg: bytesField(bytesField(bytesField(nil, 2, nil), 1, []byte("x")), 2, []byte("yz")), num: 2, want: 2, ok: true},
		{name: "unpacked varints", msg: varint(varint(varint(nil, 3, 1), 3, 300), 4, 5), num: 3, varints: true, want: 2, ok: true},
		{name: "packed varints", msg: bytesField(varint(nil, 3, 9), 3, packed), num: 3, varints: true, want: 6, ok: true},
		{name: "other wire types not counted", msg: append(varint(fixed, 2, 1), bytesField(nil, 2, nil)...), num: 2, want: 1, ok: true},
		{name: "truncated length", msg: append(protowire.AppendTag(nil, 2, protowire.BytesType), 5, 'a'), num: 2, ok: false},
		{name: "bad tag", msg: []byte{0x80}, num: 2, ok: false},
		{name: "field zero", msg: []byte{0x02, 0x00}, num: 2, ok: false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := CountRepeated(tc.msg, tc.num, tc.varints)
			if ok != tc.ok || (ok && got != tc.want) {
				t.Fatalf("got %d, %v; want %d, %v", got, ok, tc.want, tc.ok)
			}
		})
	}
}

// TestCountMatchesUnmarshal: the count is what proto.Unmarshal makes of
// the same bytes, also when the entries are spread over the message.
func TestCountMatchesUnmarshal(t *testing.T) {
	var b []byte
	for i := range 300 {
		b = protowire.AppendTag(b, 1, protowire.BytesType) // ListValue.values
		b = protowire.AppendBytes(b, nil)
		if i%7 == 0 {
			b = protowire.AppendTag(b, 99, protowire.VarintType) // unknown field
			b = protowire.AppendVarint(b, uint64(i))
		}
	}
	var m structpb.ListValue
	if err := proto.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	got, ok := CountRepeated(b, 1, false)
	if !ok || got != len(m.GetValues()) {
		t.Fatalf("got %d, %v; want %d", got, ok, len(m.GetValues()))
	}
}

func TestEachBytes(t *testing.T) {
	var b []byte
	for _, s := range []string{"a", "bb", "ccc"} {
		b = protowire.AppendTag(b, 4, protowire.BytesType)
		b = protowire.AppendBytes(b, []byte(s))
		b = protowire.AppendTag(b, 5, protowire.BytesType)
		b = protowire.AppendBytes(b, []byte("other"))
	}
	var got []string
	if !EachBytes(b, 4, func(v []byte) bool { got = append(got, string(v)); return len(got) < 2 }) {
		t.Fatal("well-formed message refused")
	}
	if len(got) != 2 || got[0] != "a" || got[1] != "bb" {
		t.Fatalf("got %q, want the first two of field 4", got)
	}
	if EachBytes(append(b, 0x22, 9), 4, func([]byte) bool { return true }) {
		t.Fatal("a truncated message was accepted")
	}
}
