package e2ee

import (
	"bytes"
	"crypto/ecdh"
	"crypto/ed25519"
	"crypto/sha512"
	"encoding/base32"
	"encoding/binary"
	"fmt"
	"io"
	"strings"
	"sync"

	"google.golang.org/protobuf/proto"

	"github.com/kinmesh/kinmesh/protocols/e2ee/pb"
)

// identityVersion is the wire version of PublicIdentity and PrivateIdentity.
const identityVersion = 1

// maxIdentitySize caps an encoded identity before decoding.
const maxIdentitySize = 256

// bindingContext prefixes the bytes an identity's Ed25519 key signs to bind
// its X25519 key, so the signature can't be replayed in another context.
const bindingContext = "kinmesh/e2ee/identity-binding/v1"

// accountIDEncoding renders account ids: lower-case base32, no padding.
var accountIDEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// AccountID names an account: the base32 (lower-case, unpadded) encoding of
// its Ed25519 public key, 52 characters. It is also a contact's id in the API.
type AccountID string

// ParseAccountID checks that s is a well-formed account id.
func ParseAccountID(s string) (AccountID, error) {
	b, err := accountIDEncoding.DecodeString(s)
	if err != nil || len(b) != ed25519.PublicKeySize {
		return "", fmt.Errorf("parse account id %q: %w", s, ErrMalformed)
	}
	return AccountID(s), nil
}

// SigningKey returns the Ed25519 public key the id encodes.
func (a AccountID) SigningKey() (ed25519.PublicKey, error) {
	b, err := accountIDEncoding.DecodeString(string(a))
	if err != nil || len(b) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("account id %q: %w", a, ErrMalformed)
	}
	return ed25519.PublicKey(b), nil
}

// Identity is an account's long-term key pair: an Ed25519 key for signatures
// and an X25519 key for key agreement, the latter bound to the former by a
// signature. It is the root of everything an account signs or agrees on.
type Identity struct {
	sign ed25519.PrivateKey
	dh   *ecdh.PrivateKey
	pub  PublicIdentity
}

// PublicIdentity is the public half of an Identity, as others see it.
type PublicIdentity struct {
	// Sign verifies the account's signatures.
	Sign ed25519.PublicKey
	// DH is the account's X25519 identity key (PQXDH's IK).
	DH *ecdh.PublicKey
	// Binding is Sign's signature over bindingContext || DH.
	Binding []byte
}

// NewIdentity creates an identity from 64 bytes of rand.
func NewIdentity(rand io.Reader) (*Identity, error) {
	var seed [ed25519.SeedSize]byte
	if _, err := io.ReadFull(rand, seed[:]); err != nil {
		return nil, fmt.Errorf("new identity: %w", err)
	}
	var dh [32]byte
	if _, err := io.ReadFull(rand, dh[:]); err != nil {
		return nil, fmt.Errorf("new identity: %w", err)
	}
	return identityFromKeys(seed[:], dh[:])
}

func identityFromKeys(seed, dhKey []byte) (*Identity, error) {
	if len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("identity seed: %w", ErrMalformed)
	}
	dh, err := ecdh.X25519().NewPrivateKey(dhKey)
	if err != nil {
		return nil, fmt.Errorf("identity dh key: %w", ErrMalformed)
	}
	sign := ed25519.NewKeyFromSeed(seed)
	id := &Identity{sign: sign, dh: dh}
	id.pub = PublicIdentity{
		Sign:    sign.Public().(ed25519.PublicKey),
		DH:      dh.PublicKey(),
		Binding: ed25519.Sign(sign, bindingMessage(dh.PublicKey())),
	}
	return id, nil
}

func bindingMessage(dh *ecdh.PublicKey) []byte {
	return append([]byte(bindingContext), dh.Bytes()...)
}

// Public returns the public identity.
func (id *Identity) Public() PublicIdentity { return id.pub }

// AccountID returns the identity's account id.
func (id *Identity) AccountID() AccountID { return id.pub.AccountID() }

