package discovery

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"maps"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"

	"github.com/kinmesh/kinmesh/protocols/wire"
)

// copyState is what a Directory holds, for comparing before and after.
type copyState struct {
	key          PublicKey
	cursor, base uint64
	boxes        map[EntryID][]byte
}

func stateOf(d *Directory) copyState {
	return copyState{key: d.PublicKey, cursor: d.Cursor, base: d.Base, boxes: maps.Clone(d.held.boxes)}
}

// sameCopy fails unless d holds exactly what was.
func sameCopy(t *testing.T, d *Directory, was copyState) {
	t.Helper()
	if !d.PublicKey.Equal(was.key) || d.Cursor != was.cursor || d.Base != was.base {
		t.Fatalf("copy moved: key %v, cursor %d, base %d; want %v, %d, %d", d.PublicKey, d.Cursor, d.Base, was.key, was.cursor, was.base)
	}
	if !maps.EqualFunc(d.held.boxes, was.boxes, bytes.Equal) {
		t.Fatalf("copy changed: %d entries, want the %d held before", d.Len(), len(was.boxes))
	}
	for id, box := range was.boxes {
		if got, ok := d.Box(id); !ok || !bytes.Equal(got, box) {
			t.Fatalf("entry %x: got %d bytes (held %v), want the %d held before", id, len(got), ok, len(box))
		}
	}
}

// withinCaps fails unless d's copy, and a start over under way, keep
// d's caps and count their bytes right.
func withinCaps(t *testing.T, d *Directory) {
	t.Helper()
	maxEntries, maxBytes := d.caps()
	for name, s := range map[string]*entrySet{"copy": &d.held, "start over": d.fresh} {
		if s == nil {
			continue
		}
		var sum int64
		for _, b := range s.boxes {
			sum += int64(len(b))
		}
		if len(s.boxes) > maxEntries || sum > maxBytes || sum != s.bytes {
			t.Fatalf("%s: %d entries, %d bytes (counted %d); caps %d, %d", name, len(s.boxes), sum, s.bytes, maxEntries, maxBytes)
		}
	}
}

func entryID(n uint64) EntryID {
	var id EntryID
	binary.BigEndian.PutUint64(id[:], n)
	return id
}

// entries returns the changes of sequence numbers from+1 … to, with ids
// id(seq) and boxes of size bytes.
func entries(from, to uint64, id func(seq uint64) uint64, size int) []Entry {
	box := make([]byte, size)
	_, _ = rand.Read(box)
	var out []Entry
	for seq := from + 1; seq <= to; seq++ {
		out = append(out, Entry{Seq: seq, ID: entryID(id(seq)), Box: bytes.Clone(box)})
	}
	return out
}

func same(seq uint64) uint64 { return seq }

