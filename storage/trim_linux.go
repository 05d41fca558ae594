//go:build linux

package storage

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// canTrim: trimMappings does something here.
const canTrim = true

// trimMappings madvises MADV_PAGEOUT every shared read-write mapping of a file
// directly in dir (see trim.go) and returns the bytes of mappings advised,
// except the last keep bytes written to the newest value log (the one
// with the highest file id), which stay mapped. It reads /proc/self/maps
// 4 KiB (a few dozen lines) at a time, so each mapping but the value
// logs' is advised soon after the kernel listed it; the value logs are
// advised once the listing is read and the newest is known. sc holds
// scratch buffers, kept for the next call.
func trimMappings(dir string, sc *trimScratch, keep int64) (int64, error) {
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	if cap(sc.maps) < 4<<10 {
		sc.maps = make([]byte, 4<<10)
	}
	lines := bufio.NewScanner(f)
	lines.Buffer(sc.maps[:4<<10], 1<<20)
	prefix := []byte(dir + "/")
	var total int64
	vlogs := sc.vlogs[:0]
	newest := int64(-1)
	for lines.Scan() {
		if !bytes.Contains(lines.Bytes(), prefix) {
			continue
		}
		start, end, ok := sharedMappingIn(lines.Bytes(), dir)
		if !ok {
			continue
		}
		path := string(lines.Bytes()[bytes.Index(lines.Bytes(), prefix):])
		if kind, fid, ok := logKind(filepath.Base(path)); ok && logSuffixes[kind] == ".vlog" {
			vlogs = append(vlogs, vlogMapping{start, end, fid, path})
			newest = max(newest, fid)
			continue
		}
		n, err := pageOut(start, end)
		if err != nil {
			return total, err
		}
		total += n
	}
	sc.vlogs = vlogs
	if err := lines.Err(); err != nil {
		return total, err
	}
	for _, m := range vlogs {
		end := m.end
		if m.fid == newest && keep > 0 {
			end = m.belowHead(keep)
		}
		n, err := pageOut(m.start, end)
		if err != nil {
			return total, err
		}
		total += n
	}
	return total, nil
}

// trimScratch holds trimMappings' buffers between calls.
type trimScratch struct {
	maps  []byte        // for reading /proc/self/maps
	vlogs []vlogMapping // the value logs' mappings listed
}

// vlogMapping is a mapping of the value log file fid (Badger maps each
// whole, from offset 0).
type vlogMapping struct {
	start, end uintptr
	fid        int64
	path       string
}

// belowHead returns where, in m, the last keep bytes written to its file
// begin: the newest value log, which Badger appends to through the
// mapping. The file is sparse past what was written (Badger truncates it
// to its full size up front), so its first hole is where writes are
// (lseek SEEK_HOLE; a page written and not yet on the disk counts as
// data). It returns m.end if the file can't be opened (Badger has just
// retired and deleted it: nothing to keep) or has no hole (a file system
// without SEEK_HOLE: keep nothing, as before), and m.start if less than
// keep was written.
//
// Why keep anything: a trim that paged out what was just written, while
// writes went on, cost a relay a quarter of its deposit rate for 17 KB
// envelopes (docs/storage.md, "Trimming while writes go on").
func (m vlogMapping) belowHead(keep int64) uintptr {
	f, err := os.Open(m.path)
	if err != nil {
		return m.end
	}
	defer f.Close()
	head, err := f.Seek(0, unix.SEEK_HOLE)
	if err != nil {
		return m.end
	}
	size := int64(m.end - m.start)
	if head >= size {
		return m.end
	}
	return m.start + uintptr(max(0, head-keep)&^int64(unix.Getpagesize()-1))
}

// pageOut madvises start..end MADV_PAGEOUT and returns the bytes advised:
// 0 for a range Badger unmapped (or shrank) since it was listed.
func pageOut(start, end uintptr) (int64, error) {
	if end <= start {
		return 0, nil
	}
	_, _, errno := unix.Syscall(unix.SYS_MADVISE, start, end-start, unix.MADV_PAGEOUT)
	switch {
	case errno == 0:
		return int64(end - start), nil
	case errors.Is(errno, unix.ENOMEM):
		return 0, nil
	default:
		return 0, fmt.Errorf("madvise %#x-%#x: %w", start, end, errno)
	}
}

// sharedMappingIn parses one line of /proc/self/maps,
//
//	7f3c2a000000-7f3c3a000000 rw-s 00000000 fd:01 1234    /data/relay/000001.vlog
//
// and reports the range of a shared read-write mapping ("rw-s": Badger's
// value log and memtable logs, not its read-only tables) of a file
// directly in dir (an absolute path without symbolic links). Deleted files
// ("... (deleted)") are left alone: Badger is about to unmap them.
func sharedMappingIn(line []byte, dir string) (start, end uintptr, ok bool) {
	s := string(line)
	var fields [5]string
	for i := range fields {
		s = strings.TrimLeft(s, " ")
		j := strings.IndexByte(s, ' ')
		if j < 0 {
			return 0, 0, false
		}
		fields[i], s = s[:j], s[j:]
	}
	path := strings.TrimLeft(s, " ")
	if fields[1] != "rw-s" {
		return 0, 0, false
	}
	if filepath.Dir(path) != dir || strings.HasSuffix(path, " (deleted)") {
		return 0, 0, false
	}
	lo, hi, found := strings.Cut(fields[0], "-")
	if !found {
		return 0, 0, false
	}
	a, err1 := strconv.ParseUint(lo, 16, 64)
	b, err2 := strconv.ParseUint(hi, 16, 64)
	if err1 != nil || err2 != nil || b <= a {
		return 0, 0, false
	}
	return uintptr(a), uintptr(b), true
}
