package mailbox

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/binary"
	"fmt"
	"io"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// ID is the mailbox protocol's libp2p protocol id.
const ID = "/kinmesh/mailbox/1.0.0"

// ServiceName is the resource-manager service the relay's streams belong to.
const ServiceName = "kinmesh.mailbox"

// Wire limits. Both sides enforce them; the client splits larger deposits
// and acks into several requests.
const (
	// MaxAge is how long a relay keeps an envelope: 15 days after its
	// deposit it is gone, delivered or not.
	MaxAge = 15 * 24 * time.Hour

	// MaxEnvelopeSize caps one envelope: the largest e2ee envelope
	// (64 KiB bucket + 1137 bytes of HPKE overhead = 66,673 bytes) with
	// room to spare.
	MaxEnvelopeSize = 64<<10 + 4<<10
	// MaxBatchItems caps the envelopes in one Deposit request.
	MaxBatchItems = 256
	// MaxBatchBytes caps the envelope bytes in one Deposit request.
	MaxBatchBytes = 1 << 20
	// MaxAckSeqs caps the seqs in one Ack request.
	MaxAckSeqs = 1024
	// MaxPageItems caps the items in one fetch page (and is the default).
	MaxPageItems = 256
	// MaxPageBytes caps the envelope bytes in one fetch page or push frame;
	// a page always holds at least one item.
	MaxPageBytes = 1 << 20

	// maxRequestFrame caps a client frame: a full batch plus protobuf
	// overhead (at most 4 bytes of tag and length per envelope).
	maxRequestFrame = MaxBatchBytes + 16<<10
	// maxResponseFrame caps a relay frame: a full page plus one envelope
	// plus protobuf overhead.
	maxResponseFrame = MaxPageBytes + MaxEnvelopeSize + 16<<10
)

// Defaults of the relay's quotas (see the Option functions).
const (
	// DefaultMaxItems is how many envelopes one mailbox may hold.
	DefaultMaxItems = 20_000
	// DefaultMaxBytes is how many envelope bytes one mailbox may hold.
	DefaultMaxBytes = 128 << 20
	// DefaultDepositsPerMinute is how many envelopes one depositor (peer
	// id) may deposit per minute; the same number may come at once.
	DefaultDepositsPerMinute = 3_000
	// DefaultDepositBytesPerMinute is how many envelope bytes one
	// depositor may deposit per minute; the same number may come at once.
	DefaultDepositBytesPerMinute = 64 << 20
	// DefaultSourceDepositBytesPerHour and DefaultSourceDepositBurst:
	// envelope bytes all the depositors at one address (an IPv4 address,
	// an IPv6 /64) may deposit together, an hour and at once. Peer ids
	// are free, so the per-depositor rate alone would let one machine
	// deposit without bound.
	DefaultSourceDepositBytesPerHour = 256 << 20
	DefaultSourceDepositBurst        = 512 << 20
	// DefaultPurgesPerMinute is how many purges one peer may request per
	// minute; the same number may come at once.
	DefaultPurgesPerMinute = 6
	// DefaultRegistrationTTL is how long a mailbox stays registered on a
	// relay after its owner's last authentication: long enough for a
	// phone left off for weeks (its mail expires after MaxAge anyway),
	// short enough that abandoned mailboxes go.
	DefaultRegistrationTTL = 60 * 24 * time.Hour
	// DefaultSourceRegistrationsPerHour and DefaultSourceRegistrationBurst:
	// how many mailboxes the owners at one address (an IPv4 address, an
	// IPv6 /64) may newly register, an hour and at once. Keeping a
	// registration alive costs nothing from it.
	DefaultSourceRegistrationsPerHour = 256
	DefaultSourceRegistrationBurst    = 1024
)

const (
	idContext   = "kinmesh/mailbox/id/v1"
	authContext = "kinmesh/mailbox/auth/v1"
	nonceSize   = 32
	idRawSize   = sha256.Size
)

var idEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// idLen is the length of a mailbox id string: 32 bytes in base32.
var idLen = idEncoding.EncodedLen(idRawSize)

// MailboxID names a mailbox: the lower-case base32 (RFC 4648 alphabet, no
// padding) of SHA-256("kinmesh/mailbox/id/v1" || auth public key), 52
// characters. It reveals nothing about the account that owns it.
type MailboxID string

// ParseMailboxID checks that s is a well-formed mailbox id.
func ParseMailboxID(s string) (MailboxID, error) {
	if _, err := mailboxRaw(s); err != nil {
		return "", err
	}
	return MailboxID(s), nil
}

// String returns the id.
func (id MailboxID) String() string { return string(id) }

