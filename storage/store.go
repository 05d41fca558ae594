package storage

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	badger "github.com/dgraph-io/badger/v4"
)

const (
	// MaxKeyLen is the longest key, in bytes.
	MaxKeyLen = 1024
	// MaxValueLen is the longest value, in bytes. Larger blobs must be split.
	MaxValueLen = 4 << 20
	// MaxTTL is the longest TTL.
	MaxTTL = 100 * 365 * 24 * time.Hour
	// maxNamespaceLen is the longest namespace name.
	maxNamespaceLen = 64

	// conflictRetries is how often a transaction that read what it writes is
	// retried after a conflict with a concurrent writer.
	conflictRetries = 5
	// gcDiscardRatio is the share of garbage that makes Badger rewrite a
	// value-log file (Badger's recommended 0.5).
	gcDiscardRatio = 0.5
)

// Store is an encrypted datastore in one directory. It is safe for concurrent
// use.
type Store struct {
	dir    string
	cfg    config
	log    *slog.Logger
	db     *badger.DB
	sealer *sealer

	mu         sync.Mutex // guards closed and namespaces
	closed     bool
	namespaces map[string]*Namespace
	ops        sync.WaitGroup // operations in flight

	ctx       context.Context // cancelled by Close
	cancel    context.CancelFunc
	bg        sync.WaitGroup
	sweepKick chan struct{}
	gcKick    chan struct{}
	// compactKick wakes compactLoop; nil when Badger compacts by itself.
	compactKick chan struct{}
	// lastWrite is when the last write was committed (unix ns), for
	// compactLoop.
	lastWrite atomic.Int64
	// trimKick wakes trimLoop; nil when the store does not trim (trim.go).
	trimKick    chan struct{}
	trimWritten atomic.Int64 // bytes written since the last trim
	trims       atomic.Int64 // trims done by trimLoop
	sweepMu     sync.Mutex   // one sweep at a time
	closeOnce   sync.Once
	closeErr    error
	logs        logSync
	space       spaceCheck // LowOnSpace

	// vlogWrites counts writes that may have put a value into the value
	// log (and value-log GC rounds), vlogSynced is what it was when a
	// DB.Sync last started, and vlogBusy is how many GC rounds are under
	// way: syncAll leaves the value log alone while nothing may have
	// written to it.
	vlogWrites, vlogSynced atomic.Uint64
	vlogBusy               atomic.Int32
	valueThreshold         int

	// j is the store's commit log (journal.go); nil when Badger syncs
	// every write itself (WithSyncWrites).
	j *journal
}

// Open opens the store in dir, creating dir (mode 0700), the Badger files and
// the key file or passphrase parameters if they are missing.
//
// Defaults: a random key in DIR/store.key, the real clock, slog.Default(),
// ProfileDevice, synced writes, an expiry sweep every 10 minutes,
// value-log GC every 15 minutes and the profile's pace of trimming mapped
// pages (WithTrimInterval).
//
// Open returns ErrLocked if dir is in use, and ErrWrongKey if the key file or
// passphrase does not open this store.
func Open(dir string, opts ...Option) (*Store, error) {
	cfg := defaultConfig()
	for _, o := range opts {
		if err := o(&cfg); err != nil {
			return nil, fmt.Errorf("storage: open %s: %w", dir, err)
		}
	}
	defer clear(cfg.passphrase)
	if cfg.logger == nil {
		cfg.logger = slog.Default()
	}
	log := cfg.logger.With("component", "storage")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("storage: create %s (check the path and its permissions): %w", dir, err)
	}

	// Badger takes the directory lock first, so nothing below races another
	// process opening the same directory.
	bo := badgerOptions(dir, cfg.profile, cfg.syncWrites, badgerLogger{cfg.logger.With("component", "badger")})
	db, err := badger.Open(bo)
	if err != nil {
		if strings.Contains(err.Error(), "Another process is using this Badger database") {
			return nil, fmt.Errorf("storage: open %s: %w", dir, ErrLocked)
		}
		return nil, fmt.Errorf("storage: open %s: %w", dir, err)
	}
	s, err := newStore(dir, cfg, log, db)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("storage: open %s: %w", dir, err), db.Close())
	}
	return s, nil
}

