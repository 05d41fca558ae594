package storage

import (
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"time"
)

// Trimming the store's mapped pages (Linux; a no-op elsewhere).
//
// Badger memory-maps its files with MAP_SHARED: the value log and the
// memtables' write-ahead logs (*.vlog, *.mem, read-write) and the tables
// (*.sst). Every page written or read through those mappings stays mapped
// into the process, and counted in its RSS, until the kernel needs the
// memory: a relay holding 1.7 GB of mail showed 1.85 GB of file-backed RSS
// (docs/benchmarks.md, "Relay RSS").
//
// So the store, every so often, finds the shared read-write mappings of
// files in its directory (the value log and memtable logs, where what it
// writes lands) in /proc/self/maps and madvises them MADV_PAGEOUT: the
// kernel unmaps those pages from the process and reclaims them as it
// would under memory pressure, writing dirty ones back to their file
// first, so no data is lost; a later access reads the page back. The
// process's RSS, and its peak, stop growing with the data it writes. The
// read-only table mappings are left alone: compaction and lookups keep
// re-reading them, and paging them out cost about 15% of the relay's
// deposit rate.
//
// MADV_PAGEOUT, not MADV_DONTNEED, because it is safe on any mapping.
// Badger may unmap a file (a log after a flush or GC, one shrunk by
// mremap) between the moment /proc/self/maps lists it and the madvise, and
// the Go runtime may map anonymous memory into the hole meanwhile:
// MADV_DONTNEED would zero that memory, MADV_PAGEOUT at worst swaps it
// out. A range no longer mapped fails with ENOMEM, which the trim ignores
// (docs/decisions.md, "Trimming the store's mapped pages").
//
// Pace: a trim runs profile.trimBusy after the first write following the
// previous trim, at once when trimAfterBytes have been written since then,
// at the busy pace for trimQuiet after the last write (Badger flushes
// memtables and compacts tables, writing and reading files, for a while
// after the writes that caused it), and every trimIdle otherwise, for the
// pages written or read since. A trim while writes go on leaves the last
// trimAfterBytes written to the newest value log mapped: paging out the
// pages Badger is writing next to made it read them back (docs/storage.md,
// "Trimming while writes go on"). A relay's trims leave them once writes
// have stopped too, for its next burst of deposits; a device's take
// everything then. A trim costs one read of /proc/self/maps
// and one madvise per log mapping of the store's files (while writes go
// on, and on a relay always, also an open and an lseek of the newest value
// log), plus reclaiming
// what is resident: under 0.7 ms with nothing resident for a relay store holding
// a million envelopes (0.7 ms advising all of its 83 mappings, 2 GB
// mapped), so under 0.3% of a core at the relay's busy pace. The loop logs nothing unless a trim fails; then it
// warns once and stops.
//
// WithTrimInterval sets how often the store drops its mapped files' pages
// from the process (Linux only): every busy while writes go on and for a
// while after, every idle otherwise. busy 0 turns trimming off; idle 0
// trims only after writes. Defaults: 250 ms and 30 s for ProfileRelay (and
// at once after 16 MB of writes); 1 minute and 10 minutes for
// ProfileDevice (and after 256 MB), so a device trims once a burst is over.
func WithTrimInterval(busy, idle time.Duration) Option {
	return func(c *config) error {
		if busy < 0 || idle < 0 {
			return fmt.Errorf("negative trim interval %v, %v", busy, idle)
		}
		if idle != 0 && idle < busy {
			return fmt.Errorf("idle trim interval %v shorter than the busy one %v", idle, busy)
		}
		c.trimBusy, c.trimIdle, c.trimSet = busy, idle, true
		return nil
	}
}

// trimIntervals returns the busy and idle trim intervals: the option's, or
// the profile's.
func (c *config) trimIntervals() (busy, idle time.Duration) {
	if c.trimSet {
		return c.trimBusy, c.trimIdle
	}
	sz := c.profile.sizes()
	return sz.trimBusy, sz.trimIdle
}

// noteWrite records n bytes written (at least one: any write counts) for
// the trim loop, and wakes it on the first write since the last trim and
// when trimAfterBytes have been written. Bytes of a transaction retried
// after a conflict count twice; the figure only sets the pace.
func (s *Store) noteWrite(n int64) {
	if s.trimKick == nil {
		return
	}
	n = max(n, 1)
	total := s.trimWritten.Add(n)
	limit := s.cfg.profile.sizes().trimAfterBytes
	if total == n || (total >= limit && total-n < limit) {
		select {
		case s.trimKick <- struct{}{}:
		default:
		}
	}
}

// never is an idle interval of 0: no trims until a write.
const never = time.Duration(math.MaxInt64)

// trimLoop trims the store's mappings at the pace above until Close.
func (s *Store) trimLoop() {
	defer s.bg.Done()
	busy, idle := s.cfg.trimIntervals()
	sz := s.cfg.profile.sizes()
	dir, err := realDir(s.dir)
	if err != nil {
		s.log.Warn("not trimming the store's mapped pages", "err", err)
		return
	}
	if idle == 0 {
		idle = never
	}
	var scratch trimScratch
	wait := idle
	t := time.NewTimer(wait)
	defer t.Stop()
	next := time.Now().Add(wait)
	var lastWrite time.Time
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-s.trimKick:
			if s.trimWritten.Load() < sz.trimAfterBytes {
				// The first write since the last trim: trim within busy.
				if time.Until(next) > busy {
					next = time.Now().Add(busy)
					t.Reset(busy)
				}
				continue
			}
		case <-t.C:
		}
		now := time.Now()
		// While writes go on, what they wrote last stays: the next trim
		// takes it (on a device; a relay keeps its last trimKeepIdle).
		keep := sz.trimKeepIdle
		if s.trimWritten.Swap(0) > 0 {
			lastWrite, keep = now, sz.trimAfterBytes
		}
		if _, err = trimMappings(dir, &scratch, keep); err != nil {
			if s.ctx.Err() == nil {
				s.log.Warn("trimming the store's mapped pages failed; stopped", "err", err)
			}
			return
		}
		s.trims.Add(1)
		wait = busy
		if now.Sub(lastWrite) >= sz.trimQuiet {
			wait = idle
		}
		next = now.Add(wait)
		t.Reset(wait)
	}
}

// trim drops the store's mapped pages now, but the last keep bytes
// written to the newest value log, and returns the bytes of the mappings
// advised.
func (s *Store) trim(keep int64) (int64, error) {
	if err := s.acquire(); err != nil {
		return 0, err
	}
	defer s.release()
	dir, err := realDir(s.dir)
	if err != nil {
		return 0, fmt.Errorf("storage: trim: %w", err)
	}
	n, err := trimMappings(dir, &trimScratch{}, keep)
	if err != nil {
		return n, fmt.Errorf("storage: trim: %w", err)
	}
	return n, nil
}

// realDir returns dir as /proc/self/maps names the files in it: absolute,
// with symbolic links resolved.
func realDir(dir string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return "", err
	}
	if real == "" {
		return "", errors.New("empty store directory")
	}
	return real, nil
}
