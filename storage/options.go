package storage

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
)

// Profile selects Badger's memory and file sizes for the kind of node.
type Profile int

const (
	// ProfileDevice keeps a fresh, idle store within a few MB of RSS, for
	// phones and desktops (the default).
	ProfileDevice Profile = iota
	// ProfileRelay trades memory (still bounded: about 135 MB of anonymous
	// memory at the peak of a sustained write flood) for larger batches,
	// fewer write stalls and fewer, larger files, for relays.
	ProfileRelay
)

// String returns "device" or "relay".
func (p Profile) String() string {
	switch p {
	case ProfileDevice:
		return "device"
	case ProfileRelay:
		return "relay"
	default:
		return fmt.Sprintf("Profile(%d)", int(p))
	}
}

// Option configures Open.
type Option func(*config) error

type config struct {
	passphrase    []byte
	now           func() time.Time
	logger        *slog.Logger
	sweepInterval time.Duration
	gcInterval    time.Duration
	profile       Profile
	syncWrites    bool
	kdf           kdfParams
	// trimBusy and trimIdle are WithTrimInterval's, if trimSet (trim.go).
	trimBusy, trimIdle time.Duration
	trimSet            bool
	// minFree is WithMinFree's floor; 0 for none.
	minFree uint64
	// beforeGroupSettle, a test hook, runs in a group sweep's transaction
	// just before it moves or deletes the group's entry.
	beforeGroupSettle func()
}

const (
	defaultSweepInterval = 10 * time.Minute
	defaultGCInterval    = 15 * time.Minute
)

func defaultConfig() config {
	return config{
		now:           time.Now,
		sweepInterval: defaultSweepInterval,
		gcInterval:    defaultGCInterval,
		profile:       ProfileDevice,
		syncWrites:    true,
		kdf:           defaultKDFParams,
	}
}

// WithPassphrase derives the store key from p with Argon2id instead of keeping
// a random key in DIR/store.key. The key is never written to disk. A store
// created with a passphrase must always be opened with it, and a store created
// with a key file never with one.
func WithPassphrase(p []byte) Option {
	return func(c *config) error {
		if len(p) == 0 {
			return errors.New("empty passphrase")
		}
		c.passphrase = append([]byte(nil), p...)
		return nil
	}
}

// WithClock sets the clock that TTL writes, reads and sweeps use. Badger's own
// TTL, the backstop, always uses the real time.
func WithClock(now func() time.Time) Option {
	return func(c *config) error {
		if now == nil {
			return errors.New("nil clock")
		}
		c.now = now
		return nil
	}
}

// WithLogger sets the logger for the store and for Badger, whose info and
// debug lines are logged at debug level.
func WithLogger(l *slog.Logger) Option {
	return func(c *config) error {
		if l == nil {
			return errors.New("nil logger")
		}
		c.logger = l
		return nil
	}
}

// WithSweepInterval sets how often the expiry sweep runs; 0 disables the
// periodic sweep and the sweep woken by reads of expired values (call Sweep
// yourself).
func WithSweepInterval(d time.Duration) Option {
	return func(c *config) error {
		if d < 0 {
			return fmt.Errorf("negative sweep interval %v", d)
		}
		c.sweepInterval = d
		return nil
	}
}

// WithGCInterval sets how often Badger's value-log garbage collection runs; 0
// disables it, including the run after a large sweep.
func WithGCInterval(d time.Duration) Option {
	return func(c *config) error {
		if d < 0 {
			return fmt.Errorf("negative GC interval %v", d)
		}
		c.gcInterval = d
		return nil
	}
}

// WithProfile selects the memory profile.
func WithProfile(p Profile) Option {
	return func(c *config) error {
		if p != ProfileDevice && p != ProfileRelay {
			return fmt.Errorf("unknown profile %v", p)
		}
		c.profile = p
		return nil
	}
}

// WithMinFree sets the free space the store's file system must keep:
// once less than min bytes are available there (to this process's user,
// as statfs counts them), LowOnSpace reports true, so that a relay
// refuses new data before the disk is full instead of failing writes
// halfway. 0 (the default) sets no floor.
func WithMinFree(min uint64) Option {
	return func(c *config) error {
		c.minFree = min
		return nil
	}
}

// WithSyncWrites sets whether every write is flushed to disk (fsync) before it
// returns. With false, single Put and Delete calls return once the write is in
// the operating system's page cache (they survive a crash of the process, not
// of the machine); Batch.Commit syncs either way.
func WithSyncWrites(sync bool) Option {
	return func(c *config) error {
		c.syncWrites = sync
		return nil
	}
}

