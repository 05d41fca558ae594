package moments

import (
	"errors"
	"fmt"
	"time"

	"github.com/kinmesh/kinmesh/protocols/moments/pb"
)

// Errors of frames and of the relay protocol. A relay reports each with a
// wire code (Code); the client returns the sentinel wrapped in an *Error.
// Validators reject frames failing with ErrMalformed, ErrTooLarge or
// ErrSignature (the sending peer loses gossipsub score) and ignore the
// rest.
var (
	// ErrMalformed means a frame or request failed validation: it does not
	// decode, or a field is out of range. Drop it; don't retry as is.
	ErrMalformed = errors.New("moments: malformed frame or request")

	// ErrTooLarge means a frame exceeds MaxFrameSize, a request its frame
	// cap, or a post or its media the limits (MaxTextLen, MaxPhotoSize,
	// MaxVideoSize, MaxMedia).
	ErrTooLarge = errors.New("moments: too large")

	// ErrSignature means a frame's signature does not verify under the
	// key its kind requires: a post or tombstone not from the feed's
	// author, a reaction not from its audience, a withdrawal not from the
	// reaction's author. Drop it; the sender is forging.
	ErrSignature = errors.New("moments: bad signature")

	// ErrStale means a frame or a signed request is older (or further in
	// the future) than allowed: a replay, or a badly set clock.
	ErrStale = errors.New("moments: stale frame or request")

	// ErrUnknownTopic means a frame arrived on a topic nobody registered
	// here (relay), or this device follows no feed on (device).
	ErrUnknownTopic = errors.New("moments: unknown topic")

	// ErrDeleted means a frame refers to a deleted moment or a withdrawn
	// reaction; it was not kept.
	ErrDeleted = errors.New("moments: moment deleted or reaction withdrawn")

	// ErrNotHeld means the relay does not hold the moment a reaction is
	// for, or the reaction a withdrawal takes back: not yet (it may still
	// be on its way, from its author's outbox: retry later, as for
	// ErrUnavailable), or no more (dropped with its epoch).
	ErrNotHeld = errors.New("moments: the relay does not hold the moment or reaction the frame refers to")

	// ErrNotFound means the relay holds no such feed, or the device no
	// such moment.
	ErrNotFound = errors.New("moments: not found")

	// ErrUnauthorized means the relay refused a request's signature (not
	// the feed's owner key, not the topic's audience key, or stale).
	ErrUnauthorized = errors.New("moments: unauthorized")

	// ErrQuota means keeping the frame would exceed the feed's caps (items,
	// bytes, reactions per moment) or the relay's cap on feeds. Delete old
	// moments, or use another relay.
	ErrQuota = errors.New("moments: quota exceeded")

	// ErrRateLimited means this peer sent more requests (or a topic more
	// frames) than allowed; nothing was done. Retry after Error.RetryAfter.
	ErrRateLimited = errors.New("moments: rate limit exceeded")

	// ErrUnavailable means the relay could not serve the request now.
	// Nothing changed; retry later or on another relay.
	ErrUnavailable = errors.New("moments: relay unavailable")
)

// Errors of the device engine.
var (
	// ErrProtocol means a relay sent something this client does not
	// understand or did not ask for.
	ErrProtocol = errors.New("moments: protocol violation by the relay")

	// ErrEmpty means a moment has neither text nor media, or a comment no
	// text.
	ErrEmpty = errors.New("moments: empty moment: give text, a photo or a video")

	// ErrMediaType means a medium is neither image/* nor video/*.
	ErrMediaType = errors.New("moments: media must be image/* or video/*")

	// ErrNotAuthor means only a moment's author may do that (delete it).
	ErrNotAuthor = errors.New("moments: only the author can delete a moment")

	// ErrNoRelays means no home relay took the moment's media: the moment
	// was not posted. Check the node's relay connections and retry.
	ErrNoRelays = errors.New("moments: no home relay took the media; check relay connections and retry")

	// ErrMediaUnavailable means none of the author's relays served a
	// medium (deleted, or the relays are unreachable).
	ErrMediaUnavailable = errors.New("moments: media unavailable from the author's relays")

	// ErrClosed means the engine has been closed.
	ErrClosed = errors.New("moments: closed")
)

// Code is a relay's result on the wire. CodeOK is success; every other
// code maps to a sentinel error (Err).
type Code uint8

// The codes, as in pb.Code.
const (
	CodeOK           = Code(pb.Code_CODE_OK)
	CodeNotFound     = Code(pb.Code_CODE_NOT_FOUND)
	CodeUnauthorized = Code(pb.Code_CODE_UNAUTHORIZED)
	CodeMalformed    = Code(pb.Code_CODE_MALFORMED)
	CodeTooLarge     = Code(pb.Code_CODE_TOO_LARGE)
	CodeQuota        = Code(pb.Code_CODE_QUOTA)
	CodeRateLimited  = Code(pb.Code_CODE_RATE_LIMITED)
	CodeUnavailable  = Code(pb.Code_CODE_UNAVAILABLE)
	CodeDeleted      = Code(pb.Code_CODE_DELETED)
	CodeNotHeld      = Code(pb.Code_CODE_NOT_HELD)
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
	CodeRateLimited:  {"rate_limited", ErrRateLimited},
	CodeUnavailable:  {"unavailable", ErrUnavailable},
	CodeDeleted:      {"deleted", ErrDeleted},
	CodeNotHeld:      {"not_held", ErrNotHeld},
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

// CodeOf returns the code of err: CodeOK for nil; frame errors map to
// CodeMalformed, CodeTooLarge or CodeUnauthorized; anything else unknown
// to CodeUnavailable.
func CodeOf(err error) Code {
	switch {
	case err == nil:
		return CodeOK
	case errors.Is(err, ErrSignature), errors.Is(err, ErrStale):
		return CodeUnauthorized
	case errors.Is(err, ErrUnknownTopic):
		return CodeNotFound
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
// against its code's sentinel.
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

// rejects reports whether a frame failing with err should cost its sender
// gossipsub score (a forgery or garbage), rather than be ignored.
func rejects(err error) bool {
	return errors.Is(err, ErrMalformed) || errors.Is(err, ErrTooLarge) || errors.Is(err, ErrSignature)
}
