// Package prekeys implements /kinmesh/prekeys/1.0.0: accounts publish
// their PQXDH prekeys (protocols/e2ee) on their home relays, and anyone
// fetches a bundle there to start a session while the account is offline.
//
// # Relay side
//
// NewService keeps, per account, the current signed X25519 prekey, the
// last-resort ML-KEM-768 prekey and pools of one-time X25519 and one-time
// ML-KEM-768 prekeys (at most e2ee.MaxOneTimePrekeys of each), in the
// relay store under keys derived with storage's Opaque, so account ids
// never appear on disk. A fetch hands out the lowest-id one-time prekey of
// each kind and deletes both, with the account's counters, in one synced
// batch before the answer is written: a one-time prekey goes to one
// requester only, even across a crash. When a pool is empty the bundle
// carries the last-resort key of that kind instead (no one-time X25519
// prekey, the last-resort ML-KEM prekey): PQXDH stays post-quantum and
// authenticated, only the initial message loses the one-time key's extra
// forward secrecy. Fetches are rate-limited per requester (peer id), and
// fetches that take one-time prekeys per target account, so nobody can
// drain an account's one-time prekeys: beyond the budget bundles carry the
// last-resort keys.
//
// # Owner side
//
// Owner operations (publish, status, purge) prove ownership with the
// account's identity key over a fresh relay nonce. A publish replaces the
// signed and last-resort prekeys when the upload's are newer (by creation
// time, then id) and adds only one-time prekeys whose ids are above every
// one-time id the relay ever accepted for the account, so a replayed or
// re-sent upload can never bring back a key that was handed out. Each
// answer reports the one-time prekeys left (Status), so the owner tops up
// when low. An account's k home relays must hold disjoint one-time
// prekeys: Split divides an upload, and Client.Maintain runs the owner's
// whole upkeep (weekly rotation, top-up below a low-water mark, disjoint
// shares of freshly generated keys), returning the new e2ee.PrekeyStore to
// persist before Plan.Publish.
//
// # Message flow
//
// A stream carries one operation, then closes. Every frame is a uvarint
// length and a protobuf message (protocols/wire; pb/prekeys.proto):
//
//	fetch (anyone)
//	  C → R  Request{fetch: {account: Ed25519 key (32)}}          ≤ 128 B
//	  R → C  Response{code, bundle: e2ee PrekeyBundle}            ≤ 16 KiB (bundle ≤ 4 KiB)
//
//	owner operation
//	  C → R  Request{hello: {}}                                   ≤ 128 B
//	  R → C  Response{challenge: {nonce (32)}}  or RATE_LIMITED
//	  C → R  Request{owner: {op, identity, upload?, signature}}   ≤ 513 KiB
//	  R → C  Response{code, status}
//
// The signature is Ed25519 by the account's identity key over
//
//	"kinmesh/prekeys/v1/auth" || 0x00 || nonce (32)
//	|| uvarint(len(relay)) || relay peer id || uvarint(len(owner)) || owner peer id
//	|| SHA-256(op (1) || uvarint(len(identity)) || identity || upload)
//
// binding the relay's nonce, the relay, the owner's connection and the
// whole request: it is good for one request on one stream only.
//
// Result codes (Code, pb.Code) map to the sentinels ErrNotFound,
// ErrUnauthorized, ErrMalformed, ErrTooLarge, ErrRateLimited, ErrStale,
// ErrQuota and ErrUnavailable. docs/protocol/prekeys.md is the full
// specification, with what a relay learns.
package prekeys
