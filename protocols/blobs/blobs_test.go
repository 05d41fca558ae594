package blobs

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"testing"
)

func TestSealOpen(t *testing.T) {
	for _, tc := range []struct {
		name   string
		size   int
		chunks int
	}{
		{"empty", 0, 1},
		{"small", 100, 1},
		{"one chunk exactly", chunkPlain - lenHeader, 1},
		{"one byte over", chunkPlain - lenHeader + 1, 2},
		{"photo", 3 << 20, 13},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, k, data := sealed(t, tc.size)
			if len(s.Chunks) != tc.chunks {
				t.Fatalf("got %d chunks, want %d", len(s.Chunks), tc.chunks)
			}
			for i, c := range s.Chunks {
				if len(c) != ChunkSize {
					t.Fatalf("chunk %d is %d bytes, want %d", i, len(c), ChunkSize)
				}
				if sha256.Sum256(c) != s.Hashes[i] {
					t.Fatalf("chunk %d hash mismatch", i)
				}
			}
			if ComputeID(s.Hashes) != s.ID {
				t.Fatal("id does not match the hashes")
			}
			got, err := Open(k, s.Chunks)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, data) {
				t.Fatalf("round trip changed %d bytes", len(data))
			}
		})
	}
}

func TestOpenRefuses(t *testing.T) {
	s, k, _ := sealed(t, chunkPlain*2)
	other := randKey(t)
	swapped := [][]byte{s.Chunks[1], s.Chunks[0], s.Chunks[2]}
	flipped := [][]byte{bytes.Clone(s.Chunks[0]), s.Chunks[1], s.Chunks[2]}
	flipped[0][100] ^= 1
	for _, tc := range []struct {
		name   string
		key    *[32]byte
		chunks [][]byte
		want   error
	}{
		{"wrong key", other, s.Chunks, ErrDecrypt},
		{"reordered", k, swapped, ErrDecrypt},
		{"truncated", k, s.Chunks[:2], ErrDecrypt},
		{"flipped bit", k, flipped, ErrDecrypt},
		{"short chunk", k, [][]byte{s.Chunks[0][:10]}, ErrMalformed},
		{"no chunks", k, nil, ErrMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Open(tc.key, tc.chunks); !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
}

func TestSealTooLarge(t *testing.T) {
	if _, err := Seal(randKey(t), make([]byte, MaxPlaintext+1)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("got %v, want ErrTooLarge", err)
	}
	if MaxPlaintext < 50<<20 {
		t.Fatalf("MaxPlaintext %d does not fit a 50 MiB video", MaxPlaintext)
	}
}

// TestGoldenID pins the id construction.
func TestGoldenID(t *testing.T) {
	var h [sha256.Size]byte
	copy(h[:], bytes.Repeat([]byte{0xab}, 32))
	id := ComputeID([][sha256.Size]byte{h, h})
	want := sha256.Sum256(append(append([]byte("kinmesh/blobs/id/v1\x00\x00\x00\x02"), h[:]...), h[:]...))
	if id != BlobID(want) {
		t.Fatalf("got %x, want %x", id, want)
	}
	parsed, err := ParseBlobID(id.String())
	if err != nil || parsed != id {
		t.Fatalf("ParseBlobID(%s) = %v, %v", id, parsed, err)
	}
	for _, bad := range []string{"", "zz", hex.EncodeToString(make([]byte, 31))} {
		if _, err := ParseBlobID(bad); !errors.Is(err, ErrMalformed) {
			t.Errorf("ParseBlobID(%q): got %v, want ErrMalformed", bad, err)
		}
	}
}

func TestDeleteKey(t *testing.T) {
	secret := bytes.Repeat([]byte{7}, 32)
	var a, b BlobID
	b[0] = 1
	ka, kb := DeleteKey(secret, a), DeleteKey(secret, b)
	if ka.Equal(kb) {
		t.Fatal("two blobs got the same delete key")
	}
	if !ka.Equal(DeleteKey(secret, a)) {
		t.Fatal("DeleteKey is not deterministic")
	}
	proof := SignDelete(ka, a)
	if !VerifyDelete(ka.Public().(ed25519.PublicKey), a, proof) {
		t.Fatal("proof does not verify")
	}
	if VerifyDelete(ka.Public().(ed25519.PublicKey), b, proof) {
		t.Fatal("proof for a verifies for b")
	}
	if VerifyDelete(kb.Public().(ed25519.PublicKey), a, proof) {
		t.Fatal("proof verifies under another key")
	}
}
