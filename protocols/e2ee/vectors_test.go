package e2ee

// Known-answer tests of the primitives this package builds on, with the
// vectors typed in from their specifications: RFC 7748 (X25519 via
// crypto/ecdh), RFC 8032 (Ed25519), RFC 5869 (HKDF-SHA-256), RFC 8439 and
// draft-irtf-cfrg-xchacha-03 (ChaCha20-Poly1305, XChaCha20-Poly1305), and
// FIPS 203 ML-KEM-768 through the accumulated vectors of C2SP's CCTV
// project, computed with exactly the calls this package makes.

import (
	"bytes"
	"crypto/ecdh"
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/mlkem"
	"crypto/mlkem/mlkemtest"
	"crypto/sha256"
	"crypto/sha3"
	"encoding/hex"
	"testing"

	"golang.org/x/crypto/chacha20poly1305"
)

func vecHex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatalf("bad hex %q: %v", s, err)
	}
	return b
}

// vecX25519 computes X25519(scalar, u) through crypto/ecdh.
func vecX25519(t *testing.T, scalar, u []byte) []byte {
	t.Helper()
	k, err := ecdh.X25519().NewPrivateKey(scalar)
	if err != nil {
		t.Fatal(err)
	}
	p, err := ecdh.X25519().NewPublicKey(u)
	if err != nil {
		t.Fatal(err)
	}
	out, err := k.ECDH(p)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestVectorsX25519RFC7748(t *testing.T) {
	tests := []struct {
		name, scalar, u, want string
	}{
		{
			name:   "5.2 vector 1",
			scalar: "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
			u:      "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
			want:   "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552",
		},
		{
			name:   "5.2 vector 2",
			scalar: "4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
			u:      "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
			want:   "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957",
		},
		{
			name:   "6.1 alice shared",
			scalar: "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
			u:      "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f",
			want:   "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742",
		},
		{
			name:   "6.1 bob shared",
			scalar: "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb",
			u:      "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a",
			want:   "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := hex.EncodeToString(vecX25519(t, vecHex(t, tt.scalar), vecHex(t, tt.u))); got != tt.want {
				t.Errorf("got %s, want %s", got, tt.want)
			}
		})
	}

	t.Run("6.1 public keys", func(t *testing.T) {
		for _, kp := range [][2]string{
			{"77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a", "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"},
			{"5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb", "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"},
		} {
			k, err := ecdh.X25519().NewPrivateKey(vecHex(t, kp[0]))
			if err != nil {
				t.Fatal(err)
			}
			if got := hex.EncodeToString(k.PublicKey().Bytes()); got != kp[1] {
				t.Errorf("got %s, want %s", got, kp[1])
			}
		}
	})

	t.Run("5.2 iterated", func(t *testing.T) {
		k := vecHex(t, "0900000000000000000000000000000000000000000000000000000000000000")
		u := bytes.Clone(k)
		want := map[int]string{
			1:    "422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079",
			1000: "684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51",
		}
		for i := 1; i <= 1000; i++ {
			k, u = vecX25519(t, k, u), k
			if w, ok := want[i]; ok {
				if got := hex.EncodeToString(k); got != w {
					t.Errorf("after %d iterations: got %s, want %s", i, got, w)
				}
			}
		}
	})

	t.Run("low order point rejected", func(t *testing.T) {
		k, _ := ecdh.X25519().NewPrivateKey(vecHex(t, "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"))
		p, _ := ecdh.X25519().NewPublicKey(make([]byte, 32))
		if _, err := k.ECDH(p); err == nil {
			t.Errorf("got nil error for the all-zero point, want an error")
		}
	})
}

