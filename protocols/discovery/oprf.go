package discovery

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/cloudflare/circl/group"
	"github.com/cloudflare/circl/oprf"
	"github.com/cloudflare/circl/zk/dleq"
	"golang.org/x/crypto/chacha20poly1305"

	"github.com/kinmesh/kinmesh/protocols/contact"
)

// The OPRF: RFC 9497 in verifiable mode (VOPRF), suite
// ristretto255-SHA512, through github.com/cloudflare/circl/oprf.
var suite = oprf.SuiteRistretto255

// Domain-separation prefixes of the values derived from an OPRF output.
const (
	idContext  = "kinmesh/discovery/id"
	keyContext = "kinmesh/discovery/key"
	boxContext = "kinmesh/discovery/entry/v1"
)

// PublicKey is a relay's OPRF public key (32 bytes, a ristretto255
// element). Evaluations are verified against it; every directory entry of
// the relay derives from the matching private key.
type PublicKey struct {
	raw []byte
	k   *oprf.PublicKey
}

// ParsePublicKey decodes a public key.
func ParsePublicKey(b []byte) (PublicKey, error) {
	if len(b) != elementSize {
		return PublicKey{}, fmt.Errorf("discovery: public key of %d bytes, want %d", len(b), elementSize)
	}
	k := new(oprf.PublicKey)
	if err := k.UnmarshalBinary(suite, b); err != nil {
		return PublicKey{}, fmt.Errorf("discovery: public key: %w", err)
	}
	return PublicKey{raw: bytes.Clone(b), k: k}, nil
}

// Bytes returns the key's encoding (nil for the zero key).
func (p PublicKey) Bytes() []byte { return bytes.Clone(p.raw) }

// IsZero reports whether p is the zero PublicKey (no key).
func (p PublicKey) IsZero() bool { return p.k == nil }

// Equal reports whether p and q are the same key.
func (p PublicKey) Equal(q PublicKey) bool { return bytes.Equal(p.raw, q.raw) }

// String returns the key in hex.
func (p PublicKey) String() string { return hex.EncodeToString(p.raw) }

func publicKeyOf(k *oprf.PrivateKey) (PublicKey, error) {
	b, err := k.Public().MarshalBinary()
	if err != nil {
		return PublicKey{}, err
	}
	return ParsePublicKey(b)
}

// EntryID is a directory id: the first 16 bytes of
// SHA-256("kinmesh/discovery/id" || OPRF output).
type EntryID [IDSize]byte

// String returns the id in hex.
func (id EntryID) String() string { return hex.EncodeToString(id[:]) }

// Output is the finalized OPRF output of a number under a relay's key
// (64 bytes). The directory id and the entry key derive from it. It stays
// on the device that computed it: it identifies the number to anyone who
// can query the relay.
type Output [OutputSize]byte

// ID returns the directory id of the output's number.
func (o Output) ID() EntryID {
	h := sha256.New()
	h.Write([]byte(idContext))
	h.Write(o[:])
	var id EntryID
	copy(id[:], h.Sum(nil))
	return id
}

// key returns the key of the output's directory entry.
func (o Output) key() []byte {
	h := sha256.New()
	h.Write([]byte(keyContext))
	h.Write(o[:])
	return h.Sum(nil)
}

// seal encrypts record for the output's directory entry:
// nonce (24) || XChaCha20-Poly1305(key, nonce, record, "kinmesh/discovery/entry/v1" || id).
func (o Output) seal(record []byte) []byte {
	aead, err := chacha20poly1305.NewX(o.key())
	if err != nil {
		panic("discovery: " + err.Error()) // 32-byte keys never fail
	}
	id := o.ID()
	nonce := make([]byte, boxNonce, boxNonce+len(record)+aead.Overhead())
	_, _ = rand.Read(nonce)
	return aead.Seal(nonce, nonce, record, boxAD(id))
}

// Open decrypts and verifies the directory entry box of the output's
// number: the signed contact record of the account that verified it.
func (o Output) Open(box []byte) (contact.Signed, error) {
	if len(box) < boxNonce+chacha20poly1305.Overhead || len(box) > maxBoxSize {
		return contact.Signed{}, fmt.Errorf("discovery: entry of %d bytes: %w", len(box), ErrProtocol)
	}
	aead, err := chacha20poly1305.NewX(o.key())
	if err != nil {
		return contact.Signed{}, err
	}
	rec, err := aead.Open(nil, box[:boxNonce], box[boxNonce:], boxAD(o.ID()))
	if err != nil {
		return contact.Signed{}, fmt.Errorf("discovery: open entry: %w", ErrProtocol)
	}
	s, err := contact.Parse(rec)
	if err != nil {
		return contact.Signed{}, fmt.Errorf("discovery: entry record: %w: %w", ErrProtocol, err)
	}
	return s, nil
}

func boxAD(id EntryID) []byte {
	return append([]byte(boxContext), id[:]...)
}

// parseElements decodes ristretto255 elements, refusing the identity.
func parseElements(bs [][]byte) ([]group.Element, error) {
	out := make([]group.Element, len(bs))
	for i, b := range bs {
		if len(b) != elementSize {
			return nil, fmt.Errorf("element of %d bytes", len(b))
		}
		e := group.Ristretto255.NewElement()
		if err := e.UnmarshalBinary(b); err != nil {
			return nil, err
		}
		if e.IsIdentity() {
			return nil, errors.New("identity element")
		}
		out[i] = e
	}
	return out, nil
}

func marshalElements(es []group.Element) ([][]byte, error) {
	out := make([][]byte, len(es))
	for i, e := range es {
		b, err := e.MarshalBinaryCompress()
		if err != nil {
			return nil, err
		}
		out[i] = b
	}
	return out, nil
}

func parseProof(b []byte) (*dleq.Proof, error) {
	if len(b) != proofSize {
		return nil, fmt.Errorf("proof of %d bytes", len(b))
	}
	p := new(dleq.Proof)
	if err := p.UnmarshalBinary(group.Ristretto255, b); err != nil {
		return nil, err
	}
	return p, nil
}

// blind blinds the numbers for evaluation under pk.
func blind(pk PublicKey, numbers []Number) (oprf.VerifiableClient, *oprf.FinalizeData, *oprf.EvaluationRequest, error) {
	c := oprf.NewVerifiableClient(suite, pk.k)
	inputs := make([][]byte, len(numbers))
	for i, n := range numbers {
		inputs[i] = n.input()
	}
	fin, req, err := c.Blind(inputs)
	return c, fin, req, err
}
