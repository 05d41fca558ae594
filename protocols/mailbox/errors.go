package mailbox

import (
	"errors"
	"fmt"

	"github.com/kinmesh/kinmesh/protocols/mailbox/pb"
)

// Errors a relay reports, per envelope, per seq or per request. Each has a
// wire code (Code); the client returns the sentinel, wrapped.
var (
	// ErrMalformed means the relay refused a request that failed
	// validation (a bad mailbox id, an empty envelope, a frame that does
	// not decode). It is a bug in the sender or a version mismatch:
	// don't retry as is.
	ErrMalformed = errors.New("mailbox: malformed request")

	// ErrEnvelopeTooLarge means an envelope exceeds MaxEnvelopeSize and
	// was not stored. Split the content (large media travels separately).
	ErrEnvelopeTooLarge = errors.New("mailbox: envelope too large")

	// ErrBatchTooLarge means a request held more than MaxBatchItems
	// envelopes or MaxBatchBytes bytes. Client.Deposit splits batches
	// itself, so this comes only from a relay with lower limits.
	ErrBatchTooLarge = errors.New("mailbox: batch too large")

	// ErrMailboxFull means the mailbox holds as many items or bytes as the
	// relay allows; the envelope was not stored. It frees up when the
	// owner fetches and acks, or items expire: try another of the
	// recipient's relays, or later.
	ErrMailboxFull = errors.New("mailbox: mailbox full")

	// ErrRelayFull means the relay's disk is nearly full (below the free
	// space its operator keeps, storage.WithMinFree): it takes no new
	// envelopes until deliveries and expiry free space. Nothing was
	// stored: try another of the recipient's relays, or later.
	ErrRelayFull = errors.New("mailbox: relay full")

	// ErrUnknownMailbox means the relay keeps no mail for this mailbox:
	// its owner has not authenticated on this relay (which registers the
	// mailbox) within the registration period (WithRegistrationTTL), or
	// purged it since. Nothing was stored. The relay is not, or no longer,
	// one of the owner's home relays, or the owner has not come online
	// since choosing it: deposit on the owner's other relays and retry
	// later (the owner registers when it connects).
	ErrUnknownMailbox = errors.New("mailbox: unknown mailbox")

	// ErrRateLimited means this depositor (peer id), or all the peers at
	// its address together (WithSourceDepositRate), deposited more than
	// the relay allows, and the envelope was not stored (retry
	// after DepositResult.RetryAfter); or, from Session.Purge, that this
	// peer asked for more purges than the relay allows per minute, and
	// nothing was deleted (retry after the time the error gives); or, from
	// Client.Open, that the owner's address registered more new mailboxes
	// than the relay allows (WithSourceRegistrationRate).
	ErrRateLimited = errors.New("mailbox: deposit rate limit exceeded")

	// ErrUnauthorized means the relay refused a fetch, ack or purge on a
	// stream that has not proven ownership of a mailbox, or refused the
	// proof (wrong key, bad or replayed signature, expired challenge).
	ErrUnauthorized = errors.New("mailbox: unauthorized")

	// ErrNotFound is the per-seq result of Ack for a seq the mailbox does
	// not hold: never deposited, already acked, expired or purged. It
	// never fails the other seqs of the same Ack.
	ErrNotFound = errors.New("mailbox: no such item")

	// ErrUnavailable means the relay could not serve the request now (it
	// is shutting down, out of memory for it, or its store failed). Nothing
	// was changed; retry later or on another relay.
	ErrUnavailable = errors.New("mailbox: relay unavailable")
)

// Client-side errors.
var (
	// ErrUnconfirmed is the per-envelope result of Deposit when the
	// stream failed before the relay answered for that envelope: it may or
	// may not be stored. Deposit it again (recipients dedup by message id).
	ErrUnconfirmed = errors.New("mailbox: deposit not confirmed by the relay")

	// ErrSessionClosed is returned by Session methods once the session has
	// ended; Session.Err says why. Open a new session.
	ErrSessionClosed = errors.New("mailbox: session closed")

	// ErrProtocol means the relay sent something this client does not
	// understand or did not ask for; the stream is abandoned.
	ErrProtocol = errors.New("mailbox: protocol violation by the relay")

	// ErrBadMailboxID means a string is not a mailbox id.
	ErrBadMailboxID = errors.New("mailbox: malformed mailbox id")

	// ErrBadKey means bytes are not a mailbox auth key.
	ErrBadKey = errors.New("mailbox: malformed mailbox key")
)

// Code is a result on the wire: the relay's answer for one envelope, one
// seq or one request. CodeOK is success; every other code maps to a
// sentinel error (Err).
type Code uint8

// The codes, with their values on the wire (the protobuf enum Code).
const (
	CodeOK             Code = 0
	CodeMalformed      Code = 1
	CodeTooLarge       Code = 2
	CodeBatchTooLarge  Code = 3
	CodeMailboxFull    Code = 4
	CodeRateLimited    Code = 5
	CodeUnauthorized   Code = 6
	CodeNotFound       Code = 7
	CodeUnavailable    Code = 8
	CodeRelayFull      Code = 9
	CodeUnknownMailbox Code = 10
)

var codeInfo = [...]struct {
	name string
	err  error
}{
	CodeOK:             {"ok", nil},
	CodeMalformed:      {"malformed", ErrMalformed},
	CodeTooLarge:       {"too_large", ErrEnvelopeTooLarge},
	CodeBatchTooLarge:  {"batch_too_large", ErrBatchTooLarge},
	CodeMailboxFull:    {"mailbox_full", ErrMailboxFull},
	CodeRateLimited:    {"rate_limited", ErrRateLimited},
	CodeUnauthorized:   {"unauthorized", ErrUnauthorized},
	CodeNotFound:       {"not_found", ErrNotFound},
	CodeUnavailable:    {"unavailable", ErrUnavailable},
	CodeRelayFull:      {"relay_full", ErrRelayFull},
	CodeUnknownMailbox: {"unknown_mailbox", ErrUnknownMailbox},
}

// String returns the code's name, as used in metric labels ("ok",
// "mailbox_full", …).
func (c Code) String() string {
	if int(c) < len(codeInfo) {
		return codeInfo[c].name
	}
	return fmt.Sprintf("code_%d", uint8(c))
}

// Err returns the sentinel error for c: nil for CodeOK, ErrProtocol for a
// code this version does not know.
func (c Code) Err() error {
	if int(c) < len(codeInfo) {
		return codeInfo[c].err
	}
	return fmt.Errorf("unknown result code %d: %w", uint8(c), ErrProtocol)
}

// CodeOf returns the code of err (CodeOK for nil, CodeUnavailable for an
// error that is none of the relay's sentinels).
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

func (c Code) wire() pb.Code { return pb.Code(c) }

func codeFromWire(c pb.Code) Code {
	if c < 0 || c > 255 {
		return Code(255)
	}
	return Code(c)
}