// Sign signs msg with the identity's Ed25519 key. Callers prefix msg with a
// context string of their own so signatures can't be replayed across uses.
func (id *Identity) Sign(msg []byte) []byte { return ed25519.Sign(id.sign, msg) }

// ECDH computes X25519(identity key, remote).
func (id *Identity) ECDH(remote *ecdh.PublicKey) ([]byte, error) {
	out, err := id.dh.ECDH(remote)
	if err != nil {
		return nil, fmt.Errorf("identity ecdh: %w", ErrMalformed)
	}
	return out, nil
}

// DHKey returns the identity's X25519 private key, for PQXDH.
func (id *Identity) DHKey() *ecdh.PrivateKey { return id.dh }

// MarshalPrivate serializes the secret identity, for the caller to store
// (sealed). It is the only form in which the private keys leave memory.
func (id *Identity) MarshalPrivate() []byte {
	b, err := proto.Marshal(&pb.PrivateIdentity{
		Version:  identityVersion,
		SignSeed: id.sign.Seed(),
		DhKey:    id.dh.Bytes(),
	})
	if err != nil {
		panic("e2ee: marshal private identity: " + err.Error()) // fixed-size fields never fail
	}
	return b
}

// UnmarshalPrivateIdentity restores an identity written by MarshalPrivate.
func UnmarshalPrivateIdentity(b []byte) (*Identity, error) {
	if len(b) > maxIdentitySize {
		return nil, fmt.Errorf("private identity: %w", ErrTooLarge)
	}
	var m pb.PrivateIdentity
	if err := proto.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("private identity: %w", ErrMalformed)
	}
	if m.Version != identityVersion {
		return nil, fmt.Errorf("private identity version %d: %w", m.Version, ErrVersion)
	}
	return identityFromKeys(m.SignSeed, m.DhKey)
}

// AccountID returns the account id of the public identity.
func (p PublicIdentity) AccountID() AccountID {
	return AccountID(accountIDEncoding.EncodeToString(p.Sign))
}

// Verify checks sig over msg against the identity's signing key.
func (p PublicIdentity) Verify(msg, sig []byte) error {
	if len(p.Sign) != ed25519.PublicKeySize || !ed25519.Verify(p.Sign, msg, sig) {
		return ErrSignature
	}
	return nil
}

// Equal reports whether p and q are the same identity.
func (p PublicIdentity) Equal(q PublicIdentity) bool {
	return bytes.Equal(p.Sign, q.Sign) && p.DH != nil && q.DH != nil && p.DH.Equal(q.DH)
}

// Marshal encodes the public identity for the wire.
func (p PublicIdentity) Marshal() []byte {
	b, err := proto.Marshal(p.toWire())
	if err != nil {
		panic("e2ee: marshal public identity: " + err.Error())
	}
	return b
}

func (p PublicIdentity) toWire() *pb.PublicIdentity {
	return &pb.PublicIdentity{Version: identityVersion, SignKey: p.Sign, DhKey: p.DH.Bytes(), Binding: p.Binding}
}

// ParsePublicIdentity decodes and verifies a public identity: the binding
// signature must verify, or ErrSignature is returned.
func ParsePublicIdentity(b []byte) (PublicIdentity, error) {
	if len(b) > maxIdentitySize {
		return PublicIdentity{}, fmt.Errorf("public identity: %w", ErrTooLarge)
	}
	var m pb.PublicIdentity
	if err := proto.Unmarshal(b, &m); err != nil {
		return PublicIdentity{}, fmt.Errorf("public identity: %w", ErrMalformed)
	}
	return publicIdentityFromWire(&m)
}

func publicIdentityFromWire(m *pb.PublicIdentity) (PublicIdentity, error) {
	return (*bindingCache)(nil).identity(m)
}

// maxCachedBindings bounds a bindingCache: far more senders than a family
// has, about 40 KB.
const maxCachedBindings = 256

