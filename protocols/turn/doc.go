// Package turn is a relay's STUN/TURN service for calls: a pion/turn
// server (RFC 8489 STUN, RFC 8656 TURN) that relays call media for
// devices that can't reach each other directly, and
// /kinmesh/turn-creds/1.0.0, the libp2p protocol that hands accounts
// short-lived credentials for it.
//
// # Credentials
//
// Credentials follow the TURN REST API (draft-uberti-behave-turn-rest-00),
// so any TURN client can use them and any server with the secret could
// check them:
//
//	username = "<expiry, unix seconds>:<account tag>"
//	password = base64(HMAC-SHA1(secret, username))
//
// The secret is the relay's own (SecretSize random bytes kept in its
// store). The account tag (24 characters) is base32 of
//
//	HMAC-SHA256(secret, "kinmesh/turn/account/v1" || account Ed25519 key)[:9]
//	|| HMAC-SHA256(secret, "kinmesh/turn/peer/v1" || requesting peer id)[:6]
//
// stable per account and per requesting peer on one relay, so quotas hold
// per account and per peer across credentials, but opaque to anyone else
// (TURN usernames cross the network in the clear). An allocation needs
// unexpired credentials; refreshes, permissions and channel binds for it
// are accepted for WithRefreshGrace longer, so a call outlives its
// credentials.
//
// # Message flow
//
// A stream carries one request and its answer; every frame is a uvarint
// length and a protobuf message (protocols/wire; pb/turn.proto):
//
//	D → R  Request{account: Ed25519 key (32), time_unix, signature (64)}   ≤ 256 B
//	R → D  Response{code, retry_after_ms, username, password,              ≤ 2 KiB
//	                ttl_seconds, urls: ["stun:IP:PORT",
//	                "turn:IP:PORT?transport=udp", "turn:IP:PORT?transport=tcp"]}
//
// The signature is Ed25519 by the account's identity key over
//
//	"kinmesh/turn-creds/v1/auth" || 0x00
//	|| uvarint(len(relay)) || relay peer id || uvarint(len(device)) || device peer id
//	|| uint64be(time_unix)
//
// binding the relay and the requesting connection's peer (authenticated
// by libp2p's Noise handshake): a signature is good from that peer to
// that relay only, and only while time_unix is within MaxClockSkew of the
// relay's clock. Replaying it from the same peer only gets the same
// account fresh credentials. Requests are rate-limited per peer and per
// account, and per source IP address (an IPv6 /64) all peers together.
// Result codes (Code, pb.Code) map to ErrUnauthorized,
// ErrMalformed, ErrTooLarge, ErrRateLimited and ErrUnavailable.
//
// # Server
//
// The server listens on one UDP port with several SO_REUSEPORT sockets,
// each with its own read loop (WithThreads), and on TCP (for networks that
// block UDP; relayed traffic is UDP either way). Allocations get relay
// ports from a configured range and the relay's public address. Every
// allocation counts against three shares, each capped in allocations
// (beyond: TURN error 486) and in relayed bytes per second over all of
// them (beyond: packets are dropped): its account's (WithAccountQuota),
// the requesting peer's its credentials were issued to (WithPeerQuota)
// and its client's source IP address's, an IPv6 /64 (WithIPQuota).
// Account keys and peer ids are free, so one requester with many of them
// is bounded by its peer and, with many peers, by its address. The relay
// caps its allocations as a whole (WithMaxAllocations).
//
// Allocations relay only to globally reachable addresses: loopback,
// private, carrier-grade NAT, link-local, multicast and the other
// special-purpose ranges are refused, and so are the relay's own
// addresses but for the relay ports of its own allocations (two devices
// on one relay reach each other), so the server is no way into its host
// or its hosting network. The operator may allow ranges
// (WithAllowedPeers: test networks, a relay that serves a private network
// on purpose). What the server does is counted by a MetricsTracer
// (kinmesh_turn_* on a relay's /metrics). docs/protocol/calls.md has the
// whole call setup and what a relay learns.
package turn
