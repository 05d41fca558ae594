package backup

import (
	"errors"
	"fmt"
	"time"

	"github.com/kinmesh/kinmesh/protocols/backup/pb"
)

// Errors a relay reports. Each has a wire code (Code); the client returns
// the sentinel, wrapped in an *Error that names the relay's code.
var (
	// ErrMalformed means a request failed validation (a bad identity, a
	// code that is not 6 digits, a backup whose header or size is not
	// one this protocol makes). Nothing changed; don't retry as is.
	ErrMalformed = errors.New("backup: malformed request")

	// ErrTooLarge means a frame exceeded its size cap. A backup is at
	// most MaxBlobSize bytes.
	ErrTooLarge = errors.New("backup: request too large")

	// ErrUnauthorized means the relay refused the account's proof: a
	// signature by another identity, or over another nonce, relay, peer
	// or request. Nothing changed. It is a bug or an attack; don't retry
	// as is.
	ErrUnauthorized = errors.New("backup: account proof refused")

	// ErrRateLimited means this peer or account made more requests than
	// the relay allows. Nothing was done. Retry after Error.RetryAfter
	// (see RetryAfter).
	ErrRateLimited = errors.New("backup: rate limit exceeded")

	// ErrNotVerified means the account has no verified phone number on
	// this relay: a relay stores a backup only under a number verified
	// there. Verify the number on the relay first.
	ErrNotVerified = errors.New("backup: no verified phone number on this relay; verify one first")

	// ErrNoBackup means the relay holds no backup for the number (never
	// uploaded here, deleted, expired, or the number is no longer linked
	// to the account that uploaded it). Try another relay.
	ErrNoBackup = errors.New("backup: this relay holds no backup for that number")

	// ErrQuota means the relay holds as many backups as it will
	// (DefaultMaxBackups). Use another relay.
	ErrQuota = errors.New("backup: the relay's backup store is full")

	// ErrUnavailable means the relay could not serve the request now (it
	// is closing, busy or its store failed). Retry later or on another
	// relay.
	ErrUnavailable = errors.New("backup: relay unavailable")

	// ErrNoCode means no verification code is pending for the identity
	// that asks to fetch: ask the relay for a code first
	// (protocols/discovery's RequestCode, with the same identity).
	ErrNoCode = errors.New("backup: no verification code pending; ask for a code first")

	// ErrCodeExpired means the pending code expired. Ask for a new one.
	ErrCodeExpired = errors.New("backup: the verification code expired; ask for a new one")

	// ErrWrongCode means the code is not the one the relay sent. The
	// Status returned with it says how many attempts are left.
	ErrWrongCode = errors.New("backup: wrong verification code")

	// ErrTooManyAttempts means too many wrong codes for the identity or
	// the number: verification is locked until Error.RetryAfter. The
	// pending code is void.
	ErrTooManyAttempts = errors.New("backup: too many wrong codes; verification is locked for a while")
)

// Client-side and sealing errors.
var (
	// ErrProtocol means the relay sent something this client does not
	// understand or did not ask for; the stream was abandoned.
	ErrProtocol = errors.New("backup: protocol violation by the relay")

	// ErrInvalidSecret means a string is not a recovery secret: not 32
	// letters and digits (A–Z, 2–7) or its check characters don't match
	// — most likely a typo. Nothing was tried with it.
	ErrInvalidSecret = errors.New("backup: not a recovery secret; check it for typos (8 groups of 4 letters A-Z and digits 2-7)")

	// ErrWrongSecret means the secret does not open the backup: it is
	// not the secret this backup was made with (or the backup was
	// altered). Nothing was restored.
	ErrWrongSecret = errors.New("backup: the recovery secret does not open this backup")

	// ErrBadBlob means a sealed backup is not in this format (bad magic,
	// version, key-derivation parameters out of bounds, or a size that is
	// not a bucket's).
	ErrBadBlob = errors.New("backup: not a kinmesh backup")

	// ErrBadContents means a backup opened but its contents are not valid
	// (they were not written by a kinmesh node).
	ErrBadContents = errors.New("backup: backup contents are not valid")

	// ErrContentsTooLarge means the contents exceed MaxContentsSize.
	ErrContentsTooLarge = errors.New("backup: contents exceed the largest backup (1 MiB)")
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
	CodeNotVerified     = Code(pb.Code_CODE_NOT_VERIFIED)
	CodeNoBackup        = Code(pb.Code_CODE_NO_BACKUP)
	CodeQuota           = Code(pb.Code_CODE_QUOTA)
	CodeUnavailable     = Code(pb.Code_CODE_UNAVAILABLE)
	CodeNoCode          = Code(pb.Code_CODE_NO_CODE)
	CodeCodeExpired     = Code(pb.Code_CODE_CODE_EXPIRED)
	CodeWrongCode       = Code(pb.Code_CODE_WRONG_CODE)
	CodeTooManyAttempts = Code(pb.Code_CODE_TOO_MANY_ATTEMPTS)
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
	CodeNotVerified:     {"not_verified", ErrNotVerified},
	CodeNoBackup:        {"no_backup", ErrNoBackup},
	CodeQuota:           {"quota", ErrQuota},
	CodeUnavailable:     {"unavailable", ErrUnavailable},
	CodeNoCode:          {"no_code", ErrNoCode},
	CodeCodeExpired:     {"code_expired", ErrCodeExpired},
	CodeWrongCode:       {"wrong_code", ErrWrongCode},
	CodeTooManyAttempts: {"too_many_attempts", ErrTooManyAttempts},
}

// String returns the code's name as used in metric labels ("ok",
// "no_backup", …).
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
// against its code's sentinel (ErrNoBackup, ErrWrongCode, …).
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
