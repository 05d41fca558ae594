package discovery

import (
	"errors"
	"fmt"
	"time"

	"github.com/kinmesh/kinmesh/protocols/discovery/pb"
)

// Errors a relay reports. Each has a wire code (Code); the client returns
// the sentinel, wrapped in an *Error that names the relay's code.
var (
	// ErrMalformed means a request failed validation (a bad identity, a
	// record of another account, a code that is not 6 digits, an element
	// that is not a ristretto255 point). Nothing changed; don't retry as
	// is.
	ErrMalformed = errors.New("discovery: malformed request")

	// ErrTooLarge means a frame exceeded its size cap, or an evaluation
	// batch exceeded MaxBatch or the account's whole budget. Send smaller
	// batches.
	ErrTooLarge = errors.New("discovery: request too large; send fewer numbers at once")

	// ErrUnauthorized means the relay refused the account's proof: a
	// signature by another identity, or over another nonce, relay, peer
	// or request. Nothing changed. It is a bug or an attack; don't retry
	// as is.
	ErrUnauthorized = errors.New("discovery: account proof refused")

	// ErrRateLimited means this peer or account made more requests than
	// the relay allows (codes sent, numbers looked up, pages listed), or
	// the number was sent too many codes. Nothing was done. Retry after
	// Error.RetryAfter (see RetryAfter).
	ErrRateLimited = errors.New("discovery: rate limit exceeded")

	// ErrInvalidNumber means a phone number is not in E.164 form: "+",
	// the country code and the number, 8 to 15 digits in all.
	ErrInvalidNumber = errors.New("discovery: not a valid phone number (want + and 8 to 15 digits, country code first)")

	// ErrNoCode means no verification is pending for the account: ask for
	// a code first (or again: codes are forgotten a day after they
	// expire, and once used).
	ErrNoCode = errors.New("discovery: no verification code pending; ask for a code first")

	// ErrCodeExpired means the pending code expired (codes last
	// DefaultCodeTTL). Ask for a new one.
	ErrCodeExpired = errors.New("discovery: the verification code expired; ask for a new one")

	// ErrWrongCode means the code submitted is not the one sent. The
	// Status returned with it says how many attempts are left.
	ErrWrongCode = errors.New("discovery: wrong verification code")

	// ErrTooManyAttempts means too many wrong codes: the account (or the
	// number) is locked out of verification until Error.RetryAfter has
	// passed. The pending code is void; ask for a new one then.
	ErrTooManyAttempts = errors.New("discovery: too many wrong codes; verification is locked for a while")

	// ErrNotVerified means the operation needs a verified number on this
	// relay (looking numbers up, updating the directory record): verify
	// one first.
	ErrNotVerified = errors.New("discovery: no verified phone number on this relay; verify one first")

	// ErrSMSFailed means the relay's SMS gateway did not take the message.
	// No code is pending. Retry later; if it persists, tell the relay's
	// operator.
	ErrSMSFailed = errors.New("discovery: the relay could not send the SMS")

	// ErrQuota means the relay's directory is full (DefaultMaxEntries).
	// Use another relay.
	ErrQuota = errors.New("discovery: the relay's directory is full")

	// ErrUnavailable means the relay could not serve the request now (it
	// is closing, busy or its store failed). Retry later or on another
	// relay.
	ErrUnavailable = errors.New("discovery: relay unavailable")
)

// Client-side errors.
var (
	// ErrBadProof means the relay's evaluation did not verify against the
	// relay's public key: it evaluated with another key than the one it
	// publishes (which could single the requester out), or the answer was
	// corrupted. Nothing it returned was used. Report it; don't retry on
	// that relay.
	ErrBadProof = errors.New("discovery: relay's OPRF proof does not verify")

	// ErrKeyChanged means the relay now shows another OPRF public key than
	// the one the client pinned at its first use. Every directory entry
	// depends on the key, so a change means the relay lost its data or is
	// misbehaving. Nothing was used.
	ErrKeyChanged = errors.New("discovery: relay's OPRF public key changed")

	// ErrProtocol means the relay sent something this client does not
	// understand or did not ask for; the stream was abandoned.
	ErrProtocol = errors.New("discovery: protocol violation by the relay")

	// ErrDirectoryTooLarge means a relay's directory would take the
	// client's copy beyond MaxCopyEntries entries or MaxCopyBytes of
	// sealed records, or a sync beyond MaxSyncPages pages. No honest relay
	// within the design's limits does that, so it wraps ErrProtocol: the
	// relay is misbehaving. Nothing of the page that would have broken a
	// cap was applied; what the sync applied before stays, within the
	// caps. Look numbers up on another relay.
	ErrDirectoryTooLarge = fmt.Errorf("discovery: the relay's directory exceeds what a device keeps of it: %w", ErrProtocol)
)

