package discovery

import (
	"bytes"
	"context"
	"errors"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peerstore"
)

// Start overs on a real relay: when a relay asks a listing to list again
// from 0 (it forgot a deletion the listing may need), and when not.

// enrolled is a relay with accounts that verified numbers on it.
type enrolled struct {
	clk   *clock
	r     *testRelay
	c     *Client
	accts []*account
}

// enrolN starts a relay (with opts) and has n accounts verify a number
// each, in order: account i's entry is change i+1 of the relay's log.
func enrolN(t *testing.T, n int, opts ...Option) *enrolled {
	t.Helper()
	e := &enrolled{clk: newClock()}
	e.r = startRelay(t, e.clk, append(slices.Clone(relaxed), opts...)...)
	e.c = newClient(t, e.r)
	for range n {
		e.enrol(t)
	}
	return e
}

// pagedClient returns a client whose syncs ask for pages of perPage
// entries and stop after pages pages.
func (e *enrolled) pagedClient(t *testing.T, perPage, pages int) *Client {
	t.Helper()
	h := newHost(t)
	h.Peerstore().AddAddrs(e.r.ID(), e.r.h.Addrs(), peerstore.PermanentAddrTTL)
	c, err := NewClient(h, WithClientLogger(discard), withPageEntries(perPage), withSyncPages(pages))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// enrol has a new account verify a new number.
func (e *enrolled) enrol(t *testing.T) {
	t.Helper()
	i := len(e.accts)
	a := newAccount(t, "user"+strconv.Itoa(i))
	verify(t, e.c, e.r, a, mustNumber(t, "+4420794"+strconv.Itoa(10000+i)))
	e.accts = append(e.accts, a)
}

// leave has account i unenrol: its entry's deletion is the log's next
// change.
func (e *enrolled) leave(t *testing.T, i int) {
	t.Helper()
	if st, err := e.c.Unenrol(testCtx(t), e.r.ID(), e.accts[i].id); err != nil || st.Removed != 1 {
		t.Fatalf("Unenrol user%d: %+v, %v", i, st, err)
	}
}

// forget moves the relay's clock past the time it remembers deletions:
// its next listing forgets them all, raising its floor.
func (e *enrolled) forget() { e.clk.Advance(DefaultTombstoneTTL + time.Hour) }

// meta returns the relay's last sequence number and floor.
func (e *enrolled) meta() (lastSeq, floor uint64) {
	e.r.svc.dirMu.Lock()
	defer e.r.svc.dirMu.Unlock()
	return e.r.svc.meta.lastSeq, e.r.svc.meta.floor
}

// live returns the relay's live directory entries, read from its store.
func (e *enrolled) live(t *testing.T) map[EntryID][]byte {
	t.Helper()
	out := map[EntryID][]byte{}
	for k, v := range e.r.records(t) {
		if !strings.HasPrefix(k, "e/") {
			continue
		}
		se, err := decodeStoredEntry(v)
		if err != nil {
			t.Fatalf("stored entry %s: %v", k, err)
		}
		if se.box != nil {
			out[se.id] = se.box
		}
	}
	return out
}

// wantLive fails unless d holds exactly the relay's live entries.
func (e *enrolled) wantLive(t *testing.T, d *Directory) {
	t.Helper()
	want := e.live(t)
	if !maps.EqualFunc(d.held.boxes, want, bytes.Equal) {
		t.Fatalf("the copy holds %d entries, not the relay's %d live ones", d.Len(), len(want))
	}
}

// TestStartOverRule: the relay asks a listing to start over exactly when
// a deletion it forgot may concern it: floor > max(since, base), or a
// cursor or base it never reached; a fresh listing (since and base 0)
// never.
func TestStartOverRule(t *testing.T) {
	e := enrolN(t, 6) // changes 1–6
	e.leave(t, 0)     // 7: user0's deletion
	e.enrol(t)        // 8
	e.enrol(t)        // 9
	e.forget()
	if _, err := e.c.List(testCtx(t), e.r.ID(), Listing{}, 0); err != nil { // compacts
		t.Fatal(err)
	}
	if last, floor := e.meta(); last != 9 || floor != 7 {
		t.Fatalf("relay at change %d, floor %d; want 9, 7", last, floor)
	}
	tests := []struct {
		name      string
		at        Listing
		startOver bool
	}{
		{"fresh listing", Listing{}, false},
		{"older client below the floor", Listing{Since: 3}, true},
		{"older client at the floor", Listing{Since: 7}, false},
		{"older client above the floor", Listing{Since: 8}, false},
		{"listing begun at the floor", Listing{Since: 3, Base: 7}, false},
		{"listing begun after the floor", Listing{Since: 3, Base: 9}, false},
		{"listing begun before the deletion", Listing{Since: 3, Base: 6}, true},
		{"first page cut short, before the deletion", Listing{Base: 6}, true},
		{"first page cut short, after the deletion", Listing{Base: 7}, false},
		{"since above the floor, base below", Listing{Since: 8, Base: 3}, false},
		{"since beyond the log", Listing{Since: 10, Base: 9}, true},
		{"base beyond the log", Listing{Since: 3, Base: 10}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, limit := range []int{0, 2} {
				p, err := e.c.List(testCtx(t), e.r.ID(), tt.at, limit)
				if err != nil {
					t.Fatal(err)
				}
				if p.StartOver != tt.startOver {
					t.Fatalf("limit %d: start over %v, want %v", limit, p.StartOver, tt.startOver)
				}
				if limit > 0 && tt.startOver && (len(p.Entries) == 0 || p.Entries[0].Seq != 2) {
					t.Fatalf("a start over's page holds %d entries; want the listing from 0, from change 2 (user1's)", len(p.Entries))
				}
			}
		})
	}
}

