package mailbox

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"testing"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"golang.org/x/sync/errgroup"
)

// Benchmarks report ratios against a baseline measured in the same
// function, in the same run (see docs/protocol/mailbox.md):
//
//	go test -run '^$' -bench BenchmarkMailbox -benchtime 7x ./protocols/mailbox/

// smallEnvelope is the size of the smallest e2ee envelope (a 512-byte
// bucket plus 1137 bytes of HPKE overhead): most messages.
const smallEnvelope = 512 + 1137

// rawBadger opens a Badger database with the options the store's relay
// profile uses (storage/options.go), synced writes: the floor under a
// durable deposit.
func rawBadger(b *testing.B) *badger.DB {
	b.Helper()
	o := badger.DefaultOptions(b.TempDir()).
		WithLogger(nil).
		WithSyncWrites(true).
		WithCompression(options.None).
		WithBlockCacheSize(0).
		WithIndexCacheSize(0).
		WithMetricsEnabled(false).
		WithNumGoroutines(1).
		WithNumCompactors(2).
		WithNumVersionsToKeep(1).
		WithMemTableSize(4 << 20).
		WithNumMemtables(3).
		WithBaseTableSize(1 << 20).
		WithBaseLevelSize(8 << 20).
		WithNumLevelZeroTables(4).
		WithNumLevelZeroTablesStall(12).
		WithValueLogFileSize(128 << 20).
		WithValueThreshold(1 << 10)
	db, err := badger.Open(o)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = db.Close() })
	return db
}

// rawKey is a key shaped like the store's item keys: a 32-byte prefix and
// a 16-digit seq.
func rawKey(round, seq int) []byte {
	return fmt.Appendf(nil, "d/mailbox/%032x/%016x", round, seq)
}

// rawPut writes n values of size bytes in synced transactions of
// MaxBatchItems values (or MaxBatchBytes bytes), as a deposit batch would.
func rawPut(b *testing.B, db *badger.DB, round, n, size int) time.Duration {
	b.Helper()
	val := make([]byte, size)
	start := time.Now()
	for i := 0; i < n; {
		txn := db.NewTransaction(true)
		bytes := 0
		for j := 0; j < MaxBatchItems && i < n && bytes+size <= MaxBatchBytes; j++ {
			binary.BigEndian.PutUint64(val, uint64(i))
			if err := txn.SetEntry(badger.NewEntry(rawKey(round, i), val).WithTTL(MaxAge)); err != nil {
				b.Fatal(err)
			}
			i++
			bytes += size
		}
		if err := txn.Commit(); err != nil {
			b.Fatal(err)
		}
	}
	return time.Since(start)
}

// rawPutIndexed is rawPut with the store's layout: each value carries the
// store's sealing overhead, and each transaction reads the group's due
// record and writes it back with the group's index entry (see
// storage/group.go), but nothing is encrypted. It shows what the store's
// layout costs by itself.
func rawPutIndexed(b *testing.B, db *badger.DB, round, n, size int) time.Duration {
	b.Helper()
	val := make([]byte, size+sealOverhead)
	due := fmt.Appendf(nil, "g/mailbox/\x00\x21%032x/", round)
	entry := fmt.Appendf(nil, "y/%016xmailbox/%032x/", round, round)
	start := time.Now()
	for i := 0; i < n; {
		txn := db.NewTransaction(true)
		if _, err := txn.Get(due); err != nil && !errors.Is(err, badger.ErrKeyNotFound) {
			b.Fatal(err)
		}
		bytes := 0
		for j := 0; j < MaxBatchItems && i < n && bytes+size <= MaxBatchBytes; j++ {
			binary.BigEndian.PutUint64(val, uint64(i))
			if err := txn.SetEntry(badger.NewEntry(rawKey(round, i), val).WithTTL(MaxAge)); err != nil {
				b.Fatal(err)
			}
			i++
			bytes += size
		}
		for _, e := range []*badger.Entry{badger.NewEntry(entry, nil), badger.NewEntry(due, entry[2:10])} {
			if err := txn.SetEntry(e.WithTTL(MaxAge)); err != nil {
				b.Fatal(err)
			}
		}
		if err := txn.Commit(); err != nil {
			b.Fatal(err)
		}
	}
	return time.Since(start)
}

// rawStreamBench is the floor under a durable deposit over the network: a
// raw libp2p stream (the same transports) carrying the envelopes in
// batches of one deposit request's worth, up to the client's window of
// them in flight, into raw synced Badger transactions of one batch each,
// committed one after the other while the next batches arrive, each
// acknowledged once committed. Nothing is decoded, checked or sealed.
type rawStreamBench struct {
	from host.Host
	to   peer.ID
}

const rawStreamProto = "/kinmesh-bench/raw-deposit/1"

