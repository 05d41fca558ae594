package e2ee

import (
	"bytes"
	"crypto/ed25519"
	"crypto/hpke"
	"crypto/mlkem"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"

	"golang.org/x/crypto/chacha20poly1305"
	"google.golang.org/protobuf/proto"

	"github.com/kinmesh/kinmesh/protocols/e2ee/pb"
)

// Envelope wire constants.
const (
	// envelopeVersion is the first byte of every envelope and the version
	// of the sealed content and of serialized mailbox keys.
	envelopeVersion = 1

	// envKEMEncSize is the size of an X-Wing encapsulation: an ML-KEM-768
	// ciphertext (1088 bytes) and an X25519 share (32 bytes).
	envKEMEncSize = mlkem.CiphertextSize768 + 32
	// envKEMPublicSize is the size of an X-Wing public key: an ML-KEM-768
	// encapsulation key (1184 bytes) and an X25519 public key (32 bytes).
	envKEMPublicSize = mlkem.EncapsulationKeySize768 + 32
	envKEMSeedSize   = 32

	// EnvelopeOverhead is what an envelope adds to its padded plaintext:
	// the version byte, the HPKE encapsulated key and the AEAD tag.
	EnvelopeOverhead = 1 + envKEMEncSize + chacha20poly1305.Overhead

	// MaxEnvelopeSize caps an envelope (1137 + 65536 = 66673 bytes).
	MaxEnvelopeSize = EnvelopeOverhead + MaxEnvelopeBucket

	// MaxSenderCertificateSize caps the opaque sender certificate.
	MaxSenderCertificateSize = 4096

	// MaxEnvelopePayload is the largest payload that always fits in an
	// envelope, whatever the certificate (61184 bytes). Somewhat larger
	// payloads fit with a short certificate, up to the last bucket.
	MaxEnvelopePayload = MaxEnvelopeBucket - MaxSenderCertificateSize - 256

	// MailboxPublicKeySize is the size of an encoded MailboxPublicKey:
	// the version byte and an X-Wing public key.
	MailboxPublicKeySize = 1 + envKEMPublicSize

	envMaxPrivateKeySize = 64

	envInfoContext      = "kinmesh/e2ee/envelope/v1"
	envMailboxIDContext = "kinmesh/e2ee/mailbox-id/v1"
)

// envKEM, envKDF and envAEAD are the envelope's HPKE suite: X-Wing
// (MLKEM768-X25519, post-quantum hybrid), HKDF-SHA256, ChaCha20Poly1305.
var (
	envKEM  = hpke.MLKEM768X25519()
	envKDF  = hpke.HKDFSHA256()
	envAEAD = hpke.ChaCha20Poly1305()
)

// ContentType says what an envelope's payload is, and so which inner layer
// decrypts it. Values are never reused. OpenEnvelope passes values it does
// not know through (a newer sender may use them); the caller drops them.
type ContentType uint8

// Content types. 0 is invalid.
const (
	// ContentPreKeyMessage is a PQXDH initial message with the first
	// ratchet message of a new pairwise session.
	ContentPreKeyMessage ContentType = 1
	// ContentRatchet is a pairwise Double Ratchet message.
	ContentRatchet ContentType = 2
	// ContentSenderKey is a group sender-key message (SenderKey.Encrypt).
	ContentSenderKey ContentType = 3
	// ContentReceipt is a delivery or read receipt: a ratchet message whose
	// plaintext is a receipt, typed so it is not shown as a message.
	ContentReceipt ContentType = 4
	// ContentPresence is a presence beacon (protocols/presence): a signed
	// online/offline status sealed straight to the contact's mailbox key,
	// never stored by relays. Typed so nothing else ever opens it as a
	// message.
	ContentPresence ContentType = 5
	// ContentBatch is several inner messages of one sender in one envelope
	// (MarshalBatch, ParseBatch): one KEM for all of them. Each item is
	// decrypted, and its sender checked, as if it had its own envelope.
	ContentBatch ContentType = 6
)

// String names the content type.
func (t ContentType) String() string {
	switch t {
	case ContentPreKeyMessage:
		return "prekey-message"
	case ContentRatchet:
		return "ratchet"
	case ContentSenderKey:
		return "sender-key"
	case ContentReceipt:
		return "receipt"
	case ContentPresence:
		return "presence"
	case ContentBatch:
		return "batch"
	}
	return fmt.Sprintf("content-type-%d", uint8(t))
}