// TestDirectoryApplyCaps: a page that would take the copy beyond a cap is
// refused whole; replacements and deletions are counted as such; a start
// over keeps the copy until its last page.
func TestDirectoryApplyCaps(t *testing.T) {
	pk := testKey(t)
	page := func(since, next uint64, more bool, es ...Entry) *Page {
		return &Page{PublicKey: pk, Version: next + 100, Next: next, More: more, Entries: es}
	}
	tests := []struct {
		name    string
		entries int
		bytes   int64
		pages   []*Page
		wantErr []error // per page
		wantLen int
	}{
		{
			name: "entries cap", entries: 10, bytes: 1 << 20,
			pages:   []*Page{page(0, 8, true, entries(0, 8, same, 10)...), page(8, 11, false, entries(8, 11, same, 10)...)},
			wantErr: []error{nil, ErrDirectoryTooLarge}, wantLen: 8,
		},
		{
			name: "bytes cap", entries: 100, bytes: 100,
			pages:   []*Page{page(0, 5, true, entries(0, 5, same, 20)...), page(5, 6, false, entries(5, 6, same, 1)...)},
			wantErr: []error{nil, ErrDirectoryTooLarge}, wantLen: 5,
		},
		{
			name: "replacements don't count twice", entries: 4, bytes: 400,
			pages: []*Page{
				page(0, 4, true, entries(0, 4, same, 100)...),
				page(4, 12, false, entries(4, 12, func(s uint64) uint64 { return s%4 + 1 }, 100)...),
			},
			wantErr: []error{nil, nil}, wantLen: 4,
		},
		{
			name: "a bigger replacement counts its growth", entries: 4, bytes: 400,
			pages: []*Page{
				page(0, 4, true, entries(0, 4, same, 100)...),
				page(4, 5, false, entries(4, 5, func(uint64) uint64 { return 1 }, 101)...),
			},
			wantErr: []error{nil, ErrDirectoryTooLarge}, wantLen: 4,
		},
		{
			name: "deletions make room, within a page too", entries: 4, bytes: 1 << 20,
			pages: []*Page{
				page(0, 4, true, entries(0, 4, same, 10)...),
				page(4, 8, false, append([]Entry{{Seq: 5, ID: entryID(1)}, {Seq: 6, ID: entryID(2)}}, entries(6, 8, same, 10)...)...),
			},
			wantErr: []error{nil, nil}, wantLen: 4,
		},
		{
			name: "deleting what isn't held takes no room", entries: 2, bytes: 1 << 20,
			pages: []*Page{
				page(0, 1000, true, entries(0, 1000, func(s uint64) uint64 { return 1 << 40 * s }, 0)...),
				page(1000, 1002, false, entries(1000, 1002, same, 10)...),
			},
			wantErr: []error{nil, nil}, wantLen: 2,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := newCappedDirectory(PublicKey{}, tc.entries, tc.bytes)
			for i, p := range tc.pages {
				was := stateOf(d)
				err := d.Apply(p)
				if !errors.Is(err, tc.wantErr[i]) || (tc.wantErr[i] == nil) != (err == nil) {
					t.Fatalf("page %d: got %v, want %v", i, err, tc.wantErr[i])
				}
				if err != nil {
					if !errors.Is(err, ErrProtocol) {
						t.Fatalf("page %d: %v does not say the relay misbehaves (ErrProtocol)", i, err)
					}
					sameCopy(t, d, was)
				}
				withinCaps(t, d)
			}
			if d.Len() != tc.wantLen {
				t.Fatalf("copy of %d entries, want %d", d.Len(), tc.wantLen)
			}
		})
	}

	t.Run("start over", func(t *testing.T) {
		d := newCappedDirectory(PublicKey{}, 10, 1<<20)
		if err := d.Apply(page(0, 6, false, entries(0, 6, same, 10)...)); err != nil {
			t.Fatal(err)
		}
		held := stateOf(d)
		fresh := func(since, next uint64, more bool) *Page {
			p := page(since, next, more, entries(since, next, func(s uint64) uint64 { return 100 + s }, 10)...)
			p.StartOver = since == 0
			return p
		}
		// A start over too large for the caps, in one page or over
		// several: the copy held before stays, and Box answers from it.
		if err := d.Apply(fresh(0, 11, false)); !errors.Is(err, ErrDirectoryTooLarge) {
			t.Fatalf("start over of 11 entries: got %v, want ErrDirectoryTooLarge", err)
		}
		sameCopy(t, d, held)
		if d.fresh != nil {
			t.Fatal("a refused start over was kept")
		}
		for _, p := range []*Page{fresh(0, 5, true), fresh(5, 9, true)} {
			if err := d.Apply(p); err != nil {
				t.Fatal(err)
			}
			if !maps.EqualFunc(d.held.boxes, held.boxes, bytes.Equal) || d.Cursor != p.Next {
				t.Fatalf("during a start over: %d entries, cursor %d; want the %d held before, cursor %d", d.Len(), d.Cursor, len(held.boxes), p.Next)
			}
			withinCaps(t, d)
		}
		was := stateOf(d)
		if err := d.Apply(fresh(9, 12, false)); !errors.Is(err, ErrDirectoryTooLarge) {
			t.Fatalf("start over growing to 12: got %v, want ErrDirectoryTooLarge", err)
		}
		sameCopy(t, d, was)
		withinCaps(t, d)
		// A start over that fits replaces the copy with its last page.
		if err := d.Apply(fresh(9, 10, false)); err != nil {
			t.Fatal(err)
		}
		if d.fresh != nil || d.Len() != 10 {
			t.Fatalf("after the start over: %d entries (still under way: %v), want the 10 listed", d.Len(), d.fresh != nil)
		}
		if _, ok := d.Box(entryID(1)); ok {
			t.Fatal("an entry of the dropped copy is still there")
		}
		withinCaps(t, d)
	})
}

