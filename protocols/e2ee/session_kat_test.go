package e2ee

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

// drKATFile holds this package's own known answers for PQXDH, the ratchet
// KDFs and a whole session transcript, all from fixed seeds. Regenerate
// with `go test ./protocols/e2ee -run TestSessionKnownAnswer -update` after a
// deliberate format change, and say so in the commit.
const drKATFile = "testdata/session_kat.json"

type drKAT struct {
	KDF struct {
		RootKeyIn, DHOut                string
		RootKey, ChainKey, NextHK       string
		ChainIn, NextChain, MsgKey      string
		SK, InitRoot, InitHKA, InitNHKB string
	}
	AliceIdentity, BobIdentity string
	Bundle                     string
	PQXDH                      struct{ SK, AD string }
	Transcript                 []drKATMessage
	AliceState, BobState       string // SHA-256 of the final marshaled states
}

type drKATMessage struct {
	From, Plaintext, AD, Message string
}

func drComputeKAT(t *testing.T) drKAT {
	t.Helper()
	var k drKAT
	h := func(b []byte) string { return hex.EncodeToString(b) }

	var rk, ck drKey
	copy(rk[:], bytes.Repeat([]byte{0x11}, 32))
	copy(ck[:], bytes.Repeat([]byte{0x22}, 32))
	dh := bytes.Repeat([]byte{0x33}, 32)
	nrk, nck, nhk := drKDFRoot(&rk, dh)
	next, mk := drKDFChain(&ck)
	k.KDF.RootKeyIn, k.KDF.DHOut = h(rk[:]), h(dh)
	k.KDF.RootKey, k.KDF.ChainKey, k.KDF.NextHK = h(nrk[:]), h(nck[:]), h(nhk[:])
	k.KDF.ChainIn, k.KDF.NextChain, k.KDF.MsgKey = h(ck[:]), h(next[:]), h(mk[:])
	sk := bytes.Repeat([]byte{0x44}, 32)
	irk, hka, nhkb := drDeriveInit(sk)
	k.KDF.SK, k.KDF.InitRoot, k.KDF.InitHKA, k.KDF.InitNHKB = h(sk), h(irk[:]), h(hka[:]), h(nhkb[:])

	alice, bob := drTestIdentity(t, "kat/alice"), drTestIdentity(t, "kat/bob")
	store := drTestStore(t, bob, "kat", 2, 2)
	k.AliceIdentity, k.BobIdentity = h(alice.Public().Marshal()), h(bob.Public().Marshal())
	b := drTestBundle(t, store, true, true)
	raw, err := b.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	k.Bundle = h(raw)

	psk, pad, in, err := pxInitiate(alice, b, drTestRand("kat/pqxdh"), func() pxEncapsFunc {
		var e sessionEnv
		drTestDetKEM()(&e)
		return e.encaps
	}())
	if err != nil {
		t.Fatal(err)
	}
	rsk, rad, _, consumed, err := pxRespond(bob, store, &in)
	if err != nil || !bytes.Equal(psk, rsk) || !bytes.Equal(pad, rad) || len(consumed) != 2 {
		t.Fatalf("pxRespond: got %x/%x (%v, consumed %v), want %x/%x", rsk, rad, err, consumed, psk, pad)
	}
	k.PQXDH.SK, k.PQXDH.AD = h(psk), h(pad)

	clock := &drTestClock{t: drTestT0}
	aOpt := []SessionOption{WithRand(drTestRand("kat/alice-session")), WithClock(clock.now), drTestDetKEM()}
	bOpt := []SessionOption{WithRand(drTestRand("kat/bob-session")), WithClock(clock.now)}
	a, err := Initiate(alice, b, aOpt...)
	if err != nil {
		t.Fatal(err)
	}
	var bs *Session
	send := func(fromAlice bool, text, ad string) []byte {
		s, from := &bs, "bob"
		if fromAlice {
			s, from = &a, "alice"
		}
		msg, next, err := (*s).Encrypt([]byte(text), []byte(ad))
		if err != nil {
			t.Fatal(err)
		}
		*s = next
		k.Transcript = append(k.Transcript, drKATMessage{From: from, Plaintext: text, AD: ad, Message: h(msg)})
		return msg
	}
	recv := func(toBob bool, msg []byte, text, ad string) {
		s := &a
		if toBob {
			s = &bs
		}
		pt, next, err := (*s).Decrypt(msg, []byte(ad))
		if err != nil || string(pt) != text {
			t.Fatalf("Decrypt: got %q, %v, want %q", pt, err, text)
		}
		*s = next
	}
	m0 := send(true, "hello", "ad-0")
	m1 := send(true, "are you there?", "")
	var pt []byte
	if bs, pt, _, err = Respond(bob, store, m1, nil, bOpt...); err != nil || string(pt) != "are you there?" {
		t.Fatalf("Respond: got %q, %v", pt, err)
	}
	recv(true, m0, "hello", "ad-0")
	recv(false, send(false, "yes", ""), "yes", "")
	x := [][]byte{send(true, "x0", ""), send(true, "x1", "ad"), send(true, "x2", "")}
	recv(true, x[2], "x2", "")
	recv(true, x[0], "x0", "")
	y := [][]byte{send(false, "y0", ""), send(false, "y1", "")}
	recv(false, y[1], "y1", "")
	recv(true, send(true, "z", ""), "z", "")
	recv(true, x[1], "x1", "ad")
	recv(false, y[0], "y0", "")
	as, bss := sha256.Sum256(a.Marshal()), sha256.Sum256(bs.Marshal())
	k.AliceState, k.BobState = h(as[:]), h(bss[:])
	return k
}

func TestSessionKnownAnswer(t *testing.T) {
	got := drComputeKAT(t)
	if drTestFlag("update") {
		b, err := json.MarshalIndent(got, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Dir(drKATFile), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(drKATFile, append(b, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s", drKATFile)
		return
	}
	raw, err := os.ReadFile(drKATFile)
	if err != nil {
		t.Fatalf("read golden file (regenerate with -update): %v", err)
	}
	var want drKAT
	if err := json.Unmarshal(raw, &want); err != nil {
		t.Fatal(err)
	}
	gb, _ := json.Marshal(got)
	wb, _ := json.Marshal(want)
	if !bytes.Equal(gb, wb) {
		t.Errorf("known answers differ from %s:\ngot  %s\nwant %s", drKATFile, gb, wb)
	}

}