// withBeforeGroupSettle sets a hook that runs inside a group sweep's
// transaction just before it moves or deletes the group's entry (tests of
// a put racing the sweep).
func withBeforeGroupSettle(f func()) Option {
	return func(c *config) error {
		c.beforeGroupSettle = f
		return nil
	}
}

// withKDFParams sets the Argon2id parameters of a new passphrase store
// (tests use cheap ones; exported to them by export_test.go).
func withKDFParams(p kdfParams) Option {
	return func(c *config) error {
		if err := p.validate(); err != nil {
			return err
		}
		c.kdf = p
		return nil
	}
}

// profileSizes are the Badger sizes a Profile chooses; docs/storage.md gives
// the reasons and the measurements.
type profileSizes struct {
	memTableSize     int64
	numMemtables     int
	baseTableSize    int64
	baseLevelSize    int64
	numL0            int
	numL0Stall       int
	valueLogFileSize int64
	valueThreshold   int64
	// gcAfterSweep is how many bytes of values a sweep must delete to run
	// value-log GC right after it.
	gcAfterSweep int64
	// numCompactors is Badger's NumCompactors; 0 means the store compacts
	// on demand instead (compact.go).
	numCompactors int
	// The pace of trimming mapped pages (trim.go): every trimBusy while
	// writes go on and for trimQuiet after the last one, at once after
	// trimAfterBytes of writes, every trimIdle otherwise. A trim leaves
	// the last trimAfterBytes written to the newest value log mapped while
	// writes go on, and the last trimKeepIdle once they have stopped.
	trimBusy, trimQuiet, trimIdle time.Duration
	trimAfterBytes, trimKeepIdle  int64
	// journalSize is the size of the journal file (journal.go), written
	// with zeros once.
	journalSize int64
}

func (p Profile) sizes() profileSizes {
	if p == ProfileRelay {
		return profileSizes{
			memTableSize:     4 << 20,
			numMemtables:     3,
			baseTableSize:    1 << 20,
			baseLevelSize:    8 << 20,
			numL0:            4,
			numL0Stall:       12,
			valueLogFileSize: 128 << 20,
			valueThreshold:   1 << 10,
			gcAfterSweep:     64 << 20,
			numCompactors:    2,
			trimBusy:         250 * time.Millisecond,
			trimQuiet:        30 * time.Second,
			trimIdle:         30 * time.Second,
			trimAfterBytes:   16 << 20,
			// A relay takes deposits in bursts: paging out where the
			// next burst writes made it read that back first (a fifth
			// of its rate for 17 KB envelopes).
			trimKeepIdle: 16 << 20,
			journalSize:  8 << 20,
		}
	}
	return profileSizes{
		memTableSize:     2 << 20,
		numMemtables:     2,
		baseTableSize:    512 << 10,
		baseLevelSize:    4 << 20,
		numL0:            2,
		numL0Stall:       16,
		valueLogFileSize: 16 << 20,
		valueThreshold:   1 << 10,
		gcAfterSweep:     4 << 20,
		numCompactors:    0,
		// A device trims once a burst is over, not during it: paging the
		// logs out while a backlog drains cost a third of the drain rate.
		trimBusy:       time.Minute,
		trimQuiet:      time.Minute,
		trimIdle:       10 * time.Minute,
		trimAfterBytes: 256 << 20,
		journalSize:    2 << 20,
	}
}

// badgerOptions returns the Badger options for dir under profile p.
//
// Common to both profiles: no compression (values are ciphertext, which does
// not compress), hence no block cache (Badger reads uncompressed, unencrypted
// blocks straight from the memory-mapped tables) and no index cache (indexes
// are read from the mapped tables too); no expvar metrics. The relay runs two
// compactors (the minimum Badger accepts besides none); a device runs none
// and the store compacts on demand (compact.go), because Badger's idle
// compactors alone cost an idle device more CPU than everything else.
func badgerOptions(dir string, p Profile, sync bool, logger badger.Logger) badger.Options {
	sz := p.sizes()
	o := badger.DefaultOptions(dir)
	o.Logger = logger
	o.SyncWrites = sync
	o.Compression = options.None
	o.BlockCacheSize = 0
	o.IndexCacheSize = 0
	o.MetricsEnabled = false
	o.NumGoroutines = 1
	o.NumCompactors = sz.numCompactors
	o.NumVersionsToKeep = 1
	o.DetectConflicts = true
	o.MemTableSize = sz.memTableSize
	o.NumMemtables = sz.numMemtables
	o.BaseTableSize = sz.baseTableSize
	o.BaseLevelSize = sz.baseLevelSize
	o.NumLevelZeroTables = sz.numL0
	o.NumLevelZeroTablesStall = sz.numL0Stall
	o.ValueLogFileSize = sz.valueLogFileSize
	o.ValueThreshold = sz.valueThreshold
	return o
}
