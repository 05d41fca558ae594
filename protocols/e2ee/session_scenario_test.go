package e2ee

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

// TestSessionReplay: a message decrypts once; afterwards it is rejected
// with a typed error and changes nothing, whether it was in order, out of
// order (its skipped key used), from an old chain, or an initial message.
func TestSessionReplay(t *testing.T) {
	p := drTestSetup(t, "replay")
	first := p.send(t, true, "initial again") // still an initial message
	p.recv(t, true, first, "initial again")
	drTestRecvErr(t, p.bobS, first, nil, ErrReplay)

	m1 := p.send(t, false, "b1")
	p.recv(t, false, m1, "b1")
	drTestRecvErr(t, p.aliceS, m1, nil, ErrReplay)

	a := []([]byte){p.send(t, true, "a0"), p.send(t, true, "a1"), p.send(t, true, "a2")}
	p.recv(t, true, a[2], "a2")
	p.recv(t, true, a[0], "a0")
	drTestRecvErr(t, p.bobS, a[0], nil, ErrReplay) // skipped key used up
	drTestRecvErr(t, p.bobS, a[2], nil, ErrReplay)

	// After a round trip, the old chain is gone except for a[1]'s key.
	p.recv(t, false, p.send(t, false, "b2"), "b2")
	p.recv(t, true, p.send(t, true, "a3"), "a3")
	drTestRecvErr(t, p.bobS, a[2], nil, ErrReplay) // header under a kept chain key
	p.recv(t, true, a[1], "a1")
	drTestRecvErr(t, p.bobS, a[1], nil, ErrDecrypt) // chain dropped with its last key
	drTestRecvErr(t, p.bobS, first, nil, ErrDecrypt)
}

// TestSessionCrashSafety: decrypting without persisting and decrypting
// again from the old state works; once persisted, the message is a replay.
func TestSessionCrashSafety(t *testing.T) {
	p := drTestSetup(t, "crash")
	msgs := [][]byte{p.send(t, true, "x0"), p.send(t, true, "x1")}
	reply := p.send(t, false, "needs a DH ratchet step at Alice")

	persisted := p.bobS.Marshal()
	for round := range 3 { // decrypt, "crash", decrypt again
		bob, err := UnmarshalSession(persisted, p.bobOpt...)
		if err != nil {
			t.Fatal(err)
		}
		pt, next, err := bob.Decrypt(msgs[1], nil)
		if err != nil || string(pt) != "x1" {
			t.Fatalf("round %d: Decrypt: got %q, %v", round, pt, err)
		}
		_ = next // not persisted
	}
	bob, _ := UnmarshalSession(persisted, p.bobOpt...)
	pt, next, err := bob.Decrypt(msgs[1], nil)
	if err != nil || string(pt) != "x1" {
		t.Fatal(err)
	}
	persisted = next.Marshal()
	bob, _ = UnmarshalSession(persisted, p.bobOpt...)
	drTestRecvErr(t, bob, msgs[1], nil, ErrReplay)
	if pt, _, err := bob.Decrypt(msgs[0], nil); err != nil || string(pt) != "x0" {
		t.Fatalf("Decrypt of the skipped message: got %q, %v", pt, err)
	}

	// The same at Alice, for a message that makes her ratchet.
	alicePersisted := p.aliceS.Marshal()
	for range 2 {
		alice, _ := UnmarshalSession(alicePersisted, p.aliceOpt...)
		if pt, _, err := alice.Decrypt(reply, nil); err != nil || string(pt) != "needs a DH ratchet step at Alice" {
			t.Fatalf("Decrypt: got %q, %v", pt, err)
		}
	}

	p.recv(t, false, reply, "needs a DH ratchet step at Alice")

	// Encrypt: a crash before persisting the next state reuses the message
	// number, but never a nonce; the receiver takes the first to arrive.
	e1, _, _ := p.aliceS.Encrypt([]byte("e1"), nil)
	e2, _, _ := p.aliceS.Encrypt([]byte("e2"), nil)
	if bytes.Equal(e1[2:26], e2[2:26]) || bytes.Equal(e1[82:106], e2[82:106]) {
		t.Errorf("two encryptions from the same state reused a nonce")
	}
	p.recv(t, true, e2, "e2")
	drTestRecvErr(t, p.bobS, e1, nil, ErrReplay)
}

