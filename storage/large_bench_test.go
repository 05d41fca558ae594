package storage_test

import (
	"context"
	"encoding/hex"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	ds "github.com/ipfs/go-datastore"

	"github.com/kinmesh/kinmesh/storage"
)

// BenchmarkLargeStore: what new messages cost a device whose store already
// holds a long history (docs/storage.md, "Compaction"). A store is filled
// with largeStored messages, each a 200-byte record under a key ordered by
// conversation (20 of them) and time and an index entry under a random
// id, the way protocols/message keys them; once its disk is quiet, 40
// bursts of 2,048 more messages come (enough for a device store to
// compact several times), a synced batch of 64 at a time, one starting
// every second, and the disk writes and CPU they cause are counted until the disk
// is quiet again. The baseline is raw go-ds-badger4 with the same
// Badger options and Badger's own leveled compactors, which a device
// store leaves out (their wakeups cost an idle device more than anything
// else): x-vs-raw compares the bytes written, cpu-x-vs-raw the CPU.
func BenchmarkLargeStore(b *testing.B) {
	if _, ok := diskWritten(); !ok {
		b.Skip("no /proc/self/io")
	}
	ctx := context.Background()
	for range b.N {
		raw := rawDevice(b, true)
		rawCost := largeStoreRun(b, func(pairs [][2]string, sync bool) error {
			bt, err := raw.Batch(ctx)
			if err != nil {
				return err
			}
			for _, p := range pairs {
				if err := bt.Put(ctx, ds.NewKey(p[0]), []byte(p[1])); err != nil {
					return err
				}
			}
			return bt.Commit(ctx) // synced: SyncWrites
		})
		if err := raw.Close(); err != nil {
			b.Fatal(err)
		}

		st, err := storage.Open(b.TempDir(), storage.WithSweepInterval(0), storage.WithGCInterval(0))
		if err != nil {
			b.Fatal(err)
		}
		ns := st.Namespace("message")
		ours := largeStoreRun(b, func(pairs [][2]string, sync bool) error {
			bt := st.NewBatch()
			for _, p := range pairs {
				if err := bt.Put(ns, p[0], []byte(p[1])); err != nil {
					return err
				}
			}
			if sync {
				return bt.Commit(ctx)
			}
			return bt.CommitUnsynced(ctx)
		})
		if err := st.Close(); err != nil {
			b.Fatal(err)
		}
		n := float64(largeBursts * largeBurst)
		b.ReportMetric(float64(ours.written)/n/1024, "KB-written/msg")
		b.ReportMetric(float64(rawCost.written)/n/1024, "raw-KB-written/msg")
		b.ReportMetric(float64(ours.written)/float64(rawCost.written), "x-vs-raw")
		b.ReportMetric(float64(ours.cpu.Microseconds())/n, "cpu-µs/msg")
		b.ReportMetric(float64(rawCost.cpu.Microseconds())/n, "raw-cpu-µs/msg")
		b.ReportMetric(float64(ours.cpu)/float64(rawCost.cpu), "cpu-x-vs-raw")
	}
}

const (
	largeStored = 300_000
	largeBursts = 40
	largeBurst  = 2048
)

type largeCost struct {
	written int64 // bytes the process sent to the disk
	cpu     time.Duration
}

// largeStoreRun fills a store through put and returns what the bursts
// cost (see BenchmarkLargeStore).
func largeStoreRun(b *testing.B, put func(pairs [][2]string, sync bool) error) largeCost {
	b.Helper()
	value := strings.Repeat("v", 200)
	seq := 0
	write := func(n, per int, sync bool) {
		for i := 0; i < n; i += per {
			pairs := make([][2]string, 0, 2*per)
			for range per {
				seq++
				key := fmt.Sprintf("m/%02d/%016x", seq%20, seq)
				pairs = append(pairs, [2]string{key, value}, [2]string{"i/" + hex.EncodeToString(randBytes(16)), key})
			}
			if err := put(pairs, sync); err != nil {
				b.Fatal(err)
			}
		}
	}
	write(largeStored, 512, false)
	quiet(b)
	w0, _ := diskWritten()
	c0 := cpuUsed()
	every := time.NewTicker(time.Second) // the load: a burst a second
	defer every.Stop()
	for i := range largeBursts {
		if i > 0 {
			<-every.C
		}
		write(largeBurst, 64, true)
	}
	quiet(b)
	w1, _ := diskWritten()
	return largeCost{written: w1 - w0, cpu: cpuUsed() - c0}
}

// quiet waits until the process has written nothing to the disk for two
// seconds: compactions are over.
func quiet(b *testing.B) {
	b.Helper()
	deadline := time.Now().Add(5 * time.Minute)
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	last, _ := diskWritten()
	for still := 0; still < 4; {
		if time.Now().After(deadline) {
			b.Fatal("the disk never went quiet")
		}
		<-tick.C
		w, _ := diskWritten()
		if w == last {
			still++
		} else {
			still, last = 0, w
		}
	}
}

// diskWritten is write_bytes from /proc/self/io: bytes this process
// caused to be sent to the disk, through write() or dirtied mappings.
func diskWritten() (int64, bool) {
	b, err := os.ReadFile("/proc/self/io")
	if err != nil {
		return 0, false
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "write_bytes:"); ok {
			n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			return n, err == nil
		}
	}
	return 0, false
}

// cpuUsed is the process's user and system CPU time.
func cpuUsed() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
