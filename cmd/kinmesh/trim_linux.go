package main

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// trimStartupPages releases the daemon's start-up pages: the binary's
// read-only mappings (code, rodata, pclntab) that package inits and host
// wiring touch once at start and rarely again. madvise(MADV_DONTNEED) on
// them drops only this process's page-table entries: the pages stay in
// the page cache, and whatever runs later faults back in (a minor fault)
// just the pages it uses. Writable mappings are never touched: dropping
// them would lose their contents. It returns the bytes of mappings
// advised (not what was resident).
func trimStartupPages() (int64, error) {
	exe, err := os.Executable()
	if err != nil {
		return 0, err
	}
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var total int64
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		start, end, ok := readOnlyMappingOf(sc.Text(), exe)
		if !ok {
			continue
		}
		if _, _, errno := unix.Syscall(unix.SYS_MADVISE, start, end-start, unix.MADV_DONTNEED); errno != 0 {
			return total, fmt.Errorf("madvise %#x-%#x: %w", start, end, errno)
		}
		total += int64(end - start)
	}
	return total, sc.Err()
}

// readOnlyMappingOf parses one line of /proc/self/maps and reports the
// range of a private, read-only mapping of file path ("r-xp" or "r--p").
func readOnlyMappingOf(line, path string) (start, end uintptr, ok bool) {
	fields := strings.Fields(line)
	if len(fields) < 6 || strings.Join(fields[5:], " ") != path {
		return 0, 0, false
	}
	if perms := fields[1]; perms != "r-xp" && perms != "r--p" {
		return 0, 0, false
	}
	lo, hi, found := strings.Cut(fields[0], "-")
	if !found {
		return 0, 0, false
	}
	s, err1 := strconv.ParseUint(lo, 16, 64)
	e, err2 := strconv.ParseUint(hi, 16, 64)
	if err1 != nil || err2 != nil || e <= s {
		return 0, 0, false
	}
	return uintptr(s), uintptr(e), true
}