// TestFreshListingAfterForgottenDeletions: once a relay has forgotten
// deletions, a client lists its whole directory, in many pages, without
// being told to start over, and gets exactly the relay's live entries —
// a new device's first sync of a relay with more than one page of
// entries. (A relay that asked every listing whose cursor was below its
// floor to start over, fresh ones included, never let one finish.)
func TestFreshListingAfterForgottenDeletions(t *testing.T) {
	e := enrolN(t, 14) // changes 1–14
	e.leave(t, 0)      // 15
	e.leave(t, 1)      // 16
	e.leave(t, 5)      // 17
	// user2 moves to a new number: its old entry's deletion (18), its
	// new entry (19); user3 sends its record again (20).
	verify(t, e.c, e.r, e.accts[2], mustNumber(t, "+351912340002"))
	if _, err := e.c.UpdateRecord(testCtx(t), e.r.ID(), e.accts[3].id, e.accts[3].record); err != nil {
		t.Fatal(err)
	}
	e.forget()
	e.enrol(t) // 21, after the deletions were last remembered
	const perPage = 4

	// Page by page, as a client does: never a start over.
	var at Listing
	pages := 0
	for more := true; more; pages++ {
		p, err := e.c.List(testCtx(t), e.r.ID(), at, perPage)
		if err != nil {
			t.Fatal(err)
		}
		if p.StartOver {
			t.Fatalf("page %d (after %+v) says to start over; nothing the listing holds was deleted", pages, at)
		}
		if pages == 0 {
			at.Base = p.Version
		}
		at.Since, more = p.Next, p.More
	}
	if last, floor := e.meta(); floor != 18 || last != 21 {
		t.Fatalf("relay at change %d, floor %d; want 21, 18 (the listing ran after the deletions were forgotten)", last, floor)
	}
	if pages < 3 {
		t.Fatalf("the listing took %d pages, want at least 3", pages)
	}

	// Sync does the same, within as many pages (a start over would need
	// more), and its copy is the relay's directory.
	c := e.pagedClient(t, perPage, pages)
	d := NewDirectory(PublicKey{})
	if n, err := c.Sync(testCtx(t), e.r.ID(), d); err != nil {
		t.Fatalf("Sync in %d pages: %d changes, %v; want the whole directory", pages, n, err)
	}
	if d.Len() != 12 {
		t.Fatalf("the copy holds %d entries, want 12", d.Len())
	}
	e.wantLive(t, d)
	if d.Base != 21 || d.Cursor != 21 {
		t.Fatalf("copy at %d, base %d; want 21, 21", d.Cursor, d.Base)
	}
}