func newStore(dir string, cfg config, log *slog.Logger, db *badger.DB) (*Store, error) {
	check, err := readCheck(db)
	if err != nil {
		return nil, err
	}
	ks, err := readKeySource(dir)
	if err != nil {
		return nil, err
	}
	key, err := resolveKey(dir, ks, &cfg, check == nil)
	if err != nil {
		return nil, err
	}
	sl, err := newSealer(key)
	clear(key)
	if err != nil {
		return nil, err
	}
	if check != nil {
		if _, _, err := sl.open("", checkKey, check); err != nil {
			return nil, ErrWrongKey
		}
	} else {
		sealed := sl.seal("", checkKey, 0, []byte("kinmesh storage"))
		if err := db.Update(func(txn *badger.Txn) error { return txn.Set([]byte(keyCheckValue), sealed) }); err != nil {
			return nil, fmt.Errorf("write check value: %w", err)
		}
		if err := db.Sync(); err != nil {
			return nil, fmt.Errorf("sync check value: %w", err)
		}
	}
	if fi, err := os.Stat(filepath.Join(dir, KeyFileName)); err == nil && runtime.GOOS != "windows" && fi.Mode().Perm()&0o077 != 0 {
		log.Warn("key file is readable by other users: chmod 600 it", "file", filepath.Join(dir, KeyFileName), "mode", fi.Mode().Perm())
	}
	cfg.passphrase = nil // Open clears the bytes
	ctx, cancel := context.WithCancel(context.Background())
	s := &Store{
		dir:        dir,
		cfg:        cfg,
		log:        log,
		db:         db,
		sealer:     sl,
		namespaces: make(map[string]*Namespace),
		ctx:        ctx,
		cancel:     cancel,
		sweepKick:  make(chan struct{}, 1),
		gcKick:     make(chan struct{}, 1),

		valueThreshold: int(db.Opts().ValueThreshold),
	}
	if !cfg.syncWrites {
		j, n, err := openJournal(dir, cfg.profile.sizes().journalSize, db, s.fullSync)
		if n > 0 {
			log.Info("replayed commits Badger had lost from the journal", "commits", n)
		}
		switch {
		case errors.Is(err, errNoJournal):
			// A full disk: the store still opens, and syncs through Badger.
			log.Warn("no room for the store's journal: syncing through Badger", "err", err)
		case err != nil:
			return nil, errors.Join(err, s.logs.close())
		}
		s.j = j
	}
	if cfg.sweepInterval > 0 || cfg.gcInterval > 0 {
		s.bg.Add(1)
		go s.background()
	}
	if cfg.profile.sizes().numCompactors == 0 {
		s.compactKick = make(chan struct{}, 1)
		s.bg.Add(1)
		go s.compactLoop()
	}
	if busy, _ := cfg.trimIntervals(); busy > 0 && canTrim {
		s.trimKick = make(chan struct{}, 1)
		s.bg.Add(1)
		go s.trimLoop()
	}
	log.Debug("store open", "dir", dir, "profile", cfg.profile, "sync_writes", cfg.syncWrites, "new", check == nil)
	return s, nil
}

func readCheck(db *badger.DB) ([]byte, error) {
	check, err := readRaw(db, keyCheckValue)
	if err != nil {
		return nil, fmt.Errorf("read check value: %w", err)
	}
	return check, nil
}

// readRaw returns a copy of the value under the Badger key key, nil if
// there is none.
func readRaw(db *badger.DB, key string) ([]byte, error) {
	var v []byte
	err := db.View(func(txn *badger.Txn) error {
		item, err := txn.Get([]byte(key))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		v, err = item.ValueCopy(nil)
		return err
	})
	return v, err
}

