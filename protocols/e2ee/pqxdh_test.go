package e2ee

import (
	"bytes"
	"crypto/mlkem"
	"errors"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/kinmesh/kinmesh/protocols/e2ee/pb"
)

func pxTestEncaps() pxEncapsFunc {
	var e sessionEnv
	drTestDetKEM()(&e)
	return e.encaps
}

func TestPQXDHAgreement(t *testing.T) {
	alice, bob := drTestIdentity(t, "px/alice"), drTestIdentity(t, "px/bob")
	s := drTestStore(t, bob, "px", 2, 2)
	for _, tt := range []struct {
		name         string
		opk, pqOT    bool
		wantConsumed int
	}{
		{"with one-time prekeys", true, true, 2},
		{"one-time X25519 prekey, last-resort ML-KEM", true, false, 1},
		{"last resort only", false, false, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b := drTestBundle(t, s, tt.opk, tt.pqOT)
			sk, ad, in, err := pxInitiate(alice, b, drTestRand("px/"+tt.name), pxTestEncaps())
			if err != nil {
				t.Fatal(err)
			}
			rsk, rad, spk, consumed, err := pxRespond(bob, s, &in)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(sk, rsk) || len(sk) != 32 {
				t.Errorf("SK: got %x and %x, want equal 32 bytes", sk, rsk)
			}
			if !bytes.Equal(ad, rad) || len(ad) != pxADSize {
				t.Errorf("AD: got %x and %x, want equal %d bytes", ad, rad, pxADSize)
			}
			if !bytes.Equal(ad[:33], pxEncodeDH(alice.Public().DH)) || !bytes.Equal(ad[33:66], pxEncodeDH(bob.Public().DH)) {
				t.Errorf("AD does not start with Encode(IK_A) || Encode(IK_B)")
			}
			if !spk.PublicKey().Equal(b.SignedPrekey.Key) {
				t.Errorf("responder's ratchet key is not the signed prekey")
			}
			if len(consumed) != tt.wantConsumed {
				t.Errorf("consumed: got %v, want %d ids", consumed, tt.wantConsumed)
			}
			if (in.opkID != 0) != tt.opk {
				t.Errorf("one-time prekey id: got %d", in.opkID)
			}
		})
	}
}

// TestPQXDHBinding: changing any part of an initial message makes the
// responder derive another secret or AD, so the first message does not
// decrypt, and nothing is consumed.
func TestPQXDHBinding(t *testing.T) {
	alice, bob, mallory := drTestIdentity(t, "bind/alice"), drTestIdentity(t, "bind/bob"), drTestIdentity(t, "bind/mallory")
	s := drTestStore(t, bob, "bind", 3, 3)
	u := s.Upload()
	a, err := Initiate(alice, drTestBundle(t, s, true, true))
	if err != nil {
		t.Fatal(err)
	}
	msg, _, err := a.Encrypt([]byte("hi"), nil)
	if err != nil {
		t.Fatal(err)
	}
	var base pb.RatchetInitial
	if err := proto.Unmarshal(msg[2:], &base); err != nil {
		t.Fatal(err)
	}
	otherEK, _ := drGenerate(drTestRand("bind/ek"))
	tests := []struct {
		name   string
		mutate func(m *pb.RatchetInitial)
		want   error
	}{
		{"ephemeral key", func(m *pb.RatchetInitial) { m.EphemeralKey = otherEK.PublicKey().Bytes() }, ErrDecrypt},
		{"kem ciphertext", func(m *pb.RatchetInitial) { m.KemCiphertext = bytes.Clone(m.KemCiphertext); m.KemCiphertext[7] ^= 1 }, ErrDecrypt},
		{"another one-time prekey", func(m *pb.RatchetInitial) { m.OneTimePrekeyId = uint32(u.OneTime[1].ID) }, ErrDecrypt},
		{"no one-time prekey", func(m *pb.RatchetInitial) { m.OneTimePrekeyId = 0 }, ErrDecrypt},
		{"another pq prekey", func(m *pb.RatchetInitial) { m.PqPrekeyId = uint32(u.PQOneTime[1].ID) }, ErrDecrypt},
		{"last-resort pq prekey", func(m *pb.RatchetInitial) { m.PqPrekeyId = uint32(u.LastResort.ID) }, ErrDecrypt},
		{"another identity", func(m *pb.RatchetInitial) { m.Identity = mallory.Public().toWire() }, ErrDecrypt},
		{"unknown signed prekey", func(m *pb.RatchetInitial) { m.SignedPrekeyId = 999 }, ErrNoPrekey},
		{"unknown one-time prekey", func(m *pb.RatchetInitial) { m.OneTimePrekeyId = 999 }, ErrNoPrekey},
		{"forged identity binding", func(m *pb.RatchetInitial) {
			m.Identity = proto.Clone(m.Identity).(*pb.PublicIdentity)
			m.Identity.DhKey = mallory.Public().DH.Bytes()
		}, ErrSignature},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := proto.Clone(&base).(*pb.RatchetInitial)
			tt.mutate(m)
			b, _ := proto.Marshal(m)
			before := s.Marshal()
			sess, _, consumed, err := Respond(bob, s, append([]byte{drVersion, drTypeInitial}, b...), nil)
			if !errors.Is(err, tt.want) || sess != nil || consumed != nil {
				t.Errorf("Respond: got (%v, %v, %v), want %v", sess, consumed, err, tt.want)
			}
			if !bytes.Equal(before, s.Marshal()) {
				t.Errorf("Respond changed the prekey store")
			}
		})
	}
	if _, pt, _, err := Respond(bob, s, msg, nil); err != nil || string(pt) != "hi" {
		t.Errorf("Respond to the genuine message: got %q, %v", pt, err)
	}
}

