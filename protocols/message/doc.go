// Package message is kinmesh's messaging engine: 1:1 and group messages,
// end-to-end encrypted, delivered directly when the recipient's device is
// reachable and otherwise stored and forwarded by the recipient's home
// relays for at most 15 days. It implements the direct-delivery protocol
// /kinmesh/msg/1.0.0 and drives the mailbox and prekeys protocols.
//
// # Sending
//
//	Send(to, text)
//	  → Content{id, sent_at, seq, text}                 (pb.Content)
//	  → pairwise Double Ratchet (e2ee.Session)           (PQXDH first, from a
//	     bundle fetched from a home relay of the recipient, or from the invite)
//	  → the message (state pending), the session's next state and a delivery
//	     job with the encrypted payload are committed in one batch (concurrent
//	     Sends share it), then Send returns once it is synced
//	  → the lane seals the payload into a sealed-sender envelope to the
//	     recipient's mailbox key (e2ee.SealEnvelope), carrying our identity and
//	     signed contact record, outside the engine's lock: alone, or, when
//	     several jobs to the recipient wait together, as one batch envelope
//	     (e2ee.ContentBatch, up to e2ee.MaxBatchItems payloads) so that one
//	     KEM, the costly part of sealing and opening, covers them all.
//
// A lane per recipient then moves its jobs, in order, in rounds of up to
// 256:
//
//  1. direct: if one of the recipient's devices is connected, or can be
//     dialed within DirectTimeout at <home relay>/p2p-circuit/p2p/<device>,
//     the envelopes go in Deliver frames on /kinmesh/msg/1.0.0; the device
//     answers after it has durably stored them → state sent. Over a limited
//     relay circuit only small batches go (signalling-sized, ≤ 64 KiB);
//     larger ones use the mailbox, which pushes them to an online recipient
//     at once anyway. The device takes up to Config.DirectBurst envelopes
//     from one peer at once, refilled at Config.DirectRate a second, and
//     answers the rest RATE_LIMITED, unopened; the lane then leaves that
//     device alone for a rest (0.5 s doubling to 1 min) and deposits;
//  2. otherwise the same envelope bytes are deposited on every home relay
//     of the recipient (mailbox.Client.Deposit) → state queued(n relays);
//     relays that fail are retried until all hold it;
//  3. nothing worked → stays pending, retried with exponential backoff.
//
// Envelopes are not stored: a job keeps its payload until it is done, and
// each round seals what goes together then (jobs batch only with jobs that
// went to the same places so far). A job can so reach the recipient in
// two different envelopes (alone from one relay, batched from another);
// the recipient recognises the inner message by its hash.
//
// The E2EE delivery receipt from the recipient moves the message to
// delivered, a read receipt to read. A message still undelivered after
// MaxAge (15 days) becomes expired: the relays have dropped it by then.
//
// # Receiving
//
// Envelopes arrive on the direct protocol and from an owner session on each
// of our home relays (fetched backlog, then pushes). Envelopes are opened
// outside the engine's lock; each chunk is then processed under the lock and
// written, and one fsync after the lock is released covers the chunks of a
// batch: duplicate envelopes (the same bytes from several relays, or direct
// and relayed) are recognised by their hash and dropped; the envelope is
// opened with our mailbox key; each inner message (the payload, or each
// item of a batch), unless its hash was seen before, is decrypted with the
// sender's pairwise session (or a new one, from a PQXDH initial message,
// consuming one-time prekeys) or group sender key; the claimed sender
// checked against the session's authenticated identity; the message
// stored, and delivery receipts (up to 128 ids each) encrypted and queued
// to the sender in the same batch. Only after the commit are relay items
// acked (deleted) and direct deliveries answered, so a crash loses nothing
// and replays nothing.
//
// # Ordering
//
// Each sender numbers its messages per conversation (seq) and stamps
// strictly increasing sent_at times. Messages are listed by (sent_at, seq):
// each sender's messages keep the sender's order, whatever order they
// arrived in.
//
// # Groups
//
// A group has an id, a name and members. Control messages (GroupUpdate)
// travel pairwise; each member encrypts its group messages once with its
// own sender key (e2ee.SenderKey) and seals the same ciphertext to every
// member's mailbox.
//
// Sender keys are distributed lazily, as Signal does. SendGroup first
// sends our current key's distribution (pb.SenderKey, pairwise) to the
// current members that don't hold it yet, in the lanes the message takes
// after it; a per-group record (keyShare) of who holds the key is
// committed with those distributions. Creating, joining or being added to
// a group distributes nothing, so a group of n costs each member that
// writes n-1 pairwise distributions, once, instead of O(n²) at every
// change. A removal or a leave rotates nothing at once: each remaining
// member marks its key due for rotation, and its next SendGroup rotates
// it (e2ee.SenderKey.Rotate), forgets the holders and distributes the new
// key to the remaining members before encrypting. Nothing is encrypted
// under an old key after a removal is applied, so the removed member
// can't read what follows. The time- and use-based rotation
// (SenderKey.NeedsRotation) likewise starts a new holder set.
//
// A receiver parks a group message whose sender key hasn't come (or whose
// sender it doesn't know as a member yet) and retries it when the key, or
// the update that makes the sender a member, arrives; a key that overtakes
// that update is kept, and used only once its sender is a member.
//
// # Storage
//
// Everything lives in the device store's "message" namespace (sealed at
// rest); keys that would name a contact or conversation are opaque.
package message