// acquire registers an operation; it fails with ErrClosed after Close.
func (s *Store) acquire() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	s.ops.Add(1)
	return nil
}

func (s *Store) release() { s.ops.Done() }

// alive reports an error once ctx is done or Close has begun, for loops.
func (s *Store) alive(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if s.ctx.Err() != nil {
		return ErrClosed
	}
	return nil
}

// Close stops the sweep, GC and trimming, waits for operations in flight
// and closes Badger. It is safe to call more than once; later calls return
// nil.
func (s *Store) Close() error {
	first := false
	s.closeOnce.Do(func() {
		first = true
		s.cancel() // first, so loops in flight see it once ops fail
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		s.bg.Wait()
		s.ops.Wait()
		err := errors.Join(s.db.Close(), s.logs.close())
		if s.j != nil {
			err = errors.Join(err, s.j.close())
		}
		if err != nil {
			s.closeErr = fmt.Errorf("storage: close %s: %w", s.dir, err)
		}
		s.log.Debug("store closed", "dir", s.dir)
	})
	if !first {
		return nil
	}
	return s.closeErr
}

// Wipe closes the store and erases its directory; see Wipe.
func (s *Store) Wipe() error {
	return errors.Join(s.Close(), Wipe(s.dir))
}

// Wipe erases the store in dir, which must not be open: it overwrites the key
// file (or the passphrase salt) with random bytes and syncs it, so what
// remains of the data on flash cannot be decrypted any more, then removes dir.
func Wipe(dir string) error {
	var errs []error
	for _, name := range []string{KeyFileName, KDFFileName} {
		if err := shred(filepath.Join(dir, name)); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("storage: wipe %s: %w", dir, err)
	}
	return nil
}

func shred(path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	fi, err := f.Stat()
	if err == nil {
		junk := make([]byte, fi.Size())
		rand.Read(junk)
		if _, err = f.WriteAt(junk, 0); err == nil {
			err = f.Sync()
		}
	}
	return errors.Join(err, f.Close())
}

// spaceCheck caches LowOnSpace's answer for a second: relays ask on
// every deposit and upload.
type spaceCheck struct {
	at     atomic.Int64 // unix nanoseconds of the last statfs; 0 for never
	low    atomic.Bool
	warned atomic.Bool // an error was logged
}

// spaceCheckEvery is how long LowOnSpace trusts its last statfs.
const spaceCheckEvery = time.Second

// LowOnSpace reports whether the file system holding the store has less
// space available than WithMinFree asks for (checked at most once a
// second). It is false without a floor, and when the file system can't
// tell (a platform without statfs, or an error, which is logged).
// Writes are not refused by the store itself: callers refuse new data
// and keep taking deletions, which free space.
func (s *Store) LowOnSpace() bool {
	if s.cfg.minFree == 0 {
		return false
	}
	now := time.Now()
	if at := s.space.at.Load(); at != 0 && now.Sub(time.Unix(0, at)) < spaceCheckEvery {
		return s.space.low.Load()
	}
	s.space.at.Store(now.UnixNano())
	free, err := freeSpace(s.dir)
	if err != nil {
		if !s.space.warned.Swap(true) {
			s.log.Warn("free disk space unknown: the floor is not enforced", "err", err)
		}
		s.space.low.Store(false)
		return false
	}
	low := free < s.cfg.minFree
	if was := s.space.low.Swap(low); was != low {
		s.log.Warn("free disk space", "low", low, "free_bytes", free, "min_free_bytes", s.cfg.minFree)
	}
	return low
}

// FreeSpace returns the bytes available to this process's user on the
// file system holding the store.
func (s *Store) FreeSpace() (uint64, error) { return freeSpace(s.dir) }

// DiskUsage returns the bytes the store's files occupy on disk.
func (s *Store) DiskUsage(ctx context.Context) (uint64, error) {
	if err := s.acquire(); err != nil {
		return 0, err
	}
	defer s.release()
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return 0, fmt.Errorf("storage: disk usage: %w", err)
	}
	var total uint64
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			continue // removed meanwhile (compaction)
		}
		total += allocatedSize(fi)
	}
	return total, nil
}