// mailboxRaw decodes a mailbox id to its 32 bytes.
func mailboxRaw(s string) ([idRawSize]byte, error) {
	var raw [idRawSize]byte
	if len(s) != idLen {
		return raw, fmt.Errorf("mailbox id %q: want %d base32 characters: %w", s, idLen, ErrBadMailboxID)
	}
	b, err := idEncoding.DecodeString(s)
	if err != nil || len(b) != idRawSize {
		return raw, fmt.Errorf("mailbox id %q: %w", s, ErrBadMailboxID)
	}
	copy(raw[:], b)
	return raw, nil
}

func idFromRaw(raw [idRawSize]byte) MailboxID { return MailboxID(idEncoding.EncodeToString(raw[:])) }

// MailboxIDFromPublicKey returns the id of the mailbox whose auth public
// key is pub.
func MailboxIDFromPublicKey(pub ed25519.PublicKey) (MailboxID, error) {
	if len(pub) != ed25519.PublicKeySize {
		return "", fmt.Errorf("mailbox auth key of %d bytes: %w", len(pub), ErrBadKey)
	}
	return idFromRaw(rawIDFromPublicKey(pub)), nil
}

func rawIDFromPublicKey(pub []byte) [idRawSize]byte {
	h := sha256.New()
	h.Write([]byte(idContext))
	h.Write(pub)
	var raw [idRawSize]byte
	h.Sum(raw[:0])
	return raw
}

// Key is a mailbox's Ed25519 auth key. It is deliberately not the account
// identity key: the relay sees only its public half and the id derived
// from it, and can link neither to an account. The zero Key is invalid.
type Key struct {
	priv ed25519.PrivateKey
}

// GenerateKey returns a new key from r (crypto/rand when nil).
func GenerateKey(r io.Reader) (Key, error) {
	if r == nil {
		r = rand.Reader
	}
	_, priv, err := ed25519.GenerateKey(r)
	if err != nil {
		return Key{}, fmt.Errorf("mailbox: generate key: %w", err)
	}
	return Key{priv: priv}, nil
}

// UnmarshalKey decodes a key written by MarshalBinary (its 32-byte seed).
func UnmarshalKey(b []byte) (Key, error) {
	if len(b) != ed25519.SeedSize {
		return Key{}, fmt.Errorf("mailbox key of %d bytes, want %d: %w", len(b), ed25519.SeedSize, ErrBadKey)
	}
	return Key{priv: ed25519.NewKeyFromSeed(b)}, nil
}

// MarshalBinary returns the key's 32-byte seed. Keep it secret: store it
// sealed only.
func (k Key) MarshalBinary() ([]byte, error) {
	if k.priv == nil {
		return nil, fmt.Errorf("mailbox: marshal zero key: %w", ErrBadKey)
	}
	return append([]byte(nil), k.priv.Seed()...), nil
}

// Public returns the key's public half, which goes into the account's
// signed contact record with the mailbox id.
func (k Key) Public() ed25519.PublicKey {
	if k.priv == nil {
		return nil
	}
	return append(ed25519.PublicKey(nil), k.priv.Public().(ed25519.PublicKey)...)
}

// ID returns the id of the mailbox this key owns ("" for the zero Key).
func (k Key) ID() MailboxID {
	if k.priv == nil {
		return ""
	}
	return idFromRaw(rawIDFromPublicKey(k.priv.Public().(ed25519.PublicKey)))
}

// valid reports whether k holds a key.
func (k Key) valid() bool { return len(k.priv) == ed25519.PrivateKeySize }

// authMessage is what the owner signs to open a session:
//
//	"kinmesh/mailbox/auth/v1" || 0x00 || nonce (32)
//	|| u16be(len(relay)) || relay peer id (binary)
//	|| u16be(len(owner)) || owner's connection peer id (binary)
//	|| raw mailbox id (32)
//
// It binds the signature to one challenge (the nonce, valid once on one
// stream), to one relay, and to the connection it is sent on, so it can't
// be replayed elsewhere.
func authMessage(nonce []byte, relay, owner peer.ID, mbox [idRawSize]byte) []byte {
	m := make([]byte, 0, len(authContext)+1+len(nonce)+4+len(relay)+len(owner)+idRawSize)
	m = append(m, authContext...)
	m = append(m, 0)
	m = append(m, nonce...)
	m = binary.BigEndian.AppendUint16(m, uint16(len(relay)))
	m = append(m, relay...)
	m = binary.BigEndian.AppendUint16(m, uint16(len(owner)))
	m = append(m, owner...)
	return append(m, mbox[:]...)
}

// Item is one envelope held in a mailbox.
type Item struct {
	// Seq is the item's place in the mailbox: sequence numbers increase in
	// deposit order. Ack takes it.
	Seq uint64
	// Deposited is when the relay stored it (the relay's clock, ms).
	Deposited time.Time
	// Envelope is the opaque sealed envelope as deposited.
	Envelope []byte
}