func TestVectorsEd25519RFC8032(t *testing.T) {
	tests := []struct {
		name, secret, public, msg, sig string
	}{
		{
			name:   "test 1",
			secret: "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
			public: "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
			msg:    "",
			sig:    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
		},
		{
			name:   "test 2",
			secret: "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
			public: "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
			msg:    "72",
			sig:    "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
		},
		{
			name:   "test 3",
			secret: "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
			public: "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
			msg:    "af82",
			sig:    "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			priv := ed25519.NewKeyFromSeed(vecHex(t, tt.secret))
			if got := hex.EncodeToString(priv.Public().(ed25519.PublicKey)); got != tt.public {
				t.Errorf("public key: got %s, want %s", got, tt.public)
			}
			msg := vecHex(t, tt.msg)
			if got := hex.EncodeToString(ed25519.Sign(priv, msg)); got != tt.sig {
				t.Errorf("signature: got %s, want %s", got, tt.sig)
			}
			if !ed25519.Verify(vecHex(t, tt.public), msg, vecHex(t, tt.sig)) {
				t.Errorf("Verify: got false, want true")
			}
			bad := vecHex(t, tt.sig)
			bad[0] ^= 1
			if ed25519.Verify(vecHex(t, tt.public), msg, bad) {
				t.Errorf("Verify of altered signature: got true, want false")
			}
		})
	}
}

func TestVectorsHKDFRFC5869(t *testing.T) {
	seq := func(from, n int) string {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(from + i)
		}
		return hex.EncodeToString(b)
	}
	tests := []struct {
		name, ikm, salt, info string
		l                     int
		prk, okm              string
	}{
		{
			name: "test case 1",
			ikm:  "0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b",
			salt: "000102030405060708090a0b0c",
			info: "f0f1f2f3f4f5f6f7f8f9",
			l:    42,
			prk:  "077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5",
			okm:  "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865",
		},
		{
			name: "test case 2",
			ikm:  seq(0x00, 80),
			salt: seq(0x60, 80),
			info: seq(0xb0, 80),
			l:    82,
			prk:  "06a6b88c5853361a06104c9ceb35b45cef760014904671014a193f40c15fc244",
			okm:  "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71cc30c58179ec3e87c14c01d5c1f3434f1d87",
		},
		{
			name: "test case 3",
			ikm:  "0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b",
			l:    42,
			prk:  "19ef24a32c717b167f33a91d6f648bdf96596776afdb6377ac434c1c293ccb04",
			okm:  "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			prk, err := hkdf.Extract(sha256.New, vecHex(t, tt.ikm), vecHex(t, tt.salt))
			if err != nil {
				t.Fatal(err)
			}
			if got := hex.EncodeToString(prk); got != tt.prk {
				t.Errorf("PRK: got %s, want %s", got, tt.prk)
			}
			okm, err := hkdf.Key(sha256.New, vecHex(t, tt.ikm), vecHex(t, tt.salt), string(vecHex(t, tt.info)), tt.l)
			if err != nil {
				t.Fatal(err)
			}
			if got := hex.EncodeToString(okm); got != tt.okm {
				t.Errorf("OKM: got %s, want %s", got, tt.okm)
			}
		})
	}
}

// TestVectorsHMACByte checks the ratchet's allocation-free HMAC against
// crypto/hmac, whose SHA-256 HMAC the HKDF vectors above exercise.
func TestVectorsHMACByte(t *testing.T) {
	var key drKey
	for i := range 50 {
		for j := range key {
			key[j] = byte(i*31 + j*7)
		}
		for _, b := range []byte{0x01, 0x02} {
			m := hmac.New(sha256.New, key[:])
			m.Write([]byte{b})
			want := m.Sum(nil)
			got := drHMACByte(&key, b)
			if !bytes.Equal(got[:], want) {
				t.Fatalf("key %x byte %d: got %x, want %x", key, b, got, want)
			}
		}
	}
}

const vecSunscreen = "Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it."

