package e2ee

import (
	"bytes"
	"crypto/hpke"
	"fmt"
	"testing"
	"time"

	"golang.org/x/crypto/chacha20poly1305"
)

// The benchmarks here report, besides ns/op, "x-vs-raw": the ratio of the
// operation's time to a baseline measured in the same run on the same
// sizes (raw XChaCha20-Poly1305 for sender keys, raw HPKE for envelopes).
//
//	go test -run '^$' -bench 'BenchmarkE2EESenderKey|BenchmarkE2EEEnvelope' ./protocols/e2ee/

var skBenchSizes = []int{64, 1 << 10, 16 << 10}

// BenchmarkE2EESenderKeyEncryptDecrypt measures one group message: the
// sender's Encrypt (chain step, HKDF, AEAD seal, Ed25519 sign) and one
// member's Decrypt (parse, Ed25519 verify, chain step, HKDF, AEAD open),
// against a raw XChaCha20-Poly1305 seal+open of the same plaintext.
func BenchmarkE2EESenderKeyEncryptDecrypt(b *testing.B) {
	for _, size := range skBenchSizes {
		b.Run(fmt.Sprintf("size=%d", size), func(b *testing.B) {
			sk, states := skTestGroup(b, "bench", 1)
			s := states[0]
			pt := bytes.Repeat([]byte{'m'}, size)

			key, nonce := make([]byte, chacha20poly1305.KeySize), make([]byte, chacha20poly1305.NonceSizeX)
			ad := skAD(sk.GroupID(), sk.Sender(), sk.KeyID(), 0)
			raw := func() {
				aead, err := chacha20poly1305.NewX(key)
				if err != nil {
					b.Fatal(err)
				}
				ct := aead.Seal(nil, nonce, pt, ad)
				if _, err := aead.Open(nil, nonce, ct, ad); err != nil {
					b.Fatal(err)
				}
			}
			ours := func() {
				msg, next, err := sk.Encrypt(pt)
				if err != nil {
					b.Fatal(err)
				}
				sk = next
				got, ns, err := s.Decrypt(msg, skTestT0)
				if err != nil || len(got) != size {
					b.Fatalf("Decrypt: %v", err)
				}
				s = ns
			}
			b.SetBytes(int64(size))
			skBenchCompare(b, raw, ours)
		})
	}
}

// skBenchCompare runs raw and ours b.N times each, interleaved in chunks so
// both see the same machine load. Only ours is timed for ns/op; the ratio
// of the two totals is reported as x-vs-raw.
func skBenchCompare(b *testing.B, raw, ours func()) {
	const chunk = 64
	var rawDur, ourDur time.Duration
	b.ReportAllocs()
	b.ResetTimer()
	for done := 0; done < b.N; {
		n := min(chunk, b.N-done)
		b.StopTimer()
		start := time.Now()
		for range n {
			raw()
		}
		rawDur += time.Since(start)
		b.StartTimer()
		start = time.Now()
		for range n {
			ours()
		}
		ourDur += time.Since(start)
		done += n
	}
	b.StopTimer()
	b.ReportMetric(float64(ourDur)/float64(rawDur), "x-vs-raw")
	b.ReportMetric(float64(b.N)/ourDur.Seconds(), "msg/s")
}

// BenchmarkE2EEEnvelopeSealOpen measures SealEnvelope + OpenEnvelope of a
// payload against raw single-shot HPKE Seal + Open (same X-Wing suite) of
// a plaintext of the payload's size: the difference is padding, encoding
// and validation.
func BenchmarkE2EEEnvelopeSealOpen(b *testing.B) {
	for _, size := range skBenchSizes {
		b.Run(fmt.Sprintf("size=%d", size), func(b *testing.B) {
			mk := envTestMailbox(b, "bench")
			c := envTestContent(b, ContentRatchet, bytes.Repeat([]byte{'e'}, size))
			info := mk.pub.info()

			raw := func() {
				ct, err := hpke.Seal(mk.pub.pk, envKDF, envAEAD, info, c.Payload)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := hpke.Open(mk.priv, envKDF, envAEAD, info, ct); err != nil {
					b.Fatal(err)
				}
			}
			ours := func() {
				env, err := SealEnvelope(mk.Public(), c)
				if err != nil {
					b.Fatal(err)
				}
				got, err := mk.OpenEnvelope(env)
				if err != nil || len(got.Payload) != size {
					b.Fatalf("OpenEnvelope: %v", err)
				}
			}
			b.SetBytes(int64(size))
			skBenchCompare(b, raw, ours)
		})
	}
}
