package prekeys

import (
	"errors"
	"fmt"
	"time"

	"github.com/kinmesh/kinmesh/protocols/prekeys/pb"
)

// Errors a relay reports. Each has a wire code (Code); the client returns
// the sentinel, wrapped in an *Error that names the relay's code.
var (
	// ErrNotFound means the relay holds no prekeys for the account: it
	// never published there, or purged. Try another of the account's home
	// relays; if none has a bundle, the account can't be reached until it
	// publishes.
	ErrNotFound = errors.New("prekeys: no prekeys for this account on the relay")

	// ErrUnauthorized means the relay refused an owner operation's proof:
	// a signature by another identity, or over another nonce, relay, peer
	// or request. Nothing changed. It is a bug or an attack; don't retry
	// as is.
	ErrUnauthorized = errors.New("prekeys: owner proof refused")

	// ErrMalformed means a request or upload failed validation (a bad
	// account id, a prekey with a bad signature, an upload of another
	// identity). Nothing changed; don't retry as is.
	ErrMalformed = errors.New("prekeys: malformed request")

	// ErrTooLarge means a frame or upload exceeded its size cap
	// (MaxUploadSize for uploads). Publish fewer one-time prekeys at once.
	ErrTooLarge = errors.New("prekeys: request too large")

	// ErrRateLimited means this peer sent the relay more requests than it
	// allows; nothing was done. Retry after Error.RetryAfter.
	ErrRateLimited = errors.New("prekeys: rate limit exceeded")

	// ErrStale means an upload brought nothing new and its signed or
	// last-resort prekey is older than the one the relay holds (a
	// replayed or re-sent old upload). Nothing changed; the Status that
	// comes with it says what the relay holds.
	ErrStale = errors.New("prekeys: upload older than what the relay holds")

	// ErrQuota means storing the upload would exceed the account's caps
	// (e2ee.MaxOneTimePrekeys one-time prekeys of each kind) or the relay's
	// cap on accounts. Nothing changed; the Status that comes with it says
	// how many one-time prekeys the relay holds: publish fewer, or use
	// another relay.
	ErrQuota = errors.New("prekeys: quota exceeded")

	// ErrUnavailable means the relay could not serve the request now (it
	// is closing, busy or its store failed). Nothing changed, or, for a
	// fetch, nothing was handed out. Retry later or on another relay.
	ErrUnavailable = errors.New("prekeys: relay unavailable")
)

// Client-side errors.
var (
	// ErrBadBundle means the relay served a bundle that does not verify,
	// or one of another account. Don't use it; fetch from another of the
	// account's relays.
	ErrBadBundle = errors.New("prekeys: relay served an invalid bundle")

	// ErrProtocol means the relay sent something this client does not
	// understand or did not ask for; the stream was abandoned.
	ErrProtocol = errors.New("prekeys: protocol violation by the relay")
)

// Code is a result on the wire. CodeOK is success; every other code maps
// to a sentinel error (Err).
type Code uint8

// The codes, as in pb.Code.
const (
	CodeOK           = Code(pb.Code_CODE_OK)
	CodeNotFound     = Code(pb.Code_CODE_NOT_FOUND)
	CodeUnauthorized = Code(pb.Code_CODE_UNAUTHORIZED)
	CodeMalformed    = Code(pb.Code_CODE_MALFORMED)
	CodeTooLarge     = Code(pb.Code_CODE_TOO_LARGE)
	CodeRateLimited  = Code(pb.Code_CODE_RATE_LIMITED)
	CodeStale        = Code(pb.Code_CODE_STALE)
	CodeQuota        = Code(pb.Code_CODE_QUOTA)
	CodeUnavailable  = Code(pb.Code_CODE_UNAVAILABLE)
)

var codeInfo = [...]struct {
	name string
	err  error
}{
	CodeOK:           {"ok", nil},
	CodeNotFound:     {"not_found", ErrNotFound},
	CodeUnauthorized: {"unauthorized", ErrUnauthorized},
	CodeMalformed:    {"malformed", ErrMalformed},
	CodeTooLarge:     {"too_large", ErrTooLarge},
	CodeRateLimited:  {"rate_limited", ErrRateLimited},
	CodeStale:        {"stale", ErrStale},
	CodeQuota:        {"quota", ErrQuota},
	CodeUnavailable:  {"unavailable", ErrUnavailable},
}

// String returns the code's name as used in metric labels ("ok",
// "rate_limited", …).
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
// against its code's sentinel (ErrRateLimited, ErrStale, …).
type Error struct {
	Code Code
	// RetryAfter, with CodeRateLimited, is when the relay will accept the
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
