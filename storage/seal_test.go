package storage

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"testing"
)

func testSealer(t testing.TB, fill byte) *sealer {
	t.Helper()
	s, err := newSealer(bytes.Repeat([]byte{fill}, keyLen))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestGolden pins the byte layouts and key derivations: a change here breaks
// every existing store.
func TestGolden(t *testing.T) {
	s := testSealer(t, 0x42)
	var nonce [nonceLen]byte
	for i := range nonce {
		nonce[i] = byte(i)
	}
	ns := &Namespace{name: "mailbox", opaqueKey: s.opaqueKey("mailbox")}
	tests := []struct {
		name string
		got  []byte
		want string
	}{
		{"sealed value", s.sealNonce(nonce, "mailbox", "k", 0x0102030405060708, []byte("hello")),
			"01" + // version
				"000102030405060708090a0b0c0d0e0f1011121314151617" + // nonce
				"acba961f040a71875af8b34fde" + // be64(expiry) || "hello", encrypted
				"b83e45bbb8b349561f7bf2243538c7ab"}, // tag
		{"sealed value in parts", s.sealNonce(nonce, "mailbox", "k", 0x0102030405060708, []byte("he"), nil, []byte("llo")),
			"01" + "000102030405060708090a0b0c0d0e0f1011121314151617" + // the same as joined
				"acba961f040a71875af8b34fde" + "b83e45bbb8b349561f7bf2243538c7ab"},
		{"data key", dataKey("mailbox", "k/1"), hex.EncodeToString([]byte("d/mailbox/k/1"))},
		{"index key", indexKey(0x0102030405060708, "mailbox", "k"),
			hex.EncodeToString([]byte("x/")) + "0102030405060708" + hex.EncodeToString([]byte("mailbox/k"))},
		{"associated data", associatedData("mailbox", "k"), "0107" + hex.EncodeToString([]byte("mailboxk"))},
		{"opaque", []byte(ns.Opaque([]byte("id"))), hex.EncodeToString([]byte("7t6j8f1p2a6133jlgjhjt0q5fcf6gdm6"))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := hex.EncodeToString(tt.got); got != tt.want {
				t.Fatalf("got  %s\nwant %s", got, tt.want)
			}
		})
	}
}

func FuzzOpenValue(f *testing.F) {
	s := testSealer(f, 1)
	f.Add(s.seal("ns", "key", 0, []byte("value")))
	f.Add(s.seal("ns", "key", 1<<62, nil))
	f.Add([]byte{})
	f.Add([]byte{sealVersion})
	f.Add(make([]byte, sealOverhead))
	f.Fuzz(func(t *testing.T, b []byte) {
		expiry, v, err := s.open("ns", "key", b)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("open: got %v, want ErrCorrupt", err)
			}
			return
		}
		// Only a real sealed value opens; sealing its contents again
		// gives a value of the same length that opens the same.
		again := s.seal("ns", "key", expiry, v)
		if len(again) != len(b) {
			t.Fatalf("resealed length %d, want %d", len(again), len(b))
		}
	})
}

func FuzzSealRoundTrip(f *testing.F) {
	s := testSealer(f, 2)
	other := testSealer(f, 3)
	f.Add("mailbox", "k", uint64(0), []byte("v"))
	f.Add("a", "\x00/..", uint64(1)<<63, []byte{})
	f.Fuzz(func(t *testing.T, ns, key string, expiry uint64, value []byte) {
		if len(ns) > maxNamespaceLen {
			ns = ns[:maxNamespaceLen]
		}
		sealed := s.seal(ns, key, expiry, value)
		if len(sealed) != len(value)+sealOverhead {
			t.Fatalf("sealed length %d, want %d", len(sealed), len(value)+sealOverhead)
		}
		gotExp, got, err := s.open(ns, key, sealed)
		if err != nil || gotExp != expiry || !bytes.Equal(got, value) {
			t.Fatalf("open = %d, %q, %v; want %d, %q, nil", gotExp, got, err, expiry, value)
		}
		if _, _, err := other.open(ns, key, sealed); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("open under another key: got %v, want ErrCorrupt", err)
		}
		if _, _, err := s.open(ns, key+"x", sealed); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("open under another key name: got %v, want ErrCorrupt", err)
		}
		if _, _, err := s.open(ns+"x", key, sealed); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("open in another namespace: got %v, want ErrCorrupt", err)
		}
	})
}

func FuzzIndexKey(f *testing.F) {
	f.Add([]byte("x/\x00\x00\x00\x00\x00\x00\x00\x01ns/key"), uint64(5), "mailbox", "k/1")
	f.Add([]byte("x/"), uint64(0), "a", "\x00")
	f.Fuzz(func(t *testing.T, raw []byte, expiry uint64, ns, key string) {
		parseIndexKey(raw) // never panics
		if !validNamespace(ns) || validKey(key) != nil {
			return
		}
		parseGroupKey(raw) // never panics
		e, gotNS, gotKey, ok := parseIndexKey(indexKey(expiry, ns, key))
		if !ok || e != expiry || gotNS != ns || gotKey != key {
			t.Fatalf("parse(indexKey(%d, %q, %q)) = %d, %q, %q, %v", expiry, ns, key, e, gotNS, gotKey, ok)
		}
		e, gotNS, gotKey, ok = parseGroupKey(groupKey(expiry, ns, key))
		if !ok || e != expiry || gotNS != ns || gotKey != key {
			t.Fatalf("parse(groupKey(%d, %q, %q)) = %d, %q, %q, %v", expiry, ns, key, e, gotNS, gotKey, ok)
		}
		if _, _, _, ok := parseGroupKey(indexKey(expiry, ns, key)); ok {
			t.Fatalf("an index key parses as a group key")
		}
	})
}

func FuzzKDFParams(f *testing.F) {
	good, _ := json.Marshal(kdfParams{Version: 1, KDF: "argon2id", Time: 3, MemoryKiB: 65536, Threads: 4, Salt: make([]byte, 16)})
	f.Add(good)
	f.Add([]byte(`{"version":1,"kdf":"argon2id","time":4294967295,"memory_kib":4294967295,"threads":255,"salt":""}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := decodeKDFParams(b)
		if err != nil {
			return
		}
		if err := p.validate(); err != nil {
			t.Fatalf("decoded params fail validation: %v", err)
		}
		again, err := json.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		p2, err := decodeKDFParams(again)
		if err != nil || !bytes.Equal(p2.Salt, p.Salt) || p2.Time != p.Time || p2.MemoryKiB != p.MemoryKiB || p2.Threads != p.Threads {
			t.Fatalf("re-decode = %+v, %v; want %+v", p2, err, p)
		}
	})
}
