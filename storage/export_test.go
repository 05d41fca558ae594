package storage

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"

	badger "github.com/dgraph-io/badger/v4"
)

// Test hooks; see STYLE.md: never mutable package variables.

// FastKDF makes new passphrase stores use cheap Argon2id parameters.
func FastKDF() Option {
	return withKDFParams(kdfParams{Version: 1, KDF: "argon2id", Time: 1, MemoryKiB: 64, Threads: 1})
}

// DeriveKey derives the store key of the passphrase store in dir, as Open
// does.
func DeriveKey(dir string, passphrase []byte) ([]byte, error) {
	b, err := readSmallFile(filepath.Join(dir, KDFFileName), maxKDFFileLen+1)
	if err != nil {
		return nil, err
	}
	p, err := decodeKDFParams(b)
	if err != nil {
		return nil, err
	}
	return p.derive(passphrase), nil
}

// BeforeGroupSettle runs f inside a group sweep's transaction just before
// it moves or deletes the group's entry.
func BeforeGroupSettle(f func()) Option { return withBeforeGroupSettle(f) }

// CompactAt is how many level-0 tables start a compaction of a store with
// profile p whose levels are levels.
func CompactAt(p Profile, levels []badger.LevelInfo) int { return compactAt(p.sizes(), levels) }

// CompactNow runs one look of the compaction loop: level-0 tables left,
// and whether it is waiting for writes to pause.
func CompactNow(s *Store) (int, bool) { return s.compact() }

// RawDB returns the store's Badger handle.
func RawDB(s *Store) *badger.DB { return s.db }

// DataKey returns the Badger key of key in namespace ns.
func DataKey(ns, key string) []byte { return dataKey(ns, key) }

// IndexEntries returns the namespace and key of every expiry index entry, in
// index order.
func IndexEntries(s *Store) ([][2]string, error) {
	var out [][2]string
	err := s.db.View(func(txn *badger.Txn) error {
		prefix := []byte(prefixExpiry)
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
		defer it.Close()
		for it.Rewind(); it.ValidForPrefix(prefix); it.Next() {
			_, ns, key, ok := parseIndexKey(it.Item().Key())
			if !ok {
				ns, key = "?", string(it.Item().Key())
			}
			out = append(out, [2]string{ns, key})
		}
		return nil
	})
	return out, err
}

// GroupEntries returns the namespace and group of every group index entry
// (Batch.PutTTLGrouped), in index order.
func GroupEntries(s *Store) ([][2]string, error) {
	var out [][2]string
	err := s.db.View(func(txn *badger.Txn) error {
		prefix := []byte(prefixGroup)
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
		defer it.Close()
		for it.Rewind(); it.ValidForPrefix(prefix); it.Next() {
			_, ns, group, ok := parseGroupKey(it.Item().Key())
			if !ok {
				ns, group = "?", string(it.Item().Key())
			}
			out = append(out, [2]string{ns, group})
		}
		return nil
	})
	return out, err
}

// CountRaw returns how many Badger keys start with prefix.
func CountRaw(s *Store, prefix string) (int, error) {
	n := 0
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(prefix)})
		defer it.Close()
		for it.Rewind(); it.ValidForPrefix([]byte(prefix)); it.Next() {
			n++
		}
		return nil
	})
	return n, err
}

// BadgerOptions returns the Badger options Open uses, for baselines.
func BadgerOptions(dir string, p Profile, sync bool) badger.Options {
	return badgerOptions(dir, p, sync, nil)
}

// CollectGarbage runs value-log GC now.
func CollectGarbage(s *Store) { s.collectGarbage(s.ctx) }

// OnLogSynced makes s call f with the name of every log file its Sync
// syncs beyond Badger's DB.Sync, and "." for the directory.
func OnLogSynced(s *Store, f func(name string)) {
	s.logs.mu.Lock()
	s.logs.synced = f
	s.logs.mu.Unlock()
	if s.j != nil {
		s.j.wmu.Lock()
		s.j.synced = f
		s.j.wmu.Unlock()
	}
}

// JournalFile is the name of the store's journal file.
const JournalFile = journalFile

// JournalIdle reports whether no background Sync of the journal
// (flushIfCrowded) is under way.
func JournalIdle(s *Store) bool { return s.j == nil || !s.j.flush.Load() }

// HasJournal reports whether s keeps a journal.
func HasJournal(s *Store) bool { return s.j != nil }

// FailPreallocate makes writing the journal's zeros fail as on a full
// disk, until the test ends.
func FailPreallocate(t testing.TB) {
	old := preallocate
	preallocate = func(*os.File, int64, int64) error { return syscall.ENOSPC }
	t.Cleanup(func() { preallocate = old })
}
