//go:build linux

package storage_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/kinmesh/kinmesh/storage"
)

func TestSharedMappingIn(t *testing.T) {
	const dir = "/data/relay"
	tests := []struct {
		name       string
		line       string
		start, end uintptr
		ok         bool
	}{
		{"value log", "7f0000000000-7f0010000000 rw-s 00000000 fd:01 1234                       /data/relay/000001.vlog", 0x7f0000000000, 0x7f0010000000, true},
		{"table: read-only, left alone", "7f0010000000-7f0010100000 r--s 00000000 fd:01 1235 /data/relay/000002.sst", 0, 0, false},
		{"space in dir", "1000-2000 rw-s 00000000 fd:01 7 /data/my relay/000002.vlog", 0, 0, false},
		{"private", "7f0000000000-7f0010000000 rw-p 00000000 fd:01 1234 /data/relay/000001.vlog", 0, 0, false},
		{"read-only private", "7f0000000000-7f0010000000 r--p 00000000 fd:01 1234 /data/relay/000001.vlog", 0, 0, false},
		{"executable shared", "7f0000000000-7f0010000000 r-xs 00000000 fd:01 1234 /data/relay/000001.vlog", 0, 0, false},
		{"deleted", "7f0000000000-7f0010000000 r--s 00000000 fd:01 1234 /data/relay/000003.sst (deleted)", 0, 0, false},
		{"other dir", "7f0000000000-7f0010000000 rw-s 00000000 fd:01 1234 /data/relay2/000001.vlog", 0, 0, false},
		{"subdirectory", "7f0000000000-7f0010000000 rw-s 00000000 fd:01 1234 /data/relay/sub/000001.vlog", 0, 0, false},
		{"the directory's parent", "7f0000000000-7f0010000000 rw-s 00000000 fd:01 1234 /data/000001.vlog", 0, 0, false},
		{"anonymous", "c000000000-c000400000 rw-p 00000000 00:00 0", 0, 0, false},
		{"bad range", "zz-2000 rw-s 00000000 fd:01 1 /data/relay/000001.vlog", 0, 0, false},
		{"empty range", "2000-2000 rw-s 00000000 fd:01 1 /data/relay/000001.vlog", 0, 0, false},
		{"reversed range", "3000-2000 rw-s 00000000 fd:01 1 /data/relay/000001.vlog", 0, 0, false},
		{"short", "1000-2000 rw-s", 0, 0, false},
		{"empty", "", 0, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, e, ok := storage.SharedMappingIn(tt.line, dir)
			if s != tt.start || e != tt.end || ok != tt.ok {
				t.Errorf("got %#x-%#x %v, want %#x-%#x %v", s, e, ok, tt.start, tt.end, tt.ok)
			}
		})
	}
	if _, _, ok := storage.SharedMappingIn("1000-2000 rw-s 00000000 fd:01 7 /data/my relay/000002.vlog", "/data/my relay"); !ok {
		t.Error("a directory with a space: not matched")
	}
}

// trimValue is the deterministic value number i of n bytes.
func trimValue(i, n int) []byte {
	var seed [32]byte
	binary.BigEndian.PutUint64(seed[:], uint64(i))
	b := make([]byte, n)
	_, _ = rand.NewChaCha8(seed).Read(b)
	return b
}