// TestListingStartsOverForForgottenDeletion: a listing in progress whose
// copy holds an entry deleted since is told to start over if the relay
// forgot the deletion before the listing got to it, and the start over
// leaves the entry out; while the relay remembers the deletion, the
// listing goes on and gets it.
func TestListingStartsOverForForgottenDeletion(t *testing.T) {
	e := enrolN(t, 12) // changes 1–12
	e.leave(t, 11)     // 13
	e.forget()         // floor 13 at the next listing
	const perPage = 4
	firstPage := func() *Directory {
		t.Helper()
		d := NewDirectory(PublicKey{})
		if _, err := e.pagedClient(t, perPage, 1).Sync(testCtx(t), e.r.ID(), d); !errors.Is(err, ErrDirectoryTooLarge) {
			t.Fatalf("Sync of one page: %v, want the page cap's ErrDirectoryTooLarge", err)
		}
		if d.Len() != perPage || d.Listing() != (Listing{Since: perPage, Base: 13}) {
			t.Fatalf("after one page: %d entries, listing %+v; want %d, since %d, base 13", d.Len(), d.Listing(), perPage, perPage)
		}
		return d
	}
	var ys []Output // user0's and user1's, on the first page
	for _, n := range []string{"+442079410000", "+442079410001"} {
		y, err := e.r.svc.output(mustNumber(t, n))
		if err != nil {
			t.Fatal(err)
		}
		ys = append(ys, y)
	}
	d, other := firstPage(), firstPage()
	for _, y := range ys {
		if _, ok := d.Box(y.ID()); !ok {
			t.Fatal("the first page lacks user0's or user1's entry")
		}
	}

	// user0 leaves while the listings are under way: a deletion they
	// need, which the relay remembers; they go on and get it.
	e.leave(t, 0) // 14
	if p, err := e.c.List(testCtx(t), e.r.ID(), other.Listing(), 0); err != nil || p.StartOver {
		t.Fatalf("after a deletion the relay remembers: %+v, %v; want the listing to go on", p, err)
	}
	if _, err := e.pagedClient(t, perPage, MaxSyncPages).Sync(testCtx(t), e.r.ID(), other); err != nil {
		t.Fatal(err)
	}
	if _, ok := other.Box(ys[0].ID()); ok || other.Len() != 10 {
		t.Fatalf("the copy holds %d entries (user0's among them: %v), want 10 without user0's", other.Len(), ok)
	}
	e.wantLive(t, other)

	// user1 leaves, and the relay forgets both deletions before d's
	// listing gets to them: it must start over.
	e.leave(t, 1) // 15
	e.forget()
	p, err := e.c.List(testCtx(t), e.r.ID(), d.Listing(), 0)
	if err != nil || !p.StartOver {
		t.Fatalf("after the deletion of entries the listing holds was forgotten: %+v, %v; want start over", p, err)
	}
	if _, floor := e.meta(); floor != 15 {
		t.Fatalf("floor %d, want 15", floor)
	}
	if _, err := e.pagedClient(t, perPage, MaxSyncPages).Sync(testCtx(t), e.r.ID(), d); err != nil {
		t.Fatal(err)
	}
	for _, y := range ys {
		if _, ok := d.Box(y.ID()); ok {
			t.Fatal("an entry that left is still in the copy")
		}
	}
	if d.Len() != 9 {
		t.Fatalf("the copy holds %d entries, want 9", d.Len())
	}
	e.wantLive(t, d)
}

// TestListRacingCompaction: a compaction that runs while a page is read
// (another list started it) and forgets a deletion the listing needs
// makes that page a start over, though the floor the relay checked
// before reading it was low enough.
func TestListRacingCompaction(t *testing.T) {
	var armed atomic.Bool
	var e *enrolled
	e = enrolN(t, 8, withBeforePage(func() {
		if armed.CompareAndSwap(true, false) {
			e.forget()
			if err := e.r.svc.maybeCompact(context.Background()); err != nil {
				t.Errorf("compact: %v", err)
			}
		}
	})) // changes 1–8
	const perPage = 4
	d := NewDirectory(PublicKey{})
	if _, err := e.pagedClient(t, perPage, 1).Sync(testCtx(t), e.r.ID(), d); !errors.Is(err, ErrDirectoryTooLarge) {
		t.Fatalf("Sync of one page: %v, want the page cap's ErrDirectoryTooLarge", err)
	}
	e.leave(t, 0) // 9: the listing holds user0's entry
	if _, floor := e.meta(); floor != 0 {
		t.Fatalf("floor %d before the race, want 0", floor)
	}
	armed.Store(true)
	p, err := e.c.List(testCtx(t), e.r.ID(), d.Listing(), perPage)
	if err != nil {
		t.Fatal(err)
	}
	if _, floor := e.meta(); armed.Load() || floor != 9 {
		t.Fatalf("the compaction did not run during the list (floor %d)", floor)
	}
	if !p.StartOver {
		t.Fatalf("page after %+v, read while the relay forgot a deletion the listing needs: %d entries, no start over; want one", d.Listing(), len(p.Entries))
	}
	if _, err := e.pagedClient(t, perPage, MaxSyncPages).Sync(testCtx(t), e.r.ID(), d); err != nil {
		t.Fatal(err)
	}
	if d.Len() != 7 {
		t.Fatalf("the copy holds %d entries, want 7", d.Len())
	}
	e.wantLive(t, d)
}