// TestSessionTooManySkipped: a message more than MaxSkipPerChain ahead is
// refused and changes nothing; one exactly that far ahead is accepted.
func TestSessionTooManySkipped(t *testing.T) {
	p := drTestSetup(t, "skip")
	var msgs [][]byte
	for i := range MaxSkipPerChain + 2 {
		msgs = append(msgs, p.send(t, true, fmt.Sprint(i)))
	}
	// Bob has received message 0 ("hello"); msgs[i] is message i+1.
	drTestRecvErr(t, p.bobS, msgs[MaxSkipPerChain+1], nil, ErrTooManySkipped)
	p.recv(t, true, msgs[MaxSkipPerChain], fmt.Sprint(MaxSkipPerChain))
	if got := p.bobS.st.skipped.total; got != MaxSkipPerChain {
		t.Errorf("skipped keys: got %d, want %d", got, MaxSkipPerChain)
	}
	p.recv(t, true, msgs[MaxSkipPerChain+1], fmt.Sprint(MaxSkipPerChain+1))
	p.recv(t, true, msgs[7], "7")

	// In a new chain (after a DH ratchet step) the same bound holds.
	p.recv(t, false, p.send(t, false, "turn"), "turn")
	msgs = msgs[:0]
	for i := range MaxSkipPerChain + 2 {
		msgs = append(msgs, p.send(t, true, fmt.Sprint(i)))
	}
	drTestRecvErr(t, p.bobS, msgs[MaxSkipPerChain+1], nil, ErrTooManySkipped)
	p.recv(t, true, msgs[MaxSkipPerChain], fmt.Sprint(MaxSkipPerChain))
}

// TestSessionSkippedCaps: the per-chain and per-session caps evict the
// oldest keys; evicted messages no longer decrypt.
func TestSessionSkippedCaps(t *testing.T) {
	p := drTestSetup(t, "caps")
	// One chain: skip 600, then another 600; the oldest 200 are evicted.
	var msgs [][]byte
	for i := range 1202 {
		msgs = append(msgs, p.send(t, true, fmt.Sprint(i)))
	}
	p.recv(t, true, msgs[600], "600")
	p.recv(t, true, msgs[1201], "1201")
	if got := p.bobS.st.skipped.total; got != MaxSkipPerChain {
		t.Fatalf("skipped keys in one chain: got %d, want %d", got, MaxSkipPerChain)
	}
	drTestRecvErr(t, p.bobS, msgs[0], nil, ErrReplay)
	p.recv(t, true, msgs[300], "300")

	// Six chains of 1000 skipped keys each: the session keeps 5000.
	var oldest []byte
	for round := range 6 {
		p.recv(t, false, p.send(t, false, "turn"), "turn")
		var last []byte
		for i := range MaxSkipPerChain + 1 {
			m := p.send(t, true, fmt.Sprint(i))
			if round == 0 && i == 0 {
				oldest = m
			}
			last = m
		}
		p.recv(t, true, last, fmt.Sprint(MaxSkipPerChain))
	}
	if got := p.bobS.st.skipped.total; got != MaxSkippedKeys {
		t.Errorf("skipped keys: got %d, want %d", got, MaxSkippedKeys)
	}
	drTestRecvErr(t, p.bobS, oldest, nil, ErrDecrypt)
	if len(p.bobS.Marshal()) > maxSessionSize {
		t.Errorf("a full session state does not fit maxSessionSize")
	}
	if _, err := UnmarshalSession(p.bobS.Marshal()); err != nil {
		t.Errorf("UnmarshalSession of a full state: %v", err)
	}
}

// TestSessionSkippedExpiry: skipped keys older than SkippedKeyMaxAge are
// dropped, by Decrypt and by Encrypt.
func TestSessionSkippedExpiry(t *testing.T) {
	p := drTestSetup(t, "expiry")
	m1, m2, m3 := p.send(t, true, "m1"), p.send(t, true, "m2"), p.send(t, true, "m3")
	p.recv(t, true, m3, "m3")
	p.clock.advance(SkippedKeyMaxAge - time.Second)
	p.recv(t, true, m1, "m1")
	p.clock.advance(2 * time.Second)
	drTestRecvErr(t, p.bobS, m2, nil, ErrReplay)
	if p.bobS.st.skipped.total != 1 {
		t.Fatalf("skipped keys before Encrypt: got %d, want 1", p.bobS.st.skipped.total)
	}
	p.send(t, false, "prunes")
	if got := p.bobS.st.skipped.total; got != 0 {
		t.Errorf("skipped keys after Encrypt past expiry: got %d, want 0", got)
	}
}

