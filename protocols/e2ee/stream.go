package e2ee

import (
	"crypto/cipher"
	"crypto/hpke"
	"encoding/binary"
	"fmt"
	"sync"

	"golang.org/x/crypto/chacha20poly1305"
)

// Stream envelopes: several envelopes to one mailbox key under one HPKE
// encapsulation, for a channel that carries them from one sender to one
// recipient and no one else (the direct delivery stream between two
// devices). The sender makes a StreamSealer (an X-Wing encapsulation, the
// costly part of a single envelope), sends its Enc once, ahead of the
// envelopes, and seals each envelope with a key exported from the HPKE
// context; the recipient makes a StreamOpener from Enc (one
// decapsulation) and opens each with the same key:
//
//	version (1 byte, 2) || seq (8 bytes, big-endian) || ChaCha20-Poly1305 ciphertext
//
// The key is Export("kinmesh/e2ee/envelope-stream/key", 32) of the HPKE
// context set up with the envelope's suite and info
// "kinmesh/e2ee/envelope-stream/v1" || 0x00 || the 32-byte mailbox id;
// the nonce is 4 zero bytes and seq, which the sealer counts from 0, so
// no nonce repeats under a key; the associated data is the version byte
// and seq. The plaintext is the padded content, exactly as in a single
// envelope, so the sizes are StreamEnvelopeOverhead plus a bucket size.
//
// What this gives up against single envelopes: the envelopes of one
// stream are linkable to each other by whoever sees them, which on a
// direct stream (inside its Noise channel) is only the recipient, who
// learns the sender from each content anyway. A stream envelope is never
// deposited on a relay.

const (
	streamVersion = 2
	// StreamEnvelopeOverhead is what a stream envelope adds to its padded
	// plaintext: the version byte, seq and the AEAD tag.
	StreamEnvelopeOverhead = 1 + 8 + chacha20poly1305.Overhead
	// StreamEncSize is the size of a StreamSealer's Enc.
	StreamEncSize = envKEMEncSize

	streamInfoContext = "kinmesh/e2ee/envelope-stream/v1"
	streamKeyLabel    = "kinmesh/e2ee/envelope-stream/key"
)

// streamInfo is the HPKE info of a stream to the mailbox key with id id.
func streamInfo(id [32]byte) []byte {
	return append(append([]byte(streamInfoContext), 0), id[:]...)
}

// StreamSealer seals envelopes to one mailbox key under one
// encapsulation. It is safe for concurrent use.
type StreamSealer struct {
	to   MailboxID
	enc  []byte
	aead cipher.AEAD
	mu   sync.Mutex
	seq  uint64
}

// NewStreamSealer sets up a stream to the mailbox key to.
func NewStreamSealer(to MailboxPublicKey) (*StreamSealer, error) {
	if to.pk == nil {
		return nil, fmt.Errorf("stream sealer: no recipient key: %w", ErrMalformed)
	}
	enc, s, err := hpke.NewSender(to.pk, envKDF, envAEAD, streamInfo(to.id))
	if err != nil {
		return nil, fmt.Errorf("stream sealer: hpke: %w", err)
	}
	key, err := s.Export(streamKeyLabel, chacha20poly1305.KeySize)
	if err != nil {
		return nil, fmt.Errorf("stream sealer: export: %w", err)
	}
	aead, err := chacha20poly1305.New(key)
	if err != nil {
		return nil, err
	}
	return &StreamSealer{to: to.ID(), enc: enc, aead: aead}, nil
}

// Enc is what the recipient needs to open the stream's envelopes
// (StreamEncSize bytes).
func (s *StreamSealer) Enc() []byte { return append([]byte(nil), s.enc...) }

// To is the mailbox the stream seals to.
func (s *StreamSealer) To() MailboxID { return s.to }

// Seal seals c as the stream's next envelope.
func (s *StreamSealer) Seal(c EnvelopeContent) ([]byte, error) {
	padded, err := envPadContent(c)
	if err != nil {
		return nil, fmt.Errorf("seal stream envelope: %w", err)
	}
	s.mu.Lock()
	seq := s.seq
	s.seq++
	s.mu.Unlock()
	out := make([]byte, 1+8, StreamEnvelopeOverhead+len(padded))
	out[0] = streamVersion
	binary.BigEndian.PutUint64(out[1:], seq)
	return s.aead.Seal(out, streamNonce(seq), padded, out[:9]), nil
}

func streamNonce(seq uint64) []byte {
	var n [chacha20poly1305.NonceSize]byte
	binary.BigEndian.PutUint64(n[4:], seq)
	return n[:]
}

// StreamOpener opens the envelopes of one stream. It is safe for
// concurrent use.
type StreamOpener struct {
	k    *MailboxKey
	aead cipher.AEAD
}

// OpenStream sets up the opening of a stream whose sealer's Enc is enc.
func (k *MailboxKey) OpenStream(enc []byte) (*StreamOpener, error) {
	if len(enc) != StreamEncSize {
		return nil, fmt.Errorf("open stream: enc of %d bytes: %w", len(enc), ErrMalformed)
	}
	r, err := hpke.NewRecipient(enc, k.priv, envKDF, envAEAD, streamInfo(k.pub.id))
	if err != nil {
		return nil, fmt.Errorf("open stream: %w", ErrDecrypt)
	}
	key, err := r.Export(streamKeyLabel, chacha20poly1305.KeySize)
	if err != nil {
		return nil, fmt.Errorf("open stream: export: %w", err)
	}
	aead, err := chacha20poly1305.New(key)
	if err != nil {
		return nil, err
	}
	return &StreamOpener{k: k, aead: aead}, nil
}

// IsStreamEnvelope reports whether b claims to be a stream envelope (its
// version byte); Open checks the rest.
func IsStreamEnvelope(b []byte) bool { return len(b) > 0 && b[0] == streamVersion }

// Open opens a stream envelope, with the checks of OpenEnvelope: the size
// cap, the version, a bucket size, decryption (ErrDecrypt: another stream
// or altered bytes), the padding and the content.
func (o *StreamOpener) Open(b []byte) (EnvelopeContent, error) {
	if len(b) > MaxEnvelopeSize {
		return EnvelopeContent{}, fmt.Errorf("open stream envelope: %d bytes: %w", len(b), ErrTooLarge)
	}
	if len(b) < 9 {
		return EnvelopeContent{}, fmt.Errorf("open stream envelope: %d bytes: %w", len(b), ErrMalformed)
	}
	if b[0] != streamVersion {
		return EnvelopeContent{}, fmt.Errorf("open stream envelope: version %d: %w", b[0], ErrVersion)
	}
	if !envIsBucket(len(b) - StreamEnvelopeOverhead) {
		return EnvelopeContent{}, fmt.Errorf("open stream envelope: %d bytes is no envelope size: %w", len(b), ErrMalformed)
	}
	padded, err := o.aead.Open(nil, streamNonce(binary.BigEndian.Uint64(b[1:9])), b[9:], b[:9])
	if err != nil {
		return EnvelopeContent{}, fmt.Errorf("open stream envelope: %w", ErrDecrypt)
	}
	c, err := o.k.unpadContent(padded)
	if err != nil {
		return EnvelopeContent{}, fmt.Errorf("open stream envelope: %w", err)
	}
	return c, nil
}
