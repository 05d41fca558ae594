package storage

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
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
// With active, sync also syncs the newest memtable log itself, through a
// file descriptor it keeps open, instead of DB.Sync: see Store.syncAll.
//
// Sync lists the directory each time (one lseek and getdents on the open
// directory) and stops there when the log files are the same as last time:
// Badger never deletes the newest log of a kind and never reuses a number,
// so a rotation since always shows as a new name. Otherwise it syncs the
// logs that retired since: not the newest now, and unlisted or the newest
// at the last listing.
type logSync struct {
	mu      sync.Mutex
	last    []string          // the log files at the last complete listing, sorted
	dirFile *os.File          // the directory, kept open; closed by close
	mem     *os.File          // the newest memtable log as of the last active sync; closed by close
	memName string            // its name
	synced  func(name string) // test hook: a log file (or "." for the directory) was synced
}

// errNoActiveLog: the newest memtable log could not be synced on its own
// (none listed, or gone before it was opened); the caller syncs through
// Badger instead.
var errNoActiveLog = errors.New("storage: no memtable log to sync")

// Badger's log file suffixes: memtable logs (NNNNN.mem) and value logs
// (NNNNNN.vlog).
var logSuffixes = [...]string{".mem", ".vlog"}

// sync runs after DB.Sync returned, or instead of it with active: it
// syncs the newest memtable log (active), the retired log files not
// synced since they retired, and dir if a log file is new. With active it
// returns errNoActiveLog, having synced nothing, if it found no newest
// memtable log to sync.
func (l *logSync) sync(dir string, active bool) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	names, err := l.list(dir)
	if err != nil {
		return fmt.Errorf("list %s: %w", dir, err)
	}
	var logs []string
	for _, n := range names {
		if _, _, ok := logKind(n); ok {
			logs = append(logs, n)
		}
	}
	slices.Sort(logs)
	newest := newestLogs(logs)
	if active {
		if err := l.syncMem(dir, newest[0]); err != nil {
			return err
		}
	}
	if slices.Equal(logs, l.last) {
		return nil
	}
	wasNewest := newestLogs(l.last)
	isNew := false
	for _, n := range logs {
		k, _, _ := logKind(n)
		_, listed := slices.BinarySearch(l.last, n)
		isNew = isNew || !listed
		// The newest of its kind is DB.Sync's; one that had retired by
		// the last listing was synced then.
		if n == newest[k] || (listed && n != wasNewest[k]) {
			continue
		}
		switch err := syncFile(filepath.Join(dir, n)); {
		case os.IsNotExist(err):
			// Flushed to a (synced) table and deleted meanwhile.
		case err != nil:
			return fmt.Errorf("sync %s: %w", n, err)
		case l.synced != nil:
			l.synced(n)
		}
	}
	if isNew {
		if err := syncFile(dir); err != nil {
			return fmt.Errorf("sync directory %s: %w", dir, err)
		}
		if l.synced != nil {
			l.synced(".")
		}
	}
	l.last = logs
	return nil
}

// syncMem syncs the memtable log name (the newest listed), opening it
// once for as long as it stays the newest.
func (l *logSync) syncMem(dir, name string) error {
	if name == "" {
		return errNoActiveLog
	}
	if l.mem == nil || l.memName != name {
		if l.mem != nil {
			_ = l.mem.Close()
			l.mem, l.memName = nil, ""
		}
		f, err := os.Open(filepath.Join(dir, name))
		if os.IsNotExist(err) {
			// Rotated and flushed since the listing: a newer one has
			// the writes now.
			return errNoActiveLog
		}
		if err != nil {
			return fmt.Errorf("open %s: %w", name, err)
		}
		l.mem, l.memName = f, name
	}
	if err := datasync(l.mem); err != nil {
		return fmt.Errorf("sync %s: %w", name, err)
	}
	if l.synced != nil {
		l.synced(name)
	}
	return nil
}

// newestLogs returns, by kind, the name of the newest of logs ("": none).
func newestLogs(logs []string) [len(logSuffixes)]string {
	var names [len(logSuffixes)]string
	var fids [len(logSuffixes)]int64
	for _, n := range logs {
		k, fid, _ := logKind(n)
		if names[k] == "" || fid > fids[k] {
			names[k], fids[k] = n, fid
		}
	}
	return names
}

// list returns the names in dir, read through the directory kept open.
func (l *logSync) list(dir string) ([]string, error) {
	if l.dirFile == nil {
		d, err := os.Open(dir)
		if err != nil {
			return nil, err
		}
		l.dirFile = d
	} else if _, err := l.dirFile.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	return l.dirFile.Readdirnames(-1)
}

// close releases the directory; a later sync opens it again.
func (l *logSync) close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	var err error
	if l.mem != nil {
		err = l.mem.Close()
		l.mem, l.memName = nil, ""
	}
	if l.dirFile == nil {
		return err
	}
	err = errors.Join(err, l.dirFile.Close())
	l.dirFile = nil
	return err
}

// logKind returns the kind (index in logSuffixes) and file id of a
// Badger log file name.
func logKind(name string) (kind int, fid int64, ok bool) {
	for k, suffix := range logSuffixes {
		digits, found := strings.CutSuffix(name, suffix)
		if !found || digits == "" {
			continue
		}
		fid, err := strconv.ParseInt(digits, 10, 64)
		return k, fid, err == nil && fid >= 0
	}
	return 0, 0, false
}

func syncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	return errors.Join(f.Sync(), f.Close())
}