// bindingCache remembers public identities whose binding signature
// verified. An entry is the whole input of the check (signing key, DH key,
// signature), so a hit stands for exactly the check that passed before;
// anything that differs in one bit is verified afresh. A nil cache
// verifies every time.
type bindingCache struct {
	mu sync.Mutex
	ok map[[bindingCacheKeySize]byte]struct{}
}

const bindingCacheKeySize = ed25519.PublicKeySize + 32 + ed25519.SignatureSize

func newBindingCache() *bindingCache {
	return &bindingCache{ok: make(map[[bindingCacheKeySize]byte]struct{})}
}

// identity converts m, checking its binding signature unless the same
// identity checked out before.
func (c *bindingCache) identity(m *pb.PublicIdentity) (PublicIdentity, error) {
	if m.GetVersion() != identityVersion {
		return PublicIdentity{}, fmt.Errorf("public identity version %d: %w", m.GetVersion(), ErrVersion)
	}
	if len(m.SignKey) != ed25519.PublicKeySize || len(m.Binding) != ed25519.SignatureSize {
		return PublicIdentity{}, fmt.Errorf("public identity: %w", ErrMalformed)
	}
	dh, err := ecdh.X25519().NewPublicKey(m.DhKey)
	if err != nil {
		return PublicIdentity{}, fmt.Errorf("public identity dh key: %w", ErrMalformed)
	}
	p := PublicIdentity{Sign: ed25519.PublicKey(m.SignKey), DH: dh, Binding: m.Binding}
	var key [bindingCacheKeySize]byte
	copy(key[:], m.SignKey)
	copy(key[ed25519.PublicKeySize:], m.DhKey)
	copy(key[ed25519.PublicKeySize+32:], m.Binding)
	if c != nil {
		c.mu.Lock()
		_, hit := c.ok[key]
		c.mu.Unlock()
		if hit {
			return p, nil
		}
	}
	if err := p.Verify(bindingMessage(dh), m.Binding); err != nil {
		return PublicIdentity{}, fmt.Errorf("public identity binding: %w", err)
	}
	if c != nil {
		c.mu.Lock()
		if len(c.ok) >= maxCachedBindings {
			for k := range c.ok { // drop any one: a miss only costs a check
				delete(c.ok, k)
				break
			}
		}
		c.ok[key] = struct{}{}
		c.mu.Unlock()
	}
	return p, nil
}

// fingerprintIterations slows brute-force search for a colliding fingerprint.
const fingerprintIterations = 5200

// Fingerprint returns 30 decimal digits identifying p, in six groups of five.
// It is SHA-512 iterated fingerprintIterations times over a version, the
// identity's keys and its account id; each group is five bytes of the final
// hash, big-endian, modulo 100000.
func (p PublicIdentity) Fingerprint() string {
	h := sha512.New()
	var v [2]byte
	binary.BigEndian.PutUint16(v[:], 1)
	input := append(append(append(v[:], p.Sign...), p.DH.Bytes()...), p.AccountID()...)
	digest := input
	for range fingerprintIterations {
		h.Reset()
		h.Write(digest)
		h.Write(input)
		digest = h.Sum(nil)
	}
	groups := make([]string, 6)
	for i := range groups {
		chunk := digest[i*5 : i*5+5]
		n := uint64(chunk[0])<<32 | uint64(chunk[1])<<24 | uint64(chunk[2])<<16 | uint64(chunk[3])<<8 | uint64(chunk[4])
		groups[i] = fmt.Sprintf("%05d", n%100000)
	}
	return strings.Join(groups, " ")
}

// SafetyNumber returns the 60-digit number two users compare to verify each
// other: both fingerprints, the lexically smaller one first, so both sides
// compute the same string.
func SafetyNumber(a, b PublicIdentity) string {
	fa, fb := a.Fingerprint(), b.Fingerprint()
	if fb < fa {
		fa, fb = fb, fa
	}
	return fa + " " + fb
}
