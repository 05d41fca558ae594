package report

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/protocols/report/pb"
)

// ID is the protocol id.
const ID = "/kinmesh/report/1.0.0"

// ServiceName is the resource-manager service both sides' streams are
// attributed to.
const ServiceName = "kinmesh.report"

// Namespace is the relay store namespace the queues live in.
const Namespace = "report"

// Size caps. A submission that exceeds one is refused whole (ErrTooLarge):
// nothing is truncated, since a report is evidence.
const (
	// MaxTextLen caps a submission's free text, in bytes of UTF-8.
	MaxTextLen = 8 << 10
	// MaxMessages caps the messages one report may disclose.
	MaxMessages = 20
	// MaxMessageTextLen caps one disclosed message's text (the messaging
	// engine's own cap, message.MaxTextLen).
	MaxMessageTextLen = 16 << 10
	// MaxMessageIDLen caps a disclosed message's id.
	MaxMessageIDLen = 64
	// MaxDiagnosticsSize caps the diagnostics attached to feedback.
	MaxDiagnosticsSize = 32 << 10
	// MaxSubmissionSize caps an encoded submission: disclose fewer (or
	// shorter) messages to fit.
	MaxSubmissionSize = 128 << 10

	maxHelloFrame    = 64
	maxSubmitFrame   = MaxSubmissionSize + 1024 // submission, identity, signature
	maxResponseFrame = 256
	maxIdentitySize  = 256
	nonceSize        = 32
	submissionIDSize = 16
)

// Kind says what a submission is.
type Kind uint8

// Kinds. Reports go to the relay's report queue, feedback and support
// requests to its feedback queue.
const (
	KindReport   = Kind(pb.Kind_KIND_REPORT)
	KindFeedback = Kind(pb.Kind_KIND_FEEDBACK)
	KindSupport  = Kind(pb.Kind_KIND_SUPPORT)
)

var kindNames = map[Kind]string{KindReport: "report", KindFeedback: "feedback", KindSupport: "support"}

// String returns "report", "feedback" or "support".
func (k Kind) String() string {
	if s, ok := kindNames[k]; ok {
		return s
	}
	return fmt.Sprintf("kind_%d", uint8(k))
}

// ParseKind parses "report", "feedback" or "support".
func ParseKind(s string) (Kind, error) {
	for k, name := range kindNames {
		if name == s {
			return k, nil
		}
	}
	return 0, fmt.Errorf("report: kind %q: want report, feedback or support: %w", s, ErrMalformed)
}

// MarshalText implements encoding.TextMarshaler.
func (k Kind) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (k *Kind) UnmarshalText(b []byte) error {
	v, err := ParseKind(string(b))
	if err != nil {
		return err
	}
	*k = v
	return nil
}

// Queue returns the queue a kind goes to.
func (k Kind) Queue() Queue {
	if k == KindReport {
		return QueueReports
	}
	return QueueFeedback
}

func (k Kind) valid() bool { _, ok := kindNames[k]; return ok }

// Queue is one of the relay's two queues.
type Queue uint8

// Queues.
const (
	// QueueReports holds reports about accounts.
	QueueReports Queue = iota + 1
	// QueueFeedback holds feedback and support requests.
	QueueFeedback
)

// String returns "reports" or "feedback".
func (q Queue) String() string {
	switch q {
	case QueueReports:
		return "reports"
	case QueueFeedback:
		return "feedback"
	}
	return fmt.Sprintf("queue_%d", uint8(q))
}

func (q Queue) valid() bool { return q == QueueReports || q == QueueFeedback }

// Reason is a report's category.
type Reason uint8

// Reasons, as a mainstream messenger's report dialog lists them.
const (
	ReasonSpam          = Reason(pb.Reason_REASON_SPAM)
	ReasonHarassment    = Reason(pb.Reason_REASON_HARASSMENT)
	ReasonHate          = Reason(pb.Reason_REASON_HATE)
	ReasonViolence      = Reason(pb.Reason_REASON_VIOLENCE)
	ReasonSexual        = Reason(pb.Reason_REASON_SEXUAL)
	ReasonChildSafety   = Reason(pb.Reason_REASON_CHILD_SAFETY)
	ReasonSelfHarm      = Reason(pb.Reason_REASON_SELF_HARM)
	ReasonImpersonation = Reason(pb.Reason_REASON_IMPERSONATION)
	ReasonScam          = Reason(pb.Reason_REASON_SCAM)
	ReasonOther         = Reason(pb.Reason_REASON_OTHER)
)

