package storage

import "time"

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
// holds the profile's NumLevelZeroTables tables (the level at which Badger's
// compactors would start), runs DB.Flatten, which merges level 0 and any
// other level into the bottom one. It looks again while the number of
// level-0 tables keeps changing (memtables are flushed asynchronously) and
// then waits for the next write: an idle store never wakes. Writes cannot
// stall for good: they stall only at NumLevelZeroTablesStall tables, and the
// writes that filled level 0 have woken the loop.
//
// The price is write amplification: Flatten always leaves one level, so it
// rewrites the bottom level where Badger's leveled compaction would rewrite
// a level a tenth its size (docs/storage.md, "Compaction").

// compactDelay is how long compactLoop lets writes go on before it looks at
// level 0: at most one look a second while writes continue.
const compactDelay = time.Second

// kickCompact wakes compactLoop, if the store runs one.
func (s *Store) kickCompact() {
	if s.compactKick == nil {
		return
	}
	select {
	case s.compactKick <- struct{}{}:
	default:
	}
}

// compactLoop runs compactions until Close; see above.
func (s *Store) compactLoop() {
	defer s.bg.Done()
	// Close flushes the memtable into a level-0 table: a store reopened
	// often may start with level 0 full.
	last := s.compact()
	again := false
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
		n := s.compact()
		again = n != last
		last = n
	}
}

// compact flattens the tree if level 0 holds NumLevelZeroTables tables or
// more, and returns how many level-0 tables are left.
func (s *Store) compact() int {
	l0 := s.db.Levels()[0].NumTables
	if l0 < s.cfg.profile.sizes().numL0 {
		return l0
	}
	start := time.Now()
	if err := s.db.Flatten(1); err != nil {
		if s.ctx.Err() == nil {
			s.log.Warn("compaction failed", "err", err)
		}
		return l0
	}
	s.log.Debug("compacted", "level0_tables", l0, "took", time.Since(start))
	return s.db.Levels()[0].NumTables
}
