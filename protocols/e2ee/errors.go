package e2ee

import "errors"

// Errors returned by this package. Every failure on untrusted input is one of
// these (possibly wrapped with more detail); none of them changes any state.
var (
	// ErrMalformed means the input could not be decoded: truncated, wrong
	// lengths, unknown fields in a required position. Drop the input.
	ErrMalformed = errors.New("e2ee: malformed input")

	// ErrVersion means the input uses a wire-format version this build does
	// not understand. The sender runs a newer (or older) kinmesh; upgrade.
	ErrVersion = errors.New("e2ee: unsupported format version")

	// ErrSignature means a signature did not verify: the input was forged or
	// altered. Drop it and do not trust its claimed origin.
	ErrSignature = errors.New("e2ee: bad signature")

	// ErrDecrypt means authenticated decryption failed: wrong key, altered
	// ciphertext, or a message not meant for this session.
	ErrDecrypt = errors.New("e2ee: decryption failed")

	// ErrTooLarge means the input exceeds this package's size caps.
	ErrTooLarge = errors.New("e2ee: input too large")
)

// Errors of group sender keys (senderkey.go) and sealed-sender envelopes
// (envelope.go). Like the ones above, none of them changes any state.
var (
	// ErrSenderKeyUnknown means a group message names a sender key (group,
	// key id) this state does not hold: its distribution has not arrived
	// yet, or the key was rotated away and its grace window has passed.
	// Keep the message and ask the sender for its distribution, or drop it.
	ErrSenderKeyUnknown = errors.New("e2ee: unknown sender key")

	// ErrSenderKeyReplay means a group message's iteration was already
	// used: a duplicate or replay, or a skipped message whose key has been
	// dropped (older than 15 days, or evicted by the skipped-key cap). Drop it.
	ErrSenderKeyReplay = errors.New("e2ee: sender-key message replayed or too old")

	// ErrSenderKeySkipLimit means a group message is further ahead of the
	// chain than MaxSenderKeySkip messages. Drop it; the sender should
	// rotate and redistribute its key.
	ErrSenderKeySkipLimit = errors.New("e2ee: sender-key message too far ahead")

	// ErrSenderKeyExhausted means a sender key has used all its iterations.
	// Rotate it (SenderKey.Rotate) and distribute the new key.
	ErrSenderKeyExhausted = errors.New("e2ee: sender key exhausted")

	// ErrSenderMismatch means the sender an envelope claims is not the one
	// the inner (ratchet or sender-key) layer authenticated. Drop the
	// message: someone is impersonating the claimed sender.
	ErrSenderMismatch = errors.New("e2ee: envelope sender does not match authenticated sender")
)

// Errors of pairwise sessions: prekeys, PQXDH and the Double Ratchet
// (bundle.go, pqxdh.go, ratchet.go, header.go, session.go). Like the ones
// above, none of them changes any state.
var (
	// ErrReplay means a ratchet message's key is no longer available: the
	// message was already decrypted (a duplicate or a replay), or it was
	// skipped and its key has since been dropped (older than
	// SkippedKeyMaxAge, or evicted by the skipped-key caps). Drop the
	// message; if it was already decrypted, the caller has its plaintext.
	ErrReplay = errors.New("e2ee: message replayed or its key was dropped")

	// ErrTooManySkipped means decrypting a ratchet message would need more
	// than MaxSkipPerChain message keys of one chain to be derived and
	// stored first: the message is too far ahead of the last one received.
	// Drop it; later messages that are less far ahead still decrypt.
	ErrTooManySkipped = errors.New("e2ee: too many skipped messages")

	// ErrNoPrekey means an initial message names a prekey the store does
	// not hold: a one-time prekey already consumed, or a signed or
	// last-resort prekey retired past its grace period. The session cannot
	// be established; the initiator must fetch a fresh bundle.
	ErrNoPrekey = errors.New("e2ee: unknown or consumed prekey")

	// ErrNewSession means an initial message was given to a session it
	// does not belong to: the peer started a new session (reinstall, lost
	// state, or both sides initiating at once). Pass it to Respond instead.
	ErrNewSession = errors.New("e2ee: message starts a new session")
)
