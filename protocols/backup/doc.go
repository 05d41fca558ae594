// Package backup implements account recovery backups: the sealed backup
// format, the recovery secret that opens it, and /kinmesh/backup/1.0.0,
// which keeps a backup on a relay under the account's verified phone
// number and hands it to a new device that proves the number again.
//
// # Sealing (device side)
//
// When the user turns backups on, the device makes a recovery secret
// (NewSecret: 144 random bits and a 16-bit check, shown once as 8 groups
// of 4 base32 characters for the user to write down) and derives a backup
// key from it with Argon2id (NewKey: DefaultKDF, a random 16-byte salt).
// It keeps the key, never the secret. A backup is the account's Contents
// (keys, profile, contacts, blocks, settings; no messages) encoded,
// padded to a power-of-two bucket from 4 KiB to 1 MiB and encrypted with
// XChaCha20-Poly1305 (Key.Seal):
//
//	"KMBK" (4) | version 1 (1) | KDF 1 = Argon2id (1) | time (4) | memory KiB (4)
//	| threads (1) | salt (16) | nonce (24) | ciphertext (bucket + 16)
//
// with the 55-byte header as associated data. A new device reads the
// parameters and salt from the header, derives the key from the secret
// the user types, and opens it (Open); a wrong secret fails
// authentication (ErrWrongSecret) and nothing is restored.
//
// # Relay side
//
// NewService stores, per account, one backup under the account's number
// as the relay's discovery service knows it: its OPRF output y (Links;
// protocols/discovery never keeps the number itself). Only an account
// whose number is verified on this relay may upload (Put); a new device
// fetches by asking the discovery service for a code with a throwaway
// identity (discovery.Client.RequestCode) and presenting the code here
// with the same identity (Fetch): the relay redeems it under the
// discovery service's rules (expiry, wrong-code limits per account and
// per number) without linking anything, and answers with the backup held
// under that number — if the account that uploaded it is still the one
// the number is linked to. A backup goes when its account deletes it,
// when the number is unlinked or moves to another account (unreachable
// at once, deleted by the next sweep), and DefaultTTL after its last
// upload. The relay never sees the secret, the key or the contents.
//
// # Message flow
//
// A stream carries one operation, then closes. Every frame is a uvarint
// length and a protobuf message (protocols/wire; pb/backup.proto):
//
//	C → R  Request{hello: {}}                                   ≤ 128 B
//	R → C  Response{challenge: {nonce (32)}}  or RATE_LIMITED
//	C → R  Request{owner: {identity, body, signature}}          ≤ 1 MiB + 1 KiB
//	       body = Body{put{blob} | status | delete | fetch{code}}
//	R → C  Response{code, retry_after_ms, status | backup{blob, updated}}
//	                                                            ≤ 1 MiB + 1 KiB
//
// The signature is Ed25519 by the identity key over
//
//	"kinmesh/backup/v1/auth" || 0x00 || nonce (32)
//	|| uvarint(len(relay)) || relay peer id || uvarint(len(peer)) || requester peer id
//	|| SHA-256(uvarint(len(identity)) || identity || body)
//
// binding the relay's nonce, the relay, the requester's connection and the
// exact body bytes: it is good for one request on one stream only.
//
// Result codes (Code, pb.Code) map to the sentinels ErrMalformed,
// ErrTooLarge, ErrUnauthorized, ErrRateLimited, ErrNotVerified,
// ErrNoBackup, ErrQuota, ErrUnavailable, ErrNoCode, ErrCodeExpired,
// ErrWrongCode and ErrTooManyAttempts. docs/protocol/recovery.md is the
// full specification, with the threat model and what a relay learns.
package backup
