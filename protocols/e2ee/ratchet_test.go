package e2ee

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"testing"
)

func drTestKeys(chain byte, from, to uint32, stored int64) []drSkippedKey {
	var keys []drSkippedKey
	for n := from; n < to; n++ {
		k := drSkippedKey{n: n, stored: stored}
		k.mk[0], k.mk[1] = chain, byte(n)
		keys = append(keys, k)
	}
	return keys
}

func drTestChainKey(b byte) drKey {
	var k drKey
	k[0] = b
	return k
}

// TestSkippedStore checks the store's operations and caps, and that none
// of them changes the store it is called on.
func TestSkippedStore(t *testing.T) {
	var empty drSkipped
	a, b := drTestChainKey(1), drTestChainKey(2)
	s1 := empty.with(a, a, drTestKeys(1, 0, 10, 100))
	snapshot := reflect.ValueOf(s1).Interface().(drSkipped)
	snapKeys := append([]drSkippedKey(nil), s1.chains[0].keys...)

	s2 := s1.with(b, b, drTestKeys(2, 5, 8, 200))
	s3 := s2.without(a, 3)
	s4 := s3.with(b, b, drTestKeys(2, 9, 11, 300))
	s5 := s4.dropOldest(4)
	s6 := s4.expire(150)

	if !reflect.DeepEqual(s1, snapshot) || !reflect.DeepEqual(s1.chains[0].keys, snapKeys) {
		t.Fatalf("operations changed the original store")
	}
	tests := []struct {
		name  string
		s     drSkipped
		total int
		has   map[[2]uint32]bool // {chain, n}
	}{
		{"with", s1, 10, map[[2]uint32]bool{{1, 0}: true, {1, 9}: true, {1, 10}: false}},
		{"second chain", s2, 13, map[[2]uint32]bool{{2, 5}: true, {2, 7}: true, {2, 8}: false}},
		{"without", s3, 12, map[[2]uint32]bool{{1, 3}: false, {1, 2}: true, {1, 4}: true}},
		{"append to chain", s4, 14, map[[2]uint32]bool{{2, 9}: true, {2, 10}: true, {2, 8}: false}},
		{"drop oldest", s5, 10, map[[2]uint32]bool{{1, 0}: false, {1, 2}: false, {1, 4}: false, {1, 5}: true}},
		{"expire", s6, 5, map[[2]uint32]bool{{1, 9}: false, {2, 5}: true, {2, 10}: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.s.total != tt.total {
				t.Errorf("total: got %d, want %d", tt.s.total, tt.total)
			}
			n := 0
			for _, c := range tt.s.chains {
				n += len(c.keys)
			}
			if n != tt.total {
				t.Errorf("keys: got %d, want total %d", n, tt.total)
			}
			for k, want := range tt.has {
				mk, got := tt.s.lookup(drTestChainKey(byte(k[0])), k[1])
				if got != want || (got && (mk[0] != byte(k[0]) || mk[1] != byte(k[1]))) {
					t.Errorf("lookup(chain %d, %d): got %v (key %x), want %v", k[0], k[1], got, mk[:2], want)
				}
			}
		})
	}

	// Removing a chain's last key removes the chain.
	one := empty.with(a, a, drTestKeys(1, 0, 1, 0)).without(a, 0)
	if len(one.chains) != 0 || one.total != 0 {
		t.Errorf("without the last key: got %d chains, total %d", len(one.chains), one.total)
	}
	if got := empty.without(a, 1); got.total != 0 {
		t.Errorf("without on an empty store: total %d", got.total)
	}
}