// Code is a result on the wire. CodeOK is success; every other code maps
// to a sentinel error (Err).
type Code uint8

// The codes, as in pb.Code.
const (
	CodeOK              = Code(pb.Code_CODE_OK)
	CodeMalformed       = Code(pb.Code_CODE_MALFORMED)
	CodeTooLarge        = Code(pb.Code_CODE_TOO_LARGE)
	CodeUnauthorized    = Code(pb.Code_CODE_UNAUTHORIZED)
	CodeRateLimited     = Code(pb.Code_CODE_RATE_LIMITED)
	CodeInvalidNumber   = Code(pb.Code_CODE_INVALID_NUMBER)
	CodeNoCode          = Code(pb.Code_CODE_NO_CODE)
	CodeCodeExpired     = Code(pb.Code_CODE_CODE_EXPIRED)
	CodeWrongCode       = Code(pb.Code_CODE_WRONG_CODE)
	CodeTooManyAttempts = Code(pb.Code_CODE_TOO_MANY_ATTEMPTS)
	CodeNotVerified     = Code(pb.Code_CODE_NOT_VERIFIED)
	CodeSMSFailed       = Code(pb.Code_CODE_SMS_FAILED)
	CodeQuota           = Code(pb.Code_CODE_QUOTA)
	CodeUnavailable     = Code(pb.Code_CODE_UNAVAILABLE)
)

var codeInfo = [...]struct {
	name string
	err  error
}{
	CodeOK:              {"ok", nil},
	CodeMalformed:       {"malformed", ErrMalformed},
	CodeTooLarge:        {"too_large", ErrTooLarge},
	CodeUnauthorized:    {"unauthorized", ErrUnauthorized},
	CodeRateLimited:     {"rate_limited", ErrRateLimited},
	CodeInvalidNumber:   {"invalid_number", ErrInvalidNumber},
	CodeNoCode:          {"no_code", ErrNoCode},
	CodeCodeExpired:     {"code_expired", ErrCodeExpired},
	CodeWrongCode:       {"wrong_code", ErrWrongCode},
	CodeTooManyAttempts: {"too_many_attempts", ErrTooManyAttempts},
	CodeNotVerified:     {"not_verified", ErrNotVerified},
	CodeSMSFailed:       {"sms_failed", ErrSMSFailed},
	CodeQuota:           {"quota", ErrQuota},
	CodeUnavailable:     {"unavailable", ErrUnavailable},
}

// String returns the code's name as used in metric labels ("ok",
// "wrong_code", …).
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
// against its code's sentinel (ErrWrongCode, ErrRateLimited, …).
type Error struct {
	Code Code
	// RetryAfter, with CodeRateLimited and CodeTooManyAttempts, is when
	// the relay will accept the request again.
	RetryAfter time.Duration
}

func (e *Error) Error() string {
	msg := "relay refused: " + e.Code.String()
	if e.RetryAfter > 0 {
		msg += fmt.Sprintf(" (retry after %v)", e.RetryAfter.Round(time.Second))
	}
	if err := e.Code.Err(); err != nil {
		msg += ": " + err.Error()
	}
	return msg
}

// Unwrap returns the code's sentinel.
func (e *Error) Unwrap() error { return e.Code.Err() }

// RetryAfter returns how long to wait before retrying after err: the
// relay's hint for ErrRateLimited and ErrTooManyAttempts, else 0.
func RetryAfter(err error) time.Duration {
	var e *Error
	if errors.As(err, &e) {
		return e.RetryAfter
	}
	return 0
}
