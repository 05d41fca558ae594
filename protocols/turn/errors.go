package turn

import (
	"errors"
	"fmt"
	"time"

	"github.com/kinmesh/kinmesh/protocols/turn/pb"
)

// Errors a relay reports for a credential request. Each has a wire code
// (Code); the client returns the sentinel wrapped in an *Error.
var (
	// ErrUnauthorized means the relay refused the request's proof: a
	// signature that does not verify for the account, the peer and the
	// relay, or a time more than MaxClockSkew off the relay's clock. Check
	// the device's clock; otherwise it is a bug or an attack.
	ErrUnauthorized = errors.New("turn: credential request refused")

	// ErrMalformed means a request, a response, a username or a URL
	// failed validation. Don't retry as is.
	ErrMalformed = errors.New("turn: malformed")

	// ErrTooLarge means a frame exceeded its size cap.
	ErrTooLarge = errors.New("turn: frame too large")

	// ErrRateLimited means this peer or account asked the relay for
	// credentials more often than it allows. Retry after Error.RetryAfter;
	// credentials already issued stay good until they expire.
	ErrRateLimited = errors.New("turn: rate limit exceeded")

	// ErrUnavailable means the relay runs no TURN server or is closing.
	// Use another relay's, or call without a relay candidate.
	ErrUnavailable = errors.New("turn: relay has no TURN service now")
)

// Client-side and server-side errors that never travel on the wire.
var (
	// ErrProtocol means the relay answered something this client does
	// not understand; the stream was abandoned.
	ErrProtocol = errors.New("turn: protocol violation by the relay")

	// ErrQuota means an allocation would exceed the account's cap
	// (WithAccountQuota), the requesting peer's (WithPeerQuota), the
	// client address's (WithIPQuota) or the relay's (WithMaxAllocations).
	// TURN clients see error 486 (Allocation Quota Reached).
	ErrQuota = errors.New("turn: allocation quota reached")

	// ErrClosed means the server has been closed.
	ErrClosed = errors.New("turn: server closed")
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
	CodeUnavailable:  {"unavailable", ErrUnavailable},
}

// String returns the code's name as used in metric labels.
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

func codeFromWire(c pb.Code) Code {
	if c < 0 || c > 255 {
		return Code(255)
	}
	return Code(c)
}

// Error is a relay's refusal as the client sees it. errors.Is matches it
// against its code's sentinel.
type Error struct {
	Code Code
	// RetryAfter, with CodeRateLimited, is when the relay will answer
	// again.
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
