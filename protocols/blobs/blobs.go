package blobs

import (
	"crypto/cipher"
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"

	"golang.org/x/crypto/chacha20poly1305"
)

// ID is the protocol id.
const ID = "/kinmesh/blobs/1.0.0"

// ServiceName is the resource-manager service both sides' streams are
// attributed to.
const ServiceName = "kinmesh.blobs"

// Namespace is the relay store namespace the service keeps blobs in.
const Namespace = "blobs"

// Sizes.
const (
	// ChunkSize is the size of every stored chunk: a blob is a whole
	// number of chunks, so a relay learns a blob's size rounded up to it.
	ChunkSize = 256 << 10
	// MaxChunks caps a blob's chunks.
	MaxChunks = 208
	// MaxBlobSize caps a blob on the wire and on disk: 52 MiB, room for a
	// 50 MiB video after sealing.
	MaxBlobSize = MaxChunks * ChunkSize
	// MaxPlaintext is the most Seal encrypts into one blob.
	MaxPlaintext = MaxChunks*chunkPlain - lenHeader
	// MaxHasIDs caps the ids of one Has request.
	MaxHasIDs = 256

	chunkPlain = ChunkSize - chacha20poly1305.Overhead
	lenHeader  = 8

	maxRequestFrame  = 16 << 10       // Put with MaxChunks hashes, Get, Delete, Has
	maxChunkFrame    = ChunkSize + 64 // one Chunk
	maxResponseFrame = 16 << 10       // hashes of a Get, or Has answers
)

// Domain-separation strings, each used for exactly one purpose.
const (
	idContext        = "kinmesh/blobs/id/v1"
	deleteContext    = "kinmesh/blobs/delete/v1"
	deleteKeyContext = "kinmesh/blobs/delete-key/v1"
	sealKeyInfo      = "kinmesh/blobs/seal/v1"
	chunkADContext   = "kinmesh/blobs/chunk/v1"
)

// BlobID names a blob by its content: SHA-256 over "kinmesh/blobs/id/v1",
// the chunk count (4 bytes, big endian) and every chunk's SHA-256 in
// order. A relay checks each chunk against its hash as it arrives, and a
// reader each chunk it fetches, so nobody can pass off other bytes under
// an id.
type BlobID [sha256.Size]byte

// String returns the id in lower-case hex (64 characters).
func (id BlobID) String() string { return hex.EncodeToString(id[:]) }

// ParseBlobID parses an id written by String.
func ParseBlobID(s string) (BlobID, error) {
	var id BlobID
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(id) {
		return id, fmt.Errorf("blob id %q: %w", s, ErrMalformed)
	}
	copy(id[:], b)
	return id, nil
}

// BlobIDFromBytes returns the id whose raw 32 bytes are b.
func BlobIDFromBytes(b []byte) (BlobID, error) {
	var id BlobID
	if len(b) != len(id) {
		return id, fmt.Errorf("blob id of %d bytes: %w", len(b), ErrMalformed)
	}
	copy(id[:], b)
	return id, nil
}

// ComputeID returns the id of a blob whose chunks hash to hashes.
func ComputeID(hashes [][sha256.Size]byte) BlobID {
	h := sha256.New()
	h.Write([]byte(idContext))
	var n [4]byte
	binary.BigEndian.PutUint32(n[:], uint32(len(hashes)))
	h.Write(n[:])
	for _, c := range hashes {
		h.Write(c[:])
	}
	var id BlobID
	h.Sum(id[:0])
	return id
}

// Sealed is an encrypted blob ready to upload: its chunks (each exactly
// ChunkSize bytes), their hashes and the id they make.
type Sealed struct {
	ID     BlobID
	Chunks [][]byte
	Hashes [][sha256.Size]byte
}

// Size returns the blob's size on the wire and on disk.
func (s *Sealed) Size() int { return len(s.Chunks) * ChunkSize }

// Seal encrypts data under key into a blob. key must be used for this one
// blob only (callers derive one per blob, e.g. from a post key). The
// plaintext stream is
//
//	u64be(len(data)) || data || zero padding to a whole number of chunks
//
// cut into pieces of ChunkSize-16 bytes; piece i of n is sealed with
// XChaCha20-Poly1305 under HKDF-SHA256(key, info "kinmesh/blobs/seal/v1")
// (32 bytes of key, then a 20-byte nonce prefix), nonce = prefix ||
// u32be(i), associated data "kinmesh/blobs/chunk/v1" || u32be(i) ||
// u32be(n): chunks can't be reordered, dropped or mixed between blobs.
func Seal(key *[32]byte, data []byte) (*Sealed, error) {
	if len(data) > MaxPlaintext {
		return nil, fmt.Errorf("blobs: seal %d bytes (max %d): %w", len(data), MaxPlaintext, ErrTooLarge)
	}
	aead, prefix := sealKeys(key)
	n := max(1, (lenHeader+len(data)+chunkPlain-1)/chunkPlain)
	stream := make([]byte, n*chunkPlain)
	binary.BigEndian.PutUint64(stream, uint64(len(data)))
	copy(stream[lenHeader:], data)
	s := &Sealed{Chunks: make([][]byte, n), Hashes: make([][sha256.Size]byte, n)}
	for i := range n {
		pt := stream[i*chunkPlain : (i+1)*chunkPlain]
		ct := aead.Seal(make([]byte, 0, ChunkSize), chunkNonce(prefix, i), pt, chunkAD(i, n))
		s.Chunks[i] = ct
		s.Hashes[i] = sha256.Sum256(ct)
	}
	s.ID = ComputeID(s.Hashes)
	return s, nil
}

