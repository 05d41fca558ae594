package calls

import (
	"errors"
	"time"
)

// ID is the signalling protocol's id.
const ID = "/kinmesh/call/1.0.0"

// ServiceName is the resource-manager service signalling streams are
// attributed to.
const ServiceName = "kinmesh.calls"

// Size caps.
const (
	// MaxSDPSize caps an offer's or answer's SDP.
	MaxSDPSize = 16 << 10
	// MaxCandidateLen caps a trickled candidate line.
	MaxCandidateLen = 512
	// MaxCandidates caps the candidates one side may trickle per call
	// (and per ICE restart).
	MaxCandidates = 64

	maxFrame       = MaxSDPSize + 256 // the largest frame: an offer or answer
	maxInviteFrame = 8<<10 + 256      // an invite: the caller's record (contact.MaxRecordSize)
	maxMidLen      = 32               // a media section's mid
	callIDSize     = 16               // a call's wire id
)

// Timing.
const (
	inviteDeadline = 10 * time.Second // the first frame of a stream
	writeTimeout   = 10 * time.Second // one frame
	reachWait      = 15 * time.Second // reaching the callee's device
	resumeTimeout  = 15 * time.Second // opening a new signalling stream
	ringGrace      = 15 * time.Second // a caller waits this much longer than the callee rings
	setupTimeout   = 30 * time.Second // from Accept to connected
	restartAfter   = 2 * time.Second  // disconnected this long: ICE restart
	reconnectWait  = 15 * time.Second // a failed connection waits this long for a restart
	maxRestarts    = 5                // ICE restarts per call
	statsEvery     = time.Second      // how often a connected call refreshes its stats
	maxMalformed   = 8                // unusable frames tolerated per call
)

// State is a call's state.
type State string

// Call states. A call starts ringing (both sides: the caller while it
// reaches the callee and the callee's device rings), becomes connecting
// once the callee accepts, connected once media can flow (ICE and DTLS
// up), and ends ended (someone hung up, declined, nobody answered) or
// failed (it could not be set up or the connection was lost; Reason says
// why). An ended or failed call stays readable.
const (
	StateRinging    State = "ringing"
	StateConnecting State = "connecting"
	StateConnected  State = "connected"
	StateEnded      State = "ended"
	StateFailed     State = "failed"
)

// Final reports whether s is an end state.
func (s State) Final() bool { return s == StateEnded || s == StateFailed }

// Direction says who called.
type Direction string

// Directions.
const (
	DirectionIn  Direction = "in"
	DirectionOut Direction = "out"
)

// Reasons a call ended or failed (Info.Reason).
const (
	ReasonHangup           = "hangup"            // this side hung up
	ReasonRemoteHangup     = "remote_hangup"     // the other side hung up
	ReasonDeclined         = "declined"          // the callee declined
	ReasonBusy             = "busy"              // the callee was in another call
	ReasonNoAnswer         = "no_answer"         // the callee's device rang out (caller's view)
	ReasonMissed           = "missed"            // rang out, or the caller gave up (callee's view)
	ReasonUnavailable      = "unavailable"       // the callee takes no calls from us (not a contact, blocked, …)
	ReasonUnreachable      = "unreachable"       // no device of the callee could be reached
	ReasonConnectionFailed = "connection_failed" // ICE or DTLS never connected
	ReasonConnectionLost   = "connection_lost"   // connected, then lost for good
	ReasonSignallingLost   = "signalling_lost"   // the signalling stream broke before the call was up
	ReasonProtocolError    = "protocol_error"    // the other side sent frames we could not use
	ReasonRateLimited      = "rate_limited"      // the callee refused: too many invites
	ReasonNoRelay          = "no_relay"          // relay-only was asked for and no TURN server gave a relay candidate
	ReasonShutdown         = "shutdown"          // this node stopped
	ReasonFailed           = "failed"            // the other side could not set the call up
)

// Path values (Info.Path).
const (
	PathDirect = "direct" // host, server- or peer-reflexive candidates at both ends
	PathRelay  = "relay"  // a TURN relay candidate at one end at least
)

