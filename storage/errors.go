package storage

import "errors"

var (
	// ErrNotFound is returned by Get when the key has no value, or its value
	// has expired.
	ErrNotFound = errors.New("storage: not found")

	// ErrWrongKey is returned by Open when the store cannot be decrypted with
	// the key file or passphrase given: check the passphrase, or restore the
	// store.key that belongs to this directory.
	ErrWrongKey = errors.New("storage: wrong key or passphrase for this store")

	// ErrCorrupt is returned when a stored value fails authentication: it was
	// damaged on disk or tampered with. Delete the key (or restore the store
	// from a backup); the rest of the store is unaffected.
	ErrCorrupt = errors.New("storage: value corrupt or tampered with")

	// ErrClosed is returned by every operation on a Store after Close.
	ErrClosed = errors.New("storage: store closed")

	// ErrInvalidKey is returned for a key that is empty or longer than
	// MaxKeyLen bytes.
	ErrInvalidKey = errors.New("storage: invalid key: keys must be 1 to 1024 bytes")

	// ErrInvalidTTL is returned by PutTTL for a TTL that is not positive or
	// is longer than MaxTTL.
	ErrInvalidTTL = errors.New("storage: invalid ttl: it must be positive and at most 100 years")

	// ErrTooLarge is returned for a value longer than MaxValueLen, or a Batch
	// too large for one transaction: split the value or the batch.
	ErrTooLarge = errors.New("storage: value or batch too large: split it")

	// ErrConflict is returned by a commit with deletes (a delete reads its
	// key) that kept conflicting with concurrent writers to the same keys
	// through its retries: nothing was written; commit it again, or
	// serialize the writers.
	ErrConflict = errors.New("storage: commit kept conflicting with concurrent writers: retry")

	// ErrLocked is returned by Open when the directory is in use by another
	// process, or by another open Store in this process: close that one first.
	ErrLocked = errors.New("storage: directory in use by another process or Store")
)
