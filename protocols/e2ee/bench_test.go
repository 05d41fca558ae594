package e2ee

// Benchmarks report ratios against a baseline measured in the same run
// (see docs/protocol/e2ee.md, "Performance"):
//
//	go test ./protocols/e2ee -run '^$' -bench E2EE -benchmem

import (
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/mlkem"
	"fmt"
	"testing"
	"time"

	"golang.org/x/crypto/chacha20poly1305"
)

// BenchmarkE2EEMessage measures Encrypt at Alice plus Decrypt at Bob of
// one message (a steady sending chain: no DH step), with the production
// randomness and clock, against XChaCha20-Poly1305 Seal plus Open of the
// same plaintext with a ready AEAD. The two run interleaved in chunks, so
// load from elsewhere on the machine hits both alike. ns/op is ours;
// x-vs-raw is ours divided by the raw AEAD's time; msg/s is ours.
func BenchmarkE2EEMessage(b *testing.B) {
	for _, size := range []int{256, 1024, 4096} {
		b.Run(fmt.Sprint(size, "B"), func(b *testing.B) {
			alice, bob := drBenchPair(b)
			pt := make([]byte, size)
			raw := drNewBenchRaw(size)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			b.ResetTimer()
			var ours, base time.Duration
			for done := 0; done < b.N; {
				chunk := min(b.N-done, 1000)
				start := time.Now()
				for range chunk {
					msg, next, err := alice.Encrypt(pt, nil)
					if err != nil {
						b.Fatal(err)
					}
					alice = next
					if _, bob, err = bob.Decrypt(msg, nil); err != nil {
						b.Fatal(err)
					}
				}
				ours += time.Since(start)
				b.StopTimer()
				base += raw.run(chunk, pt)
				b.StartTimer()
				done += chunk
			}
			b.ReportMetric(float64(ours)/float64(base), "x-vs-raw")
			b.ReportMetric(float64(b.N)/ours.Seconds(), "msg/s")
		})
	}
}

// drBenchPair sets up a session with the default options (crypto/rand,
// time.Now) and one exchange each way.
func drBenchPair(b *testing.B) (alice, bob *Session) {
	aliceID, bobID := drTestIdentity(b, "bench/alice"), drTestIdentity(b, "bench/bob")
	store := drTestStore(b, bobID, "bench", 1, 1)
	alice, err := Initiate(aliceID, drTestBundle(b, store, true, true))
	if err != nil {
		b.Fatal(err)
	}
	msg, alice, err := alice.Encrypt([]byte("hi"), nil)
	if err != nil {
		b.Fatal(err)
	}
	if bob, _, _, err = Respond(bobID, store, msg, nil); err != nil {
		b.Fatal(err)
	}
	if msg, bob, err = bob.Encrypt([]byte("hi"), nil); err != nil {
		b.Fatal(err)
	}
	if _, alice, err = alice.Decrypt(msg, nil); err != nil {
		b.Fatal(err)
	}
	return alice, bob
}

// drBenchRaw is the baseline: a ready XChaCha20-Poly1305 and buffers.
type drBenchRaw struct {
	aead    cipher.AEAD
	nonce   []byte
	ct, out []byte
}

func drNewBenchRaw(size int) *drBenchRaw {
	aead, err := chacha20poly1305.NewX(make([]byte, chacha20poly1305.KeySize))
	if err != nil {
		panic(err)
	}
	return &drBenchRaw{aead: aead, nonce: make([]byte, chacha20poly1305.NonceSizeX),
		ct: make([]byte, 0, size+aead.Overhead()), out: make([]byte, 0, size)}
}

// run times n seal+open pairs of pt.
func (r *drBenchRaw) run(n int, pt []byte) time.Duration {
	start := time.Now()
	for range n {
		r.ct = r.aead.Seal(r.ct[:0], r.nonce, pt, nil)
		if _, err := r.aead.Open(r.out[:0], r.nonce, r.ct, nil); err != nil {
			panic(err)
		}
	}
	return time.Since(start)
}

