package wire

import "google.golang.org/protobuf/encoding/protowire"

// Counting entries before decoding. proto.Unmarshal allocates for every
// entry of a repeated field before a decoder can look at how many there
// are: a slice header (24 bytes) for a bytes entry of 2, a whole message
// for an empty submessage of 2. A message within its size cap but full of
// empty entries would take many times its size in memory, so decoders
// count on the wire first and refuse over their caps.

// CountRepeated returns how many entries of the repeated field num message
// b holds, without decoding it. For a numeric field (varints set) an
// unpacked entry counts one and a packed run (length-delimited) one per
// varint in it; otherwise every length-delimited occurrence counts one.
// Occurrences of another wire type are not counted (proto.Unmarshal
// refuses them). ok is false when b is not well-formed protobuf.
func CountRepeated(b []byte, num protowire.Number, varints bool) (count int, ok bool) {
	ok = EachField(b, func(fn protowire.Number, typ protowire.Type, v []byte) bool {
		if fn != num {
			return true
		}
		switch {
		case typ == protowire.BytesType && !varints:
			count++
		case typ == protowire.VarintType && varints:
			count++
		case typ == protowire.BytesType && varints:
			for _, c := range v {
				if c < 0x80 { // the last byte of each varint
					count++
				}
			}
		}
		return true
	})
	return count, ok
}

// EachBytes calls fn with the contents of every length-delimited occurrence
// of field num in message b, in order, until fn returns false. A singular
// message field may occur more than once (proto.Unmarshal merges the
// occurrences), so counts inside it must add up over every call. It
// reports false when b is not well-formed protobuf.
func EachBytes(b []byte, num protowire.Number, fn func(v []byte) bool) bool {
	return EachField(b, func(n protowire.Number, typ protowire.Type, v []byte) bool {
		return n != num || typ != protowire.BytesType || fn(v)
	})
}

// EachField walks the fields of message b in wire order, calling fn with
// each one's number, wire type and value: the contents of a
// length-delimited field, the raw bytes of any other (a varint's encoding,
// 4 or 8 fixed bytes, a whole group). It stops early when fn returns
// false, and reports whether b was well-formed up to where it stopped.
func EachField(b []byte, fn func(num protowire.Number, typ protowire.Type, v []byte) bool) bool {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return false
		}
		b = b[n:]
		var v []byte
		if typ == protowire.BytesType {
			v, n = protowire.ConsumeBytes(b)
		} else {
			n = protowire.ConsumeFieldValue(num, typ, b)
			if n >= 0 {
				v = b[:n]
			}
		}
		if n < 0 {
			return false
		}
		b = b[n:]
		if !fn(num, typ, v) {
			return true
		}
	}
	return true
}