// scriptedRelay is a real host that speaks the directory side of the
// protocol with pages from a function of the cursor asked for: a relay
// that serves whatever a test wants, hostile included. It counts the
// pages it serves.
type scriptedRelay struct {
	h     host.Host
	pk    PublicKey
	pages atomic.Int64

	mu   sync.Mutex
	page func(since uint64) *Page
}

func startScriptedRelay(t *testing.T, page func(since uint64) *Page) *scriptedRelay {
	t.Helper()
	r := &scriptedRelay{h: newHost(t), pk: testKey(t), page: page}
	r.h.SetStreamHandler(ID, func(st network.Stream) {
		defer st.Close()
		_ = st.SetDeadline(time.Now().Add(10 * time.Second))
		b, err := wire.NewReader(st).ReadBytes(maxRequestFrame)
		if err != nil {
			_ = st.Reset()
			return
		}
		req, code := decodeRequest(b)
		if code != CodeOK || req.kind != reqList {
			_ = st.Reset()
			return
		}
		r.mu.Lock()
		p := r.page(req.since)
		r.mu.Unlock()
		p.PublicKey = r.pk
		r.pages.Add(1)
		_ = wire.Write(st, encodeResponse(response{page: p}), maxResponseFrame)
	})
	return r
}

func (r *scriptedRelay) ID() peer.ID { return r.h.ID() }

// serve makes the relay answer with page from now on.
func (r *scriptedRelay) serve(page func(since uint64) *Page) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.page = page
}

