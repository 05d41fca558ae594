package blobs

import (
	"errors"
	"fmt"
	"time"

	"github.com/kinmesh/kinmesh/protocols/blobs/pb"
)

// Errors a relay reports. Each has a wire code (Code); the client returns
// the sentinel, wrapped in an *Error that names the relay's code.
var (
	// ErrNotFound means the relay holds no such blob: never uploaded,
	// deleted, or still being uploaded. Try another of the uploader's
	// relays.
	ErrNotFound = errors.New("blobs: no such blob on the relay")

	// ErrUnauthorized means a deletion proof did not verify against the
	// key registered with the upload. Nothing was deleted.
	ErrUnauthorized = errors.New("blobs: deletion proof refused")

	// ErrMalformed means a request failed validation (an id that does not
	// match its chunk hashes, a chunk out of order, a bad key). Nothing
	// changed; don't retry as is.
	ErrMalformed = errors.New("blobs: malformed request")

	// ErrTooLarge means a blob exceeds MaxBlobSize (or Seal was given more
	// than MaxPlaintext). Send smaller media.
	ErrTooLarge = errors.New("blobs: blob too large")

	// ErrQuota means the upload would take the uploader (the uploading
	// peer) over its quota of bytes or blobs on this relay. Delete old
	// media, or upload to another relay.
	ErrQuota = errors.New("blobs: uploader quota exceeded")

	// ErrRelayFull means the relay's disk budget for blobs is used up, or
	// its disk is nearly full (below the free space its operator keeps,
	// storage.WithMinFree). Upload to another relay; the operator may
	// raise the budget or free space.
	ErrRelayFull = errors.New("blobs: relay's blob storage is full")

	// ErrRateLimited means this peer sent more requests than the relay
	// allows, or an upload would take the peers at its address (IP
	// address, IPv6 /64) over their upload budget; nothing was done.
	// Retry after Error.RetryAfter, or upload to another relay.
	ErrRateLimited = errors.New("blobs: rate limit exceeded")

	// ErrCorrupt means an uploaded chunk did not match its announced hash;
	// the upload was dropped. Seal and upload again.
	ErrCorrupt = errors.New("blobs: chunk does not match its hash")

	// ErrUnavailable means the relay could not serve the request now (it is
	// closing, the same blob is being uploaded, or its store failed).
	// Nothing changed; retry later or on another relay.
	ErrUnavailable = errors.New("blobs: relay unavailable")
)

// Client-side errors.
var (
	// ErrBadBlob means a relay served chunks that do not match the id
	// asked for. Fetch from another relay.
	ErrBadBlob = errors.New("blobs: relay served data that does not match the blob id")

	// ErrDecrypt means Open could not decrypt a blob: a wrong key, or
	// altered chunks.
	ErrDecrypt = errors.New("blobs: blob does not decrypt")

	// ErrProtocol means the relay sent something this client does not
	// understand or did not ask for; the stream was abandoned.
	ErrProtocol = errors.New("blobs: protocol violation by the relay")
)

// Code is a result on the wire. CodeOK is success; every other code maps
// to a sentinel error (Err), except CodeExists, a success of Put.
type Code uint8

// The codes, as in pb.Code.
const (
	CodeOK           = Code(pb.Code_CODE_OK)
	CodeNotFound     = Code(pb.Code_CODE_NOT_FOUND)
	CodeUnauthorized = Code(pb.Code_CODE_UNAUTHORIZED)
	CodeMalformed    = Code(pb.Code_CODE_MALFORMED)
	CodeTooLarge     = Code(pb.Code_CODE_TOO_LARGE)
	CodeQuota        = Code(pb.Code_CODE_QUOTA)
	CodeRelayFull    = Code(pb.Code_CODE_RELAY_FULL)
	CodeRateLimited  = Code(pb.Code_CODE_RATE_LIMITED)
	CodeCorrupt      = Code(pb.Code_CODE_CORRUPT)
	CodeUnavailable  = Code(pb.Code_CODE_UNAVAILABLE)
	CodeExists       = Code(pb.Code_CODE_EXISTS)
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
	CodeQuota:        {"quota", ErrQuota},
	CodeRelayFull:    {"relay_full", ErrRelayFull},
	CodeRateLimited:  {"rate_limited", ErrRateLimited},
	CodeCorrupt:      {"corrupt", ErrCorrupt},
	CodeUnavailable:  {"unavailable", ErrUnavailable},
	CodeExists:       {"exists", nil},
}

// String returns the code's name as used in metric labels.
func (c Code) String() string {
	if int(c) < len(codeInfo) {
		return codeInfo[c].name
	}
	return fmt.Sprintf("code_%d", uint8(c))
}

// Err returns the sentinel of c: nil for CodeOK and CodeExists,
// ErrProtocol for a code this version does not know.
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
// against its code's sentinel (ErrQuota, ErrNotFound, …).
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