// TestSessionForwardSecrecy: once a message is decrypted its key is gone
// from the serialized state, and so are the chain and root keys it came
// from once the chain has moved on.
func TestSessionForwardSecrecy(t *testing.T) {
	p := drTestSetup(t, "fs")
	m1, m2 := p.send(t, true, "m1"), p.send(t, true, "m2")

	oldCK := p.bobS.st.ckr
	_, mk1 := drKDFChain(&oldCK)
	p.recv(t, true, m2, "m2") // m1's key is now stored as skipped
	st := p.bobS.Marshal()
	if !bytes.Contains(st, mk1[:]) {
		t.Fatalf("the skipped key of m1 is not in the state")
	}
	if bytes.Contains(st, oldCK[:]) {
		t.Errorf("the old receiving chain key is still in the state")
	}
	p.recv(t, true, m1, "m1")
	if bytes.Contains(p.bobS.Marshal(), mk1[:]) {
		t.Errorf("the message key of m1 is still in the state after decryption")
	}

	ck := p.bobS.st.ckr
	_, mk3 := drKDFChain(&ck)
	p.recv(t, true, p.send(t, true, "m3"), "m3")
	st = p.bobS.Marshal()
	if bytes.Contains(st, mk3[:]) || bytes.Contains(st, ck[:]) {
		t.Errorf("the message or chain key of m3 is still in the state")
	}

	rk, cks := p.bobS.st.rk, p.bobS.st.cks
	p.recv(t, false, p.send(t, false, "b"), "b")
	p.recv(t, true, p.send(t, true, "a"), "a") // Bob's DH ratchet step
	st = p.bobS.Marshal()
	if bytes.Contains(st, rk[:]) || bytes.Contains(st, cks[:]) {
		t.Errorf("the root or sending chain key before the DH ratchet step is still in the state")
	}
}

// TestSessionPostCompromise: an attacker holding a snapshot of Bob's state
// follows the conversation passively; once Bob's first fresh ratchet key
// is in use (one round trip), it can decrypt nothing more.
func TestSessionPostCompromise(t *testing.T) {
	p := drTestSetup(t, "pcs")
	p.recv(t, false, p.send(t, false, "b0"), "b0")
	attacker, err := UnmarshalSession(p.bobS.Marshal(), WithRand(drTestRand("pcs/attacker")), WithClock(p.clock.now))
	if err != nil {
		t.Fatal(err)
	}
	tryAttack := func(msg []byte) bool {
		_, next, err := attacker.Decrypt(msg, nil)
		if err != nil {
			if !errors.Is(err, ErrDecrypt) {
				t.Fatalf("attacker Decrypt: got %v, want ErrDecrypt", err)
			}
			return false
		}
		attacker = next
		return true
	}
	a1 := p.send(t, true, "a1") // Alice's chain to Bob's ratchet key in the snapshot
	p.recv(t, true, a1, "a1")   // Bob's DH ratchet step: a fresh key of his own
	if !tryAttack(a1) {
		t.Fatalf("attacker with the current state could not decrypt a1")
	}
	for round := range 5 {
		b := p.send(t, false, fmt.Sprint("b", round))
		p.recv(t, false, b, fmt.Sprint("b", round))
		for i := range 3 {
			text := fmt.Sprint("a", round, i)
			m := p.send(t, true, text)
			p.recv(t, true, m, text)
			if tryAttack(m) {
				t.Fatalf("attacker decrypted %q after the round trip", text)
			}
		}
	}
}

// TestSessionLongConversation drives two sessions through a lossy,
// reordering, duplicating network with crashes: every message that is not
// dropped decrypts exactly once, in whatever order it arrives; duplicates
// and failures change nothing.
func TestSessionLongConversation(t *testing.T) {
	steps := 20000
	if drTestLong() {
		steps = 400000
	}
	for _, seed := range []uint64{1, 2} {
		t.Run(fmt.Sprint("seed ", seed), func(t *testing.T) {
			drTestConversation(t, seed, steps)
		})
	}
}

type drSimMsg struct {
	data []byte
	text string
	sent time.Time
}

