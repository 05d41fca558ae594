// Package presence implements /kinmesh/presence/1.0.0: "online" and "last
// seen" for contacts only, device to device, with a setting (contacts or
// nobody), and nothing for blocked accounts.
//
// # Flow
//
// While a device is online it sends a beacon to each contact (the
// Contacts audience: the node's contacts added from an invite, not
// blocked) whose device it can reach — already connected, or dialed
// through one of the contact's home relays at
// <relay>/p2p-circuit/p2p/<device> (a limited circuit connection is
// enough; streams are opened with network.WithAllowLimitedConn): at start,
// whenever a contact is due (every interval, default 3 min; contacts that
// couldn't be reached are retried with a backoff up to an hour), at once
// for new contacts and on Kick or Announce; and an "offline" beacon on
// Close to every contact that saw it online. A beacon stream carries one
// exchange:
//
//	A → B  Frame{envelope}          the beacon, sealed to B's mailbox key
//	B → A  Reply{envelope?}         B's own beacon, sealed to A's mailbox key,
//	                                when B took A's "online" and shares with A
//
// so two contacts that come online learn of each other with one stream,
// whichever of them can reach the other. Frames are a uvarint length and
// a protobuf message (protocols/wire; pb/presence.proto), at most
// MaxEnvelopeSize + 16 bytes.
//
// # Beacon
//
// A beacon is an e2ee sealed-sender envelope (content type
// e2ee.ContentPresence) to the contact's mailbox key: only the contact can
// read who is online, and relays that carry the circuit see ciphertext of
// one fixed size. Its sender is our public identity; its payload is
//
//	Beacon{status: online | offline | hidden, sent_unix_ms, recipient (32), signature (64)}
//
// with the signature by our identity key over
//
//	"kinmesh/presence/v1/beacon" || 0x00 || status (1) || be64(sent_unix_ms) || recipient (32)
//
// A receiver takes a beacon only if it opens with its mailbox key, is
// addressed to it, comes from a contact in its audience that isn't
// blocked, with the identity of the contact's record and a valid
// signature, was sent within the freshness window of the receiver's
// clock (default ±5 min) and is newer than the last beacon it took from
// that contact; a replayed or old beacon is dropped. It then stores, in
// the "presence" namespace of its store, the status, the beacon's time and
// the time it arrived (last seen). A contact is online while its latest
// beacon said so and arrived within the online window (default 7 min).
// Beacons never touch a relay's storage: presence is ephemeral and only
// the devices of the contacts it was sent to keep it.
//
// # Setting
//
// ShareContacts (default) sends to every contact. ShareNobody sends
// nothing; switching to it sends a "hidden" beacon to every contact it
// can reach, which makes them forget our presence, and contacts out of
// reach get one in answer to their next beacon. As in mainstream
// messengers, a user who shares with nobody doesn't see anyone's presence
// either: beacons that arrive are dropped (not stored) and Lookup shows
// nothing.
//
// Inbound streams are bounded: a token bucket per peer, at most 16 at
// once, a deadline and the frame cap; a dropped beacon gets an empty
// answer, the same as one from a contact that doesn't share with us, so
// a blocked sender can't tell it is blocked from the answer.
// docs/protocol/presence.md is the full specification, with what a relay
// and a contact can still learn.
package presence
