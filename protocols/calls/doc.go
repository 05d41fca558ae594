// Package calls implements kinmesh calls: signalling on the libp2p
// protocol /kinmesh/call/1.0.0 between two devices, and WebRTC peer
// connections (pion/webrtc v4) carrying the media — Opus audio, VP8 or
// H.264 video — directly when the network allows and through a TURN
// server on a relay (protocols/turn) when it doesn't. It records each
// call with its quality statistics.
//
// # Who may call
//
// The caller reaches a device listed in the callee's signed contact
// record (directly, or through one of the callee's home relays:
// <relay>/p2p-circuit/p2p/<device>) and opens a stream, over a limited
// relay circuit if that is all there is (network.WithAllowLimitedConn:
// signalling is small). libp2p's Noise handshake authenticates both
// peer ids, so each side knows which device it talks to. The callee
// takes the call only if the invite names someone its Contacts answer for
// (the node: a friend, i.e. a contact the user added from their invite)
// whose signed record lists that device (or the invite carries the
// contact's newer record, signed by the account, that does). Strangers —
// anyone else whose record the device happens to hold included — and
// blocked contacts are refused with "unavailable" before anything rings,
// so a caller can't tell either from a device that takes no calls. A
// device likewise calls only those its Contacts answer for. Invites are rate-limited
// per caller peer and per caller account; a device rings for at most
// Limits.MaxRinging calls at once and answers Busy while in a call.
//
// # Message flow
//
// Every frame is a uvarint length and a protobuf Frame (protocols/wire;
// pb/calls.proto), capped at MaxSDPSize plus framing (an invite at 8 KiB
// plus framing), at most 50 frames a second (bursts of 200) per stream:
//
//	C → R  Invite{call_id (16), account, record?, audio, video}
//	R → C  Ring{relay_only} | Busy | Reject{reason}
//	       … the callee's device rings (at most Limits.RingTimeout) …
//	R → C  Accept                          | Reject{declined | timeout}
//	C → R  Offer{sdp}
//	R → C  Answer{sdp}
//	C ↔ R  Candidate{candidate, sdp_mid, sdp_mline_index}*, Candidate{end}
//	       … media flows (SRTP over ICE, DTLS-keyed) …
//	C ↔ R  Hangup{reason}                  (either side, any time)
//	C → R  Offer{sdp, restart} / R → C Answer{sdp}   ICE restart
//
// Nobody's address leaves a device before the callee accepts: the caller
// builds its offer while the callee rings (so gathering, and its TURN
// allocations, are under way) but sends it, and its candidates, only
// after Accept. SDP carries no candidates; they are trickled (RFC 8838),
// each an IP literal (mDNS is off, names are refused). The DTLS
// fingerprints in the SDP travel on the authenticated stream, so the
// media keys are the two devices' own: a relay — the circuit's or the
// TURN server — sees only ciphertext.
//
// The stream stays open for the call. If it breaks after the call is
// connected (a circuit's time or data limit, a network change), the call
// goes on, and whichever side next needs to signal opens a new stream
// whose first frame is Resume{call_id}. A hang-up also closes the peer
// connection (DTLS close_notify), which the other side sees even without
// the Hangup frame. When ICE disconnects for restartAfter (2 s) or
// fails, the caller restarts ICE (new credentials, new candidates), up to
// 5 times; only the caller offers, so the two never offer at once.
//
// # Candidates and relay-only calls
//
// Calls gather host, server-reflexive (STUN on a relay) and relay (TURN
// on a relay, WithICEServers) candidates, UDP only (TURN may be reached
// over TCP). A relay-only call (WithForceRelay, Options.ForceRelay) uses
// ICETransportPolicyRelay: it offers only TURN relay candidates, so the
// other party never learns this device's addresses. Its checks all go
// through a TURN allocation, and relays relay only to globally reachable
// addresses (protocols/turn), so it leaves out the other party's host and
// reflexive candidates on loopback, private and other special-purpose
// addresses (turn.GloballyReachable). Checks towards them never succeed,
// but their pairs outrank the relay pairs that do, and pion's nominating
// agent nominates a pair at once only if no better pair is still being
// checked: the working pair would wait for its next check round (200 ms).
//
// pion's nominating agent also waits before it accepts a pair with a
// relay candidate, in case a better pair turns up (0.5 s here). A
// relay-only caller skips that wait, and so does a caller whose callee
// said in its Ring that its device takes calls relay-only: every pair
// that can work then has the callee's relay candidate.
//
// # Statistics
//
// A connected call's Info carries Stats: RTT (RTCP receiver reports, else
// ICE checks), jitter and packets lost (RTCP/RTP of the received
// streams), the codecs, and the received video's frame rate and
// resolution, counted from the frames as they arrive (a VP8 keyframe's
// header carries its size). Calls are kept (WithHistory) with their last
// statistics; sharing them beyond the device is the app's decision, under
// the user's consent. docs/protocol/calls.md is the full specification.
package calls