// EnvelopeContent is what a sealed-sender envelope carries.
//
// The envelope hides the sender from relays but does not authenticate it:
// anyone who knows a mailbox public key can seal an envelope claiming any
// Sender. The inner layer authenticates: a ratchet message decrypts only in
// the session with the sender's identity (its associated data binds both
// identities), a sender-key message only with the SenderKeyState of its
// sender (signature and associated data). So the recipient MUST, after
// decrypting Payload, call CheckSender with the account the inner layer
// authenticated, and drop the message on error.
type EnvelopeContent struct {
	// Sender is the claimed sender.
	Sender PublicIdentity
	// Certificate is opaque to this package (e.g. the sender's signed
	// contact record, so the recipient can reply); at most
	// MaxSenderCertificateSize bytes, may be empty. Verify it before use.
	Certificate []byte
	// Type says what Payload is.
	Type ContentType
	// Payload is the inner message, already end-to-end encrypted.
	Payload []byte
}

// CheckSender returns ErrSenderMismatch unless the envelope's claimed
// sender is authenticated: the account of the ratchet session that
// decrypted Payload, or SenderKeyState.Sender for a sender-key message.
func (c EnvelopeContent) CheckSender(authenticated AccountID) error {
	if len(c.Sender.Sign) != ed25519.PublicKeySize || c.Sender.AccountID() != authenticated {
		return fmt.Errorf("envelope claims %s, inner layer authenticated %s: %w",
			c.Sender.AccountID(), authenticated, ErrSenderMismatch)
	}
	return nil
}

// MailboxID names a mailbox: the lower-case hex of SHA-256(
// "kinmesh/e2ee/mailbox-id/v1" || MailboxPublicKey.Bytes()), 64 characters.
// Together with the envelope blob it is all a relay learns about a message.
type MailboxID string

// ParseMailboxID checks that s is a well-formed mailbox id.
func ParseMailboxID(s string) (MailboxID, error) {
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != sha256.Size || hex.EncodeToString(b) != s {
		return "", fmt.Errorf("parse mailbox id %q: %w", s, ErrMalformed)
	}
	return MailboxID(s), nil
}

// MailboxPublicKey is the public half of a MailboxKey, published in the
// account's signed contact record. Senders seal envelopes to it.
type MailboxPublicKey struct {
	pk  hpke.PublicKey
	raw []byte // version byte || X-Wing public key
	id  [sha256.Size]byte
}

// ParseMailboxPublicKey decodes a public key written by Bytes.
func ParseMailboxPublicKey(b []byte) (MailboxPublicKey, error) {
	if len(b) > MailboxPublicKeySize {
		return MailboxPublicKey{}, fmt.Errorf("mailbox public key: %w", ErrTooLarge)
	}
	if len(b) < 1 {
		return MailboxPublicKey{}, fmt.Errorf("mailbox public key: %w", ErrMalformed)
	}
	if b[0] != envelopeVersion {
		return MailboxPublicKey{}, fmt.Errorf("mailbox public key version %d: %w", b[0], ErrVersion)
	}
	pk, err := envKEM.NewPublicKey(b[1:])
	if err != nil {
		return MailboxPublicKey{}, fmt.Errorf("mailbox public key: %w", ErrMalformed)
	}
	return envPublicKey(pk), nil
}

func envPublicKey(pk hpke.PublicKey) MailboxPublicKey {
	raw := append([]byte{envelopeVersion}, pk.Bytes()...)
	h := sha256.New()
	h.Write([]byte(envMailboxIDContext))
	h.Write(raw)
	p := MailboxPublicKey{pk: pk, raw: raw}
	h.Sum(p.id[:0])
	return p
}

// Bytes encodes the public key: version byte (1) || X-Wing public key
// (1216 bytes), MailboxPublicKeySize bytes in all.
func (p MailboxPublicKey) Bytes() []byte { return bytes.Clone(p.raw) }

// ID returns the mailbox id of the key.
func (p MailboxPublicKey) ID() MailboxID { return MailboxID(hex.EncodeToString(p.id[:])) }

// Equal reports whether p and q are the same key.
func (p MailboxPublicKey) Equal(q MailboxPublicKey) bool {
	return p.pk != nil && bytes.Equal(p.raw, q.raw)
}

// info is the HPKE info string for envelopes to p: the domain string, a
// zero byte and the 32-byte mailbox id, so an envelope opens only for the
// mailbox it was sealed to.
func (p MailboxPublicKey) info() []byte {
	info := make([]byte, 0, len(envInfoContext)+1+len(p.id))
	info = append(info, envInfoContext...)
	info = append(info, 0)
	return append(info, p.id[:]...)
}

