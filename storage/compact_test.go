package storage_test

import (
	"context"
	"encoding/hex"
	"fmt"
	"testing"
	"time"

	"github.com/kinmesh/kinmesh/storage"
)

// TestDeviceCompactsOnDemand: a device store runs no Badger compactors
// (each wakes every 50 ms, idle or not) and compacts level 0 itself, so a
// write flood well past the point where Badger stalls writes without
// compaction (8 level-0 tables of 2 MiB) completes and ends up below level 0.
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
	st, err := storage.Open(t.TempDir(), storage.WithSyncWrites(false))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ns := st.Namespace("msgs")
	const batches, perBatch = 80, 400 // 32,000 × 512 B values: ~24 MB with keys and sealing
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
	if l0 := storage.RawDB(st).Levels()[0].NumTables; l0 >= 8 {
		t.Errorf("level 0 has %d tables after the flood, want fewer than the stall point 8", l0)
	}
	for i, key := range probe {
		mustGet(t, ns, key, []byte(fmt.Sprintf("%-512d", i*perBatch)))
	}
}