// Info is a call as the API shows it, live or ended.
type Info struct {
	// ID is this side's id of the call (the other side's differs).
	ID string `json:"id"`
	// Peer is the other party's account id.
	Peer      string    `json:"peer"`
	Direction Direction `json:"direction"`
	State     State     `json:"state"`
	// Reason says why an ended or failed call ended.
	Reason string `json:"reason,omitempty"`
	// Audio and Video say which media this side sends.
	Audio bool `json:"audio"`
	Video bool `json:"video"`
	// ForceRelay is set when this side allowed relay candidates only
	// (its IP address hidden from the other party).
	ForceRelay bool `json:"force_relay"`
	// Path is how media flows once connected: "direct" or "relay".
	Path string `json:"path,omitempty"`
	// LocalCandidate and RemoteCandidate are the ICE candidate types of
	// the selected pair ("host", "srflx", "prflx", "relay").
	LocalCandidate  string `json:"local_candidate,omitempty"`
	RemoteCandidate string `json:"remote_candidate,omitempty"`
	// Restarts counts ICE restarts.
	Restarts int `json:"ice_restarts,omitempty"`

	StartedAt   time.Time `json:"started_at"`
	AnsweredAt  time.Time `json:"answered_at,omitzero"`
	ConnectedAt time.Time `json:"connected_at,omitzero"`
	EndedAt     time.Time `json:"ended_at,omitzero"`
	// DurationS is how long the call was connected, in seconds (so far,
	// while it is).
	DurationS float64 `json:"duration_s"`
	// SetupMS is from the offer to connected, in milliseconds.
	SetupMS int64 `json:"setup_ms,omitempty"`

	// Stats are the call's quality statistics: live while connected, the
	// last ones after.
	Stats *Stats `json:"stats,omitempty"`
}

// Stats are a call's quality statistics, measured on this side.
type Stats struct {
	// RTTMS is the round-trip time in milliseconds: from RTCP receiver
	// reports (RFC 3550 LSR/DLSR) when there are some, else from ICE
	// consent checks on the selected pair.
	RTTMS float64 `json:"rtt_ms"`
	// JitterMS is the interarrival jitter of the received streams
	// (RFC 3550), the worst of them, in milliseconds.
	JitterMS float64 `json:"jitter_ms"`
	// PacketsLost and PacketsReceived count RTP packets of the received
	// streams (lost: by sequence number gaps).
	PacketsLost     int64 `json:"packets_lost"`
	PacketsReceived int64 `json:"packets_received"`
	// Codec names the received codecs, audio then video ("opus,vp8");
	// AudioCodec and VideoCodec each one.
	Codec      string `json:"codec"`
	AudioCodec string `json:"audio_codec,omitempty"`
	VideoCodec string `json:"video_codec,omitempty"`
	// FPS is the received video's frame rate over the last two seconds;
	// Width and Height its resolution from the last VP8 keyframe (0 for
	// other codecs); FramesReceived counts its frames.
	FPS            float64 `json:"fps"`
	Width          int     `json:"width"`
	Height         int     `json:"height"`
	FramesReceived int64   `json:"frames_received"`
	// BytesReceived and BytesSent are RTP payload and header bytes.
	BytesReceived int64 `json:"bytes_received"`
	BytesSent     int64 `json:"bytes_sent"`
}

// Errors.
var (
	// ErrUnknownContact means the callee is not a contact: add them from
	// their invite first.
	ErrUnknownContact = errors.New("calls: not a contact; add them from their invite first")
	// ErrBlocked means the callee is blocked; unblock them to call.
	ErrBlocked = errors.New("calls: contact is blocked")
	// ErrNoCall means no call has that id.
	ErrNoCall = errors.New("calls: no such call")
	// ErrNotRinging means the call can't be accepted: it is not an
	// incoming call that is ringing.
	ErrNotRinging = errors.New("calls: not an incoming call that is ringing")
	// ErrTooManyCalls means this device already has as many calls as it
	// takes (WithLimits); hang one up first.
	ErrTooManyCalls = errors.New("calls: too many calls at once")
	// ErrMalformed means a signalling frame (an invite, SDP, a candidate)
	// failed validation. The call that received it fails with reason
	// protocol_error; nothing else is affected.
	ErrMalformed = errors.New("calls: malformed signalling frame")
	// ErrTooLarge means a signalling frame exceeded its cap.
	ErrTooLarge = errors.New("calls: signalling frame too large")
	// ErrNoRelay means relay-only was asked for and no TURN server gave
	// credentials: the call can't hide this device's address, so it is
	// not placed.
	ErrNoRelay = errors.New("calls: relay-only call but no TURN server available")
	// ErrClosed means the service has been closed.
	ErrClosed = errors.New("calls: service closed")
)
