package e2ee

import (
	"bytes"
	"crypto/ed25519"
	"encoding/hex"
	"errors"
	"regexp"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/kinmesh/kinmesh/protocols/e2ee/pb"
)

// idTestFixed is the identity with Ed25519 seed 32×0x01 and X25519 key
// 32×0x02, whose derived values below were computed independently (Python:
// cryptography's Ed25519/X25519, hashlib's SHA-512, base64.b32encode)
// from identity.go's description of them.
func idTestFixed(t testing.TB) *Identity {
	t.Helper()
	id, err := identityFromKeys(bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32))
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestIdentityGolden(t *testing.T) {
	p := idTestFixed(t).Public()
	tests := []struct {
		name, got, want string
	}{
		{"signing key", hex.EncodeToString(p.Sign), "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c"},
		{"dh key", hex.EncodeToString(p.DH.Bytes()), "ce8d3ad1ccb633ec7b70c17814a5c76ecd029685050d344745ba05870e587d59"},
		{"account id", string(p.AccountID()), "rkeohxlubhyzl7ks3mwtzos5olfgocn7dwkbeg7toseadnapn5oa"},
		{"fingerprint", p.Fingerprint(), "75044 14245 96273 28992 09379 68600"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.got != tt.want {
				t.Errorf("got %s, want %s", tt.got, tt.want)
			}
		})
	}
}

func TestIdentityRoundTrip(t *testing.T) {
	id := drTestIdentity(t, "identity/roundtrip")
	back, err := UnmarshalPrivateIdentity(id.MarshalPrivate())
	if err != nil {
		t.Fatalf("UnmarshalPrivateIdentity: %v", err)
	}
	if !back.Public().Equal(id.Public()) || back.AccountID() != id.AccountID() {
		t.Errorf("private round trip: got %s, want %s", back.AccountID(), id.AccountID())
	}
	msg := []byte("kinmesh/test: hello")
	if err := id.Public().Verify(msg, back.Sign(msg)); err != nil {
		t.Errorf("signature of the restored identity: %v", err)
	}
	pub, err := ParsePublicIdentity(id.Public().Marshal())
	if err != nil {
		t.Fatalf("ParsePublicIdentity: %v", err)
	}
	if !pub.Equal(id.Public()) {
		t.Errorf("public round trip: got %s, want %s", pub.AccountID(), id.AccountID())
	}
	aid, err := ParseAccountID(string(id.AccountID()))
	if err != nil || aid != id.AccountID() {
		t.Fatalf("ParseAccountID: got %q, %v", aid, err)
	}
	if k, err := aid.SigningKey(); err != nil || !bytes.Equal(k, id.Public().Sign) {
		t.Errorf("SigningKey: got %x, %v, want %x", k, err, id.Public().Sign)
	}
	other := drTestIdentity(t, "identity/other")
	a, _ := id.ECDH(other.Public().DH)
	b, _ := other.ECDH(id.Public().DH)
	if !bytes.Equal(a, b) {
		t.Errorf("ECDH: got %x and %x, want equal", a, b)
	}
}

func TestIdentityForgedBinding(t *testing.T) {
	alice, mallory := drTestIdentity(t, "forge/alice"), drTestIdentity(t, "forge/mallory")
	good := alice.Public().toWire()
	tests := []struct {
		name   string
		mutate func(m *pb.PublicIdentity)
	}{
		{"someone else's dh key", func(m *pb.PublicIdentity) { m.DhKey = mallory.Public().DH.Bytes() }},
		{"someone else's signing key", func(m *pb.PublicIdentity) { m.SignKey = mallory.Public().Sign }},
		{"someone else's binding", func(m *pb.PublicIdentity) { m.Binding = mallory.Public().Binding }},
		{"flipped binding bit", func(m *pb.PublicIdentity) { m.Binding = bytes.Clone(m.Binding); m.Binding[10] ^= 1 }},
		{"binding without context", func(m *pb.PublicIdentity) {
			m.Binding = ed25519.Sign(ed25519.NewKeyFromSeed(bytes.Repeat([]byte{9}, 32)), m.DhKey)
			m.SignKey = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{9}, 32)).Public().(ed25519.PublicKey)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := proto.Clone(good).(*pb.PublicIdentity)
			tt.mutate(m)
			b, _ := proto.Marshal(m)
			if _, err := ParsePublicIdentity(b); !errors.Is(err, ErrSignature) {
				t.Errorf("ParsePublicIdentity: got %v, want ErrSignature", err)
			}
		})
	}
}

func TestIdentityFingerprint(t *testing.T) {
	a, b, c := drTestIdentity(t, "fp/a").Public(), drTestIdentity(t, "fp/b").Public(), drTestIdentity(t, "fp/c").Public()
	if !regexp.MustCompile(`^\d{5}( \d{5}){5}$`).MatchString(a.Fingerprint()) {
		t.Errorf("fingerprint format: got %q, want six groups of five digits", a.Fingerprint())
	}
	again, err := ParsePublicIdentity(a.Marshal())
	if err != nil {
		t.Fatal(err)
	}
	if fa, fb := a.Fingerprint(), again.Fingerprint(); fa != fb || fa == b.Fingerprint() {
		t.Errorf("fingerprints: got %q (after a round trip %q) and %q, want stable and distinct", fa, fb, b.Fingerprint())
	}
	ab, ba := SafetyNumber(a, b), SafetyNumber(b, a)
	if ab != ba {
		t.Errorf("SafetyNumber(a, b) = %q, SafetyNumber(b, a) = %q, want equal", ab, ba)
	}
	if got := len(strings.ReplaceAll(ab, " ", "")); got != 60 {
		t.Errorf("safety number digits: got %d, want 60", got)
	}
	if !strings.Contains(ab, a.Fingerprint()) || !strings.Contains(ab, b.Fingerprint()) {
		t.Errorf("safety number %q does not contain both fingerprints", ab)
	}
	if SafetyNumber(a, c) == ab || SafetyNumber(c, b) == ab {
		t.Errorf("safety numbers of different pairs are equal")
	}
}

