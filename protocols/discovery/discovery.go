package discovery

import (
	"time"
)

// ID is the protocol id.
const ID = "/kinmesh/discovery/1.0.0"

// ServiceName is the resource-manager service both sides' streams are
// attributed to.
const ServiceName = "kinmesh.discovery"

// Namespace is the relay store namespace the service keeps its key,
// verifications and directory in.
const Namespace = "discovery"

// Sizes and caps.
const (
	// MaxBatch caps the blinded elements of one Evaluate request; the
	// client splits larger address books into batches.
	MaxBatch = 1024
	// MaxPageEntries caps the entries of one directory page.
	MaxPageEntries = 1024
	// CodeDigits is the length of a verification code.
	CodeDigits = 6
	// IDSize is the length of a directory id.
	IDSize = 16
	// OutputSize is the length of an OPRF output (ristretto255-SHA512).
	OutputSize = 64

	// MaxCopyEntries caps the entries of a client's copy of one relay's
	// directory (a Directory, and the node's stored copy): a full
	// relay's (DefaultMaxEntries).
	MaxCopyEntries = DefaultMaxEntries
	// MaxCopyBytes caps the sealed records of a copy: a full relay's
	// entries at about 2 KB each, on average (a record with three home
	// relays takes about 1.8 KB, its box 40 bytes more).
	MaxCopyBytes = 768 << 20
	// MaxSyncPages caps the pages of one sync: twice what a first sync of
	// a copy at both caps needs (3072 pages of 256 KiB of entries), and
	// more than a first sync of a full directory's entries and as many
	// deletions needs (391 pages each).
	MaxSyncPages = 8192
	// DefaultSyncTimeout bounds one directory sync as a whole
	// (WithSyncTimeout's default; the node bounds a sync of its stored
	// copy the same).
	DefaultSyncTimeout = 10 * time.Minute

	elementSize = 32 // ristretto255 element
	proofSize   = 64 // DLEQ proof: two scalars
	nonceSize   = 32 // challenge
	boxNonce    = 24 // XChaCha20-Poly1305 nonce

	maxRecordSize   = 8 << 10 // contact.MaxRecordSize
	maxBoxSize      = boxNonce + maxRecordSize + 16
	maxIdentitySize = 256 // e2ee refuses more
	maxNumberLen    = 64  // before normalisation

	maxRequestFrame  = 128                             // hello and list
	maxOwnerFrame    = MaxBatch*(elementSize+3) + 1024 // evaluate is the largest body
	maxPageBytes     = 256 << 10                       // entries of one page, soft
	maxResponseFrame = maxPageBytes + maxBoxSize + 1024
)

// Status is what a relay holds for an account, as it reports after an
// account operation.
type Status struct {
	// Verified: the account has a verified number on this relay, linked
	// since VerifiedAt, with an entry in the relay's directory.
	Verified   bool
	VerifiedAt time.Time
	// Pending: a code was sent and can be submitted until CodeExpires,
	// with AttemptsLeft wrong codes allowed before the account is locked.
	Pending      bool
	CodeExpires  time.Time
	AttemptsLeft int
	// LockedUntil, if in the future, is when the account may ask for
	// codes and submit them again (after too many wrong codes).
	LockedUntil time.Time
	// EvaluationsLeft is how many numbers the account may look up now:
	// the smaller of its own budget and its verified number's.
	EvaluationsLeft int
	// PublicKey is the relay's OPRF public key.
	PublicKey PublicKey
	// Removed, after Unenrol: how many directory entries were removed
	// (0 or 1).
	Removed int
}
