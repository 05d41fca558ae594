package storage_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/kinmesh/kinmesh/storage"
)

// childEnv makes the test binary act as a helper process (see runChild)
// instead of running tests.
const childEnv = "KINMESH_STORAGE_CHILD"

func TestMain(m *testing.M) {
	if mode := os.Getenv(childEnv); mode != "" {
		os.Exit(runChild(mode, os.Getenv("KINMESH_STORAGE_DIR")))
	}
	goleak.VerifyTestMain(m, goleak.IgnoreCurrent())
}

// runChild is the helper process:
//
//	commit   opens the store, commits a batch, prints "committed" and waits
//	         for SIGKILL
//	rss:P    prints the process's RSS (KiB) with nothing open, then with a
//	         store of profile P (device, relay or badger-default) open and idle
func runChild(mode, dir string) int {
	ctx := context.Background()
	switch {
	case mode == "commit":
		st, err := storage.Open(dir, storage.WithSyncWrites(false))
		if err != nil {
			fmt.Println(err)
			return 1
		}
		ns := st.Namespace("mailbox")
		b := st.NewBatch()
		for i := range 10 {
			if err := b.PutTTL(ns, fmt.Sprintf("deposit-%02d", i), []byte("envelope"), 24*3600e9); err != nil {
				fmt.Println(err)
				return 1
			}
		}
		if err := b.Commit(ctx); err != nil {
			fmt.Println(err)
			return 1
		}
		fmt.Println("committed")
		select {} // until SIGKILL
	case strings.HasPrefix(mode, "rss:"):
		return rssChild(strings.TrimPrefix(mode, "rss:"), dir)
	}
	fmt.Println("unknown child mode", mode)
	return 2
}

// startChild runs the test binary as a helper process and returns it with
// its standard output.
func startChild(t testing.TB, mode, dir string) (*exec.Cmd, *bufio.Scanner) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+mode, "KINMESH_STORAGE_DIR="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd, bufio.NewScanner(out)
}

// procStatusKiB returns a field of /proc/self/status in KiB, such as VmRSS:
// (Linux only; 0 elsewhere).
func procStatusKiB(field string) int {
	if runtime.GOOS != "linux" {
		return 0
	}
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == field {
			n, _ := strconv.Atoi(f[1])
			return n
		}
	}
	return 0
}
