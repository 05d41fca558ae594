package storage

import (
	"bytes"
	"slices"
	"testing"
)

// chainOf returns the records of the journal in b in effect
// (eachInChain), their ops copied.
func chainOf(b []byte) []decodedRecord {
	var out []decodedRecord
	_ = eachInChain(bytes.NewReader(b), int64(len(b)), func(seq uint64, ops []jop) error {
		r := decodedRecord{seq: seq}
		for _, op := range ops {
			op.key, op.value = bytes.Clone(op.key), bytes.Clone(op.value)
			r.ops = append(r.ops, op)
		}
		out = append(out, r)
		return nil
	})
	return out
}

type decodedRecord struct {
	seq uint64
	ops []jop
}

func sampleOps() []jop {
	return []jop{
		{key: []byte("d/ns/a"), value: []byte("sealed"), expires: 1 << 40, meta: 0},
		{key: []byte("d/ns/b"), del: true},
		{key: []byte("y/entry"), value: nil, expires: 7},
	}
}

// TestJournalChain: the records in effect are the chain at offset 0 with
// one chain id and increasing seqs. A record of another chain after it is
// not part of it, even with a higher seq (what a torn write can leave past
// the end of the chain, from before the journal started over), nor is a
// record whose seq doesn't increase, nor anything after a bad checksum.
func TestJournalChain(t *testing.T) {
	ops := sampleOps()
	var b []byte
	b = appendRecord(b, 7, 10, ops)
	b = appendRecord(b, 7, 11, ops[:1])
	good := len(b)
	seqs := func(b []byte) []uint64 {
		var out []uint64
		for _, r := range chainOf(b) {
			out = append(out, r.seq)
		}
		return out
	}
	if got := seqs(append(slices.Clone(b), make([]byte, 64)...)); !slices.Equal(got, []uint64{10, 11}) {
		t.Fatalf("chain then zeros: %v", got)
	}
	for name, tail := range map[string][]byte{
		"another chain":   appendRecord(nil, 8, 12, ops),
		"seq not higher":  appendRecord(nil, 7, 11, ops),
		"bad checksum":    func() []byte { r := appendRecord(nil, 7, 12, ops); r[len(r)-1] ^= 1; return r }(),
		"torn":            appendRecord(nil, 7, 12, ops)[:20],
		"absurd length":   {0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0},
		"empty body":      {0, 0, 0, 0, 0, 0, 0, 0},
		"garbage":         bytes.Repeat([]byte{0xa5}, 40),
		"record of chain": nil, // control: nothing after
	} {
		if got := seqs(append(slices.Clone(b[:good]), tail...)); !slices.Equal(got, []uint64{10, 11}) {
			t.Errorf("%s after the chain: read %v, want [10 11]", name, got)
		}
	}
	rs := chainOf(b)
	if len(rs[0].ops) != 3 || !rs[0].ops[1].del || string(rs[0].ops[0].value) != "sealed" || rs[0].ops[0].expires != 1<<40 || len(rs[0].ops[2].value) != 0 || rs[0].ops[2].expires != 7 {
		t.Fatalf("ops read back: %+v", rs[0].ops)
	}
}

// FuzzJournalRecord: readRecord takes anything without panicking, and
// what it accepts encodes back to the same bytes.
func FuzzJournalRecord(f *testing.F) {
	f.Add(appendRecord(nil, 1, 2, sampleOps()))
	f.Add(appendRecord(nil, 0, 0, nil))
	f.Add([]byte{0, 0, 0, 0})
	f.Add(bytes.Repeat([]byte{0xff}, 64))
	f.Fuzz(func(t *testing.T, b []byte) {
		chain, seq, ops, n, ok := readRecord(b)
		if !ok {
			return
		}
		if n > len(b) {
			t.Fatalf("record of %d bytes in %d", n, len(b))
		}
		if again := appendRecord(nil, chain, seq, ops); !bytes.Equal(again, b[:n]) {
			t.Fatalf("re-encoded %x, read %x", again, b[:n])
		}
		_ = chainOf(b)
	})
}
