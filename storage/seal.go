package storage

import (
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"fmt"

	"golang.org/x/crypto/chacha20poly1305"
)

const (
	sealVersion  = 0x01
	nonceLen     = chacha20poly1305.NonceSizeX
	tagLen       = chacha20poly1305.Overhead
	expiryLen    = 8
	headerLen    = 1 + nonceLen
	sealOverhead = headerLen + expiryLen + tagLen // 49 bytes

	infoSeal   = "kinmesh/storage/v1 seal"
	infoOpaque = "kinmesh/storage/v1 opaque"
	checkKey   = "check"
)

// sealer seals and opens values under the store key.
type sealer struct {
	aead cipher.AEAD
	// opaqueRoot is the HKDF secret for per-namespace Opaque subkeys.
	opaqueRoot []byte
}

func newSealer(storeKey []byte) (*sealer, error) {
	if len(storeKey) != keyLen {
		return nil, fmt.Errorf("store key of %d bytes, want %d", len(storeKey), keyLen)
	}
	sk, err := hkdf.Key(sha256.New, storeKey, nil, infoSeal, chacha20poly1305.KeySize)
	if err != nil {
		return nil, err
	}
	aead, err := chacha20poly1305.NewX(sk)
	if err != nil {
		return nil, err
	}
	clear(sk)
	return &sealer{aead: aead, opaqueRoot: append([]byte(nil), storeKey...)}, nil
}

// opaqueKey derives the HMAC key of namespace ns.
func (s *sealer) opaqueKey(ns string) []byte {
	k, err := hkdf.Key(sha256.New, s.opaqueRoot, nil, infoOpaque+"\x00"+ns, sha256.Size)
	if err != nil {
		panic(err) // only for impossible lengths
	}
	return k
}

// associatedData binds a sealed value to its namespace and key.
func associatedData(ns, key string) []byte {
	ad := make([]byte, 0, 2+len(ns)+len(key))
	ad = append(ad, sealVersion, byte(len(ns)))
	ad = append(ad, ns...)
	return append(ad, key...)
}

// seal returns version || nonce || XChaCha20-Poly1305(be64(expiry) ||
// value), where value is the parts joined (sealed from where they are, not
// joined first).
func (s *sealer) seal(ns, key string, expiry uint64, value ...[]byte) []byte {
	var nonce [nonceLen]byte
	rand.Read(nonce[:])
	return s.sealNonce(nonce, ns, key, expiry, value...)
}

func (s *sealer) sealNonce(n [nonceLen]byte, ns, key string, expiry uint64, value ...[]byte) []byte {
	size := 0
	for _, p := range value {
		size += len(p)
	}
	out := make([]byte, headerLen+expiryLen+size+tagLen)
	out[0] = sealVersion
	nonce := out[1:headerLen]
	copy(nonce, n[:])
	pt := out[headerLen : headerLen+expiryLen+size]
	binary.BigEndian.PutUint64(pt, expiry)
	at := expiryLen
	for _, p := range value {
		at += copy(pt[at:], p)
	}
	s.aead.Seal(pt[:0], nonce, pt, associatedData(ns, key))
	return out
}

// open authenticates and decrypts a sealed value. Any failure is ErrCorrupt.
// The returned value does not alias sealed.
func (s *sealer) open(ns, key string, sealed []byte) (expiry uint64, value []byte, err error) {
	if len(sealed) < sealOverhead {
		return 0, nil, fmt.Errorf("sealed value of %d bytes, shorter than %d: %w", len(sealed), sealOverhead, ErrCorrupt)
	}
	if sealed[0] != sealVersion {
		return 0, nil, fmt.Errorf("sealed value version %d, want %d: %w", sealed[0], sealVersion, ErrCorrupt)
	}
	ct := sealed[headerLen:]
	pt := make([]byte, 0, len(ct)-tagLen)
	pt, err = s.aead.Open(pt, sealed[1:headerLen], ct, associatedData(ns, key))
	if err != nil {
		return 0, nil, ErrCorrupt
	}
	return binary.BigEndian.Uint64(pt), pt[expiryLen:], nil
}