func TestSkippedStoreCaps(t *testing.T) {
	var s drSkipped
	s = s.with(drTestChainKey(1), drKey{}, drTestKeys(1, 0, 700, 0))
	s = s.with(drTestChainKey(1), drKey{}, drTestKeys(1, 700, 1400, 1))
	if s.total != MaxSkipPerChain || s.chains[0].keys[0].n != 400 {
		t.Errorf("per-chain cap: got total %d from n=%d, want %d from 400", s.total, s.chains[0].keys[0].n, MaxSkipPerChain)
	}
	for i := range 8 {
		s = s.with(drTestChainKey(byte(2+i)), drKey{}, drTestKeys(byte(2+i), 0, 1000, int64(2+i)))
	}
	if s.total != MaxSkippedKeys {
		t.Errorf("session cap: got %d, want %d", s.total, MaxSkippedKeys)
	}
	if _, ok := s.lookup(drTestChainKey(4), 999); ok {
		t.Errorf("the oldest chains survived the session cap")
	}
	if _, ok := s.lookup(drTestChainKey(5), 0); !ok {
		t.Errorf("the session cap evicted more than the oldest keys")
	}
	if _, ok := s.lookup(drTestChainKey(9), 999); !ok {
		t.Errorf("the newest chain was evicted")
	}
	var many drSkipped
	for i := range drMaxSkippedChains + 10 {
		var k drKey
		k[0], k[1] = byte(i), byte(i>>8)
		many = many.with(k, k, drTestKeys(0, 0, 1, int64(i)))
	}
	if len(many.chains) != drMaxSkippedChains || many.total != drMaxSkippedChains {
		t.Errorf("chain cap: got %d chains, %d keys, want %d", len(many.chains), many.total, drMaxSkippedChains)
	}
}

func TestRatchetHeaderEncoding(t *testing.T) {
	h := drHeader{dh: drTestChainKey(7), pn: 0x01020304, n: 0xfffffffe}
	b := h.encode()
	if !bytes.Equal(b[32:], []byte{1, 2, 3, 4, 0xff, 0xff, 0xff, 0xfe}) {
		t.Errorf("encoding: got %x", b)
	}
	back, err := drDecodeHeader(b[:])
	if err != nil || back != h {
		t.Errorf("round trip: got %+v, %v, want %+v", back, err, h)
	}
	for _, n := range []int{0, 39, 41} {
		if _, err := drDecodeHeader(make([]byte, n)); !errors.Is(err, ErrMalformed) {
			t.Errorf("decode %d bytes: got %v, want ErrMalformed", n, err)
		}
	}
}

// TestRatchetCoreSymmetric drives the core alone, as the cross-check does,
// without Python: both sides agree on every key through DH steps, skips
// and late arrivals.
func TestRatchetCoreSymmetric(t *testing.T) {
	r := drTestRand("core")
	var sk, zero drKey
	copy(sk[:], bytes.Repeat([]byte{5}, 32))
	bobKey, _ := drGenerate(r)
	st, err := drInitAlice(sk, zero, zero, bobKey.PublicKey(), r)
	if err != nil {
		t.Fatal(err)
	}
	alice, bob := &drPlain{st: st, rand: r}, &drPlain{st: drInitBob(sk, zero, zero, bobKey), rand: r}
	type lateMsg struct {
		to *drPlain
		m  xcheckMsg
	}
	var late []lateMsg
	for round := range 10 {
		from, to := alice, bob
		if round%2 == 1 {
			from, to = bob, alice
		}
		var msgs []xcheckMsg
		for i := range 5 {
			m, err := from.encrypt([]byte(fmt.Sprint(round, i)), []byte("ad"))
			if err != nil {
				t.Fatal(err)
			}
			msgs = append(msgs, m)
		}
		late = append(late, lateMsg{to, msgs[1]})
		for _, i := range []int{0, 4, 3, 2} {
			pt, err := to.decrypt(msgs[i], drTestT0)
			if err != nil || string(pt) != msgs[i].pt {
				t.Fatalf("round %d message %d: got %q, %v", round, i, pt, err)
			}
		}
	}
	for _, l := range late {
		if pt, err := l.to.decrypt(l.m, drTestT0); err != nil || string(pt) != l.m.pt {
			t.Fatalf("late %q: got %q, %v", l.m.pt, pt, err)
		}
		if _, err := l.to.decrypt(l.m, drTestT0); !errors.Is(err, ErrReplay) && !errors.Is(err, ErrDecrypt) {
			t.Fatalf("late %q again: got %v, want ErrReplay or ErrDecrypt", l.m.pt, err)
		}
	}
}
