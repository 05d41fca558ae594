package presence

import (
	"errors"
	"fmt"
	"time"

	"github.com/kinmesh/kinmesh/protocols/contact"
	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/protocols/presence/pb"
)

// ID is the protocol id.
const ID = "/kinmesh/presence/1.0.0"

// ServiceName is the resource-manager service both sides' streams are
// attributed to.
const ServiceName = "kinmesh.presence"

// Namespace is the device store namespace last-seen records live in.
const Namespace = "presence"

// Size caps. A beacon's content fits the smallest envelope bucket; the cap
// leaves room for one more.
const (
	// MaxEnvelopeSize caps a beacon envelope.
	MaxEnvelopeSize = e2ee.EnvelopeOverhead + 2*e2ee.MinEnvelopeBucket

	maxFrame   = MaxEnvelopeSize + 16
	maxPayload = 256
)

// Share is the user's presence setting.
type Share uint8

// Settings.
const (
	// ShareContacts: online and last seen go to every contact (not
	// blocked), and the user sees theirs. The default.
	ShareContacts Share = iota
	// ShareNobody: nothing is sent, and — as in mainstream messengers —
	// the user doesn't see anyone's presence either: what arrives is
	// dropped.
	ShareNobody
)

// String returns "contacts" or "nobody".
func (s Share) String() string {
	switch s {
	case ShareContacts:
		return "contacts"
	case ShareNobody:
		return "nobody"
	}
	return fmt.Sprintf("share_%d", uint8(s))
}

// ParseShare parses "contacts" or "nobody".
func ParseShare(s string) (Share, error) {
	switch s {
	case "contacts":
		return ShareContacts, nil
	case "nobody":
		return ShareNobody, nil
	}
	return 0, fmt.Errorf("presence: setting %q: want contacts or nobody: %w", s, ErrInvalidSetting)
}

// MarshalText implements encoding.TextMarshaler.
func (s Share) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (s *Share) UnmarshalText(b []byte) error {
	v, err := ParseShare(string(b))
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// ErrInvalidSetting means a presence setting is neither "contacts" nor
// "nobody".
var ErrInvalidSetting = errors.New("presence: invalid setting")

// ErrClosed means the service has been closed.
var ErrClosed = errors.New("presence: service closed")

// status is what a beacon says.
type status uint8

const (
	statusOnline  = status(pb.Status_STATUS_ONLINE)
	statusOffline = status(pb.Status_STATUS_OFFLINE)
	statusHidden  = status(pb.Status_STATUS_HIDDEN)
)

func (s status) String() string {
	switch s {
	case statusOnline:
		return "online"
	case statusOffline:
		return "offline"
	case statusHidden:
		return "hidden"
	}
	return fmt.Sprintf("status_%d", uint8(s))
}

// Presence is what this device knows of a contact's presence.
type Presence struct {
	Account e2ee.AccountID `json:"id"`
	// Online is true while the contact's latest beacon said online and
	// arrived within the online window.
	Online bool `json:"online"`
	// LastSeen is when the contact's latest beacon arrived (this device's
	// clock); zero if the contact never shared its presence with us, hides
	// it, or we don't share ours.
	LastSeen time.Time `json:"last_seen,omitzero"`
}

// Account is the local account's key material, as presence needs it.
type Account struct {
	// Identity signs our beacons.
	Identity *e2ee.Identity
	// MailboxKey opens the beacons contacts seal to us.
	MailboxKey *e2ee.MailboxKey
}

// Contacts is the address book presence consults. Implementations must be
// safe for concurrent use.
type Contacts interface {
	// Audience lists the contacts presence is exchanged with: their
	// signed records (devices, home relays, mailbox key).
	Audience() []contact.Signed
	// Member returns id's record if id is in the audience.
	Member(id e2ee.AccountID) (contact.Signed, bool)
	// Blocked reports whether id is blocked: nothing is sent to it and
	// its beacons are dropped, whatever Audience says.
	Blocked(id e2ee.AccountID) bool
}

// Round is what one round of beacons did.
type Round struct {
	// Sent: contacts whose device took the beacon.
	Sent int `json:"sent"`
	// Unreachable: contacts none of whose devices could be reached.
	Unreachable int `json:"unreachable"`
	// Skipped: contacts not due yet, or blocked.
	Skipped int `json:"skipped"`
}

// Stats are the service's counters since it started (for diagnostics:
// they name no one).
type Stats struct {
	Sent        uint64 `json:"sent"`
	Unreachable uint64 `json:"unreachable"`
	Accepted    uint64 `json:"accepted"`
	// Dropped counts refused beacons by reason: "blocked", "not_contact",
	// "not_sharing", "stale", "replay", "invalid", "rate_limited".
	Dropped map[string]uint64 `json:"dropped"`
}