func drTestConversation(t *testing.T, seed uint64, steps int) {
	rng := rand.New(rand.NewPCG(seed, 99))
	p := drTestSetup(t, fmt.Sprint("long/", seed))
	sess := [2]*Session{p.aliceS, p.bobS}
	opts := [2][]SessionOption{p.aliceOpt, p.bobOpt}
	var inflight [2][]drSimMsg  // to side i
	var delivered [2][]drSimMsg // at side i, for duplicates
	sent, got, dropped, dups, crashes, redo := 0, 0, 0, 0, 0, 0

	deliver := func(to, idx int) {
		m := inflight[to][idx]
		inflight[to] = append(inflight[to][:idx], inflight[to][idx+1:]...)
		if p.clock.now().Sub(m.sent) >= SkippedKeyMaxAge-time.Hour {
			dropped++ // a relay keeps a message 15 days at most
			return
		}
		s := sess[to]
		if rng.IntN(10) == 0 { // decrypt, "crash" without persisting, decrypt again
			if pt, _, err := s.Decrypt(m.data, nil); err != nil || string(pt) != m.text {
				t.Fatalf("side %d: Decrypt %q (not persisted): got %q, %v", to, m.text, pt, err)
			}
			redo++
		}
		pt, next, err := s.Decrypt(m.data, nil)
		if err != nil || string(pt) != m.text {
			t.Fatalf("side %d: Decrypt %q: got %q, %v (skipped %d)", to, m.text, pt, err, s.st.skipped.total)
		}
		sess[to] = next
		delivered[to] = append(delivered[to], m)
		got++
	}
	for range steps {
		p.clock.advance(time.Duration(rng.IntN(120)) * time.Second)
		side := rng.IntN(2)
		switch r := rng.IntN(100); {
		case r < 30: // send a burst
			for range 1 + rng.IntN(3) {
				text := fmt.Sprintf("%d-%d", side, sent)
				msg, next, err := sess[side].Encrypt([]byte(text), nil)
				if err != nil {
					t.Fatal(err)
				}
				sess[side] = next
				inflight[1-side] = append(inflight[1-side], drSimMsg{msg, text, p.clock.now()})
				sent++
			}
		case r < 85: // deliver a few, mostly near the front of the queue
			for range 1 + rng.IntN(3) {
				if n := len(inflight[side]); n > 0 {
					idx := rng.IntN(min(n, 8))
					if rng.IntN(20) == 0 {
						idx = rng.IntN(n)
					}
					deliver(side, idx)
				}
			}
		case r < 89: // lose one
			if n := len(inflight[side]); n > 0 {
				idx := rng.IntN(n)
				inflight[side] = append(inflight[side][:idx], inflight[side][idx+1:]...)
				dropped++
			}
		case r < 95: // duplicate an old one
			if n := len(delivered[side]); n > 0 {
				m := delivered[side][rng.IntN(n)]
				before := sess[side].Marshal()
				_, next, err := sess[side].Decrypt(m.data, nil)
				if !errors.Is(err, ErrReplay) && !errors.Is(err, ErrDecrypt) {
					t.Fatalf("duplicate %q: got %v, want ErrReplay or ErrDecrypt", m.text, err)
				}
				if next != nil || !bytes.Equal(before, sess[side].Marshal()) {
					t.Fatalf("duplicate %q changed the state", m.text)
				}
				dups++
			}
		default: // crash and restore from the persisted state
			restored, err := UnmarshalSession(sess[side].Marshal(), opts[side]...)
			if err != nil {
				t.Fatal(err)
			}
			sess[side] = restored
			crashes++
		}
	}
	for side := range 2 {
		for len(inflight[side]) > 0 {
			deliver(side, rng.IntN(len(inflight[side])))
		}
	}
	if got+dropped != sent {
		t.Errorf("sent %d, got %d + dropped %d", sent, got, dropped)
	}
	t.Logf("sent %d, delivered %d, dropped %d, duplicates %d, crashes %d, re-decrypts %d, skipped keys %d/%d",
		sent, got, dropped, dups, crashes, redo, sess[0].st.skipped.total, sess[1].st.skipped.total)
}

// TestSessionSendReservation: a persisted session reserves SendReserve
// message keys of its sending chain. Encrypts within them persist as the
// state they came from (StoresAs), and a session restored from that state
// after a crash never uses their keys again: the receiver decrypts every
// message sent before the crash and after it. The first Encrypt past the
// reservation makes a new one: a state that must be persisted.
func TestSessionSendReservation(t *testing.T) {
	p := drTestSetup(t, "reserve")
	p.recv(t, false, p.send(t, false, "turn"), "turn") // Alice: a new sending chain
	durable := p.aliceS
	raw := durable.Marshal()
	var before [][]byte
	for i := range SendReserve {
		before = append(before, p.send(t, true, fmt.Sprint("before ", i)))
		if !p.aliceS.StoresAs(durable) || !bytes.Equal(p.aliceS.Marshal(), raw) {
			t.Fatalf("Encrypt %d, within the reservation, changed the persisted state", i)
		}
	}
	_, past, err := p.aliceS.Encrypt([]byte("past the reservation"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if past.StoresAs(durable) || bytes.Equal(past.Marshal(), raw) {
		t.Error("an Encrypt past the reservation persists as the state before it")
	}

	// A crash: only raw was on disk.
	restored, err := UnmarshalSession(raw, p.aliceOpt...)
	if err != nil {
		t.Fatal(err)
	}
	after, next, err := restored.Encrypt([]byte("after the crash"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if next.StoresAs(restored) {
		t.Error("the first Encrypt after a restore persists as the restored state")
	}
	p.recv(t, true, after, "after the crash")
	for i, m := range before { // none of their keys was used again
		p.recv(t, true, m, fmt.Sprint("before ", i))
	}
	if !durable.StoresAs(durable) || durable.StoresAs(restored) || restored.StoresAs(nil) {
		t.Error("StoresAs: wrong for the same state, a restored copy or nil")
	}
}