func newRawStreamBench(b *testing.B, db *badger.DB, window int) *rawStreamBench {
	b.Helper()
	from, to := newHost(b), newHost(b)
	from.Peerstore().AddAddrs(to.ID(), to.Addrs(), peerstore.PermanentAddrTTL)
	seq := 0 // one stream at a time
	to.SetStreamHandler(rawStreamProto, func(st network.Stream) {
		defer st.Close()
		br := bufio.NewReaderSize(st, 64<<10)
		batches := make(chan [][]byte, window)
		done := make(chan struct{})
		go func() {
			defer close(done)
			for envs := range batches {
				txn := db.NewTransaction(true)
				for _, e := range envs {
					seq++
					if err := txn.SetEntry(badger.NewEntry(rawKey(1<<30, seq), e).WithTTL(MaxAge)); err != nil {
						b.Error(err)
						return
					}
				}
				if err := txn.Commit(); err != nil {
					b.Error(err)
					return
				}
				if _, err := st.Write([]byte{1}); err != nil {
					return
				}
			}
		}()
		defer func() { close(batches); <-done }()
		var hdr [4]byte
		for {
			if _, err := io.ReadFull(br, hdr[:]); err != nil {
				return
			}
			frame := make([]byte, binary.BigEndian.Uint32(hdr[:]))
			if _, err := io.ReadFull(br, frame); err != nil {
				return
			}
			var envs [][]byte
			for len(frame) >= 4 {
				n := binary.BigEndian.Uint32(frame)
				envs, frame = append(envs, frame[4:4+n]), frame[4+n:]
			}
			batches <- envs
		}
	})
	return &rawStreamBench{from: from, to: to.ID()}
}

// put sends envs and returns once every batch is acknowledged.
func (r *rawStreamBench) put(b *testing.B, envs [][]byte, window int) time.Duration {
	b.Helper()
	var batches [][][]byte
	for i := 0; i < len(envs); {
		j, bytes := i, 0
		for j < len(envs) && j-i < MaxBatchItems && bytes+len(envs[j]) <= MaxBatchBytes {
			bytes += len(envs[j])
			j++
		}
		batches, i = append(batches, envs[i:j]), j
	}
	start := time.Now()
	st, err := r.from.NewStream(context.Background(), r.to, rawStreamProto)
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	acks := make(chan error, 1)
	inflight := make(chan struct{}, window)
	go func() {
		var one [1]byte
		for range batches {
			if _, err := io.ReadFull(st, one[:]); err != nil {
				acks <- err
				return
			}
			<-inflight
		}
		acks <- nil
	}()
	bw := bufio.NewWriterSize(st, 64<<10)
	for i, batch := range batches {
		inflight <- struct{}{}
		n := 0
		for _, e := range batch {
			n += 4 + len(e)
		}
		bw.Write(binary.BigEndian.AppendUint32(nil, uint32(n)))
		for _, e := range batch {
			bw.Write(binary.BigEndian.AppendUint32(nil, uint32(len(e))))
			bw.Write(e)
		}
		if len(inflight) == cap(inflight) || i == len(batches)-1 {
			if err := bw.Flush(); err != nil {
				b.Fatal(err)
			}
		}
	}
	if err := <-acks; err != nil {
		b.Fatal(err)
	}
	return time.Since(start)
}

// BenchmarkMailboxDeposit: durable deposit throughput (one depositor,
// batched and pipelined over a real libp2p stream, the relay syncing every
// commit) against raw batched synced Badger puts of the same sizes.
//
// Each iteration runs one round of each, in rotating order, and the
// reported x-vs-raw is the median of the per-round ratios, so that load
// from elsewhere on the machine, which varies over time, hits both sides
// alike. x-vs-indexed compares with raw puts in the store's layout
// (rawPutIndexed) instead.
func BenchmarkMailboxDeposit(b *testing.B) {
	for _, tc := range []struct{ size, n int }{{smallEnvelope, 20_000}, {16<<10 + 1137, 2_000}} {
		size, n := tc.size, tc.n
		b.Run(fmt.Sprintf("envelope=%d", size), func(b *testing.B) {
			r := startRelay(b, WithDepositorRate(1<<30, 1<<50), WithSourceDepositRate(1<<50, 1<<50), WithMailboxQuota(1<<30, 1<<50))
			c := newClient(b, r)
			db := rawBadger(b)
			envs := envelopes(n, size, "bench")
			window := defaultClientConfig().window
			rs := newRawStreamBench(b, db, window)
			var raw, mb time.Duration
			var ratios, indexed, streamed []float64
			deposit := func() time.Duration {
				k := ownerKey(b, r)
				start := time.Now()
				res, err := c.Deposit(context.Background(), r.h.ID(), k.ID(), envs)
				d := time.Since(start)
				if err != nil || res[n-1].Err != nil {
					b.Fatalf("Deposit: %v %v", err, res[n-1].Err)
				}
				return d
			}
			b.ResetTimer()
			for i := range b.N {
				var dr, di, ds, dm time.Duration
				steps := []func(){
					func() { dr = rawPut(b, db, i, n, size) },
					func() { di = rawPutIndexed(b, db, 1<<20+i, n, size) },
					func() { ds = rs.put(b, envs, window) },
					func() { dm = deposit() },
				}
				for j := range steps {
					steps[(i+j)%len(steps)]()
				}
				raw, mb = raw+dr, mb+dm
				ratios = append(ratios, dr.Seconds()/dm.Seconds())
				indexed = append(indexed, di.Seconds()/dm.Seconds())
				streamed = append(streamed, ds.Seconds()/dm.Seconds())
			}
			b.StopTimer()
			report(b, n, raw, mb, ratios)
			slices.Sort(indexed)
			b.ReportMetric(indexed[len(indexed)/2], "x-vs-indexed")
			slices.Sort(streamed)
			b.ReportMetric(streamed[len(streamed)/2], "x-vs-stream")
			b.ReportMetric(float64(n*b.N)/mb.Seconds()*float64(size)/(1<<20), "MiB/s")
		})
	}
}