// MailboxKey is an account's (or device's) mailbox key pair: an X-Wing
// hybrid KEM key (ML-KEM-768 + X25519) that envelopes are sealed to. It is
// secret; persist it (Marshal) sealed.
type MailboxKey struct {
	priv hpke.PrivateKey
	seed []byte
	pub  MailboxPublicKey
	// senders remembers the sender identities whose binding signature
	// already verified, so a conversation's envelopes after its first skip
	// the Ed25519 check (about 50 µs each).
	senders *bindingCache
}

// NewMailboxKey creates a mailbox key from 32 bytes of rand.
func NewMailboxKey(rand io.Reader) (*MailboxKey, error) {
	seed := make([]byte, envKEMSeedSize)
	if _, err := io.ReadFull(rand, seed); err != nil {
		return nil, fmt.Errorf("new mailbox key: %w", err)
	}
	return envMailboxKey(seed)
}

func envMailboxKey(seed []byte) (*MailboxKey, error) {
	priv, err := envKEM.NewPrivateKey(seed)
	if err != nil {
		return nil, fmt.Errorf("mailbox key: %w", ErrMalformed)
	}
	return &MailboxKey{priv: priv, seed: bytes.Clone(seed), pub: envPublicKey(priv.PublicKey()), senders: newBindingCache()}, nil
}

// Public returns the public half, to publish.
func (k *MailboxKey) Public() MailboxPublicKey { return k.pub }

// ID returns the key's mailbox id.
func (k *MailboxKey) ID() MailboxID { return k.pub.ID() }

// Marshal serializes the secret key, versioned.
func (k *MailboxKey) Marshal() []byte {
	b, err := proto.Marshal(&pb.MailboxPrivateKey{Version: envelopeVersion, Seed: k.seed})
	if err != nil {
		panic("e2ee: marshal mailbox key: " + err.Error()) // plain fields never fail
	}
	return b
}

// UnmarshalMailboxKey restores a key written by MailboxKey.Marshal.
func UnmarshalMailboxKey(b []byte) (*MailboxKey, error) {
	if len(b) > envMaxPrivateKeySize {
		return nil, fmt.Errorf("mailbox key: %w", ErrTooLarge)
	}
	var m pb.MailboxPrivateKey
	if err := proto.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("mailbox key: %w", ErrMalformed)
	}
	if m.Version != envelopeVersion {
		return nil, fmt.Errorf("mailbox key version %d: %w", m.Version, ErrVersion)
	}
	if len(m.Seed) != envKEMSeedSize {
		return nil, fmt.Errorf("mailbox key: seed: %w", ErrMalformed)
	}
	return envMailboxKey(m.Seed)
}

// IsEnvelopeSize reports whether n is the size of some well-formed
// envelope: EnvelopeOverhead plus a bucket size. Relays may refuse
// deposits of any other size.
func IsEnvelopeSize(n int) bool { return envIsBucket(n - EnvelopeOverhead) }

// SealEnvelope seals c to the mailbox key to, returning
//
//	version (1 byte, 1) || HPKE enc (1120 bytes) || HPKE ciphertext
//
// where the ciphertext encrypts the padded content (see pad.go) with the
// HPKE suite X-Wing / HKDF-SHA256 / ChaCha20Poly1305 in base mode, info
// "kinmesh/e2ee/envelope/v1" || 0x00 || the 32-byte mailbox id. The result
// is EnvelopeOverhead plus a bucket size long.
func SealEnvelope(to MailboxPublicKey, c EnvelopeContent) ([]byte, error) {
	if to.pk == nil {
		return nil, fmt.Errorf("seal envelope: no recipient key: %w", ErrMalformed)
	}
	padded, err := envPadContent(c)
	if err != nil {
		return nil, fmt.Errorf("seal envelope: %w", err)
	}
	ct, err := hpke.Seal(to.pk, envKDF, envAEAD, to.info(), padded)
	if err != nil {
		return nil, fmt.Errorf("seal envelope: hpke: %w", err)
	}
	return append([]byte{envelopeVersion}, ct...), nil
}