var reasonNames = [...]string{
	ReasonSpam: "spam", ReasonHarassment: "harassment", ReasonHate: "hate",
	ReasonViolence: "violence", ReasonSexual: "sexual_content", ReasonChildSafety: "child_safety",
	ReasonSelfHarm: "self_harm", ReasonImpersonation: "impersonation", ReasonScam: "scam",
	ReasonOther: "other",
}

// Reasons returns every reason's name, in wire order.
func Reasons() []string { return append([]string(nil), reasonNames[1:]...) }

// String returns the reason's name ("spam", "harassment", …).
func (r Reason) String() string {
	if r > 0 && int(r) < len(reasonNames) {
		return reasonNames[r]
	}
	return fmt.Sprintf("reason_%d", uint8(r))
}

// ParseReason parses a reason's name.
func ParseReason(s string) (Reason, error) {
	for i, name := range reasonNames {
		if i > 0 && name == s {
			return Reason(i), nil
		}
	}
	return 0, fmt.Errorf("report: reason %q: want one of %s: %w", s, strings.Join(Reasons(), ", "), ErrMalformed)
}

// MarshalText implements encoding.TextMarshaler.
func (r Reason) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (r *Reason) UnmarshalText(b []byte) error {
	v, err := ParseReason(string(b))
	if err != nil {
		return err
	}
	*r = v
	return nil
}

func (r Reason) valid() bool { return r > 0 && int(r) < len(reasonNames) }

// Urgent reports whether reports for r may use the report queue's urgent
// reserve (WithUrgentReserve): child safety, self-harm and violence, where
// someone may be in danger.
func (r Reason) Urgent() bool {
	return r == ReasonChildSafety || r == ReasonSelfHarm || r == ReasonViolence
}

// DisclosedMessage is a message the reporter chose to disclose, as its
// device shows it (decrypted by the reporter). The relay cannot check it:
// kinmesh messages are deniable, so a disclosed message is the reporter's
// word, signed by the reporter.
type DisclosedMessage struct {
	ID     string         `json:"id"`
	From   e2ee.AccountID `json:"from"`
	SentAt time.Time      `json:"sent_at"`
	Text   string         `json:"text"`
}

// Submission is what a user sends to the operators of its home relays: a
// report about an account, feedback, or a support request.
type Submission struct {
	Kind Kind
	// ID is the submission's id (SubmissionID; 32 hex digits): the same
	// on every relay it goes to, so a retried submission is stored once.
	ID string
	// CreatedAt is when the user submitted it (the device's clock).
	CreatedAt time.Time
	// Reported and Reason: the account reported and why (KindReport only).
	Reported e2ee.AccountID
	Reason   Reason
	// Text is the user's own words, at most MaxTextLen bytes.
	Text string
	// Messages are the messages the user chose to disclose (KindReport
	// only), at most MaxMessages.
	Messages []DisclosedMessage
	// Diagnostics is a JSON object the device attaches to feedback or a
	// support request, only when the user consented; the relay stores it
	// as is. At most MaxDiagnosticsSize bytes.
	Diagnostics json.RawMessage
}

// SubmissionID returns a new random submission id.
func SubmissionID() string {
	var b [submissionIDSize]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Receipt is a relay's answer to an accepted submission.
type Receipt struct {
	// ID is the relay's id of the stored item (16 hex digits), as the
	// relay's operator sees it.
	ID string
	// Duplicate is true when the relay already held this submission (a
	// retry): it was not stored or counted again.
	Duplicate bool
}

// Item is a stored submission as the relay's operator reads it.
type Item struct {
	// ID is the relay's id of the item (16 hex digits).
	ID string `json:"id"`
	// Kind is "report", "feedback" or "support".
	Kind Kind `json:"kind"`
	// Submission is the reporter's submission id, the same on every relay
	// the reporter sent it to.
	Submission string `json:"submission"`
	// Reporter is the account that signed the submission. The relay
	// checked the signature before storing it.
	Reporter e2ee.AccountID `json:"reporter"`
	// ReceivedAt is the relay's clock; CreatedAt the reporter's.
	ReceivedAt time.Time `json:"received_at"`
	CreatedAt  time.Time `json:"created_at"`
	// Reported, Reason and Messages: reports only.
	Reported e2ee.AccountID     `json:"reported,omitempty"`
	Reason   Reason             `json:"reason,omitempty"`
	Text     string             `json:"text"`
	Messages []DisclosedMessage `json:"messages,omitempty"`
	// Diagnostics: feedback and support only, when the user consented.
	Diagnostics json.RawMessage `json:"diagnostics,omitempty"`
}