// client returns a client on a new host that knows r's addresses.
func (r *scriptedRelay) client(t *testing.T, opts ...ClientOption) *Client {
	t.Helper()
	h := newHost(t)
	h.Peerstore().AddAddrs(r.h.ID(), r.h.Addrs(), peerstore.PermanentAddrTTL)
	c, err := NewClient(h, append([]ClientOption{WithClientLogger(discard)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// An honest directory of honestLen entries of honestBox bytes, ids 1 …
// honestLen, and hostile ones that follow it: pages of hostilePerPage
// entries of hostileBox bytes, for hostilePages pages, that always say
// there is more.
const (
	honestLen      = 5
	honestBox      = 100
	hostilePages   = 300
	hostilePerPage = 16
	hostileBox     = 100
)

func honestDirectory(since uint64) *Page {
	if since >= honestLen {
		return &Page{Version: honestLen, Next: honestLen}
	}
	return &Page{Version: honestLen, Next: honestLen, Total: honestLen, Entries: entries(since, honestLen, same, honestBox)}
}

// hostileDirectory goes on from the honest one with new ids (grows), the
// same ids again (churns), no progress (stuck), or a start over that then
// grows.
func hostileDirectory(mode string, served func() int64) func(since uint64) *Page {
	const end = honestLen + hostilePages*hostilePerPage
	return func(since uint64) *Page {
		p := &Page{Version: end}
		id := same
		switch mode {
		case "stuck":
			p.Next, p.More = since, served() < hostilePages
			return p
		case "churns":
			id = func(seq uint64) uint64 { return 1000 + seq%hostilePerPage }
		case "starts over":
			id = func(seq uint64) uint64 { return 1000 + seq }
			if since == honestLen {
				since, p.StartOver = 0, true
			}
		}
		p.Next = min(since+hostilePerPage, end)
		p.More = p.Next < end
		p.Entries = entries(since, p.Next, id, hostileBox)
		return p
	}
}

// TestSyncHostileRelay: a relay (a real host speaking the protocol) that
// keeps serving entries after an honest first sync can't take the copy
// beyond its caps, nor a sync beyond its pages: the sync stops at the
// first page that would, with ErrDirectoryTooLarge, and every entry held
// before is still there — after a start over too, whose partial listing
// does not replace the copy. A relay that says there is more without
// moving its cursor fails the sync at once.
func TestSyncHostileRelay(t *testing.T) {
	tests := []struct {
		name       string
		entries    int
		bytes      int64
		pages      int
		wantErr    error
		wantServed int64 // pages the failed sync fetched
		wantLen    int   // entries of the copy after it
	}{
		// 5 + 5×16 = 85 entries; a sixth page would make 101.
		{"grows", 100, 1 << 30, MaxSyncPages, ErrDirectoryTooLarge, 6, 85},
		// 500 + 2×1600 = 3700 bytes; a third page would make 5300.
		{"grows", 1 << 20, 5000, MaxSyncPages, ErrDirectoryTooLarge, 3, 37},
		{"churns", 1 << 20, 1 << 30, 20, ErrDirectoryTooLarge, 20, honestLen + hostilePerPage},
		{"stuck", 1 << 20, 1 << 30, MaxSyncPages, ErrProtocol, 1, honestLen},
		// The fresh listing reaches 6×16 = 96 entries, a seventh page
		// would make 112; the copy stays the honest one.
		{"starts over", 100, 1 << 30, MaxSyncPages, ErrDirectoryTooLarge, 7, honestLen},
	}
	for _, tc := range tests {
		t.Run(tc.name+"/"+strconv.Itoa(tc.entries)+"/"+strconv.FormatInt(tc.bytes, 10), func(t *testing.T) {
			r := startScriptedRelay(t, honestDirectory)
			c := r.client(t, withSyncPages(tc.pages))
			dir := newCappedDirectory(PublicKey{}, tc.entries, tc.bytes)
			ctx := testCtx(t)
			if n, err := c.Sync(ctx, r.ID(), dir); err != nil || n != honestLen {
				t.Fatalf("honest sync: %d changes, %v", n, err)
			}
			honest := stateOf(dir)

			r.serve(hostileDirectory(tc.name, r.pages.Load))
			before := r.pages.Load()
			_, err := c.Sync(ctx, r.ID(), dir)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("got %v, want %v", err, tc.wantErr)
			}
			if tc.wantErr == ErrProtocol && errors.Is(err, ErrDirectoryTooLarge) {
				t.Fatalf("got %v, want a protocol error other than ErrDirectoryTooLarge", err)
			}
			if served := r.pages.Load() - before; served != tc.wantServed {
				t.Fatalf("the sync fetched %d pages, want %d", served, tc.wantServed)
			}
			withinCaps(t, dir)
			if dir.Len() != tc.wantLen {
				t.Fatalf("copy of %d entries after the sync, want %d", dir.Len(), tc.wantLen)
			}
			for id, box := range honest.boxes {
				if got, ok := dir.Box(id); !ok || !bytes.Equal(got, box) {
					t.Fatalf("entry %x of the honest copy lost or replaced", id)
				}
			}
			if tc.name == "churns" {
				return
			}
			// The next sync fails the same way and changes nothing.
			was := stateOf(dir)
			if _, err := c.Sync(ctx, r.ID(), dir); !errors.Is(err, tc.wantErr) {
				t.Fatalf("second sync: got %v, want %v", err, tc.wantErr)
			}
			sameCopy(t, dir, was)
			withinCaps(t, dir)
		})
	}
}

// TestSyncTimeout: a relay that keeps a sync busy (here by churning the
// same entries, page after page, within every cap) is cut off by the
// sync timeout, not by the caller's deadline.
func TestSyncTimeout(t *testing.T) {
	r := startScriptedRelay(t, honestDirectory)
	c := r.client(t, WithSyncTimeout(300*time.Millisecond))
	dir := NewDirectory(PublicKey{})
	ctx := testCtx(t)
	if _, err := c.Sync(ctx, r.ID(), dir); err != nil {
		t.Fatal(err)
	}
	r.serve(func(since uint64) *Page {
		return &Page{Version: 1 << 62, Next: since + 1, More: true, Entries: entries(since, since+1, func(uint64) uint64 { return 1000 }, hostileBox)}
	})
	_, err := c.Sync(ctx, r.ID(), dir)
	if !errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil {
		t.Fatalf("got %v (caller's context: %v), want the sync's own deadline", err, ctx.Err())
	}
	if dir.Len() != honestLen+1 {
		t.Fatalf("copy of %d entries, want %d", dir.Len(), honestLen+1)
	}
}

// TestSyncRefusesDirectoryBeyondCaps: a real relay whose directory
// outgrows the copy's cap fails the sync with ErrDirectoryTooLarge, and
// the copy keeps what it held, entry for entry — also when the relay has
// it start over. Once the directory fits, a sync replaces the copy.
func TestSyncRefusesDirectoryBeyondCaps(t *testing.T) {
	clk := newClock()
	r := startRelay(t, clk, relaxed...)
	c := newClient(t, r)
	ctx := testCtx(t)
	var accts []*account
	enrol := func(n int) {
		for range n {
			i := len(accts)
			a := newAccount(t, "user"+strconv.Itoa(i))
			verify(t, c, r, a, mustNumber(t, "+4420794"+strconv.Itoa(10000+i)))
			accts = append(accts, a)
		}
	}
	enrol(6)
	dir := newCappedDirectory(PublicKey{}, 8, MaxCopyBytes)
	if n, err := c.Sync(ctx, r.ID(), dir); err != nil || n != 6 || dir.Len() != 6 {
		t.Fatalf("first sync: %d changes, %d entries, %v; want 6, 6", n, dir.Len(), err)
	}
	held := stateOf(dir)

	enrol(5) // 11 entries: over the copy's 8
	_, err := c.Sync(ctx, r.ID(), dir)
	if !errors.Is(err, ErrDirectoryTooLarge) || !errors.Is(err, ErrProtocol) {
		t.Fatalf("sync of 11 entries into a copy of at most 8: got %v, want ErrDirectoryTooLarge (ErrProtocol)", err)
	}
	sameCopy(t, dir, held)
	withinCaps(t, dir)

	// One leaves; a month later the deletion is forgotten and the copy's
	// cursor is too old: the relay has it start over, with 10 entries.
	if _, err := c.Unenrol(ctx, r.ID(), accts[0].id); err != nil {
		t.Fatal(err)
	}
	clk.Advance(DefaultTombstoneTTL + time.Hour)
	if p, err := c.List(ctx, r.ID(), dir.Listing(), 0); err != nil || !p.StartOver {
		t.Fatalf("list from the copy's cursor: %+v, %v; want start over", p, err)
	}
	if _, err := c.Sync(ctx, r.ID(), dir); !errors.Is(err, ErrDirectoryTooLarge) {
		t.Fatalf("start over with 10 entries: got %v, want ErrDirectoryTooLarge", err)
	}
	sameCopy(t, dir, held)
	withinCaps(t, dir)

	// A copy that may hold 10 takes the start over: the relay's 10
	// entries replace the 6, the one that left included.
	dir.maxEntries = 10
	if _, err := c.Sync(ctx, r.ID(), dir); err != nil || dir.Len() != 10 {
		t.Fatalf("start over within the caps: %d entries, %v; want 10", dir.Len(), err)
	}
	y0, err := r.svc.output(mustNumber(t, "+442079410000"))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := dir.Box(y0.ID()); ok {
		t.Fatal("the entry of the account that left is still in the copy")
	}
	withinCaps(t, dir)
}
