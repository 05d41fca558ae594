package storage_test

import (
	"context"
	"fmt"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"

	ds "github.com/ipfs/go-datastore"
	badger4 "github.com/ipfs/go-ds-badger4"

	"github.com/kinmesh/kinmesh/storage"
)

// Every figure here is a ratio against a baseline measured in the same run:
// raw go-ds-badger4 with the same Badger options (x-vs-raw), or go-ds-badger4
// with its default options (x-vs-default).
//
//	go test -run='^$' -bench=. ./storage/

// pair is our store and a raw go-ds-badger4 datastore with the same Badger
// options, each in its own directory.
type pair struct {
	st  *storage.Store
	ns  *storage.Namespace
	raw *badger4.Datastore
}

func newPair(b *testing.B, sync bool) pair {
	b.Helper()
	st, err := storage.Open(b.TempDir(), storage.WithSyncWrites(sync),
		storage.WithSweepInterval(0), storage.WithGCInterval(0))
	if err != nil {
		b.Fatal(err)
	}
	raw := rawDevice(b, sync)
	b.Cleanup(func() {
		if err := st.Close(); err != nil {
			b.Error(err)
		}
		if err := raw.Close(); err != nil {
			b.Error(err)
		}
	})
	return pair{st: st, ns: st.Namespace("bench"), raw: raw}
}

// rawDevice opens the baseline: go-ds-badger4 in a directory of its own
// with a device store's Badger options. A device store compacts on demand
// (compact.go) with Badger's compactors off; the baseline has only
// Badger's, so it runs two, or its writes would stall once level 0 fills
// up.
func rawDevice(b *testing.B, sync bool) *badger4.Datastore {
	b.Helper()
	dir := b.TempDir()
	opts := storage.BadgerOptions(dir, storage.ProfileDevice, sync)
	opts.NumCompactors = 2
	raw, err := badger4.NewDatastore(dir, &badger4.Options{Options: opts})
	if err != nil {
		b.Fatal(err)
	}
	return raw
}