// envPadContent checks c and returns its padded encoding: what an
// envelope encrypts.
func envPadContent(c EnvelopeContent) ([]byte, error) {
	if len(c.Sender.Sign) != ed25519.PublicKeySize || c.Sender.DH == nil || len(c.Sender.Binding) != ed25519.SignatureSize {
		return nil, fmt.Errorf("sender identity: %w", ErrMalformed)
	}
	if c.Type == 0 {
		return nil, fmt.Errorf("content type 0: %w", ErrMalformed)
	}
	if len(c.Certificate) > MaxSenderCertificateSize {
		return nil, fmt.Errorf("certificate of %d bytes: %w", len(c.Certificate), ErrTooLarge)
	}
	if len(c.Payload) == 0 {
		return nil, fmt.Errorf("empty payload: %w", ErrMalformed)
	}
	if len(c.Payload) > MaxEnvelopeBucket {
		return nil, fmt.Errorf("payload of %d bytes: %w", len(c.Payload), ErrTooLarge)
	}
	m := &pb.EnvelopeContent{
		Version:     envelopeVersion,
		Sender:      c.Sender.toWire(),
		Certificate: c.Certificate,
		ContentType: uint32(c.Type),
		Payload:     c.Payload,
	}
	size := proto.Size(m)
	padded, err := envPadded(size)
	if err != nil {
		return nil, err
	}
	padded, err = proto.MarshalOptions{}.MarshalAppend(padded, m)
	if err != nil || len(padded) != envLenPrefix+size {
		return nil, fmt.Errorf("marshal: %w", ErrMalformed)
	}
	return padded[:cap(padded)], nil
}

// OpenEnvelope opens an envelope sealed to k. It checks, in order: the size
// cap (ErrTooLarge, before any work), the version byte (ErrVersion), that
// the size is a bucket size (ErrMalformed), HPKE decryption (ErrDecrypt:
// wrong mailbox or altered bytes), the padding and the content (ErrMalformed,
// ErrVersion, or ErrSignature for a claimed identity whose binding does not
// verify).
//
// The returned Sender is only claimed: see EnvelopeContent.
func (k *MailboxKey) OpenEnvelope(envelope []byte) (EnvelopeContent, error) {
	if len(envelope) > MaxEnvelopeSize {
		return EnvelopeContent{}, fmt.Errorf("open envelope: %d bytes: %w", len(envelope), ErrTooLarge)
	}
	if len(envelope) < 1 {
		return EnvelopeContent{}, fmt.Errorf("open envelope: empty: %w", ErrMalformed)
	}
	if envelope[0] != envelopeVersion {
		return EnvelopeContent{}, fmt.Errorf("open envelope: version %d: %w", envelope[0], ErrVersion)
	}
	if !IsEnvelopeSize(len(envelope)) {
		return EnvelopeContent{}, fmt.Errorf("open envelope: %d bytes is no envelope size: %w", len(envelope), ErrMalformed)
	}
	padded, err := hpke.Open(k.priv, envKDF, envAEAD, k.pub.info(), envelope[1:])
	if err != nil {
		return EnvelopeContent{}, fmt.Errorf("open envelope: %w", ErrDecrypt)
	}
	c, err := k.unpadContent(padded)
	if err != nil {
		return EnvelopeContent{}, fmt.Errorf("open envelope: %w", err)
	}
	return c, nil
}

// unpadContent checks and decodes a padded envelope content sealed to k.
func (k *MailboxKey) unpadContent(padded []byte) (EnvelopeContent, error) {
	inner, err := envUnpad(padded)
	if err != nil {
		return EnvelopeContent{}, err
	}
	var m pb.EnvelopeContent
	if err := proto.Unmarshal(inner, &m); err != nil {
		return EnvelopeContent{}, fmt.Errorf("content: %w", ErrMalformed)
	}
	if m.Version != envelopeVersion {
		return EnvelopeContent{}, fmt.Errorf("content version %d: %w", m.Version, ErrVersion)
	}
	if m.Sender == nil {
		return EnvelopeContent{}, fmt.Errorf("no sender: %w", ErrMalformed)
	}
	sender, err := k.senders.identity(m.Sender)
	if err != nil {
		return EnvelopeContent{}, fmt.Errorf("sender: %w", err)
	}
	if len(m.Certificate) > MaxSenderCertificateSize {
		return EnvelopeContent{}, fmt.Errorf("certificate: %w", ErrTooLarge)
	}
	if m.ContentType == 0 || m.ContentType > 0xff || len(m.Payload) == 0 {
		return EnvelopeContent{}, fmt.Errorf("content type %d, %d-byte payload: %w", m.ContentType, len(m.Payload), ErrMalformed)
	}
	return EnvelopeContent{
		Sender:      sender,
		Certificate: m.Certificate,
		Type:        ContentType(m.ContentType),
		Payload:     m.Payload,
	}, nil
}