// Namespace returns the namespace called name. Names are fixed strings of 1
// to 64 characters from a-z, 0-9, '.', '_' and '-'; Namespace panics on any
// other name, a programming error.
func (s *Store) Namespace(name string) *Namespace {
	if !validNamespace(name) {
		panic(fmt.Sprintf("storage: invalid namespace name %q", name))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if n, ok := s.namespaces[name]; ok {
		return n
	}
	n := &Namespace{s: s, name: name, opaqueKey: s.sealer.opaqueKey(name)}
	s.namespaces[name] = n
	return n
}

func validNamespace(name string) bool {
	if len(name) == 0 || len(name) > maxNamespaceLen {
		return false
	}
	for _, c := range []byte(name) {
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

func validKey(key string) error {
	if len(key) == 0 || len(key) > MaxKeyLen {
		return ErrInvalidKey
	}
	return nil
}

// now returns the store clock as Unix nanoseconds, at least 1.
func (s *Store) now() uint64 {
	n := s.cfg.now().UnixNano()
	if n < 1 {
		return 1
	}
	return uint64(n)
}

// expired reports whether a sealed expiry (0: never) has passed at now.
func expired(sealed, now uint64) bool {
	expiry, _ := splitExpiry(sealed)
	return expiry != 0 && now >= expiry
}

// kickSweep wakes the background sweeper, if there is one.
func (s *Store) kickSweep() {
	if s.cfg.sweepInterval == 0 {
		return
	}
	select {
	case s.sweepKick <- struct{}{}:
	default:
	}
}

func (s *Store) kickGC() {
	if s.cfg.gcInterval == 0 {
		return
	}
	select {
	case s.gcKick <- struct{}{}:
	default:
	}
}

// update runs fn in a read-write transaction and commits it, retrying on a
// conflict with a concurrent writer. With sync, the commit is flushed to disk
// even when the store does not sync every write.
func (s *Store) update(sync bool, fn func(txn *wtxn) error) error {
	for attempt := 0; ; attempt++ {
		txn := s.newWTxn()
		err := fn(txn)
		if err == nil {
			err = s.commit(txn)
		}
		txn.Discard()
		if errors.Is(err, badger.ErrConflict) && attempt < conflictRetries {
			continue
		}
		if errors.Is(err, badger.ErrTxnTooBig) {
			return ErrTooLarge
		}
		if errors.Is(err, badger.ErrConflict) {
			return fmt.Errorf("%w (%w)", ErrConflict, err) // the store's own code tests for Badger's
		}
		if err != nil {
			return err
		}
		s.kickCompact()
		s.noteWrite(0)
		if sync && !s.cfg.syncWrites {
			return s.syncAll()
		}
		return nil
	}
}

// syncAll is DB.Sync made whole: it also syncs the logs Badger retired
// unsynced (logSync).
//
// DB.Sync syncs the active memtable's log and the newest value-log file.
// Values under the value threshold (nearly all of a device's) live in the
// memtable log and the LSM tree only, and syncing a value log with
// nothing new in it still costs a disk cache flush, about 65 µs of the
// 250 µs a small commit's sync takes here. So while no write since the
// last DB.Sync may have put a value into the value log (vlogWrites, bumped
// by every write with a value at or over the threshold and around every
// value-log GC round), syncAll syncs the newest memtable log itself, with
// fdatasync on a file descriptor it keeps open, which is what DB.Sync's
// msync of that log comes to. That also leaves out Badger's database
// lock, which DB.Sync holds for reading through its syncs while every
// write waits to take it for writing: commits don't wait for a sync
// running beside them. TestSyncSkipsCleanValueLog.
//
// With a journal (a store that doesn't sync every write), the journal
// takes the memtable log's place: while no write since the last full sync
// may have gone to the value log, syncAll writes and syncs the journal's
// records and leaves Badger's logs alone; otherwise, or when the journal
// is full, it syncs Badger fully and starts the journal afresh
// (journal.go).
func (s *Store) syncAll() error {
	var target uint64
	if s.j != nil {
		target = s.j.last() // before gen: what went to the value log by then counts
	}
	gen := s.vlogWrites.Load()
	clean := s.vlogBusy.Load() == 0 && gen == s.vlogSynced.Load()
	if s.j != nil {
		if clean {
			if err := s.j.sync(target); !errors.Is(err, errJournalFull) {
				return err
			}
		}
		return s.j.checkpoint(target, func() error { return s.fullSyncFrom(gen) })
	}
	if clean {
		err := s.logs.sync(s.dir, true)
		if !errors.Is(err, errNoActiveLog) {
			return err
		}
	}
	return s.fullSyncFrom(gen)
}

// fullSync is DB.Sync made whole (syncAll without the shortcuts).
func (s *Store) fullSync() error { return s.fullSyncFrom(s.vlogWrites.Load()) }

// fullSyncFrom syncs Badger's logs, the retired ones too; gen is what
// vlogWrites was before it started.
func (s *Store) fullSyncFrom(gen uint64) error {
	if err := s.db.Sync(); err != nil {
		return err
	}
	for {
		old := s.vlogSynced.Load()
		if old >= gen || s.vlogSynced.CompareAndSwap(old, gen) {
			break
		}
	}
	return s.logs.sync(s.dir, false)
}

// background runs the periodic sweep and value-log GC until Close.
func (s *Store) background() {
	defer s.bg.Done()
	var sweepC, gcC <-chan time.Time
	if s.cfg.sweepInterval > 0 {
		t := time.NewTicker(s.cfg.sweepInterval)
		defer t.Stop()
		sweepC = t.C
	}
	if s.cfg.gcInterval > 0 {
		t := time.NewTicker(s.cfg.gcInterval)
		defer t.Stop()
		gcC = t.C
	}
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-sweepC:
			s.backgroundSweep()
		case <-s.sweepKick:
			s.backgroundSweep()
		case <-gcC:
			s.collectGarbage(s.ctx)
		case <-s.gcKick:
			s.collectGarbage(s.ctx)
		}
	}
}

func (s *Store) backgroundSweep() {
	n, freed, err := s.sweep(s.ctx)
	switch {
	case err != nil && s.ctx.Err() == nil:
		s.log.Warn("expiry sweep failed", "err", err)
	case n > 0:
		s.log.Debug("expiry sweep", "deleted", n, "bytes", freed)
	}
	if freed >= s.cfg.profile.sizes().gcAfterSweep && s.cfg.gcInterval > 0 {
		s.collectGarbage(s.ctx)
	}
}

// collectGarbage runs value-log GC rounds until Badger finds nothing worth
// rewriting or ctx is done.
func (s *Store) collectGarbage(ctx context.Context) {
	for rounds := 0; ctx.Err() == nil; rounds++ {
		s.vlogBusy.Add(1)
		err := s.db.RunValueLogGC(gcDiscardRatio)
		s.vlogWrites.Add(1)
		s.vlogBusy.Add(-1)
		switch {
		case err == nil:
			// Badger moved the file's live values with writes of its own,
			// unsynced on a store that doesn't sync every write, and has
			// deleted the file already: sync them now, or the deletion
			// could reach the disk seconds before the values it moved
			// (the kernel's journal commits every few seconds, its
			// writeback after half a minute) and a power loss between
			// would lose them (TestGCSyncsMovedValues).
			if !s.cfg.syncWrites {
				if err := s.syncAll(); err != nil {
					s.log.Warn("syncing after value-log GC failed", "err", err)
					return
				}
			}
			continue
		case errors.Is(err, badger.ErrNoRewrite), errors.Is(err, badger.ErrRejected):
			if rounds > 0 {
				s.log.Debug("value-log GC", "rewritten_files", rounds)
			}
		default:
			s.log.Warn("value-log GC failed", "err", err)
		}
		return
	}
}