// writeValues writes count values of size bytes (large enough for the
// value log) in unsynced batches of 32, so the pages trimmed are dirty.
func writeValues(t *testing.T, st *storage.Store, ns *storage.Namespace, count, size int) {
	t.Helper()
	ctx := context.Background()
	for first := 0; first < count; first += 32 {
		b := st.NewBatch()
		for i := first; i < min(first+32, count); i++ {
			if err := b.Put(ns, fmt.Sprint("v", i), trimValue(i, size)); err != nil {
				t.Fatal(err)
			}
		}
		if err := b.CommitUnsynced(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

func readValues(t *testing.T, ns *storage.Namespace, count, size int) {
	t.Helper()
	ctx := context.Background()
	for i := range count {
		got, err := ns.Get(ctx, fmt.Sprint("v", i))
		if err != nil {
			t.Fatalf("Get(v%d): %v", i, err)
		}
		if !bytes.Equal(got, trimValue(i, size)) {
			t.Fatalf("Get(v%d): %d bytes that differ from the %d written", i, len(got), size)
		}
	}
}

// mappedKiB returns the resident KiB of this process's mappings of files
// in dir, from /proc/self/smaps.
func mappedKiB(t *testing.T, dir string) int {
	t.Helper()
	return smapsKiB(t, dir, func(string) bool { return true }, "Rss:")
}

// smapsKiB sums, over this process's mappings of the files in dir that
// keep says, the /proc/self/smaps fields named.
func smapsKiB(t *testing.T, dir string, keep func(file string) bool, names ...string) int {
	t.Helper()
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	total, in := 0, false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		switch {
		case len(fields) >= 5 && strings.Contains(fields[0], "-") && !strings.HasSuffix(fields[0], ":"):
			file := strings.Join(fields[min(5, len(fields)):], " ")
			in = len(fields) >= 6 && filepath.Dir(file) == real && keep(filepath.Base(file))
		case in && len(fields) >= 2 && slices.Contains(names, fields[0]):
			n, _ := strconv.Atoi(fields[1])
			total += n
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return total
}

// evict drops the files in dir from the page cache (they must be clean:
// the store closed), so what is read next comes from the disk.
func evict(t *testing.T, dir string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		f, err := os.Open(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		err = unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
		f.Close()
		if err != nil {
			t.Fatalf("fadvise %s: %v", e.Name(), err)
		}
	}
}

// untrimmedStore opens a store of profile p in a new directory, with no
// trims, sweeps or GC of its own, and writes count values of size bytes
// through it, unsynced (writeValues). The writes may have set off a Sync
// of the journal (its pending records crowded); it returns once that is
// done, since pages being written back can't be paged out.
func untrimmedStore(t *testing.T, p storage.Profile, count, size int) (string, *storage.Store, *storage.Namespace) {
	t.Helper()
	dir := t.TempDir()
	st, err := storage.Open(dir, storage.WithProfile(p), storage.WithSyncWrites(false),
		storage.WithSweepInterval(0), storage.WithGCInterval(0), storage.WithTrimInterval(0, 0))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	ns := st.Namespace("mailbox")
	writeValues(t, st, ns, count, size)
	waitFor(t, "the journal's background Sync", func() bool { return storage.JournalIdle(st) })
	return dir, st, ns
}

// TestTrimMappings writes 32 MB through the store without syncing, trims,
// and checks that the process's file-backed RSS fell by most of it, that
// every value reads back, and that every value is still there, from the
// disk, after Close and a reopen: trimmed dirty pages are written back, not
// lost.
func TestTrimMappings(t *testing.T) {
	const (
		count = 1024
		size  = 32 << 10 // value log, not the tables
	)
	written := count * size >> 10 // KiB
	for _, p := range []storage.Profile{storage.ProfileRelay, storage.ProfileDevice} {
		t.Run(p.String(), func(t *testing.T) {
			dir, st, ns := untrimmedStore(t, p, count, size)

			fileBefore, mappedBefore := procStatusKiB("RssFile:"), mappedKiB(t, dir)
			advised, err := storage.TrimNow(st)
			if err != nil {
				t.Fatalf("trim: %v", err)
			}
			fileAfter, mappedAfter := procStatusKiB("RssFile:"), mappedKiB(t, dir)
			t.Logf("wrote %d KiB; RssFile %d -> %d KiB, store mappings %d -> %d KiB resident, %d MiB of mappings advised",
				written, fileBefore, fileAfter, mappedBefore, mappedAfter, advised>>20)
			if mappedBefore < written*3/4 {
				t.Fatalf("before the trim only %d KiB of the store's mappings resident, after writing %d KiB: nothing to test", mappedBefore, written)
			}
			if drop := fileBefore - fileAfter; drop < written*3/4 {
				t.Errorf("RssFile fell by %d KiB, want at least %d (3/4 of the %d KiB written)", drop, written*3/4, written)
			}
			if mappedAfter > written/8 {
				t.Errorf("store mappings resident after the trim: %d KiB, want at most %d", mappedAfter, written/8)
			}

			readValues(t, ns, count, size)
			if err := st.Close(); err != nil {
				t.Fatal(err)
			}
			evict(t, dir)
			st, err = storage.Open(dir, storage.WithProfile(p), storage.WithTrimInterval(0, 0))
			if err != nil {
				t.Fatalf("reopen: %v", err)
			}
			defer st.Close()
			readValues(t, st.Namespace("mailbox"), count, size)
		})
	}
}

// TestTrimKeepsWriteHead writes 44.5 MB through the store and trims as
// the trim loop does while writes go on: the last 8 MB written to the
// newest value log must stay mapped and everything else must go, the
// older value logs included (the device profile's value logs hold 16 MB
// each, so its newest holds about 12.5 MB). A trim after that, as once
// writes stop, takes the rest.
func TestTrimKeepsWriteHead(t *testing.T) {
	const (
		count = 1424
		size  = 32 << 10
		keep  = 8 << 20
	)
	for _, p := range []storage.Profile{storage.ProfileRelay, storage.ProfileDevice} {
		t.Run(p.String(), func(t *testing.T) {
			dir, st, ns := untrimmedStore(t, p, count, size)
			if _, err := storage.TrimKeeping(st, keep); err != nil {
				t.Fatalf("trim: %v", err)
			}
			kept := smapsKiB(t, dir, func(f string) bool { return strings.HasSuffix(f, ".vlog") }, "Rss:")
			all := mappedKiB(t, dir)
			t.Logf("after the trim that keeps %d KiB: %d KiB of value logs mapped, %d KiB of all logs", keep>>10, kept, all)
			// Badger's entries carry headers, so 8 MB ends a little
			// short of 256 values; the page at each end may be in or out.
			if kept < keep>>10-2*size>>10 || kept > keep>>10+64 {
				t.Errorf("value logs mapped after a trim keeping the last %d KiB written: %d KiB", keep>>10, kept)
			}
			if _, err := storage.TrimNow(st); err != nil {
				t.Fatalf("trim: %v", err)
			}
			if left := mappedKiB(t, dir); left > count*size>>10/8 {
				t.Errorf("logs mapped after a full trim: %d KiB", left)
			}
			readValues(t, ns, count, size)
		})
	}
}

// TestTrimLoop checks that the background loop trims after writes, at the
// busy pace and when the profile's byte threshold is crossed, what each
// profile's trims leave once writes have stopped, and that Close stops it.
func TestTrimLoop(t *testing.T) {
	const keepIdle = 16 << 10 // KiB: the relay profile's trimKeepIdle
	tests := []struct {
		name    string
		profile storage.Profile
		busy    time.Duration
		count   int // values of 32 KiB
	}{
		// No idle trims: the first write wakes the loop. Once writes have
		// stopped, a device's trims keep nothing.
		{"busy pace, device", storage.ProfileDevice, time.Millisecond, 128},
		// A relay's keep the last 16 MB written to its newest value log.
		{"busy pace, relay", storage.ProfileRelay, time.Millisecond, 1024},
		// An hour's pace: only the relay profile's 16 MB threshold
		// triggers a trim.
		{"after 16 MB", storage.ProfileRelay, time.Hour, 640},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
			dir := t.TempDir()
			st, err := storage.Open(dir, storage.WithProfile(tt.profile), storage.WithSyncWrites(false),
				storage.WithSweepInterval(0), storage.WithGCInterval(0), storage.WithTrimInterval(tt.busy, 0))
			if err != nil {
				t.Fatal(err)
			}
			ns := st.Namespace("mailbox")
			writeValues(t, st, ns, tt.count, 32<<10)
			waitFor(t, "a trim", func() bool { return storage.Trims(st) > 0 })
			written := tt.count * 32 // KiB
			switch {
			case tt.busy == time.Millisecond && tt.profile == storage.ProfileDevice:
				waitFor(t, "the store's mappings trimmed", func() bool { return mappedKiB(t, dir) < written/4 })
			case tt.busy == time.Millisecond:
				// Two trims after the writes: the second had none since
				// the one before it.
				n := storage.Trims(st)
				waitFor(t, "two more trims", func() bool { return storage.Trims(st) >= n+2 })
				vlogs := smapsKiB(t, dir, func(f string) bool { return strings.HasSuffix(f, ".vlog") }, "Rss:")
				if vlogs < keepIdle-64 || vlogs > keepIdle+64 {
					t.Errorf("%d KiB of value logs mapped once writes stopped (%d KiB written), want the last %d KiB written", vlogs, written, keepIdle)
				}
			default:
				if mapped := mappedKiB(t, dir); mapped < 12<<10 {
					// The trim the 16 MB set off came while writes went
					// on: it left the last 16 MB written.
					t.Errorf("%d KiB of the %d written still mapped after the trim, want at least %d: the trim took what was just written", mapped, written, 12<<10)
				}
			}
			readValues(t, ns, tt.count, 32<<10)
			if err := st.Close(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestTrimClosed(t *testing.T) {
	st := open(t, "")
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := storage.TrimNow(st); !errors.Is(err, storage.ErrClosed) {
		t.Errorf("trim after Close: got %v, want ErrClosed", err)
	}
}

// TestGCSyncsMovedValues: value-log GC moves the live values of a file
// with unsynced writes (the store doesn't sync every write) and deletes
// the file at once; the store syncs right after, so no page it moved is
// left dirty for the kernel to write back later, after the deletion may
// already be on disk. Checked on the dirty pages of the store's log
// mappings (/proc/self/smaps) the moment the GC returns.
func TestGCSyncsMovedValues(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st := open(t, dir)
	ns := st.Namespace("gc")
	// 5,000 values of 4 KiB: 20 MiB, past the first 16 MiB value-log file.
	const n, size = 5000, 4 << 10
	writeValues(t, st, ns, n, size)
	// Close flushes the memtable to a table (and reopen reopens ns's store).
	reopen := func() {
		if err := st.Close(); err != nil {
			t.Fatal(err)
		}
		st = open(t, dir)
		ns = st.Namespace("gc")
	}
	reopen()
	// Delete three fifths: most of the first file, so it is worth moving.
	for first := 0; first < 3000; first += 100 {
		b := st.NewBatch()
		for i := first; i < first+100; i++ {
			if err := b.Delete(ns, fmt.Sprint("v", i)); err != nil {
				t.Fatal(err)
			}
		}
		if err := b.CommitUnsynced(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// The deletes in a second table, one more key in a third: the store
	// compacts level 0 when it opens with more tables there than the
	// profile's two, which counts the first file's discarded values.
	reopen()
	if err := ns.Put(ctx, "third table", []byte{1}); err != nil {
		t.Fatal(err)
	}
	reopen()
	waitFor(t, "level 0 compacted", func() bool {
		for _, tb := range storage.RawDB(st).Tables() {
			if tb.Level == 0 {
				return false
			}
		}
		return true
	})
	if err := st.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	first := filepath.Join(dir, "000001.vlog")
	if _, err := os.Stat(first); err != nil {
		t.Fatal(err)
	}
	storage.CollectGarbage(st)
	if _, err := os.Stat(first); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("value-log GC left %s (stat: %v): nothing was moved", first, err)
	}
	logs := func(file string) bool { return strings.HasSuffix(file, ".vlog") || strings.HasSuffix(file, ".mem") }
	if dirty := smapsKiB(t, dir, logs, "Shared_Dirty:", "Private_Dirty:"); dirty != 0 {
		t.Fatalf("%d KiB of the logs still dirty right after value-log GC", dirty)
	}
	for i := 3000; i < n; i++ {
		got, err := ns.Get(ctx, fmt.Sprint("v", i))
		if err != nil || !bytes.Equal(got, trimValue(i, size)) {
			t.Fatalf("v%d after GC: %d bytes, %v", i, len(got), err)
		}
	}
}

// TestSyncSkipsCleanValueLog: a Sync after writes with only small values
// (under the value threshold, kept in the memtable log) writes and syncs
// the journal and leaves Badger's logs alone (the memtable log stays
// dirty: the journal holds those writes); after a write with a large
// value it syncs through Badger, value log and memtable log included, and
// not the journal. So this fails if a write that went to the value log
// were not counted: its value would be dirty after the Sync.
func TestSyncSkipsCleanValueLog(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st := open(t, dir)
	var mu sync.Mutex
	var synced []string
	storage.OnLogSynced(st, func(name string) {
		mu.Lock()
		synced = append(synced, name)
		mu.Unlock()
	})
	ns := st.Namespace("s")
	logs := func(file string) bool { return strings.HasSuffix(file, ".vlog") || strings.HasSuffix(file, ".mem") }
	vlogs := func(file string) bool { return strings.HasSuffix(file, ".vlog") }
	commit := func(i int, v []byte) {
		t.Helper()
		b := st.NewBatch()
		if err := b.Put(ns, fmt.Sprint("k", i), v); err != nil {
			t.Fatal(err)
		}
		if err := b.CommitUnsynced(ctx); err != nil {
			t.Fatal(err)
		}
	}
	syncNow := func() []string {
		t.Helper()
		mu.Lock()
		synced = nil
		mu.Unlock()
		if err := st.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		defer mu.Unlock()
		return slices.DeleteFunc(slices.Clone(synced), func(n string) bool { return n == "." })
	}
	journal := []string{storage.JournalFile}
	for i := range 20 {
		commit(i, randBytes(300))
		if got := syncNow(); !slices.Equal(got, journal) {
			t.Fatalf("Sync after a small write synced %v itself, want the journal", got)
		}
		if dirty := smapsKiB(t, dir, vlogs, "Shared_Dirty:", "Private_Dirty:"); dirty != 0 {
			t.Fatalf("%d KiB of the value log dirty after small writes", dirty)
		}
	}
	if dirty := smapsKiB(t, dir, logs, "Shared_Dirty:", "Private_Dirty:"); dirty == 0 {
		t.Fatal("the memtable log is clean after journal syncs: something synced it")
	}
	for i := range 5 {
		commit(100+i, randBytes(4<<10))
		if dirty := smapsKiB(t, dir, vlogs, "Shared_Dirty:", "Private_Dirty:"); dirty == 0 {
			t.Fatal("a 4 KiB value left the value log clean: it went elsewhere")
		}
		if got := syncNow(); slices.Contains(got, storage.JournalFile) {
			t.Fatalf("Sync after a large write synced %v, want DB.Sync", got)
		}
		if dirty := smapsKiB(t, dir, logs, "Shared_Dirty:", "Private_Dirty:"); dirty != 0 {
			t.Fatalf("%d KiB of the logs dirty right after a Sync through Badger", dirty)
		}
	}
	commit(200, randBytes(300))
	if got := syncNow(); !slices.Equal(got, journal) {
		t.Fatalf("Sync after small writes again synced %v itself, want the journal", got)
	}
}