func TestInitialMessageMalformed(t *testing.T) {
	p := drTestSetup(t, "initial-malformed")
	a, err := Initiate(p.alice, drTestBundle(t, drTestStore(t, p.bob, "im", 1, 1), true, true))
	if err != nil {
		t.Fatal(err)
	}
	msg, _, err := a.Encrypt([]byte("hi"), nil)
	if err != nil {
		t.Fatal(err)
	}
	var base pb.RatchetInitial
	if err := proto.Unmarshal(msg[2:], &base); err != nil {
		t.Fatal(err)
	}
	build := func(mutate func(m *pb.RatchetInitial)) []byte {
		m := proto.Clone(&base).(*pb.RatchetInitial)
		mutate(m)
		b, _ := proto.Marshal(m)
		return append([]byte{drVersion, drTypeInitial}, b...)
	}
	tests := []struct {
		name string
		msg  []byte
		want error
	}{
		{"prefix only", msg[:2], ErrMalformed},
		{"one byte", msg[:1], ErrMalformed},
		{"protobuf garbage", append([]byte{drVersion, drTypeInitial}, 0xff, 0xff), ErrMalformed},
		{"version", append([]byte{7}, msg[1:]...), ErrVersion},
		{"no identity", build(func(m *pb.RatchetInitial) { m.Identity = nil }), ErrMalformed},
		{"short ephemeral key", build(func(m *pb.RatchetInitial) { m.EphemeralKey = m.EphemeralKey[:31] }), ErrMalformed},
		{"short kem ciphertext", build(func(m *pb.RatchetInitial) { m.KemCiphertext = m.KemCiphertext[:mlkem.CiphertextSize768-1] }), ErrMalformed},
		{"no signed prekey id", build(func(m *pb.RatchetInitial) { m.SignedPrekeyId = 0 }), ErrMalformed},
		{"no pq prekey id", build(func(m *pb.RatchetInitial) { m.PqPrekeyId = 0 }), ErrMalformed},
		{"no message", build(func(m *pb.RatchetInitial) { m.Message = nil }), ErrMalformed},
		{"nested initial message", build(func(m *pb.RatchetInitial) { m.Message = msg }), ErrMalformed},
		{"message of another version", build(func(m *pb.RatchetInitial) { m.Message = append([]byte{9}, m.Message[1:]...) }), ErrVersion},
		{"too large", append(bytes.Clone(msg), make([]byte, maxInitialSize)...), ErrTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, _, err := pxParseInitial(tt.msg); !errors.Is(err, tt.want) {
				t.Errorf("pxParseInitial: got %v, want %v", err, tt.want)
			}
			if _, _, _, err := Respond(p.bob, p.store, tt.msg, nil); !errors.Is(err, tt.want) {
				t.Errorf("Respond: got %v, want %v", err, tt.want)
			}
			drTestRecvErr(t, p.bobS, tt.msg, nil, tt.want)
		})
	}
}

func FuzzParseInitial(f *testing.F) {
	p := drTestSetup(f, "fuzz-initial")
	f.Add(p.send(f, true, "x"))
	f.Fuzz(func(t *testing.T, b []byte) {
		in, inner, err := pxParseInitial(b)
		if err != nil {
			if !drTestTyped(err) {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		again, inner2, err := pxParseInitial(pxMarshalInitial(in, inner))
		if err != nil || !bytes.Equal(inner, inner2) || !again.identity.Equal(in.identity) {
			t.Fatalf("round trip: %v", err)
		}
	})
}

// FuzzRespond feeds arbitrary bytes to Respond: typed errors only, and the
// prekey store is never changed.
func FuzzRespond(f *testing.F) {
	p := drTestSetup(f, "fuzz-respond")
	a, err := Initiate(p.alice, drTestBundle(f, p.store, false, false))
	if err != nil {
		f.Fatal(err)
	}
	msg, _, _ := a.Encrypt([]byte("x"), nil)
	f.Add(msg)
	before := p.store.Marshal()
	f.Fuzz(func(t *testing.T, b []byte) {
		if _, _, _, err := Respond(p.bob, p.store, b, nil); err != nil && !drTestTyped(err) {
			t.Fatalf("untyped error %v", err)
		}
		if !bytes.Equal(before, p.store.Marshal()) {
			t.Fatalf("Respond changed the store")
		}
	})
}
