package backup

import (
	"time"
)

// ID is the protocol id.
const ID = "/kinmesh/backup/1.0.0"

// ServiceName is the resource-manager service both sides' streams are
// attributed to.
const ServiceName = "kinmesh.backup"

// Namespace is the relay store namespace the service keeps backups in.
const Namespace = "backup"

// Sizes and caps.
const (
	// MinBucket and MaxBucket bound a backup's padded plaintext: its size
	// is a power of two between them (4 KiB, 8 KiB, …, 1 MiB), so the
	// ciphertext's size says which bucket the contents fall in and no
	// more.
	MinBucket = 4 << 10
	MaxBucket = 1 << 20
	// MaxContentsSize is the largest encoded Contents a backup carries.
	MaxContentsSize = MaxBucket - lengthSize
	// HeaderSize is the length of a sealed backup's clear header.
	HeaderSize = 55
	// MaxBlobSize is the largest sealed backup.
	MaxBlobSize = HeaderSize + MaxBucket + tagSize
	// CodeDigits is the length of a verification code.
	CodeDigits = 6

	lengthSize      = 4  // big-endian length of the contents, first in the plaintext
	tagSize         = 16 // Poly1305
	saltSize        = 16
	aeadNonceSize   = 24 // XChaCha20-Poly1305
	nonceSize       = 32 // challenge
	maxIdentitySize = 256

	maxRequestFrame  = 128
	maxOwnerFrame    = MaxBlobSize + 1024 // a put is the largest request
	maxResponseFrame = MaxBlobSize + 1024 // a fetched backup is the largest answer
)

// Status is what a relay holds for an account, as it reports after an
// owner operation.
type Status struct {
	// Verified: the account has a verified number on this relay, so it
	// may store a backup here.
	Verified bool
	// Held: the relay holds a backup for the account's number, uploaded
	// at UpdatedAt, Size bytes, kept until ExpiresAt unless refreshed.
	Held      bool
	UpdatedAt time.Time
	Size      int
	ExpiresAt time.Time
	// Removed, after Delete: a backup was removed.
	Removed bool
	// AttemptsLeft, with ErrWrongCode from Fetch: wrong codes left before
	// verification locks.
	AttemptsLeft int
}

// Fetched is a backup as Fetch returns it: still sealed.
type Fetched struct {
	Blob      []byte
	UpdatedAt time.Time
}
