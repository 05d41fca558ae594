package storage

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
)

// logSync makes Sync cover what Badger's DB.Sync leaves out.
//
// DB.Sync syncs the active memtable's log and the current value-log file
// only. A memtable that fills up is rotated out: it becomes immutable and
// Badger flushes it to a table later (and syncs that table), but never
// syncs its log. The same goes for a value-log file once a newer one takes
// the writes. Writes that went into either before the rotation sat in the
// page cache until the flush: a power loss in that window lost writes an
// earlier CommitUnsynced plus Sync had confirmed. So after DB.Sync, every
// memtable log and value-log file that is not the newest of its kind is
// synced once (nothing writes to it after it stopped being the newest;
// TestSyncCoversRotatedLogs), and the directory whenever a log file is new
// (a file whose entry is not on disk is gone after a power loss, whatever
// was synced into it).
//
// Listing the directory on every Sync costs about 20 µs; instead, Sync
// first checks that the newest log of each kind is still there and the
// next one (Badger numbers them one up) isn't yet: a memtable log is
// deleted only after the ones before it (flushes go in order), and the
// newest value log is never collected, so then nothing came or retired
// since the last listing.
type logSync struct {
	mu      sync.Mutex
	retired map[string]bool   // log files synced since they stopped being the newest
	known   map[string]bool   // log files whose directory entry is synced
	newest  [2]string         // by kind, the newest log file at the last listing ("": none)
	dirFile *os.File          // the directory, open for unchanged's lookups; closed by close
	synced  func(name string) // test hook: a log file (or "." for the directory) was synced
}

// Badger's log file suffixes: memtable logs (NNNNN.mem) and value logs
// (NNNNNN.vlog).
var logSuffixes = [...]string{".mem", ".vlog"}

// sync runs after DB.Sync returned: it syncs the retired log files not
// synced since they retired, and dir if a log file is new.
func (l *logSync) sync(dir string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.retired == nil {
		l.retired = map[string]bool{}
	}
	if l.unchanged(dir) {
		return nil
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("list %s: %w", dir, err)
	}
	var newest [len(logSuffixes)]int64 // fids
	for k := range newest {
		newest[k] = -1
	}
	type logFile struct {
		name string
		kind int
		fid  int64
	}
	var logs []logFile
	for _, e := range ents {
		for k, suffix := range logSuffixes {
			fid, ok := logFID(e.Name(), suffix)
			if !ok {
				continue
			}
			logs = append(logs, logFile{e.Name(), k, fid})
			newest[k] = max(newest[k], fid)
		}
	}
	l.newest = [2]string{}
	for _, f := range logs {
		if f.fid == newest[f.kind] {
			l.newest[f.kind] = f.name
		}
	}
	present := make(map[string]bool, len(logs))
	newFile := false
	for _, f := range logs {
		present[f.name] = true
		if !l.known[f.name] {
			newFile = true
		}
		if f.fid == newest[f.kind] || l.retired[f.name] {
			continue
		}
		switch err := syncFile(filepath.Join(dir, f.name)); {
		case os.IsNotExist(err):
			// Flushed to a (synced) table and deleted meanwhile.
		case err != nil:
			return fmt.Errorf("sync %s: %w", f.name, err)
		default:
			if l.synced != nil {
				l.synced(f.name)
			}
		}
		l.retired[f.name] = true
	}
	if newFile {
		if err := syncFile(dir); err != nil {
			return fmt.Errorf("sync directory %s: %w", dir, err)
		}
		if l.synced != nil {
			l.synced(".")
		}
	}
	// Forget files that are gone; remember the ones whose entries are now on
	// disk.
	l.known, l.retired = present, pruned(l.retired, present)
	return nil
}

// unchanged reports whether no log file can have come or retired since
// the last listing: the newest of each kind is still there and the one
// after it isn't.
func (l *logSync) unchanged(dir string) bool {
	if l.dirFile == nil {
		d, err := os.Open(dir)
		if err != nil {
			return false
		}
		l.dirFile = d
	}
	for k, name := range l.newest {
		if name == "" {
			return false
		}
		digits := strings.TrimSuffix(name, logSuffixes[k])
		fid, _ := strconv.ParseInt(digits, 10, 64)
		next := fmt.Sprintf("%0*d%s", len(digits), fid+1, logSuffixes[k])
		if exists, err := existsIn(l.dirFile, name); err != nil || !exists {
			return false
		}
		if exists, err := existsIn(l.dirFile, next); err != nil || exists {
			return false
		}
	}
	return true
}

// close releases the directory; a later sync opens it again.
func (l *logSync) close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.dirFile == nil {
		return nil
	}
	err := l.dirFile.Close()
	l.dirFile = nil
	return err
}

func pruned(m, keep map[string]bool) map[string]bool {
	out := make(map[string]bool, len(m))
	for k, v := range m {
		if keep[k] {
			out[k] = v
		}
	}
	return out
}

// logFID returns the file id of a Badger log file name with suffix.
func logFID(name, suffix string) (int64, bool) {
	digits, ok := strings.CutSuffix(name, suffix)
	if !ok || digits == "" {
		return 0, false
	}
	fid, err := strconv.ParseInt(digits, 10, 64)
	return fid, err == nil && fid >= 0
}

func syncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	return errors.Join(f.Sync(), f.Close())
}
