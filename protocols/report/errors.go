package report

import (
	"errors"
	"fmt"
	"time"

	"github.com/kinmesh/kinmesh/protocols/report/pb"
)

// Errors a relay reports. Each has a wire code (Code); the client returns
// the sentinel, wrapped in an *Error that names the relay's code. With
// every refusal the relay stores nothing.
var (
	// ErrUnauthorized means the submission was unsigned or its signature
	// does not verify under the identity it names (a forgery, or a
	// signature over another nonce, relay or submission). Don't retry as
	// is.
	ErrUnauthorized = errors.New("report: submission unsigned or signature invalid")

	// ErrMalformed means a request or submission failed validation: an
	// unknown kind or reason, a report without a reported account, text
	// that isn't UTF-8, diagnostics that aren't a JSON object, fields of
	// the wrong kind. The message says which; fix the submission.
	ErrMalformed = errors.New("report: malformed submission")

	// ErrTooLarge means a field or the whole submission exceeded its cap
	// (MaxTextLen, MaxMessages, MaxMessageTextLen, MaxDiagnosticsSize,
	// MaxSubmissionSize). Shorten the text or disclose fewer messages.
	ErrTooLarge = errors.New("report: submission too large")

	// ErrRateLimited means this peer sent the relay more requests than it
	// allows. Retry after Error.RetryAfter.
	ErrRateLimited = errors.New("report: rate limit exceeded")

	// ErrQuota means the reporter's daily quota for this kind of
	// submission on the relay is used up (per account and UTC day). Try
	// again tomorrow.
	ErrQuota = errors.New("report: daily quota for this account exceeded")

	// ErrQueueFull means the relay's queue holds as many items or bytes as
	// its operator allows. Try another home relay, or later.
	ErrQueueFull = errors.New("report: the relay's queue is full")

	// ErrUnavailable means the relay could not serve the request now (it
	// is closing, busy or its store failed). Retry later.
	ErrUnavailable = errors.New("report: relay unavailable")
)

// Errors of the relay's operator interface (Service.Get and Done) and of
// the client.
var (
	// ErrNotFound means no item has that id in that queue: it was marked
	// done, or it expired after the retention period.
	ErrNotFound = errors.New("report: no such item")

	// ErrProtocol means the relay sent something this client does not
	// understand or did not ask for; the stream was abandoned.
	ErrProtocol = errors.New("report: protocol violation by the relay")
)

// Code is a result on the wire. CodeOK is success; every other code maps
// to a sentinel error (Err).
type Code uint8

// The codes, as in pb.Code.
const (
	CodeOK           = Code(pb.Code_CODE_OK)
	CodeUnauthorized = Code(pb.Code_CODE_UNAUTHORIZED)
	CodeMalformed    = Code(pb.Code_CODE_MALFORMED)
	CodeTooLarge     = Code(pb.Code_CODE_TOO_LARGE)
	CodeRateLimited  = Code(pb.Code_CODE_RATE_LIMITED)
	CodeQuota        = Code(pb.Code_CODE_QUOTA)
	CodeQueueFull    = Code(pb.Code_CODE_QUEUE_FULL)
	CodeUnavailable  = Code(pb.Code_CODE_UNAVAILABLE)
)

var codeInfo = [...]struct {
	name string
	err  error
}{
	CodeOK:           {"ok", nil},
	CodeUnauthorized: {"unauthorized", ErrUnauthorized},
	CodeMalformed:    {"malformed", ErrMalformed},
	CodeTooLarge:     {"too_large", ErrTooLarge},
	CodeRateLimited:  {"rate_limited", ErrRateLimited},
	CodeQuota:        {"quota", ErrQuota},
	CodeQueueFull:    {"queue_full", ErrQueueFull},
	CodeUnavailable:  {"unavailable", ErrUnavailable},
}

// String returns the code's name as used in metric labels and by the
// node's API ("ok", "quota", …).
func (c Code) String() string {
	if int(c) < len(codeInfo) {
		return codeInfo[c].name
	}
	return fmt.Sprintf("code_%d", uint8(c))
}

// Err returns the sentinel of c: nil for CodeOK, ErrProtocol for a code
// this version does not know.
func (c Code) Err() error {
	if int(c) < len(codeInfo) {
		return codeInfo[c].err
	}
	return fmt.Errorf("unknown result code %d: %w", uint8(c), ErrProtocol)
}

// CodeOf returns the code of err: CodeOK for nil, CodeUnavailable for an
// error that is none of the relay's sentinels.
func CodeOf(err error) Code {
	if err == nil {
		return CodeOK
	}
	for c, info := range codeInfo {
		if info.err != nil && errors.Is(err, info.err) {
			return Code(c)
		}
	}
	return CodeUnavailable
}

func codeFromWire(c pb.Code) Code {
	if c < 0 || c > 255 {
		return Code(255)
	}
	return Code(c)
}

// Error is a relay's refusal as the client sees it. errors.Is matches it
// against its code's sentinel (ErrQuota, ErrUnauthorized, …).
type Error struct {
	Code Code
	// RetryAfter, with CodeRateLimited, is when the relay will accept a
	// request again.
	RetryAfter time.Duration
}

func (e *Error) Error() string {
	msg := "relay refused: " + e.Code.String()
	if e.RetryAfter > 0 {
		msg += fmt.Sprintf(" (retry after %v)", e.RetryAfter)
	}
	if err := e.Code.Err(); err != nil {
		msg += ": " + err.Error()
	}
	return msg
}

// Unwrap returns the code's sentinel.
func (e *Error) Unwrap() error { return e.Code.Err() }

// RetryAfter returns how long to wait before retrying after err: the
// relay's hint for ErrRateLimited, else 0.
func RetryAfter(err error) time.Duration {
	var e *Error
	if errors.As(err, &e) {
		return e.RetryAfter
	}
	return 0
}