// report reports both sides' rates and the median ratio of the rounds.
func report(b *testing.B, n int, raw, mb time.Duration, ratios []float64) {
	slices.Sort(ratios)
	b.ReportMetric(float64(n*b.N)/raw.Seconds(), "raw-items/s")
	b.ReportMetric(float64(n*b.N)/mb.Seconds(), "items/s")
	b.ReportMetric(ratios[len(ratios)/2], "x-vs-raw")
}

// BenchmarkMailboxDrain: an owner drains 10,000 queued items (fetch pages,
// ack each page while fetching the next) against raw Badger iterating the
// same values and deleting them page by page in synced transactions. The
// reported x-vs-raw is the median of the per-round ratios.
func BenchmarkMailboxDrain(b *testing.B) {
	const n = 10_000
	size := smallEnvelope
	r := startRelay(b, WithDepositorRate(1<<30, 1<<50), WithSourceDepositRate(1<<50, 1<<50), WithMailboxQuota(1<<30, 1<<50))
	c := newClient(b, r)
	db := rawBadger(b)
	envs := envelopes(n, size, "drain")
	var raw, mb time.Duration
	var ratios []float64
	b.ResetTimer()
	for i := range b.N {
		// Each side drains right after its own queue was written, so
		// both run while their store compacts what was just written.
		b.StopTimer()
		rawPut(b, db, i, n, size)
		b.StartTimer()
		dr := rawDrain(b, db, i)

		b.StopTimer()
		k := ownerKey(b, r)
		if _, err := c.Deposit(context.Background(), r.h.ID(), k.ID(), envs); err != nil {
			b.Fatal(err)
		}
		s, err := c.Open(context.Background(), r.h.ID(), k)
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		start := time.Now()
		got := drain(b, s)
		dm := time.Since(start)
		if got != n {
			b.Fatalf("drained %d, want %d", got, n)
		}
		_ = s.Close()
		raw, mb = raw+dr, mb+dm
		ratios = append(ratios, dr.Seconds()/dm.Seconds())
	}
	b.StopTimer()
	report(b, n, raw, mb, ratios)
}

// drain fetches and acks everything: it fetches page after page and acks
// each page as soon as it has it, with up to 4 acks in flight (the relay
// commits acks that arrive together with one fsync).
func drain(b *testing.B, s *Session) int {
	ctx := context.Background()
	var g errgroup.Group
	g.SetLimit(4)
	total := 0
	var after uint64
	for {
		items, more, err := s.Fetch(ctx, after, 0)
		if err != nil {
			b.Fatal(err)
		}
		if len(items) == 0 {
			break
		}
		seqs := make([]uint64, len(items))
		for i, it := range items {
			seqs[i] = it.Seq
		}
		g.Go(func() error {
			_, err := s.Ack(ctx, seqs...)
			return err
		})
		total += len(items)
		after = seqs[len(seqs)-1]
		if !more {
			break
		}
	}
	if err := g.Wait(); err != nil {
		b.Fatal(err)
	}
	return total
}

// rawDrain reads round's values in pages of MaxPageItems and deletes each
// page in one synced transaction.
func rawDrain(b *testing.B, db *badger.DB, round int) time.Duration {
	b.Helper()
	prefix := fmt.Appendf(nil, "d/mailbox/%032x/", round)
	start := time.Now()
	seek := prefix
	for {
		var keys [][]byte
		err := db.View(func(txn *badger.Txn) error {
			it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix, PrefetchValues: true, PrefetchSize: 64})
			defer it.Close()
			for it.Seek(seek); it.ValidForPrefix(prefix) && len(keys) < MaxPageItems; it.Next() {
				if _, err := it.Item().ValueCopy(nil); err != nil {
					return err
				}
				keys = append(keys, it.Item().KeyCopy(nil))
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
		if len(keys) == 0 {
			return time.Since(start)
		}
		err = db.Update(func(txn *badger.Txn) error {
			for _, k := range keys {
				if err := txn.Delete(k); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
		last := keys[len(keys)-1]
		seek = append(last[:len(last):len(last)], 0)
	}
}
