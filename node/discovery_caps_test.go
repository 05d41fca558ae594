package node

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"math"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cloudflare/circl/oprf"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"

	"github.com/kinmesh/kinmesh/protocols/discovery"
	"github.com/kinmesh/kinmesh/protocols/discovery/pb"
	"github.com/kinmesh/kinmesh/protocols/wire"
	"github.com/kinmesh/kinmesh/storage"
)

// fakeDirectory is a relay whose directory pages come from a function
// of the cursor asked for (nil: it never answers, until the device gives
// up). It counts the list requests it answers.
type fakeDirectory struct {
	id       peer.ID
	pk       []byte
	requests atomic.Int64
}

func startFakeDirectory(t *testing.T, n *Node, page func(pk []byte, since uint64) *pb.Page) *fakeDirectory {
	t.Helper()
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableMetrics())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Close() })
	k, err := oprf.GenerateKey(oprf.SuiteRistretto255, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pk, err := k.Public().MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	r := &fakeDirectory{id: h.ID(), pk: pk}
	h.SetStreamHandler(discovery.ID, func(st network.Stream) {
		defer st.Close()
		_ = st.SetDeadline(time.Now().Add(10 * time.Second))
		var req pb.Request
		if err := wire.NewReader(st).Read(&req, 128); err != nil || req.GetList() == nil {
			_ = st.Reset()
			return
		}
		r.requests.Add(1)
		p := page(pk, req.GetList().GetSince())
		if p == nil {
			_, _ = io.Copy(io.Discard, st) // until the device resets the stream
			return
		}
		_ = wire.Write(st, &pb.Response{Body: &pb.Response_Page{Page: p}}, 1<<20)
	})
	n.host.Peerstore().AddAddrs(h.ID(), h.Addrs(), peerstore.PermanentAddrTTL)
	return r
}

// fakeEntries returns the entries of sequence numbers from+1 … to, with
// ids id(seq) and boxes of size bytes.
func fakeEntries(from, to uint64, id func(seq uint64) uint64, size int) []*pb.Entry {
	box := make([]byte, size)
	_, _ = rand.Read(box)
	var out []*pb.Entry
	for seq := from + 1; seq <= to; seq++ {
		b := make([]byte, discovery.IDSize)
		binary.BigEndian.PutUint64(b, id(seq))
		out = append(out, &pb.Entry{Seq: seq, Id: b, Box: box})
	}
	return out
}

// hostileMode is how a hostile directory never ends: every page says
// there is more (for hostilePages pages), with hostilePerPage entries of
// hostileBox bytes — new ids (grows), the same ids again (churns), or no
// entries and no progress at all (stuck).
type hostileMode int

const (
	hostileGrows hostileMode = iota
	hostileChurns
	hostileStuck
)

const (
	hostilePages   = 300
	hostilePerPage = 16
	hostileBox     = 1000
)

func startHostileDirectory(t *testing.T, n *Node, mode hostileMode) *fakeDirectory {
	t.Helper()
	const end = hostilePages * hostilePerPage
	return startFakeDirectory(t, n, func(pk []byte, since uint64) *pb.Page {
		p := &pb.Page{PublicKey: pk, Version: end, Next: since, More: since < end}
		if mode == hostileStuck {
			return p
		}
		id := func(seq uint64) uint64 { return seq }
		if mode == hostileChurns {
			id = func(seq uint64) uint64 { return seq % hostilePerPage }
		}
		p.Next = min(since+hostilePerPage, end)
		p.Entries = fakeEntries(since, p.Next, id, hostileBox)
		p.More = p.Next < end
		return p
	})
}

