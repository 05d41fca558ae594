// Package storage is kinmesh's encrypted datastore: one per node (device or
// relay), on Badger v4, with every value sealed under a store key, per-subsystem
// namespaces, TTL enforced twice, an expiry sweep, synced batches and opaque
// keys. It knows no protocol.
//
// # Use
//
//	st, err := storage.Open(dir, storage.WithProfile(storage.ProfileRelay))
//	defer st.Close()
//	mb := st.Namespace("mailbox")
//	key := mb.Opaque(mailboxID) + "/" + msgID // nothing readable on disk
//	err = mb.PutTTL(ctx, key, envelope, 15*24*time.Hour)
//
// Writes are synced (fsync before returning) unless the store was opened with
// WithSyncWrites(false); a Batch groups puts and deletes across namespaces into
// one atomic transaction and commits it with one fsync either way.
//
// # Files in the store directory
//
//	store.key   32 random bytes (mode 0600): the store key of a key-file store
//	store.kdf   JSON Argon2id parameters and salt of a passphrase store; the
//	            derived key is never written anywhere
//	LOCK, MANIFEST, KEYREGISTRY, DISCARD, *.sst, *.vlog, *.mem
//	            Badger's files: values under 1 KiB (sealed) live in the
//	            tables (*.sst), larger ones in the value log (*.vlog)
//	kinmesh.journal
//	            the store's commit log, on a store opened
//	            WithSyncWrites(false): Sync writes and syncs it instead of
//	            Badger's memory-mapped logs while nothing went to the
//	            value log, and Open replays into Badger what a power loss
//	            took of those commits (journal.go)
//
// A store has either store.key or store.kdf, never both.
//
// Badger memory-maps *.vlog, *.mem and *.sst (MAP_SHARED). On Linux the
// store pages its log mappings (*.vlog, *.mem) out of the process now and
// then with madvise(MADV_PAGEOUT) (WithTrimInterval; trim.go says why that
// loses nothing and is safe), so what it writes does not pile up in its
// RSS.
//
// # Badger keys
//
// Namespace names are plain (fixed strings such as "mailbox"); keys are the
// caller's bytes, so keys that would reveal metadata must come from
// (*Namespace).Opaque.
//
//	"d/" ns "/" key                      sealed value
//	"x/" be64(expiry) ns "/" key         expiry index entry (empty value)
//	"m/check"                            sealed check value, written at creation
//	"m/journal"                          be64(seq) of the last journaled commit
//
// be64(expiry) is the expiry as Unix nanoseconds, big-endian, so the index
// iterates in expiry order and a sweep stops at the first entry still alive.
// Index entries carry the same Badger TTL as the value they point to.
//
// # Sealed value
//
//	offset  size  field
//	0       1     version, 0x01
//	1       24    nonce, random
//	25      n+24  XChaCha20-Poly1305 ciphertext of the plaintext below, with its
//	              16-byte tag
//
//	plaintext: be64(expiry, Unix nanoseconds, 0 = never) || value (n bytes)
//	associated data: version || len(ns) (1 byte) || ns || key
//
// The associated data binds a value to its namespace and key: a value copied
// to another key, or any flipped bit, fails to open with ErrCorrupt. The check
// value is sealed the same way with the empty namespace and the key "check"
// (namespace names are never empty); failing to open it means ErrWrongKey.
//
// # Keys
//
// The 32-byte store key is random (store.key) or derived from a passphrase
// with Argon2id (store.kdf). Subkeys come from HKDF-SHA256 over it: one seals
// values ("kinmesh/storage/v1 seal"), and one per namespace keys the
// HMAC-SHA256 behind Opaque ("kinmesh/storage/v1 opaque" || 0x00 || ns).
//
// # Expiry
//
// PutTTL writes the expiry inside the sealed value, an expiry index entry and
// Badger's native TTL (real time, rounded up to the next second). Reads use the
// store's clock (WithClock): an expired value reads as ErrNotFound and wakes
// the sweeper. Sweep walks the index up to now and deletes the expired values
// and their index entries; it runs every WithSweepInterval, and value-log GC
// runs every WithGCInterval and after a sweep that freed much. Badger's native
// TTL is the backstop if no sweep ever runs.
//
// Batch.PutTTLGrouped is for values that come in bulk and expire in key order
// (a mailbox's items): the top bit of the sealed expiry marks the value as
// indexed by group, and the group has one entry, "y/" be64(due) ns "/" group,
// due when its first value expires, with a due record "g/" ns "/"
// be16(len(group)) group holding be64(due). Sweep walks those after the
// per-key index, deletes a due group's expired values from its first key on
// and moves the entry to the first value alive (group.go).
package storage