func TestIdentityMalformed(t *testing.T) {
	id := drTestIdentity(t, "malformed")
	wire := func(mutate func(m *pb.PublicIdentity)) []byte {
		m := id.Public().toWire()
		mutate(m)
		b, _ := proto.Marshal(m)
		return b
	}
	priv := func(mutate func(m *pb.PrivateIdentity)) []byte {
		m := &pb.PrivateIdentity{Version: identityVersion, SignSeed: bytes.Repeat([]byte{1}, 32), DhKey: bytes.Repeat([]byte{2}, 32)}
		mutate(m)
		b, _ := proto.Marshal(m)
		return b
	}
	tests := []struct {
		name  string
		parse func([]byte) error
		in    []byte
		want  error
	}{
		{"public: garbage", idParsePub, []byte{0xff, 0xff, 0xff}, ErrMalformed},
		{"public: empty", idParsePub, nil, ErrVersion},
		{"public: too large", idParsePub, make([]byte, maxIdentitySize+1), ErrTooLarge},
		{"public: version 2", idParsePub, wire(func(m *pb.PublicIdentity) { m.Version = 2 }), ErrVersion},
		{"public: short signing key", idParsePub, wire(func(m *pb.PublicIdentity) { m.SignKey = m.SignKey[:31] }), ErrMalformed},
		{"public: short dh key", idParsePub, wire(func(m *pb.PublicIdentity) { m.DhKey = m.DhKey[:31] }), ErrMalformed},
		{"public: no binding", idParsePub, wire(func(m *pb.PublicIdentity) { m.Binding = nil }), ErrMalformed},
		{"private: garbage", idParsePriv, []byte{0x0a}, ErrMalformed},
		{"private: too large", idParsePriv, make([]byte, maxIdentitySize+1), ErrTooLarge},
		{"private: version 0", idParsePriv, priv(func(m *pb.PrivateIdentity) { m.Version = 0 }), ErrVersion},
		{"private: short seed", idParsePriv, priv(func(m *pb.PrivateIdentity) { m.SignSeed = m.SignSeed[:5] }), ErrMalformed},
		{"private: long dh key", idParsePriv, priv(func(m *pb.PrivateIdentity) { m.DhKey = append(m.DhKey, 0) }), ErrMalformed},
		{"account id: empty", idParseAccount, nil, ErrMalformed},
		{"account id: upper case", idParseAccount, []byte(strings.ToUpper(string(id.AccountID()))), ErrMalformed},
		{"account id: short", idParseAccount, []byte(id.AccountID()[:51]), ErrMalformed},
		{"account id: padded", idParseAccount, []byte(id.AccountID() + "===="), ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.parse(tt.in); !errors.Is(err, tt.want) {
				t.Errorf("got %v, want %v", err, tt.want)
			}
		})
	}
	if _, err := AccountID("nope").SigningKey(); !errors.Is(err, ErrMalformed) {
		t.Errorf("SigningKey of a bad id: got %v, want ErrMalformed", err)
	}
	if _, err := NewIdentity(bytes.NewReader(make([]byte, 40))); err == nil {
		t.Errorf("NewIdentity from 40 bytes: got nil error, want an error")
	}
}

func idParsePub(b []byte) error     { _, err := ParsePublicIdentity(b); return err }
func idParsePriv(b []byte) error    { _, err := UnmarshalPrivateIdentity(b); return err }
func idParseAccount(b []byte) error { _, err := ParseAccountID(string(b)); return err }

func FuzzParsePublicIdentity(f *testing.F) {
	f.Add(drTestIdentity(f, "fuzz").Public().Marshal())
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := ParsePublicIdentity(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrVersion) && !errors.Is(err, ErrSignature) && !errors.Is(err, ErrTooLarge) {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		again, err := ParsePublicIdentity(p.Marshal())
		if err != nil || !again.Equal(p) {
			t.Fatalf("round trip: got %v", err)
		}
	})
}

func FuzzUnmarshalPrivateIdentity(f *testing.F) {
	f.Add(drTestIdentity(f, "fuzz").MarshalPrivate())
	f.Fuzz(func(t *testing.T, b []byte) {
		id, err := UnmarshalPrivateIdentity(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrVersion) && !errors.Is(err, ErrTooLarge) {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		again, err := UnmarshalPrivateIdentity(id.MarshalPrivate())
		if err != nil || !again.Public().Equal(id.Public()) {
			t.Fatalf("round trip: got %v", err)
		}
	})
}

func FuzzParseAccountID(f *testing.F) {
	f.Add(string(drTestIdentity(f, "fuzz").AccountID()))
	f.Fuzz(func(t *testing.T, s string) {
		a, err := ParseAccountID(s)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		k, err := a.SigningKey()
		if err != nil || len(k) != ed25519.PublicKeySize {
			t.Fatalf("SigningKey of a parsed id: %v", err)
		}
	})
}
