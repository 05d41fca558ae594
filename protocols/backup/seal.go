package backup

import (
	"bytes"
	"crypto/subtle"
	"encoding/binary"
	"fmt"
	"io"
	"math/bits"

	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/chacha20poly1305"
)

// A sealed backup ("blob"): a clear header, then the padded contents
// under XChaCha20-Poly1305 with a key derived from the recovery secret by
// Argon2id. All integers big-endian.
//
//	off  len  field
//	  0    4  magic "KMBK"
//	  4    1  version 1
//	  5    1  KDF 1 = Argon2id (RFC 9106), version 0x13
//	  6    4  Argon2id time (passes)
//	 10    4  Argon2id memory, KiB
//	 14    1  Argon2id threads (lanes)
//	 15   16  salt
//	 31   24  nonce
//	 55    …  ciphertext: XChaCha20-Poly1305(key, nonce, padded, ad = bytes 0–54)
//
//	key    = Argon2id(secret's 18 random bytes, salt, time, memory, threads, 32)
//	padded = uint32(len(contents)) || contents || zeros,
//	         |padded| the smallest power of two ≥ 4 + len(contents), 4 KiB … 1 MiB
//
// The header is authenticated as associated data, so its parameters and
// salt can't be swapped. The relay stores the blob as is and can check
// only its form (CheckBlob): magic, version, parameters in bounds and a
// bucket's size.

var blobMagic = [4]byte{'K', 'M', 'B', 'K'}

const (
	blobVersion = 1
	kdfArgon2id = 1
)

// KDFParams are Argon2id's cost parameters.
type KDFParams struct {
	Time      uint32 // passes
	MemoryKiB uint32
	Threads   uint8
}

// DefaultKDF is what NewKey uses: RFC 9106's second recommended option
// (for memory-constrained environments), t=3, m=64 MiB, p=4 — the same
// as the device store's passphrase. About a quarter of a second on a
// phone, once when backups are turned on and once at recovery.
var DefaultKDF = KDFParams{Time: 3, MemoryKiB: 64 << 10, Threads: 4}

// Bounds a header's parameters must be within: a relay can't make a
// device spend more than 256 MiB or 10 passes opening a backup.
const (
	minKDFMemoryKiB = 1 << 10
	maxKDFMemoryKiB = 256 << 10
	maxKDFTime      = 10
	maxKDFThreads   = 16
)

func (p KDFParams) validate() error {
	switch {
	case p.Time < 1 || p.Time > maxKDFTime:
		return fmt.Errorf("%w: Argon2id time %d not in 1..%d", ErrBadBlob, p.Time, maxKDFTime)
	case p.Threads < 1 || p.Threads > maxKDFThreads:
		return fmt.Errorf("%w: Argon2id threads %d not in 1..%d", ErrBadBlob, p.Threads, maxKDFThreads)
	case p.MemoryKiB < minKDFMemoryKiB || p.MemoryKiB > maxKDFMemoryKiB || p.MemoryKiB < 8*uint32(p.Threads):
		return fmt.Errorf("%w: Argon2id memory %d KiB not in %d..%d", ErrBadBlob, p.MemoryKiB, minKDFMemoryKiB, maxKDFMemoryKiB)
	}
	return nil
}

// Header is a sealed backup's clear header.
type Header struct {
	KDF  KDFParams
	Salt [saltSize]byte
}

// Key is a backup key: derived from a recovery secret and a salt. The
// device keeps it (in its encrypted store) to refresh backups without the
// secret; Marshal and UnmarshalKey store it.
type Key struct {
	key  [32]byte
	salt [saltSize]byte
	kdf  KDFParams
}

// NewKey derives a backup key from s with a fresh random salt read from
// r, with parameters p (DefaultKDF).
func NewKey(s Secret, p KDFParams, r io.Reader) (*Key, error) {
	if err := p.validate(); err != nil {
		return nil, err
	}
	var salt [saltSize]byte
	if _, err := io.ReadFull(r, salt[:]); err != nil {
		return nil, fmt.Errorf("backup: salt: %w", err)
	}
	return deriveKey(s, salt, p), nil
}

func deriveKey(s Secret, salt [saltSize]byte, p KDFParams) *Key {
	k := &Key{salt: salt, kdf: p}
	copy(k.key[:], argon2.IDKey(s.b[:], salt[:], p.Time, p.MemoryKiB, p.Threads, 32))
	return k
}

// KDF returns the key's derivation parameters.
func (k *Key) KDF() KDFParams { return k.kdf }

const keyEncodingSize = 1 + 9 + saltSize + 32

// Marshal encodes the key for the device's store: version (1),
// parameters (9), salt (16), key (32).
func (k *Key) Marshal() []byte {
	b := make([]byte, 0, keyEncodingSize)
	b = append(b, blobVersion)
	b = appendKDF(b, k.kdf)
	b = append(b, k.salt[:]...)
	return append(b, k.key[:]...)
}

// UnmarshalKey decodes a key encoded by Marshal.
func UnmarshalKey(b []byte) (*Key, error) {
	if len(b) != keyEncodingSize || b[0] != blobVersion {
		return nil, fmt.Errorf("backup: stored key of %d bytes: %w", len(b), ErrBadBlob)
	}
	k := &Key{kdf: readKDF(b[1:10])}
	if err := k.kdf.validate(); err != nil {
		return nil, err
	}
	copy(k.salt[:], b[10:10+saltSize])
	copy(k.key[:], b[10+saltSize:])
	return k, nil
}

func appendKDF(b []byte, p KDFParams) []byte {
	b = binary.BigEndian.AppendUint32(b, p.Time)
	b = binary.BigEndian.AppendUint32(b, p.MemoryKiB)
	return append(b, p.Threads)
}

