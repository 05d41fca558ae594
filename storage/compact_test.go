package storage_test

import (
	"context"
	"encoding/hex"
	"fmt"
	"testing"
	"time"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/kinmesh/kinmesh/storage"
)

// TestDeviceCompactsOnDemand: a device store runs no Badger compactors
// (each wakes every 50 ms, idle or not) and compacts level 0 itself, so a
// write flood well past the point where Badger stalls writes without
// compaction (16 level-0 tables of 2 MiB) completes and ends up below level 0.
func TestDeviceCompactsOnDemand(t *testing.T) {
	for _, tc := range []struct {
		name    string
		profile storage.Profile
		want    int
	}{
		{"device", storage.ProfileDevice, 0},
		{"relay", storage.ProfileRelay, 2},
	} {
		if got := storage.BadgerOptions(t.TempDir(), tc.profile, true).NumCompactors; got != tc.want {
			t.Errorf("%s: Badger NumCompactors = %d, want %d", tc.name, got, tc.want)
		}
	}

	ctx := context.Background()
	st, ns := floodStore(t)
	const batches, perBatch = 160, 400 // 64,000 × 512 B values: ~48 MB with keys and sealing
	var probe []string
	done := make(chan error, 1)
	go func() {
		for i := range batches {
			b := st.NewBatch()
			for j := range perBatch {
				key := hex.EncodeToString(randBytes(16))
				if j == 0 {
					probe = append(probe, key)
				}
				if err := b.Put(ns, key, []byte(fmt.Sprintf("%-512d", i*perBatch+j))); err != nil {
					done <- err
					return
				}
			}
			if err := b.Commit(ctx); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	timeout := time.NewTimer(time.Minute)
	defer timeout.Stop()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-timeout.C:
		t.Fatalf("writes stalled: level 0 has %d tables and nothing compacts it", storage.RawDB(st).Levels()[0].NumTables)
	}
	waitFor(t, "a compaction out of level 0", func() bool {
		below := 0
		for _, l := range storage.RawDB(st).Levels()[1:] {
			below += l.NumTables
		}
		return below > 0
	})
	if l0 := storage.RawDB(st).Levels()[0].NumTables; l0 >= 16 {
		t.Errorf("level 0 has %d tables after the flood, want fewer than the stall point 16", l0)
	}
	for i, key := range probe {
		mustGet(t, ns, key, []byte(fmt.Sprintf("%-512d", i*perBatch)))
	}
}

// TestCompactionWaitsForLargerLevel0: a device store compacts once level
// 0 holds two tables while the levels below are small, and lets level 0
// grow to a tenth of them as they grow (a compaction rewrites most of the
// bottom level), never to where Badger stalls writes.
func TestCompactionWaitsForLargerLevel0(t *testing.T) {
	below := func(mb int64) []badger.LevelInfo {
		return []badger.LevelInfo{{Level: 0}, {Level: 5, Size: mb / 10 << 20}, {Level: 6, Size: (mb - mb/10) << 20}}
	}
	for _, tc := range []struct {
		mb   int64
		want int
	}{{0, 2}, {20, 2}, {60, 3}, {120, 6}, {200, 10}, {280, 14}, {4000, 14}} {
		if got := storage.CompactAt(storage.ProfileDevice, below(tc.mb)); got != tc.want {
			t.Errorf("%d MB below level 0: compaction at %d level-0 tables, want %d", tc.mb, got, tc.want)
		}
	}
	if stall := storage.BadgerOptions(t.TempDir(), storage.ProfileDevice, true).NumLevelZeroTablesStall; stall != 16 {
		t.Errorf("writes stall at %d level-0 tables, want 16 (compactAt stops two short)", stall)
	}
}

// TestCompactionWaitsForAPause: while writes go on, a device store does
// not start a compaction before level 0 nears the stall (Flatten would go
// on for as long as new level-0 tables come, rewriting much of the store
// each round); once they pause, it compacts.
func TestCompactionWaitsForAPause(t *testing.T) {
	ctx := context.Background()
	st, ns := floodStore(t)
	put := func(n int) {
		b := st.NewBatch()
		for range n {
			if err := b.Put(ns, hex.EncodeToString(randBytes(16)), randBytes(512)); err != nil {
				t.Fatal(err)
			}
		}
		if err := b.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	}
	l0 := func() int { return storage.RawDB(st).Levels()[0].NumTables }
	// Three tables: with nothing below level 0, Flatten leaves two alone.
	waitFor(t, "three level-0 tables", func() bool {
		put(400) // about 240 KB: writes never pause
		return l0() >= 3
	})
	put(1)
	if n, waiting := storage.CompactNow(st); !waiting || n < 3 {
		t.Fatalf("during writes with %d level-0 tables: compaction waiting %v, want waiting", n, waiting)
	}
	waitFor(t, "a compaction once writes pause", func() bool { return l0() == 0 })
}

// floodStore opens a device store that doesn't sync its writes, closed
// at the end of the test, and a namespace in it.
func floodStore(t *testing.T) (*storage.Store, *storage.Namespace) {
	t.Helper()
	st, err := storage.Open(t.TempDir(), storage.WithSyncWrites(false))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st, st.Namespace("msgs")
}
