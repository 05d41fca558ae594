package storage

import (
	"time"

	badger "github.com/dgraph-io/badger/v4"
)

// Compaction on demand, for profiles that start no Badger compactors
// (ProfileDevice).
//
// Each of Badger's compactor goroutines wakes every 50 ms, busy or idle
// (badger v4 levels.go, runCompactor; the period is not configurable), and
// Badger accepts either none or at least two of them. Two compactors were
// about 40 wakeups a second and most of an idle device node's CPU
// (docs/benchmarks.md). So a device store opens Badger with NumCompactors = 0
// and compacts by itself: every committed write wakes compactLoop, which
// lets writes go on for compactDelay, then looks at level 0 and, once it
// holds compactAt tables (while the store is small, the profile's
// NumLevelZeroTables, where Badger's compactors would start), runs
// DB.Flatten, which merges level 0 and any other level into the bottom one. It looks again while the number of
// level-0 tables keeps changing (memtables are flushed asynchronously) and
// then waits for the next write: an idle store never wakes. Writes cannot
// stall for good: they stall only at NumLevelZeroTablesStall tables, and the
// writes that filled level 0 have woken the loop.
//
// The price is write amplification: Flatten always leaves one level, so it
// rewrites the bottom level where Badger's leveled compaction would rewrite
// a level a tenth its size, and it goes on for as long as writes bring new
// level-0 tables. So a large store waits for a larger level 0 (compactAt),
// and every store for writes to pause unless level 0 nears the stall
// (compact; docs/storage.md, "Compaction").

// compactDelay is how long compactLoop lets writes go on before it looks at
// level 0: at most one look a second while writes continue.
const compactDelay = time.Second

// kickCompact wakes compactLoop, if the store runs one.
func (s *Store) kickCompact() {
	if s.compactKick == nil {
		return
	}
	s.lastWrite.Store(time.Now().UnixNano())
	select {
	case s.compactKick <- struct{}{}:
	default:
	}
}

// compactLoop runs compactions until Close; see above.
func (s *Store) compactLoop() {
	defer s.bg.Done()
	// Close flushes the memtable into a level-0 table: a store reopened
	// often may start with level 0 full, so the loop looks once without
	// a write, but compactDelay after Open like any other look. A
	// compaction drops a deleted or overwritten value only below Badger's
	// read watermark, which Open moves up with a message to a goroutine of
	// Badger's: a Flatten the moment the store opened could find it still
	// at zero, rewrite the whole tree and keep every dead value, until the
	// next compaction (TestGCSyncsMovedValues failed so under load).
	last, again := -1, true
	for {
		if !again {
			select {
			case <-s.ctx.Done():
				return
			case <-s.compactKick:
			}
		}
		t := time.NewTimer(compactDelay)
		select {
		case <-s.ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		n, waiting := s.compact()
		again = n != last || waiting
		last = n
	}
}

// compact flattens the tree if level 0 holds compactAt tables or more and
// writes have paused for compactDelay (or level 0 is two tables short of
// the stall), and returns how many level-0 tables are left and whether it
// is waiting for that pause. Flatten goes on for as long as new level-0
// tables keep coming, each round rewriting much of the bottom level, so a
// compaction started in the middle of a burst costs several.
func (s *Store) compact() (int, bool) {
	sz := s.cfg.profile.sizes()
	levels := s.db.Levels()
	l0 := levels[0].NumTables
	if l0 < compactAt(sz, levels) {
		return l0, false
	}
	if l0 < sz.numL0Stall-2 && time.Since(time.Unix(0, s.lastWrite.Load())) < compactDelay {
		return l0, true
	}
	start := time.Now()
	if err := s.db.Flatten(1); err != nil {
		if s.ctx.Err() == nil {
			s.log.Warn("compaction failed", "err", err)
		}
		return l0, false
	}
	s.log.Debug("compacted", "level0_tables", l0, "took", time.Since(start))
	return s.db.Levels()[0].NumTables, false
}

// compactAt is how many level-0 tables start a compaction: the profile's
// NumLevelZeroTables while the levels below are small, and more as they
// grow, so that level 0 holds about a tenth of what lies below when it is
// merged. Flatten rewrites much of the bottom level whatever level 0
// holds (new writes land all over the key space: random message ids,
// many conversations), so each compaction of a large store costs about
// the store's size; letting level 0 grow with it keeps that near ten
// bytes written per byte stored instead of growing with the store. It
// stays two tables short of NumLevelZeroTablesStall, where writes stall.
func compactAt(sz profileSizes, levels []badger.LevelInfo) int {
	var below int64
	for _, l := range levels[1:] {
		below += l.Size
	}
	return min(max(sz.numL0, int(below/10/sz.memTableSize)), sz.numL0Stall-2)
}