func readKDF(b []byte) KDFParams {
	return KDFParams{Time: binary.BigEndian.Uint32(b), MemoryKiB: binary.BigEndian.Uint32(b[4:]), Threads: b[8]}
}

// header returns the clear header with nonce.
func (k *Key) header(nonce []byte) []byte {
	h := make([]byte, 0, HeaderSize)
	h = append(h, blobMagic[:]...)
	h = append(h, blobVersion, kdfArgon2id)
	h = appendKDF(h, k.kdf)
	h = append(h, k.salt[:]...)
	return append(h, nonce...)
}

// Bucket returns the padded plaintext size for contents of n bytes: the
// smallest power of two from MinBucket up that holds them and their
// length, or 0 if n exceeds MaxContentsSize.
func Bucket(n int) int {
	if n < 0 || n > MaxContentsSize {
		return 0
	}
	b := max(MinBucket, 1<<bits.Len(uint(n+lengthSize-1)))
	return b
}

// BlobSize returns the size of a sealed backup of contents of n bytes (0
// if too large).
func BlobSize(n int) int {
	b := Bucket(n)
	if b == 0 {
		return 0
	}
	return HeaderSize + b + tagSize
}

// Seal pads contents to their bucket and encrypts them under k with a
// fresh nonce read from r. Errors wrap ErrContentsTooLarge.
func (k *Key) Seal(contents []byte, r io.Reader) ([]byte, error) {
	size := Bucket(len(contents))
	if size == 0 {
		return nil, fmt.Errorf("%w: %d bytes", ErrContentsTooLarge, len(contents))
	}
	nonce := make([]byte, aeadNonceSize)
	if _, err := io.ReadFull(r, nonce); err != nil {
		return nil, fmt.Errorf("backup: nonce: %w", err)
	}
	padded := make([]byte, size)
	binary.BigEndian.PutUint32(padded, uint32(len(contents)))
	copy(padded[lengthSize:], contents)
	aead, err := chacha20poly1305.NewX(k.key[:])
	if err != nil {
		return nil, err
	}
	h := k.header(nonce)
	out := make([]byte, 0, len(h)+size+aead.Overhead())
	out = append(out, h...)
	return aead.Seal(out, nonce, padded, h), nil
}

// ParseHeader reads and checks a sealed backup's header and size, as a
// relay does before storing it (CheckBlob). Errors wrap ErrBadBlob.
func ParseHeader(blob []byte) (Header, error) {
	if len(blob) < HeaderSize+MinBucket+tagSize || len(blob) > MaxBlobSize {
		return Header{}, fmt.Errorf("%w: %d bytes", ErrBadBlob, len(blob))
	}
	if !bytes.Equal(blob[:4], blobMagic[:]) || blob[4] != blobVersion || blob[5] != kdfArgon2id {
		return Header{}, fmt.Errorf("%w: unknown magic, version or KDF", ErrBadBlob)
	}
	h := Header{KDF: readKDF(blob[6:15])}
	if err := h.KDF.validate(); err != nil {
		return Header{}, err
	}
	copy(h.Salt[:], blob[15:15+saltSize])
	if n := len(blob) - HeaderSize - tagSize; n&(n-1) != 0 {
		return Header{}, fmt.Errorf("%w: %d bytes is not a bucket's size", ErrBadBlob, len(blob))
	}
	return h, nil
}

// CheckBlob reports whether blob has the form of a sealed backup (it
// can't tell whether it opens). Errors wrap ErrBadBlob.
func CheckBlob(blob []byte) error {
	_, err := ParseHeader(blob)
	return err
}

// Open derives the backup's key from s with the parameters and salt in
// its header, and decrypts it. It returns the contents and the key, which
// the restored device keeps to refresh the backup. Errors wrap
// ErrWrongSecret (s does not open it), ErrBadBlob or ErrBadContents.
func Open(blob []byte, s Secret) ([]byte, *Key, error) {
	h, err := ParseHeader(blob)
	if err != nil {
		return nil, nil, err
	}
	k := deriveKey(s, h.Salt, h.KDF)
	contents, err := k.Open(blob)
	if err != nil {
		return nil, nil, err
	}
	return contents, k, nil
}

// Open decrypts a backup sealed with k (or with another key derived from
// the same secret and salt). Errors wrap ErrWrongSecret, ErrBadBlob or
// ErrBadContents.
func (k *Key) Open(blob []byte) ([]byte, error) {
	h, err := ParseHeader(blob)
	if err != nil {
		return nil, err
	}
	if h.KDF != k.kdf || subtle.ConstantTimeCompare(h.Salt[:], k.salt[:]) != 1 {
		return nil, ErrWrongSecret // another secret's backup: another salt
	}
	aead, err := chacha20poly1305.NewX(k.key[:])
	if err != nil {
		return nil, err
	}
	padded, err := aead.Open(nil, blob[HeaderSize-aeadNonceSize:HeaderSize], blob[HeaderSize:], blob[:HeaderSize])
	if err != nil {
		return nil, ErrWrongSecret
	}
	n := binary.BigEndian.Uint32(padded)
	if uint64(n) > uint64(len(padded)-lengthSize) {
		return nil, fmt.Errorf("%w: length %d in a %d-byte bucket", ErrBadContents, n, len(padded))
	}
	for _, c := range padded[lengthSize+int(n):] {
		if c != 0 {
			return nil, fmt.Errorf("%w: padding is not zeros", ErrBadContents)
		}
	}
	return padded[lengthSize : lengthSize+int(n)], nil
}
