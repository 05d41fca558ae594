// Package e2ee is kinmesh's end-to-end encryption layer. It is pure
// cryptography: no networking, no storage. Every stateful object serializes
// itself; callers persist the bytes (sealed, in storage) after every step.
//
// An account is an Identity (identity.go): an Ed25519 signing key and an
// X25519 key-agreement key bound by a signature. Its AccountID is the
// base32 encoding of the Ed25519 public key, and SafetyNumber lets two users
// compare identities out of band.
//
// # Pairwise sessions
//
// Two accounts talk through a Session: PQXDH (pqxdh.go) agrees on a secret
// while the responder is offline, then the Double Ratchet with header
// encryption (ratchet.go, header.go) encrypts every message.
//
//  1. Each account keeps a PrekeyStore (bundle.go): NewPrekeyStore, then
//     GenerateOneTime. It publishes store.Upload() on its home relays, tops
//     the one-time prekeys up when Counts runs low and calls Rotate when
//     NeedsRotation says so, persisting the store after every change.
//  2. To reach a contact, fetch its bundle from one of the contact's relays,
//     ParseBundle (which verifies every signature), check that
//     Bundle.Identity is the contact, and call Initiate. Until a reply
//     arrives, every message the session encrypts is an initial message
//     carrying the PQXDH data.
//  3. A device receiving an initial message (IsInitialMessage) for which it
//     has no session calls Respond with its Identity and PrekeyStore: it
//     gets the session, the plaintext and the one-time prekeys used, and
//     persists the session, the plaintext and store.Consume(used...)
//     together.
//  4. Both sides then call Session.Encrypt and Session.Decrypt. Neither
//     changes its session: each returns the next one, which the caller
//     persists (with the plaintext) before sending, or before acknowledging
//     the message to the relay. A crash before that leaves the old state,
//     which decrypts the message again; afterwards the same message is
//     refused (ErrReplay or ErrDecrypt) and changes nothing.
//  5. ErrNewSession from Decrypt means the peer started a new session:
//     Respond to the message.
//
// Every session message starts with a version byte (0x01) and a type byte
// (0x01 ratchet message, 0x02 initial message), so a post-quantum ratchet
// can be added later. docs/protocol/e2ee.md specifies the formats byte by
// byte.
//
// # Group sender keys
//
// A group message is encrypted once, with the sender's SenderKey for the
// group, and fanned out to every member in separate envelopes
// (senderkey.go). The same construction serves a moment's audience.
//
//  1. The sender creates a SenderKey (NewSenderKey) and sends
//     SenderKey.Distribution().Marshal() to each member inside their
//     pairwise session, which authenticates the sender and hides the chain
//     key.
//  2. A member parses it (ParseSenderKeyDistribution) into a SenderKeyState
//     (NewSenderKeyState, with the sender the session authenticated; later
//     keys via SenderKeyState.Apply): one state per (group, sender), holding
//     the sender's current key id and, for SenderKeyGrace, a few previous ones.
//  3. The sender calls SenderKey.Encrypt, persists the returned key before
//     sending, and seals the message to each member's mailbox key
//     (SealEnvelope with ContentSenderKey).
//  4. A member opens the envelope (MailboxKey.OpenEnvelope), finds the group
//     with ParseSenderKeyMessage, decrypts with the state of the claimed
//     sender (SenderKeyState.Decrypt: signature first, then the chain, with
//     at most MaxSenderKeySkip skipped keys kept for SenderKeySkippedTTL),
//     calls EnvelopeContent.CheckSender(state.Sender()), persists the
//     returned state and only then uses the plaintext.
//  5. When a member leaves or is removed, and when SenderKey.NeedsRotation
//     says so, the sender calls SenderKey.Rotate and distributes the new key
//     to the remaining members only.
//
// SenderKey and SenderKeyState are immutable: Encrypt, Decrypt, Apply and
// Prune return a new value, and on error the old one is untouched.
//
// # Sealed-sender envelopes
//
// Everything sent to a device travels as an envelope (envelope.go): HPKE
// (RFC 9180, stdlib crypto/hpke) in base mode with the post-quantum hybrid
// X-Wing KEM (MLKEM768-X25519), HKDF-SHA256 and ChaCha20Poly1305, sealed to
// the recipient's MailboxKey, whose public half the account publishes in its
// signed contact record. Relays see only the MailboxID (a hash of that
// public key) and a blob whose size is one of eight buckets (pad.go):
//
//	version (1) || HPKE enc (1120 bytes) || HPKE ciphertext of
//	    uint32 length || EnvelopeContent (protobuf) || zero padding
//
// The envelope hides the sender (its PublicIdentity, an opaque certificate,
// a ContentType and the payload are inside) but does not authenticate it:
// the inner ratchet or sender-key layer does, and the recipient must check
// the claimed sender against it with EnvelopeContent.CheckSender.
//
// All errors on untrusted input are the sentinels in errors.go, wrapped with
// context; decoding or decrypting hostile input never panics and never
// changes state.
package e2ee