// BenchmarkE2EEMessagePingPong alternates directions, so every message
// also costs a DH ratchet step (a key generation and two X25519) at its
// receiver: the worst case of a conversation.
func BenchmarkE2EEMessagePingPong(b *testing.B) {
	p := drTestSetup(b, "bench-pingpong")
	s := [2]*Session{p.aliceS, p.bobS}
	pt := make([]byte, 256)
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		from := i & 1
		msg, next, err := s[from].Encrypt(pt, nil)
		if err != nil {
			b.Fatal(err)
		}
		s[from] = next
		if _, s[1-from], err = s[1-from].Decrypt(msg, nil); err != nil {
			b.Fatal(err)
		}
	}
	ours := time.Since(start)
	b.StopTimer()
	raw := drNewBenchRaw(len(pt)).run(b.N, pt)
	b.ReportMetric(float64(ours)/float64(raw), "x-vs-raw")
}

// BenchmarkE2EEPQXDH measures a whole session setup: Initiate (bundle
// verification, PQXDH), the first Encrypt, and Respond (PQXDH, the first
// DH ratchet step, Decrypt). The baseline is the asymmetric core of PQXDH
// alone: four X25519 on each side, ML-KEM-768 encapsulation and
// decapsulation.
func BenchmarkE2EEPQXDH(b *testing.B) {
	alice, bob := drTestIdentity(b, "bench/alice"), drTestIdentity(b, "bench/bob")
	store := drTestStore(b, bob, "bench", 1, 1)
	bundle := drTestBundle(b, store, true, true)
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		a, err := Initiate(alice, bundle)
		if err != nil {
			b.Fatal(err)
		}
		msg, _, err := a.Encrypt([]byte("hello"), nil)
		if err != nil {
			b.Fatal(err)
		}
		if _, _, _, err := Respond(bob, store, msg, nil); err != nil {
			b.Fatal(err)
		}
	}
	ours := time.Since(start)
	b.StopTimer()

	ek, _ := drGenerate(drTestRand("bench/ek"))
	peer, _ := drGenerate(drTestRand("bench/peer"))
	dk, _ := mlkem.NewDecapsulationKey768(make([]byte, mlkem.SeedSize))
	encaps := dk.EncapsulationKey()
	pub := []*ecdh.PublicKey{peer.PublicKey(), peer.PublicKey(), peer.PublicKey(), peer.PublicKey()}
	start = time.Now()
	for range b.N {
		for side := range 2 {
			for _, k := range pub {
				if _, err := ek.ECDH(k); err != nil {
					b.Fatal(err)
				}
			}
			_ = side
		}
		_, ct := encaps.Encapsulate()
		if _, err := dk.Decapsulate(ct); err != nil {
			b.Fatal(err)
		}
	}
	raw := time.Since(start)
	b.ReportMetric(float64(ours)/float64(raw), "x-vs-raw")
}

// BenchmarkE2EEMessageParts measures the fixed per-message costs the
// protocol adds to the body's AEAD, each as a ratio to one raw 256-byte
// XChaCha20-Poly1305 seal+open measured in the same run: a KDF_CK step
// (two HMAC-SHA-256; done once by the sender and once by the receiver) and
// a header seal+open (XChaCha20-Poly1305 of 40 bytes under a cached key).
func BenchmarkE2EEMessageParts(b *testing.B) {
	pt := make([]byte, 256)
	b.Run("kdf-chain-step", func(b *testing.B) {
		var ck drKey
		start := time.Now()
		for range b.N {
			ck, _ = drKDFChain(&ck)
		}
		ours := time.Since(start)
		b.StopTimer()
		b.ReportMetric(float64(ours)/float64(drNewBenchRaw(len(pt)).run(b.N, pt)), "x-vs-raw")
	})
	b.Run("header-seal-open", func(b *testing.B) {
		var hk drKey
		aead := drHeaderAEAD(&hk)
		nonce, hdr := make([]byte, drNonceSize), make([]byte, drHeaderSize)
		ct, out := make([]byte, 0, drEncHeaderSize), make([]byte, 0, drHeaderSize)
		start := time.Now()
		for range b.N {
			ct = aead.Seal(ct[:0], nonce, hdr, nil)
			if _, err := aead.Open(out[:0], nonce, ct, nil); err != nil {
				b.Fatal(err)
			}
		}
		ours := time.Since(start)
		b.StopTimer()
		b.ReportMetric(float64(ours)/float64(drNewBenchRaw(len(pt)).run(b.N, pt)), "x-vs-raw")
	})
}