// copyOf returns what n holds of relay's directory: the entries of the
// copy lookups use and their bytes, counted, and the copy state it keeps.
func copyOf(t *testing.T, n *Node, relay peer.ID) (entries int, bytes int64, cp relayCopy) {
	t.Helper()
	ns := n.store.Namespace(discoveryNamespace)
	if b, err := ns.Get(context.Background(), "r/"+relay.String()); err == nil {
		if err := json.Unmarshal(b, &cp); err != nil {
			t.Fatal(err)
		}
	}
	err := ns.List(context.Background(), storage.ListOptions{Prefix: genPrefix(relay, cp.Gen)}, func(_ string, v []byte) error {
		entries++
		bytes += int64(len(v))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return entries, bytes, cp
}

// TestDirectorySyncIsBounded: a relay that keeps answering "more" fills
// the device's copy of its directory up to the caps and no further; the
// sync fails with ErrDirectoryTooLarge (a misbehaving relay), and so does
// the next one, without growing the copy.
func TestDirectorySyncIsBounded(t *testing.T) {
	tests := []struct {
		name        string
		mode        hostileMode
		caps        directoryCaps
		maxRequests int64 // list requests the relay may see per sync
		want        error
	}{
		{"entries", hostileGrows, directoryCaps{entries: 100, bytes: 1 << 30, pages: 1000}, 10, ErrDirectoryTooLarge},
		{"bytes", hostileGrows, directoryCaps{entries: 1 << 20, bytes: 50_000, pages: 1000}, 10, ErrDirectoryTooLarge},
		{"pages", hostileChurns, directoryCaps{entries: 1 << 20, bytes: 1 << 30, pages: 20}, 20, ErrDirectoryTooLarge},
		{"no progress", hostileStuck, defaultDirectoryCaps(), 1, discovery.ErrProtocol},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := startNode(t, Config{})
			r := startHostileDirectory(t, n, tt.mode)
			c, err := discovery.NewClient(n.host, discovery.WithClientLogger(n.log))
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			var first int
			for sync := range 2 {
				r.requests.Store(0)
				_, err := n.syncDirectory(ctx, c, r.id, tt.caps)
				if !errors.Is(err, tt.want) || !errors.Is(err, discovery.ErrProtocol) {
					t.Fatalf("sync %d: %v, want %v (a misbehaving relay)", sync, err, tt.want)
				}
				if got := r.requests.Load(); got > tt.maxRequests {
					t.Fatalf("sync %d asked for %d pages, want at most %d", sync, got, tt.maxRequests)
				}
				entries, bytes, cp := copyOf(t, n, r.id)
				if entries > tt.caps.entries || bytes > tt.caps.bytes {
					t.Fatalf("sync %d: the copy holds %d entries, %d bytes; want at most %d, %d", sync, entries, bytes, tt.caps.entries, tt.caps.bytes)
				}
				if cp.Entries != entries || cp.Bytes != bytes {
					t.Fatalf("sync %d: the copy's state says %d entries, %d bytes; it holds %d, %d", sync, cp.Entries, cp.Bytes, entries, bytes)
				}
				if sync == 0 {
					first = entries
				} else if entries != first {
					t.Fatalf("the second sync changed the copy from %d to %d entries", first, entries)
				}
			}
		})
	}
}

// TestDirectoryStartOverKeepsCount: a relay that asks the device to start
// over has its copy dropped and listed again, and the copy's size is
// counted right through it; so is a copy written before sizes were kept.
func TestDirectoryStartOverKeepsCount(t *testing.T) {
	n := startNode(t, Config{})
	var startOver atomic.Bool
	r := startFakeDirectory(t, n, func(pk []byte, since uint64) *pb.Page {
		if startOver.Load() {
			// The log starts again at 100; five entries, all new ids.
			if since != 0 && since < 100 {
				return &pb.Page{PublicKey: pk, Version: 105, StartOver: true, Next: 105,
					Entries: fakeEntries(100, 105, func(seq uint64) uint64 { return 1000 + seq }, 300)}
			}
			return &pb.Page{PublicKey: pk, Version: 105, Next: 105}
		}
		// 40 changes in pages of 16: 30 ids, the last ten replacing the
		// first ten, at 500 bytes each.
		next := min(since+16, 40)
		return &pb.Page{PublicKey: pk, Version: 40, Next: next, More: next < 40,
			Entries: fakeEntries(since, next, func(seq uint64) uint64 { return (seq-1)%30 + 1 }, 500)}
	})
	c, err := discovery.NewClient(n.host, discovery.WithClientLogger(n.log))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	want := func(what string, entries int, bytes int64) {
		t.Helper()
		got, gotBytes, cp := copyOf(t, n, r.id)
		if got != entries || gotBytes != bytes || cp.Entries != entries || cp.Bytes != bytes || !cp.Counted {
			t.Fatalf("%s: the copy holds %d entries, %d bytes, its state says %d, %d (counted %v); want %d, %d",
				what, got, gotBytes, cp.Entries, cp.Bytes, cp.Counted, entries, bytes)
		}
	}
	if _, err := n.syncDirectory(ctx, c, r.id, defaultDirectoryCaps()); err != nil {
		t.Fatal(err)
	}
	want("first sync", 30, 30*500)

	// A copy state from before sizes were kept: counted at the next sync.
	cp := relayCopy{Key: r.pk, copyGen: copyGen{Cursor: 40}}
	b := n.store.NewBatch()
	if err := n.putRelayCopy(b, r.id, cp); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := n.syncDirectory(ctx, c, r.id, defaultDirectoryCaps()); err != nil {
		t.Fatal(err)
	}
	want("an old copy state", 30, 30*500)

	startOver.Store(true)
	if _, err := n.syncDirectory(ctx, c, r.id, defaultDirectoryCaps()); err != nil {
		t.Fatal(err)
	}
	want("after starting over", 5, 5*300)
}

