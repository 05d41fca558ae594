// Package report implements /kinmesh/report/1.0.0: a user's device sends
// a signed report about another account — or feedback, or a support
// request — to the operators of its home relays, and each relay keeps it
// in a queue its operator reads.
//
// # What a submission says
//
// A report names the reported account, a reason (spam, harassment, hate,
// violence, sexual_content, child_safety, self_harm, impersonation, scam,
// other), the reporter's own words and, optionally, messages the
// reporter chose to disclose, as the reporter's device shows them
// (decrypted there: id, sender, time, text). Feedback and support
// requests carry text and, only if the user consented to sharing
// diagnostics, a JSON diagnostics object the device chose; the relay
// stores what it gets. Every submission is signed by the reporter's
// account identity, so it can't be forged or attributed to someone
// else. Disclosed messages are the reporter's word: kinmesh messages are
// deniable, so nobody but their participants can prove who wrote them.
//
// # Relay side
//
// NewService verifies each submission (signature, then every field) and
// stores it, sealed, in the relay store's "report" namespace: reports in
// the report queue, feedback and support requests in the feedback queue,
// each item kept for the retention period (default 30 days) unless the
// operator marks it done first (Done deletes it). Refused submissions are
// not stored at all. Limits: token buckets on requests per peer and per
// source IP address, a quota per reporter account and UTC day per kind
// (reports; feedback and support together), caps on each queue's items
// and bytes — the feedback queue apart from the report queue, and part of
// the report queue reserved for urgent reports (child safety, self-harm,
// violence) — a share of each queue per peer and per IP address
// (identities and peer ids are free: the connection's peer and address
// bound one source), size caps on every field. A retried submission (same reporter, same submission id)
// is answered with the item the relay already holds and counted once.
// Operators read the queues with List and Get (bootstrap serves them on
// the relay's loopback ops endpoint and `kinmesh relay reports|feedback`
// prints them).
//
// # Message flow
//
// A stream carries one submission, then closes. Every frame is a uvarint
// length and a protobuf message (protocols/wire; pb/report.proto):
//
//	C → R  Request{hello: {}}                                   ≤ 64 B
//	R → C  Response{challenge: {nonce (32)}}  or RATE_LIMITED   ≤ 256 B
//	C → R  Request{submit: {submission, identity, signature}}   ≤ 129 KiB
//	R → C  Response{code, accepted: {id, duplicate}}            ≤ 256 B
//
// submission is a pb.Submission encoding (≤ 128 KiB), identity an e2ee
// PublicIdentity encoding, and the signature is Ed25519 by the identity's
// signing key over
//
//	"kinmesh/report/v1/submit" || 0x00 || nonce (32)
//	|| uvarint(len(relay)) || relay peer id
//	|| SHA-256(uvarint(len(identity)) || identity || submission)
//
// binding the relay's nonce, the relay and the exact bytes stored: a
// signature is good for one submission on one stream to one relay. The
// relay keeps the nonce and signature with the item, so the signature can
// be checked again later.
//
// # Account deletion
//
// An account being deleted withdraws everything it submitted: after the
// same hello and challenge it sends Request{purge: {identity, signature}}
// with the signature over
//
//	"kinmesh/report/v1/purge" || 0x00 || nonce (32)
//	|| uvarint(len(relay)) || relay peer id
//	|| SHA-256(uvarint(len(identity)) || identity)
//
// and the relay deletes the account's items, their index entries and its
// quota counters, answering Response{purged: {items}} (Client.Purge).
//
// Result codes (Code, pb.Code) map to the sentinels ErrUnauthorized
// (unsigned or forged), ErrMalformed, ErrTooLarge, ErrRateLimited,
// ErrQuota, ErrQueueFull and ErrUnavailable. docs/protocol/report.md is
// the full specification, with what a relay learns.
package report
