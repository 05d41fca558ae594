// Package discovery implements /kinmesh/discovery/1.0.0: linking a phone
// number to an account by a code sent over SMS, and private contact
// discovery by an oblivious PRF (RFC 9497), both on a relay.
//
// # Phone verification (relay side)
//
// An account asks one of its home relays to text a code to a number
// (SendCode), then submits it (VerifyCode) with its signed contact record.
// The relay sends the SMS through a pluggable SMSGateway (ConsoleGateway
// for development and the testnet, WebhookGateway for real providers).
// It necessarily sees the number while it sends the SMS; it never logs
// it and never stores it: it stores the number's OPRF output y under its
// own key (below), which is what the pending code, the account's link and
// the directory entry are keyed by. Codes are 6 digits, valid 10 minutes;
// 5 wrong codes lock the account out of verification for an hour; codes
// sent are limited per account and per number, codes submitted per
// number. On success the relay links the account to y (a number links to
// one account: a later verification by another account moves it) and
// enrols the record in its directory.
//
// # Contact discovery
//
// The relay holds an OPRF key k (VOPRF mode, suite ristretto255-SHA512,
// github.com/cloudflare/circl/oprf; created with the store, never
// rotated) and a public directory with one entry per verified number:
//
//	y   = OPRF(k, E.164 number as ASCII)                        64 bytes
//	id  = SHA-256("kinmesh/discovery/id"  || y)[:16]
//	key = SHA-256("kinmesh/discovery/key" || y)
//	box = nonce (24) || XChaCha20-Poly1305(key, nonce, signed contact record,
//	                   ad = "kinmesh/discovery/entry/v1" || id)
//
// A client blinds its address-book numbers, has the relay evaluate the
// blinded elements (Evaluate: at most MaxBatch per request, and a daily
// budget per account that by default needs a verified number on the
// relay), verifies the relay's batched DLEQ proof against the relay's
// public key (pinned at first use), unblinds to y, and computes id and
// key locally. It downloads the directory (List, paged, anonymous; a
// change log with a cursor, so a later sync fetches only the changes) and
// opens the entries whose id it computed. The relay receives blinded
// elements and cursors only: never a number of the address book (unless
// the user verifies it), never y, id or key of one.
//
// # Message flow
//
// A stream carries one operation, then closes. Every frame is a uvarint
// length and a protobuf message (protocols/wire; pb/discovery.proto):
//
//	list (anyone)
//	  C → R  Request{list: {since, limit ≤ 1024, base}}           ≤ 128 B
//	  R → C  Response{code, page: {public_key, version, next,
//	         more, start_over, entries_total, entries[{seq, id (16), box}]}}
//	                                                              ≤ 256 KiB + one entry
//
// since is the client's cursor (the next of the last page it applied),
// base the version of its listing's first page (the one from since 0).
// The relay forgets deletions after a while, raising its floor to the
// newest it forgot, and answers start_over (and the first page of a
// listing from 0) when the listing may have missed one: since and base
// both 0 never (a fresh listing), else when floor > max(since, base) or
// since or base is beyond its latest change. Deletions at or below base
// were made before the listing began; a client that sends no base
// (older ones) starts over whenever since is below the floor.
//
//	account operation
//	  C → R  Request{hello: {}}                                   ≤ 128 B
//	  R → C  Response{challenge: {nonce (32)}}  or RATE_LIMITED
//	  C → R  Request{owner: {identity, body, signature}}          ≤ 36 KiB
//	         body = OwnerBody{send_code{number} | verify_code{code, record}
//	                | status | update_record{record} | unenrol
//	                | evaluate{blinded[32 B] × ≤ 1024}}
//	  R → C  Response{code, retry_after_ms, status | evaluation{evaluated[32 B], proof (64)}}
//
// The signature is Ed25519 by the account's identity key over
//
//	"kinmesh/discovery/v1/auth" || 0x00 || nonce (32)
//	|| uvarint(len(relay)) || relay peer id || uvarint(len(peer)) || requester peer id
//	|| SHA-256(uvarint(len(identity)) || identity || body)
//
// binding the relay's nonce, the relay, the requester's connection and the
// exact body bytes: it is good for one request on one stream only. Rate
// limits are per account (the identity), per number (its y) and per peer.
//
// # Limits on what a relay can make a client hold
//
// A relay is trusted with its directory, not with the device's memory.
// A page carries at most MaxPageEntries entries and an evaluation
// MaxBatch elements, counted on the wire before the frame is decoded (as
// the relay counts a request's blinded elements), in a frame of at most
// 256 KiB and an entry. A Directory, the client's copy, holds at most
// MaxCopyEntries entries and MaxCopyBytes of sealed records (the caps of
// the node's stored copy); a page that would take it beyond is not
// applied, and a start over replaces the copy only once its listing is
// complete, so a failed sync never leaves a partial copy in place of a
// whole one. A Sync fetches at most MaxSyncPages pages, within the sync
// timeout (10 minutes by default) as a whole and the request timeout per
// page; a page that says there is more must move the cursor forward. A
// relay beyond a cap fails the sync with ErrDirectoryTooLarge, one that
// stalls with ErrProtocol (which ErrDirectoryTooLarge wraps).
//
// Result codes (Code, pb.Code) map to the sentinels ErrMalformed,
// ErrTooLarge, ErrUnauthorized, ErrRateLimited, ErrInvalidNumber,
// ErrNoCode, ErrCodeExpired, ErrWrongCode, ErrTooManyAttempts,
// ErrNotVerified, ErrSMSFailed, ErrQuota and ErrUnavailable; the client's
// own are ErrBadProof, ErrKeyChanged, ErrProtocol and
// ErrDirectoryTooLarge.
// docs/protocol/discovery.md is the full specification, with what a relay
// learns.
package discovery
