package e2ee

import (
	"bytes"
	"errors"
	"testing"
)

// TestHeaderEncryptionHidesHeader: a ratchet message has a fixed layout
// whose only cleartext fields are the version and type bytes; the ratchet
// key and counters never appear, and the size depends only on the
// plaintext.
func TestHeaderEncryptionHidesHeader(t *testing.T) {
	p := drTestSetup(t, "hide")
	p.recv(t, false, p.send(t, false, "reply"), "reply")
	var msgs [][]byte
	for i := range 300 {
		m := p.send(t, true, "same size")
		if i == 0 || i == 299 {
			msgs = append(msgs, m)
		}
	}
	for _, m := range msgs {
		if len(m) != drMessageMin+len("same size") {
			t.Errorf("size: got %d, want %d", len(m), drMessageMin+len("same size"))
		}
		if m[0] != drVersion || m[1] != drTypeMessage {
			t.Errorf("prefix: got %x", m[:2])
		}
		if bytes.Contains(m, p.aliceS.st.dhsPub[:]) {
			t.Errorf("the sender's ratchet key appears in the message")
		}
	}
	h, ok := drOpenHeader(drHeaderAEAD(&p.aliceS.st.hks), msgs[1], p.aliceS.c.hdrAD, make([]byte, drHeaderSize))
	if !ok || h.n != 299 || h.dh != p.aliceS.st.dhsPub {
		t.Errorf("header under HKs: got %+v, %v", h, ok)
	}
	if _, ok := drOpenHeader(drHeaderAEAD(&p.aliceS.st.nhks), msgs[1], p.aliceS.c.hdrAD, make([]byte, drHeaderSize)); ok {
		t.Errorf("header opened under the next header key")
	}
}

// TestHeaderKeysRotate: header keys change with every DH ratchet step,
// and the previous receiving header key stays usable only while skipped
// keys of its chain remain.
func TestHeaderKeysRotate(t *testing.T) {
	p := drTestSetup(t, "hkrotate")
	seen := map[drKey]bool{}
	for i := range 6 {
		fromAlice := i%2 == 0
		p.recv(t, fromAlice, p.send(t, fromAlice, "x"), "x")
		for _, k := range []drKey{p.aliceS.st.hks, p.bobS.st.hks} {
			seen[k] = true
		}
	}
	if len(seen) < 6 {
		t.Errorf("distinct sending header keys over 6 turns: got %d, want at least 6", len(seen))
	}
	if p.aliceS.st.hks != p.bobS.st.hkr && p.bobS.st.hks != p.aliceS.st.hkr {
		t.Errorf("header keys disagree")
	}
}

// FuzzSessionDecrypt feeds arbitrary bytes to Decrypt on an established
// session: typed errors only, never a panic, never a state change.
func FuzzSessionDecrypt(f *testing.F) {
	p := drTestSetup(f, "fuzz-decrypt")
	p.recv(f, false, p.send(f, false, "r"), "r")
	f.Add(p.send(f, true, "hello"), []byte(nil))
	f.Add(p.send(f, true, "hello again"), []byte("ad"))
	f.Add([]byte{drVersion, drTypeMessage}, []byte(nil))
	f.Add([]byte{drVersion, drTypeInitial, 0x0a, 0x00}, []byte(nil))
	before := p.bobS.Marshal()
	f.Fuzz(func(t *testing.T, msg, ad []byte) {
		pt, next, err := p.bobS.Decrypt(msg, ad)
		if err != nil {
			if !drTestTyped(err) || next != nil || pt != nil {
				t.Fatalf("Decrypt: got (%q, %v, %v), want a typed error only", pt, next, err)
			}
		}
		if !bytes.Equal(before, p.bobS.Marshal()) {
			t.Fatalf("Decrypt changed the session")
		}
		if err == nil && next == nil {
			t.Fatalf("Decrypt succeeded without a next state")
		}
		if errors.Is(err, ErrTooLarge) && len(msg) <= drMaxMessageSize {
			t.Fatalf("ErrTooLarge for %d bytes", len(msg))
		}
	})
}