// TestDirectorySyncDeadline: a sync that does not end — a relay whose
// pages always say "more" (within every cap but the pages', lifted here),
// or one that never answers — ends at the sync's deadline with
// ErrDirectorySyncTimeout, long before the caller's context or the page's
// request timeout (40 s) would end it. What it wrote stays, and the next
// sync goes on from there.
func TestDirectorySyncDeadline(t *testing.T) {
	if got := defaultDirectoryCaps().timeout; got != DirectorySyncTimeout || DirectorySyncTimeout != 10*time.Minute {
		t.Fatalf("default sync timeout %v (DirectorySyncTimeout %v), want 10 min", got, DirectorySyncTimeout)
	}
	endless := func(pk []byte, since uint64) *pb.Page {
		next := since + 16
		return &pb.Page{PublicKey: pk, Version: next + 1, Next: next, More: true,
			Entries: fakeEntries(since, next, func(seq uint64) uint64 { return seq % 16 }, 200)}
	}
	stalled := func(pk []byte, since uint64) *pb.Page { return nil }
	tests := []struct {
		name string
		page func(pk []byte, since uint64) *pb.Page
	}{
		{"endless", endless},
		{"stalled", stalled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := startNode(t, Config{})
			r := startFakeDirectory(t, n, tt.page)
			c, err := discovery.NewClient(n.host, discovery.WithClientLogger(n.log))
			if err != nil {
				t.Fatal(err)
			}
			caps := defaultDirectoryCaps()
			caps.pages = math.MaxInt
			caps.timeout = time.Second
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			var cursor uint64
			for sync := range 2 {
				start := time.Now()
				_, err := n.syncDirectory(ctx, c, r.id, caps)
				if !errors.Is(err, ErrDirectorySyncTimeout) || !errors.Is(err, context.DeadlineExceeded) {
					t.Fatalf("sync %d: %v, want ErrDirectorySyncTimeout", sync, err)
				}
				if took := time.Since(start); took > 15*time.Second {
					t.Fatalf("sync %d ended after %v, want about its 1 s deadline", sync, took)
				}
				if ctx.Err() != nil {
					t.Fatal("the caller's context ended first")
				}
				entries, bytes, cp := copyOf(t, n, r.id)
				if cp.Entries != entries || cp.Bytes != bytes {
					t.Fatalf("sync %d: the copy's state says %d entries, %d bytes; it holds %d, %d", sync, cp.Entries, cp.Bytes, entries, bytes)
				}
				if tt.name == "endless" {
					if cp.Cursor <= cursor || entries != 16 {
						t.Fatalf("sync %d: cursor %d after %d, %d entries; want it moved on, 16 entries", sync, cp.Cursor, cursor, entries)
					}
				} else if r.requests.Load() != int64(sync+1) {
					t.Fatalf("sync %d: %d requests, want %d", sync, r.requests.Load(), sync+1)
				}
				cursor = cp.Cursor
			}
		})
	}
}

// TestDirectoryFullPagesFitTheStore: a page as full as a relay sends
// (256 KiB of entries) of records of 500 bytes is more than one
// transaction of a device store takes (records under about 620 bytes
// are); the sync writes it in several, the last page of a start over
// included, and the copy's state counts it right.
func TestDirectoryFullPagesFitTheStore(t *testing.T) {
	const perPage, box = 493, 500 // a relay's page: 256 KiB of entries of 500 + 32 bytes
	n := startNode(t, Config{})
	var startOver atomic.Bool
	r := startFakeDirectory(t, n, func(pk []byte, since uint64) *pb.Page {
		if startOver.Load() {
			if since == perPage {
				return &pb.Page{PublicKey: pk, Version: 2 * perPage, StartOver: true, Next: 2 * perPage,
					Entries: fakeEntries(perPage, 2*perPage, func(seq uint64) uint64 { return seq }, box)}
			}
			return &pb.Page{PublicKey: pk, Version: 2 * perPage, Next: 2 * perPage}
		}
		return &pb.Page{PublicKey: pk, Version: perPage, Next: perPage,
			Entries: fakeEntries(0, perPage, func(seq uint64) uint64 { return seq }, box)}
	})
	c, err := discovery.NewClient(n.host, discovery.WithClientLogger(n.log))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, phase := range []string{"first sync", "start over"} {
		startOver.Store(phase == "start over")
		if _, err := n.syncDirectory(ctx, c, r.id, defaultDirectoryCaps()); err != nil {
			t.Fatalf("%s: %v", phase, err)
		}
		entries, bytes, cp := copyOf(t, n, r.id)
		if entries != perPage || bytes != perPage*box || cp.Entries != entries || cp.Bytes != bytes || cp.Staged != nil {
			t.Fatalf("%s: the copy holds %d entries, %d bytes, its state says %+v; want %d, %d", phase, entries, bytes, cp, perPage, perPage*box)
		}
		if _, all := storedEntries(t, n, r.id); all != perPage {
			t.Fatalf("%s: %d entries stored in all, want %d", phase, all, perPage)
		}
	}
}