// Open decrypts the chunks of a blob sealed under key (as Client.Get
// returns them, verified against the id). It returns ErrDecrypt if any
// chunk fails to open: a wrong key, or altered chunks.
func Open(key *[32]byte, chunks [][]byte) ([]byte, error) {
	n := len(chunks)
	if n == 0 || n > MaxChunks {
		return nil, fmt.Errorf("blobs: open %d chunks: %w", n, ErrMalformed)
	}
	aead, prefix := sealKeys(key)
	out := make([]byte, 0, n*chunkPlain)
	for i, c := range chunks {
		if len(c) != ChunkSize {
			return nil, fmt.Errorf("blobs: open: chunk %d of %d bytes: %w", i, len(c), ErrMalformed)
		}
		var err error
		out, err = aead.Open(out, chunkNonce(prefix, i), c, chunkAD(i, n))
		if err != nil {
			return nil, fmt.Errorf("blobs: open chunk %d: %w", i, ErrDecrypt)
		}
	}
	size := binary.BigEndian.Uint64(out)
	if size > uint64(len(out)-lenHeader) {
		return nil, fmt.Errorf("blobs: open: length %d beyond the data: %w", size, ErrDecrypt)
	}
	return out[lenHeader : lenHeader+int(size)], nil
}

func sealKeys(key *[32]byte) (aead cipher.AEAD, prefix []byte) {
	okm, err := hkdf.Key(sha256.New, key[:], nil, sealKeyInfo, chacha20poly1305.KeySize+chacha20poly1305.NonceSizeX-4)
	if err != nil {
		panic("blobs: hkdf: " + err.Error())
	}
	a, err := chacha20poly1305.NewX(okm[:chacha20poly1305.KeySize])
	if err != nil {
		panic("blobs: aead: " + err.Error())
	}
	return a, okm[chacha20poly1305.KeySize:]
}

func chunkNonce(prefix []byte, i int) []byte {
	n := make([]byte, 0, chacha20poly1305.NonceSizeX)
	n = append(n, prefix...)
	return binary.BigEndian.AppendUint32(n, uint32(i))
}

func chunkAD(i, n int) []byte {
	ad := make([]byte, 0, len(chunkADContext)+8)
	ad = append(ad, chunkADContext...)
	ad = binary.BigEndian.AppendUint32(ad, uint32(i))
	return binary.BigEndian.AppendUint32(ad, uint32(n))
}

// DeleteKey derives the Ed25519 key that deletes blob id from an
// uploader's secret (32 bytes or more, kept by the uploader): the seed is
// HMAC-SHA256(secret, "kinmesh/blobs/delete-key/v1" || id). The uploader
// registers its public half with the upload and can delete the blob later
// without having stored a key per blob; the relay learns nothing that links
// blobs to each other or to an account.
func DeleteKey(secret []byte, id BlobID) ed25519.PrivateKey {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(deleteKeyContext))
	m.Write(id[:])
	return ed25519.NewKeyFromSeed(m.Sum(nil))
}

// SignDelete returns the deletion proof for id: an Ed25519 signature by
// the blob's delete key over "kinmesh/blobs/delete/v1" || 0x00 || id. It
// is good on every relay holding the blob, so one proof can travel in a
// signed tombstone.
func SignDelete(key ed25519.PrivateKey, id BlobID) []byte {
	return ed25519.Sign(key, deleteMessage(id))
}

// VerifyDelete reports whether sig is a deletion proof for id under pub.
func VerifyDelete(pub ed25519.PublicKey, id BlobID, sig []byte) bool {
	return len(pub) == ed25519.PublicKeySize && len(sig) == ed25519.SignatureSize && ed25519.Verify(pub, deleteMessage(id), sig)
}

func deleteMessage(id BlobID) []byte {
	m := make([]byte, 0, len(deleteContext)+1+len(id))
	m = append(m, deleteContext...)
	m = append(m, 0)
	return append(m, id[:]...)
}

// Usage is what an uploader (or the whole relay) stores.
type Usage struct {
	Bytes uint64
	Blobs uint64
}
