// Package mailbox implements /kinmesh/mailbox/1.0.0: relays keep
// store-and-forward mail for offline devices, for at most 15 days
// (MaxAge), and delete it as soon as its owner acks it. Relay side:
// NewService (bootstrap runs it on every relay). Device side: NewClient,
// Client.Deposit, Client.Open and the Session it returns. The full
// specification is docs/protocol/mailbox.md.
//
// # Mailboxes
//
// A mailbox is owned by whoever holds its Ed25519 auth Key, a key of its
// own (not the account identity, so a relay can't link the two). Its id,
// MailboxID, is the lower-case unpadded base32 of
// SHA-256("kinmesh/mailbox/id/v1" || auth public key), 52 characters. The
// id and the public key go into the account's signed contact record.
// A relay keeps mail only for registered mailboxes: the owner's Auth
// registers its mailbox for 60 days from that day (WithRegistrationTTL;
// new registrations cost the owner's address a budget,
// WithSourceRegistrationRate), and a deposit to any other mailbox is
// refused (CodeUnknownMailbox) with nothing stored. Purge forgets the
// registration with the mailbox.
//
// Contents are opaque sealed envelopes (protocols/e2ee); the relay sees
// the mailbox id, each envelope's (padded) size and the depositing
// connection's peer id, never an account.
//
// # Message flow
//
// One protocol id; every stream starts the same way, and what the client
// sends first decides what it becomes.
//
// Deposit (anyone, anonymous; a short stream). The client may send several
// requests before reading any answer (pipelining); the relay works on up to
// four per stream at once and answers each when it is on disk:
//
//	client                                   relay
//	Request{id, Deposit{mailbox, envelopes}} →
//	Request{id+1, Deposit{…}}                →      validate, rate-limit,
//	…                                               quota, seq, one synced
//	                                          ←     commit for everything
//	                                                queued (group commit)
//	                                          ← Response{id, DepositResult{codes}}
//	                                          ← Response{id+1, DepositResult{…}}
//	close write                               →
//	                                          ← close
//
// Owner session (authenticated; a long-lived stream):
//
//	Request{1, Hello}                         →
//	                                          ← Response{1, Challenge{nonce, relay peer id, relay time}}
//	Request{2, Auth{public key, signature}}   →     id from key; verify;
//	                                                register (synced)
//	                                          ← Response{2, AuthOK}
//	Request{n, Fetch{after, limit}}           →
//	                                          ← Response{n, FetchResult{items, more}}
//	Request{m, Ack{seqs}}                     →     synced delete
//	                                          ← Response{m, AckResult{codes}}
//	                                          ← Response{0, Push{items}}   new deposits, unasked
//	                                          ← Response{0, More{after}}   pushes dropped: fetch
//	Request{k, Ping}                          →     every minute when idle
//	                                          ← Response{k, Pong}
//	Request{p, Purge}                         →     delete the whole mailbox
//	                                          ← Response{p, PurgeResult{deleted}}
//
// The signature is Ed25519 over
//
//	"kinmesh/mailbox/auth/v1" || 0x00 || nonce (32)
//	|| u16be(len) || relay peer id || u16be(len) || owner's connection peer id
//	|| raw mailbox id (32)
//
// so it is good once, on one stream, to one relay, from one connection.
// Fetch, Ack and Purge before a successful Auth are refused with
// CodeUnauthorized; three refused Auths (malformed ones included) end
// the stream.
//
// # Frames
//
// Every frame is a uvarint length and a protobuf message (protocols/wire):
// pb.Request from the client (at most 1 MiB + 16 KiB), pb.Response from
// the relay (at most 1 MiB + 84 KiB). Request ids are chosen by the client,
// non-zero, and echoed; pushes carry id 0. See pb/mailbox.proto.
//
// # Storage
//
// In the store's "mailbox" namespace, with P = Opaque(raw mailbox id):
//
//	P "/" %016x(seq)   be64(deposit time, Unix ns) || envelope   TTL MaxAge
//	P ".m"             pb.Meta: next seq, quota usage by deposit-time
//	                   bucket, registered until     TTL the later of both
//
// The store seals every value and P reveals nothing, so neither envelopes
// nor mailbox ids appear on disk. All changes go through one goroutine
// that commits whatever is queued in one synced storage.Batch: a deposit
// is on disk before it is acknowledged.
//
// # Limits
//
// Wire caps (MaxEnvelopeSize, MaxBatchItems, MaxBatchBytes, MaxAckSeqs,
// MaxPageItems, MaxPageBytes), registration (deposits only to registered
// mailboxes; WithSourceRegistrationRate), per-mailbox quotas (WithMailboxQuota),
// per-depositor token buckets (WithDepositorRate, WithMaxDepositors), a
// byte budget per source address (WithSourceDepositRate), the store's
// free-space floor (storage.WithMinFree: deposits refused as relay full),
// a per-peer purge budget (WithPurgeRate),
// memory reserved from each stream's resource scope for every frame and
// fetch page, bounded push queues (WithPushQueue) and deadlines
// (WithTimeouts) bound every inbound path. Refusals carry a Code; the
// client returns the matching sentinel error.
package mailbox
