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
// directly in dir (see trim.go) and returns the bytes of mappings advised.
// It reads /proc/self/maps 4 KiB (a few dozen lines) at a time, so each
// mapping is advised soon after the kernel listed it. buf is a scratch
// buffer, returned for the next call.
func trimMappings(dir string, buf []byte) (int64, []byte, error) {
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return 0, buf, err
	}
	defer f.Close()
	if cap(buf) < 4<<10 {
		buf = make([]byte, 4<<10)
	}
	sc := bufio.NewScanner(f)
	sc.Buffer(buf[:4<<10], 1<<20)
	prefix := []byte(dir + "/")
	var total int64
	for sc.Scan() {
		if !bytes.Contains(sc.Bytes(), prefix) {
			continue
		}
		start, end, ok := sharedMappingIn(sc.Bytes(), dir)
		if !ok {
			continue
		}
		_, _, errno := unix.Syscall(unix.SYS_MADVISE, start, end-start, unix.MADV_PAGEOUT)
		switch {
		case errno == 0:
			total += int64(end - start)
		case errors.Is(errno, unix.ENOMEM):
			// Unmapped (or shrunk) by Badger since the line was read.
		default:
			return total, buf, fmt.Errorf("madvise %#x-%#x: %w", start, end, errno)
		}
	}
	return total, buf, sc.Err()
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
