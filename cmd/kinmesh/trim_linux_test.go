package main

import (
	"os"
	"runtime/debug"
	"testing"
)

func TestReadOnlyMappingOf(t *testing.T) {
	const exe = "/usr/bin/kinmesh"
	for _, c := range []struct {
		line       string
		start, end uintptr
		ok         bool
	}{
		{"00400000-00c5e000 r-xp 00000000 08:01 1234 /usr/bin/kinmesh", 0x400000, 0xc5e000, true},
		{"00c5e000-01a00000 r--p 0085e000 08:01 1234 /usr/bin/kinmesh", 0xc5e000, 0x1a00000, true},
		{"01a00000-01a80000 rw-p 01600000 08:01 1234 /usr/bin/kinmesh", 0, 0, false}, // writable: never
		{"7f0000000000-7f0000100000 r--p 00000000 08:01 99 /usr/lib/other.so", 0, 0, false},
		{"c000000000-c000400000 rw-p 00000000 00:00 0", 0, 0, false},
		{"00400000-00c5e000 r-xp 00000000 08:01 1234 /usr/bin/kinmesh (deleted)", 0, 0, false},
		{"zz-00c5e000 r-xp 00000000 08:01 1234 /usr/bin/kinmesh", 0, 0, false},
		{"00c5e000-00400000 r-xp 00000000 08:01 1234 /usr/bin/kinmesh", 0, 0, false},
		{"", 0, 0, false},
	} {
		s, e, ok := readOnlyMappingOf(c.line, exe)
		if s != c.start || e != c.end || ok != c.ok {
			t.Errorf("%q: got %#x-%#x %v, want %#x-%#x %v", c.line, s, e, ok, c.start, c.end, c.ok)
		}
	}
}

// TestTrimStartupPages trims this test binary's own read-only pages and
// keeps running: code, rodata and the pclntab (a stack trace reads it)
// fault back in from the page cache.
func TestTrimStartupPages(t *testing.T) {
	n, err := trimStartupPages()
	if err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Fatal("no read-only mapping of the executable found")
	}
	if len(debug.Stack()) == 0 {
		t.Fatal("no stack after trimming")
	}
	if _, err := os.Executable(); err != nil {
		t.Fatal(err)
	}
}