// compare runs raw and ours b.N times each, interleaved (alternating which
// goes first) so both see the same machine state, and reports our time per
// operation, the baseline's, and their ratio.
func compare(b *testing.B, raw, ours func(i int) error) {
	b.Helper()
	var rawT, oursT time.Duration
	run := func(f func(int) error, i int, acc *time.Duration) {
		t0 := time.Now()
		if err := f(i); err != nil {
			b.Fatal(err)
		}
		*acc += time.Since(t0)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if i%2 == 0 {
			run(raw, i, &rawT)
			run(ours, i, &oursT)
		} else {
			run(ours, i, &oursT)
			run(raw, i, &rawT)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(oursT.Nanoseconds())/float64(b.N), "ns/op")
	b.ReportMetric(float64(rawT.Nanoseconds())/float64(b.N), "raw-ns/op")
	b.ReportMetric(float64(oursT)/float64(rawT), "x-vs-raw")
}

func sizeName(n int) string {
	if n >= 1024 {
		return fmt.Sprintf("%dKiB", n>>10)
	}
	return fmt.Sprintf("%dB", n)
}

func BenchmarkStorage(b *testing.B) {
	ctx := context.Background()
	for _, size := range []int{256, 4 << 10} {
		value := randBytes(size)
		for _, sync := range []bool{false, true} {
			b.Run(fmt.Sprintf("put/%s/sync=%v", sizeName(size), sync), func(b *testing.B) {
				p := newPair(b, sync)
				compare(b,
					func(i int) error { return p.raw.Put(ctx, ds.NewKey("k"+strconv.Itoa(i)), value) },
					func(i int) error { return p.ns.Put(ctx, "k"+strconv.Itoa(i), value) })
			})
		}
		b.Run(fmt.Sprintf("putttl/%s/sync=false", sizeName(size)), func(b *testing.B) {
			p := newPair(b, false)
			compare(b,
				func(i int) error { return p.raw.PutWithTTL(ctx, ds.NewKey("k"+strconv.Itoa(i)), value, time.Hour) },
				func(i int) error { return p.ns.PutTTL(ctx, "k"+strconv.Itoa(i), value, time.Hour) })
		})
		b.Run(fmt.Sprintf("get/%s", sizeName(size)), func(b *testing.B) {
			p := newPair(b, false)
			const keys = 1000
			for i := range keys {
				if err := p.raw.Put(ctx, ds.NewKey("k"+strconv.Itoa(i)), value); err != nil {
					b.Fatal(err)
				}
				if err := p.ns.Put(ctx, "k"+strconv.Itoa(i), value); err != nil {
					b.Fatal(err)
				}
			}
			compare(b,
				func(i int) error { _, err := p.raw.Get(ctx, ds.NewKey("k"+strconv.Itoa(i%keys))); return err },
				func(i int) error { _, err := p.ns.Get(ctx, "k"+strconv.Itoa(i%keys)); return err })
		})
		b.Run(fmt.Sprintf("batch100/%s/synced", sizeName(size)), func(b *testing.B) {
			// Stores that do not sync every write: our Commit syncs itself,
			// the baseline's batch is followed by an explicit Sync.
			p := newPair(b, false)
			compare(b,
				func(i int) error {
					bt, err := p.raw.Batch(ctx)
					if err != nil {
						return err
					}
					for j := range 100 {
						if err := bt.Put(ctx, ds.NewKey(fmt.Sprintf("b%d/%d", i, j)), value); err != nil {
							return err
						}
					}
					if err := bt.Commit(ctx); err != nil {
						return err
					}
					return p.raw.DB.Sync()
				},
				func(i int) error {
					bt := p.st.NewBatch()
					for j := range 100 {
						if err := bt.Put(p.ns, fmt.Sprintf("b%d/%d", i, j), value); err != nil {
							return err
						}
					}
					return bt.Commit(ctx)
				})
		})
	}
}

// BenchmarkMemory measures the RSS of a fresh process that opens a store and
// idles, against the same process before opening it:
//
//	fresh   open a new store, write 200 values of 1 KiB
//	loaded  write 32 MiB of 256-byte values in batches (enough to fill every
//	        profile's memtables many times), close, reopen: the phone that
//	        restarts with a used store. peak-rss-MB is the process's high-water
//	        mark during the writes.
//
// go-ds-badger4 with its default options, under the same load, is the
// baseline (x-vs-default compares the store's share of RSS).
func BenchmarkMemory(b *testing.B) {
	for _, load := range []string{"fresh", "loaded"} {
		for _, profile := range []string{"device", "relay"} {
			b.Run(load+"/"+profile, func(b *testing.B) {
				var m, def memSample
				for range b.N {
					def.add(measureChild(b, "badger-default", load))
					m.add(measureChild(b, profile, load))
				}
				n := float64(b.N)
				b.ReportMetric(m.rssMB/n, "rss-MB")
				b.ReportMetric(m.shareMB/n, "store-rss-MB")
				b.ReportMetric(m.anonMB/n, "store-anon-MB")
				b.ReportMetric(m.heapMB/n, "store-heap-MB")
				b.ReportMetric(m.shareMB/def.shareMB, "x-vs-default")
				if load == "loaded" {
					b.ReportMetric(m.peakMB/n, "peak-rss-MB")
					b.ReportMetric(def.peakMB/n, "default-peak-rss-MB")
				}
			})
		}
	}
}

type memSample struct{ rssMB, shareMB, anonMB, heapMB, peakMB float64 }

func (m *memSample) add(o memSample) {
	m.rssMB += o.rssMB
	m.shareMB += o.shareMB
	m.anonMB += o.anonMB
	m.heapMB += o.heapMB
	m.peakMB += o.peakMB
}

func measureChild(b *testing.B, profile, load string) memSample {
	b.Helper()
	cmd, out := startChild(b, "rss:"+profile+":"+load, b.TempDir())
	defer cmd.Wait()
	if !out.Scan() {
		b.Fatalf("child %s: no output (%v)", profile, out.Err())
	}
	var before, after, anonBefore, anonAfter, peak, heapBefore, heapAfter float64
	if _, err := fmt.Sscan(out.Text(), &before, &after, &anonBefore, &anonAfter, &peak, &heapBefore, &heapAfter); err != nil {
		b.Fatalf("child %s said %q: %v", profile, out.Text(), err)
	}
	return memSample{
		rssMB:   after / 1024,
		shareMB: (after - before) / 1024,
		anonMB:  (anonAfter - anonBefore) / 1024,
		heapMB:  (heapAfter - heapBefore) / (1 << 20),
		peakMB:  peak / 1024,
	}
}

// memStore is what rssChild needs of a store.
type memStore struct {
	put   func(batch, n int, value []byte) error
	close func() error
}

func openMemStore(profile, dir string) (memStore, error) {
	ctx := context.Background()
	if profile == "badger-default" {
		d, err := badger4.NewDatastore(dir, nil)
		if err != nil {
			return memStore{}, err
		}
		return memStore{
			put: func(batch, n int, value []byte) error {
				bt, err := d.Batch(ctx)
				if err != nil {
					return err
				}
				for i := range n {
					if err := bt.Put(ctx, ds.NewKey(fmt.Sprint("k", batch, "-", i)), value); err != nil {
						return err
					}
				}
				return bt.Commit(ctx)
			},
			close: d.Close,
		}, nil
	}
	p := storage.ProfileDevice
	if profile == "relay" {
		p = storage.ProfileRelay
	}
	st, err := storage.Open(dir, storage.WithProfile(p), storage.WithSyncWrites(false))
	if err != nil {
		return memStore{}, err
	}
	ns := st.Namespace("bench")
	return memStore{
		put: func(batch, n int, value []byte) error {
			bt := st.NewBatch()
			for i := range n {
				if err := bt.Put(ns, fmt.Sprint("k", batch, "-", i), value); err != nil {
					return err
				}
			}
			return bt.Commit(ctx)
		},
		close: st.Close,
	}, nil
}

// rssChild is the helper process of BenchmarkMemory; mode is PROFILE:LOAD. It
// prints its RSS and its anonymous RSS before and after, its peak RSS (KiB),
// then its heap in use before and after (bytes).
func rssChild(mode, dir string) int {
	profile, load, _ := strings.Cut(mode, ":")
	settle := func() (rss, anon int, heap uint64) {
		runtime.GC()
		debug.FreeOSMemory()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return procStatusKiB("VmRSS:"), procStatusKiB("RssAnon:"), ms.HeapInuse
	}
	fail := func(err error) int {
		fmt.Println(err)
		return 1
	}
	rss0, anon0, heap0 := settle()
	st, err := openMemStore(profile, dir)
	if err != nil {
		return fail(err)
	}
	if load == "fresh" {
		if err := st.put(0, 200, randBytes(1024)); err != nil {
			return fail(err)
		}
	} else {
		value := randBytes(256)
		for i := range 256 {
			if err := st.put(i, 512, value); err != nil {
				return fail(err)
			}
		}
		if err := st.close(); err != nil {
			return fail(err)
		}
		if st, err = openMemStore(profile, dir); err != nil {
			return fail(err)
		}
	}
	peak := procStatusKiB("VmHWM:")
	rss1, anon1, heap1 := settle()
	fmt.Println(rss0, rss1, anon0, anon1, peak, heap0, heap1)
	if err := st.close(); err != nil {
		return 1
	}
	return 0
}
