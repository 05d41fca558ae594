package storage_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/kinmesh/kinmesh/storage"
)

// groupEntries returns the group index entries, after checking that there
// is one due record per entry.
func groupEntries(t *testing.T, st *storage.Store) [][2]string {
	t.Helper()
	e, err := storage.GroupEntries(st)
	if err != nil {
		t.Fatal(err)
	}
	records, err := storage.CountRaw(st, "g/")
	if err != nil {
		t.Fatal(err)
	}
	if records != len(e) {
		t.Fatalf("%d group entries and %d due records", len(e), records)
	}
	return e
}

// wantSwept runs a sweep and fails unless it deleted want values.
func wantSwept(t *testing.T, st *storage.Store, want int, when string) {
	t.Helper()
	if n, err := st.Sweep(context.Background()); err != nil || n != want {
		t.Fatalf("Sweep %s = %d, %v; want %d, nil", when, n, err, want)
	}
}

// wantGroups fails unless the group index entries are want (namespace,
// group), in index order.
func wantGroups(t *testing.T, st *storage.Store, when string, want ...[2]string) {
	t.Helper()
	if got := groupEntries(t, st); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("group entries %s: got %v, want %v", when, got, want)
	}
}

// putGrouped commits one batch of n values in group, keys group+"%04d"
// from first, that expire ttl from now.
func putGrouped(t *testing.T, st *storage.Store, ns *storage.Namespace, group string, first, n int, ttl time.Duration) {
	t.Helper()
	b := st.NewBatch()
	for i := first; i < first+n; i++ {
		if err := b.PutTTLGrouped(ns, group, fmt.Sprintf("%s%04d", group, i), []byte(fmt.Sprint("v", i)), ttl); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Commit(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// rawHas reports whether Badger holds key in ns, expired or not.
func rawHas(t *testing.T, st *storage.Store, ns, key string) bool {
	t.Helper()
	err := storage.RawDB(st).View(func(txn *badger.Txn) error {
		_, err := txn.Get(storage.DataKey(ns, key))
		return err
	})
	if err != nil && !errors.Is(err, badger.ErrKeyNotFound) {
		t.Fatal(err)
	}
	return err == nil
}

func TestTTLGrouped(t *testing.T) {
	ctx := context.Background()
	clk := newFakeClock()
	st := open(t, "", storage.WithClock(clk.Now))
	mb := st.Namespace("mailbox")
	// Two batches half an hour apart, then one in another group: one
	// entry per group, none per value.
	putGrouped(t, st, mb, "a/", 0, 600, time.Hour)
	clk.Advance(30 * time.Minute)
	putGrouped(t, st, mb, "a/", 600, 3, time.Hour)
	putGrouped(t, st, mb, "b/", 0, 2, 2*time.Hour)
	wantGroups(t, st, "after the puts", [2]string{"mailbox", "a/"}, [2]string{"mailbox", "b/"})
	if got := indexEntries(t, st); len(got) != 0 {
		t.Fatalf("index entries of grouped values: %v, want none", got)
	}
	mustGet(t, mb, "a/0000", []byte("v0"))

	clk.Advance(30*time.Minute - time.Nanosecond)
	wantSwept(t, st, 0, "just before the first batch expires")
	mustGet(t, mb, "a/0599", []byte("v599"))
	clk.Advance(time.Nanosecond)
	if _, err := mb.Get(ctx, "a/0599"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Get at its expiry: got %v, want ErrNotFound", err)
	}
	// More than one sweep chunk, deleted and gone from Badger.
	wantSwept(t, st, 600, "at 1h")
	if rawHas(t, st, "mailbox", "a/0000") || rawHas(t, st, "mailbox", "a/0599") {
		t.Fatal("swept values still in Badger")
	}
	mustGet(t, mb, "a/0600", []byte("v600"))
	// a/'s entry moved to its first value alive: not due before 1h30.
	wantGroups(t, st, "after the first sweep", [2]string{"mailbox", "a/"}, [2]string{"mailbox", "b/"})
	clk.Advance(30*time.Minute - time.Nanosecond)
	wantSwept(t, st, 0, "just before the second batch expires")
	clk.Advance(time.Nanosecond)
	wantSwept(t, st, 3, "at 1h30")

	wantGroups(t, st, "once a/ is empty", [2]string{"mailbox", "b/"})
	clk.Advance(time.Hour)
	wantSwept(t, st, 2, "at 2h30")
	wantGroups(t, st, "left")
}

func TestTTLGroupedOutOfOrder(t *testing.T) {
	ctx := context.Background()
	clk := newFakeClock()
	st := open(t, "", storage.WithClock(clk.Now))
	ns := st.Namespace("ns")
	// b/0001 expires before b/0000: against the promise (as after the
	// clock stepped back). It is hidden at its expiry and deleted with
	// the value before it.
	putGrouped(t, st, ns, "b/", 0, 1, 2*time.Hour)
	putGrouped(t, st, ns, "b/", 1, 1, time.Hour)
	wantGroups(t, st, "with the entry moved earlier", [2]string{"ns", "b/"})
	clk.Advance(time.Hour)
	if _, err := ns.Get(ctx, "b/0001"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Get(b/0001) at its expiry: got %v, want ErrNotFound", err)
	}
	wantSwept(t, st, 0, "at 1h (b/0000 is alive)")
	clk.Advance(time.Hour)
	wantSwept(t, st, 2, "at 2h")
	if rawHas(t, st, "ns", "b/0001") {
		t.Fatal("b/0001 still in Badger")
	}
}

func TestTTLGroupedDelete(t *testing.T) {
	ctx := context.Background()
	clk := newFakeClock()
	st := open(t, "", storage.WithClock(clk.Now))
	ns := st.Namespace("ns")
	putGrouped(t, st, ns, "g/", 0, 3, time.Hour)
	if err := ns.Delete(ctx, "g/0001"); err != nil {
		t.Fatal(err)
	}
	if rawHas(t, st, "ns", "g/0001") {
		t.Fatal("deleted value still in Badger")
	}
	if got := indexEntries(t, st); len(got) != 0 {
		t.Fatalf("Delete of a grouped value left index entries: %v", got)
	}
	clk.Advance(time.Hour)
	wantSwept(t, st, 2, "after the hour")
	wantGroups(t, st, "left")
}

func TestDeleteGroup(t *testing.T) {
	ctx := context.Background()
	clk := newFakeClock()
	st := open(t, "", storage.WithClock(clk.Now))
	ns, other := st.Namespace("ns"), st.Namespace("other")
	putGrouped(t, st, ns, "g/", 0, 700, time.Hour) // more than a chunk
	clk.Advance(2 * time.Hour)                     // those expired, not swept
	putGrouped(t, st, ns, "g/", 700, 2, time.Hour)
	if err := ns.PutTTL(ctx, "g/legacy", []byte("indexed by key"), time.Hour); err != nil {
		t.Fatal(err)
	}
	mustPut(t, ns, "g/forever", []byte("no ttl"))
	// Neighbours that stay: another group whose name extends this one's
	// without its separator, and the same group in another namespace.
	putGrouped(t, st, ns, "g0/", 0, 1, time.Hour)
	putGrouped(t, st, other, "g/", 0, 1, time.Hour)

	if n, err := ns.DeleteGroup(ctx, "g/"); err != nil || n != 704 {
		t.Fatalf("DeleteGroup = %d, %v; want 704, nil", n, err)
	}
	for _, k := range []string{"g/0000", "g/0701", "g/legacy", "g/forever"} {
		if rawHas(t, st, "ns", k) {
			t.Fatalf("%s still in Badger", k)
		}
	}
	mustGet(t, ns, "g0/0000", []byte("v0"))
	mustGet(t, other, "g/0000", []byte("v0"))
	wantGroups(t, st, "after DeleteGroup", [2]string{"ns", "g0/"}, [2]string{"other", "g/"})
	if got := indexEntries(t, st); len(got) != 0 {
		t.Fatalf("index entries after DeleteGroup: %v, want none", got)
	}
	if n, err := ns.DeleteGroup(ctx, "g/"); err != nil || n != 0 {
		t.Fatalf("second DeleteGroup = %d, %v; want 0, nil", n, err)
	}
}

func TestPutTTLGroupedInvalid(t *testing.T) {
	st := open(t, "")
	ns := st.Namespace("ns")
	for _, tc := range []struct {
		group, key string
		ttl        time.Duration
		want       error
	}{
		{"g/", "h/1", time.Hour, storage.ErrInvalidKey},
		{"g/", "g/", time.Hour, storage.ErrInvalidKey},
		{"", "g/1", time.Hour, storage.ErrInvalidKey},
		{"g/", "g/1", 0, storage.ErrInvalidTTL},
	} {
		b := st.NewBatch()
		if err := b.PutTTLGrouped(ns, tc.group, tc.key, []byte("v"), tc.ttl); !errors.Is(err, tc.want) {
			t.Fatalf("PutTTLGrouped(%q, %q, %v): got %v, want %v", tc.group, tc.key, tc.ttl, err, tc.want)
		}
		if err := b.Commit(context.Background()); !errors.Is(err, tc.want) {
			t.Fatalf("Commit after a bad PutTTLGrouped: got %v, want %v", err, tc.want)
		}
	}
}

// TestPutTTLGroupedAfter: a value put as a head and a body reads back as
// the two joined, and gets its group's entry like any grouped value.
func TestPutTTLGroupedAfter(t *testing.T) {
	st := open(t, "")
	ns := st.Namespace("ns")
	ctx := context.Background()
	b := st.NewBatch()
	if err := b.PutTTLGroupedAfter(ns, "g/", "g/1", []byte("head:"), []byte("body"), time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := b.PutTTLGroupedAfter(ns, "g/", "g/2", nil, []byte("body only"), time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	for key, want := range map[string]string{"g/1": "head:body", "g/2": "body only"} {
		if got, err := ns.Get(ctx, key); err != nil || string(got) != want {
			t.Fatalf("Get(%s) = %q, %v; want %q", key, got, err, want)
		}
	}
	if got, err := storage.GroupEntries(st); err != nil || len(got) != 1 {
		t.Fatalf("group entries %v, %v; want one", got, err)
	}
	b = st.NewBatch()
	if err := b.PutTTLGroupedAfter(ns, "g/", "g/3", []byte("h"), make([]byte, storage.MaxValueLen), time.Hour); !errors.Is(err, storage.ErrTooLarge) {
		t.Fatalf("head and body over MaxValueLen together: got %v, want ErrTooLarge", err)
	}
}

func TestDeleteAllGrouped(t *testing.T) {
	st := open(t, "")
	a, keep := st.Namespace("a"), st.Namespace("a-keep")
	putGrouped(t, st, a, "g/", 0, 3, time.Hour)
	putGrouped(t, st, keep, "g/", 0, 1, time.Hour)
	if got, err := a.DeleteAll(context.Background()); err != nil || got != 3 {
		t.Fatalf("DeleteAll = %d, %v; want 3, nil", got, err)
	}
	wantGroups(t, st, "after DeleteAll", [2]string{"a-keep", "g/"})
}

func TestForgetGroup(t *testing.T) {
	ctx := context.Background()
	clk := newFakeClock()
	st := open(t, "", storage.WithClock(clk.Now))
	ns := st.Namespace("ns")
	commit := func(b *storage.Batch) {
		t.Helper()
		if err := b.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	}

	// All of a group's values deleted: the entry, not due, goes.
	putGrouped(t, st, ns, "a/", 0, 2, time.Hour)
	clk.Advance(10 * time.Minute)
	b := st.NewBatch()
	for _, k := range []string{"a/0000", "a/0001"} {
		if err := b.Delete(ns, k); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.ForgetGroup(ns, "a/"); err != nil {
		t.Fatal(err)
	}
	commit(b)
	wantGroups(t, st, "after ForgetGroup")

	// A due entry stays for the sweep (its values are still there), and a
	// value the same batch puts gets an entry.
	putGrouped(t, st, ns, "c/", 0, 2, time.Hour)
	clk.Advance(time.Hour)
	b = st.NewBatch()
	if err := b.ForgetGroup(ns, "c/"); err != nil {
		t.Fatal(err)
	}
	if err := b.PutTTLGrouped(ns, "c/", "c/0002", []byte("v2"), time.Hour); err != nil {
		t.Fatal(err)
	}
	commit(b)
	wantGroups(t, st, "before the sweep", [2]string{"ns", "c/"})
	wantSwept(t, st, 2, "after the hour")
	mustGet(t, ns, "c/0002", []byte("v2"))
	if got := len(groupEntries(t, st)); got != 1 {
		t.Fatalf("group entries after the sweep: %d, want 1 (c/0002's)", got)
	}
}

// TestGroupedSweepConflict: a put into a group that commits while the
// sweep is about to delete the group's entry (it found every value
// expired) makes the sweep start over, and the new value keeps an entry.
func TestGroupedSweepConflict(t *testing.T) {
	clk := newFakeClock()
	var (
		st   *storage.Store
		ns   *storage.Namespace
		once sync.Once
	)
	racing := func() {
		once.Do(func() { putGrouped(t, st, ns, "g/", 1, 1, time.Hour) })
	}
	st = open(t, "", storage.WithClock(clk.Now), storage.BeforeGroupSettle(racing))
	ns = st.Namespace("ns")
	putGrouped(t, st, ns, "g/", 0, 1, time.Minute)
	clk.Advance(time.Minute)
	wantSwept(t, st, 1, "with a put racing it")
	wantGroups(t, st, "after the racing put", [2]string{"ns", "g/"})
	mustGet(t, ns, "g/0001", []byte("v1"))
	clk.Advance(time.Hour)
	wantSwept(t, st, 1, "once the new value expired")
	wantGroups(t, st, "left")
}

// TestGroupedSweepRace: puts into a group while sweeps move and delete its
// entry; once all has expired, one sweep leaves nothing of the group.
func TestGroupedSweepRace(t *testing.T) {
	ctx := context.Background()
	clk := newFakeClock()
	st := open(t, "", storage.WithClock(clk.Now))
	ns := st.Namespace("ns")
	done := make(chan struct{})
	swept := make(chan error, 1)
	go func() {
		for {
			select {
			case <-done:
				swept <- nil
				return
			default:
			}
			clk.Advance(time.Millisecond)
			if _, err := st.Sweep(ctx); err != nil {
				swept <- err
				return
			}
		}
	}()
	for i := range 300 {
		putGrouped(t, st, ns, "r/", 3*i, 3, 2*time.Millisecond)
	}
	close(done)
	if err := <-swept; err != nil {
		t.Fatalf("Sweep: %v", err)
	}
	clk.Advance(time.Hour)
	if _, err := st.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if n, err := storage.CountRaw(st, "d/ns/r/"); err != nil || n != 0 {
		t.Fatalf("values left after the last sweep: %d, %v", n, err)
	}
	wantGroups(t, st, "left")
}
