package message

import (
	"errors"
	"time"
)

// ID is the direct-delivery protocol: a sender hands sealed envelopes
// straight to a recipient's device.
const ID = "/kinmesh/msg/1.0.0"

// Limits.
const (
	// MaxTextLen caps a message's text, in bytes of UTF-8.
	MaxTextLen = 16 << 10
	// MaxContentSize caps an encoded Content, so that its ratchet or
	// sender-key encryption always fits one sealed envelope.
	MaxContentSize = 48 << 10
	// MaxAge is how long a message may wait for delivery: relays drop it
	// after 15 days, and the sender then marks it expired.
	MaxAge = 15 * 24 * time.Hour
	// MaxGroupMembers caps a group, sender included.
	MaxGroupMembers = 512
	// MaxGroupNameLen caps a group name, in characters.
	MaxGroupNameLen = 64

	maxDirectBatch     = 64       // envelopes per Deliver frame
	maxDirectFrame     = 4 << 20  // bytes per Deliver frame
	maxCircuitBytes    = 64 << 10 // what we send over a limited relay circuit at once
	maxSessionsPerPeer = 4        // pairwise sessions kept per contact
)

// State is an outgoing message's delivery state. States are honest: a
// message is never "delivered" before the recipient's E2EE receipt.
type State string

// Outgoing states, and the one state of incoming messages.
const (
	// StatePending: recorded on this device, not yet handed on.
	StatePending State = "pending"
	// StateSent: handed directly to the recipient's device; its delivery
	// receipt is not back yet.
	StateSent State = "sent"
	// StateQueued: held by Queued of the recipient's home relays while the
	// recipient is offline.
	StateQueued State = "queued"
	// StateDelivered: the recipient's device sent an E2EE delivery receipt.
	StateDelivered State = "delivered"
	// StateRead: the recipient read it.
	StateRead State = "read"
	// StateExpired: undelivered for MaxAge; relays have dropped it.
	StateExpired State = "expired"
	// StateFailed: it can't be delivered; Reason says why.
	StateFailed State = "failed"
	// StateReceived is the state of an incoming message.
	StateReceived State = "received"
)

// rank orders outgoing states so a late transport result never moves a
// message back (delivered stays delivered if the "sent" ack comes late).
func (s State) rank() int {
	switch s {
	case StatePending:
		return 0
	case StateQueued:
		return 1
	case StateSent:
		return 2
	case StateDelivered:
		return 3
	case StateRead:
		return 4
	case StateExpired, StateFailed:
		return 5
	}
	return -1
}

// Message is a message as the API shows it.
type Message struct {
	ID     string    `json:"id"`
	From   string    `json:"from"` // sender account id
	To     string    `json:"to"`   // recipient account id, or group id
	Group  string    `json:"group,omitempty"`
	Text   string    `json:"text"`
	SentAt time.Time `json:"sent_at"`
	Seq    uint64    `json:"seq"`
	State  State     `json:"state"`
	// Queued is how many of the recipient's relays hold the message
	// (state queued).
	Queued int `json:"queued,omitempty"`
	// Reason explains state failed.
	Reason string `json:"reason,omitempty"`
	// Incoming is true for messages this account received.
	Incoming bool `json:"incoming"`
	// ReceivedAt is when an incoming message arrived.
	ReceivedAt time.Time `json:"received_at,omitzero"`
	// Recipients are per-member states of an outgoing group message.
	Recipients map[string]State `json:"recipients,omitempty"`
}

// Errors.
var (
	// ErrUnknownContact means the recipient is not a contact: add them
	// from their invite first.
	ErrUnknownContact = errors.New("message: not a contact; add them from their invite first")
	// ErrBlocked means the recipient is blocked; unblock them to write.
	ErrBlocked = errors.New("message: contact is blocked")
	// ErrEmpty means the message has no text.
	ErrEmpty = errors.New("message: empty text")
	// ErrTooLong means the text exceeds MaxTextLen.
	ErrTooLong = errors.New("message: text too long (max 16 KiB)")
	// ErrUnknownGroup means no group has that id.
	ErrUnknownGroup = errors.New("message: no such group")
	// ErrNotMember means this account is not (or no longer) a member.
	ErrNotMember = errors.New("message: not a member of the group")
	// ErrGroupTooLarge means the group would exceed MaxGroupMembers.
	ErrGroupTooLarge = errors.New("message: group too large")
	// ErrBadName means a group name is empty or too long.
	ErrBadName = errors.New("message: group name must be 1 to 64 characters")
	// ErrClosed means the service has been closed.
	ErrClosed = errors.New("message: service closed")
)

// Event is something the app may want to show at once.
type Event struct {
	// Type is "message" (a new incoming message), "state" (an outgoing
	// message changed state), "group" (a group changed) or "location" (a
	// contact's shared position changed; without coordinates: stopped).
	Type     string    `json:"type"`
	Message  *Message  `json:"message,omitempty"`
	Group    *Group    `json:"group,omitempty"`
	Location *Location `json:"location,omitempty"`
	Call     any       `json:"call,omitempty"` // "call.<state>" events: the call (a calls.Info, set by node)
	// Moment is set by node on "moment.<type>" events: a moments.Event.
	Moment any `json:"moment,omitempty"`
}
