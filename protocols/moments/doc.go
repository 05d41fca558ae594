// Package moments is the friends-only feed: posts with photos and short
// videos, likes and comments, encrypted to the author's friends, spread
// over gossipsub and kept by the author's home relays until deleted.
//
// The flow:
//
//   - Each author has a feed secret per epoch (keys.go). From it derive the
//     audience key that relays check registrations and backfill requests
//     against, and from that key's public half the topic name (an outsider
//     can't tell whose topic it is; only a holder of the audience key can
//     register it). The secret reaches friends over the pairwise
//     sessions as a ControlKey control (message.Service.SendControl); a
//     friend who gets frames it can't open asks again with
//     ControlKeyRequest. Removing a friend starts a new epoch.
//   - Post (Engine.Post) seals the text under a fresh post key, uploads each
//     photo or video chunked and sealed to the home relays
//     (protocols/blobs, content-addressed), signs a frame (frame.go) and
//     publishes it on the topic (Router, gossipsub with per-topic
//     validators, content ids and peer scoring) and asks every home relay
//     to Keep it through an outbox that retries until each relay has it.
//   - Relays (Service, the one handler of ID) keep the frames of the feeds
//     registered with them, serve them page by page to holders of the
//     audience key (Client.Backfill: friends that were offline), and act on
//     signed tombstones and withdrawals: a deleted post's frames and media
//     are purged. Client.Purge removes a whole feed when its owner deletes
//     the account.
//   - Likes and comments are frames on the author's topic, sealed under the
//     post key and signed by a per-reaction key so their writer can
//     withdraw them.
//
// Every inbound frame is capped (MaxFrameSize), checked for signature,
// freshness and topic, and rate limited per peer; every relay request has
// a size cap, a deadline and a quota. docs/protocol/moments.md has the
// wire format.
package moments