func TestVectorsAEAD(t *testing.T) {
	tests := []struct {
		name                string
		x                   bool
		key, nonce, ad, out string
	}{
		{
			name:  "RFC 8439 2.8.2 ChaCha20-Poly1305",
			key:   "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f",
			nonce: "070000004041424344454647",
			ad:    "50515253c0c1c2c3c4c5c6c7",
			out: "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d63dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b3692ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc3ff4def08e4b7a9de576d26586cec64b6116" +
				"1ae10b594f09e26a7e902ecbd0600691",
		},
		{
			name:  "draft-irtf-cfrg-xchacha-03 A.3.1 XChaCha20-Poly1305",
			x:     true,
			key:   "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f",
			nonce: "404142434445464748494a4b4c4d4e4f5051525354555657",
			ad:    "50515253c0c1c2c3c4c5c6c7",
			out: "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b4522f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff921f9664c97637da9768812f615c68b13b52e" +
				"c0875924c1c7987947deafd8780acf49",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			newAEAD := chacha20poly1305.New
			if tt.x {
				newAEAD = chacha20poly1305.NewX
			}
			aead, err := newAEAD(vecHex(t, tt.key))
			if err != nil {
				t.Fatal(err)
			}
			nonce, ad := vecHex(t, tt.nonce), vecHex(t, tt.ad)
			got := aead.Seal(nil, nonce, []byte(vecSunscreen), ad)
			if hex.EncodeToString(got) != tt.out {
				t.Errorf("Seal: got %x, want %s", got, tt.out)
			}
			pt, err := aead.Open(nil, nonce, vecHex(t, tt.out), ad)
			if err != nil || string(pt) != vecSunscreen {
				t.Errorf("Open: got %q, %v, want the plaintext", pt, err)
			}
			ad[0] ^= 1
			if _, err := aead.Open(nil, nonce, vecHex(t, tt.out), ad); err == nil {
				t.Errorf("Open with altered AD: got nil error, want an error")
			}
		})
	}
}

// TestVectorsMLKEM768 runs C2SP CCTV's accumulated ML-KEM-768 vectors
// (github.com/C2SP/CCTV/tree/main/ML-KEM, 100 key pairs, or 10,000 with
// -long, drawn
// from a SHAKE-128 stream; the hashes are CCTV's) through the standard
// library calls this package uses: keys from a 64-byte seed, encapsulation
// (derandomized, as in FIPS 203 ML-KEM.Encaps_internal), decapsulation, and
// implicit rejection of a random ciphertext.
func TestVectorsMLKEM768(t *testing.T) {
	n, want := 100, "1114b1b6699ed191734fa339376afa7e285c9e6acf6ff0177d346696ce564415"
	if drTestLong() {
		n, want = 10000, "8a518cc63da366322a8e7a818c7a0d63483cb3528d34a4cf42f35d5ad73f22fc"
	}
	s, o := sha3.NewSHAKE128(), sha3.NewSHAKE128()
	seed := make([]byte, mlkem.SeedSize)
	msg := make([]byte, 32)
	random := make([]byte, mlkem.CiphertextSize768)
	for range n {
		s.Read(seed)
		dk, err := mlkem.NewDecapsulationKey768(seed)
		if err != nil {
			t.Fatal(err)
		}
		ek := dk.EncapsulationKey()
		o.Write(ek.Bytes())
		s.Read(msg)
		k, ct, err := mlkemtest.Encapsulate768(ek, msg)
		if err != nil {
			t.Fatal(err)
		}
		o.Write(ct)
		o.Write(k)
		kk, err := dk.Decapsulate(ct)
		if err != nil || !bytes.Equal(kk, k) {
			t.Fatalf("Decapsulate: got %x, %v, want %x", kk, err, k)
		}
		s.Read(random)
		k1, err := dk.Decapsulate(random)
		if err != nil {
			t.Fatal(err)
		}
		o.Write(k1)
	}
	sum := make([]byte, 32)
	o.Read(sum)
	if got := hex.EncodeToString(sum); got != want {
		t.Errorf("accumulated hash of %d vectors: got %s, want %s", n, got, want)
	}
}
