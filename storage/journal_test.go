package storage_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sync/errgroup"

	"github.com/kinmesh/kinmesh/storage"
)

// copyDir copies the files of src into dst, as they are now: the state a
// power loss would leave if nothing were written after this moment.
func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	entries, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		copyFile(t, filepath.Join(src, e.Name()), filepath.Join(dst, e.Name()))
	}
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// journaled fills a store whose Badger files, as of its last full sync,
// are in snap: a large value makes a Sync go through Badger (a
// checkpoint), snap gets the files, and then n small commits (puts, a
// delete, a put with a TTL, in batches) are synced through the journal
// only. It returns the store's directory.
func journaled(t *testing.T, n int) (dir, snap string) {
	t.Helper()
	ctx := context.Background()
	dir, snap = t.TempDir(), t.TempDir()
	st := open(t, dir)
	ns := st.Namespace("j")
	if err := ns.Put(ctx, "big", randBytes(4<<10)); err != nil {
		t.Fatal(err)
	}
	if err := ns.Put(ctx, "gone", []byte("deleted later")); err != nil {
		t.Fatal(err)
	}
	if err := st.Sync(ctx); err != nil { // through Badger: the value log is dirty
		t.Fatal(err)
	}
	copyDir(t, dir, snap)
	for i := range n {
		b := st.NewBatch()
		if err := b.Put(ns, fmt.Sprint("k", i), []byte(fmt.Sprint("v", i))); err != nil {
			t.Fatal(err)
		}
		switch i {
		case 3:
			if err := b.Delete(ns, "gone"); err != nil {
				t.Fatal(err)
			}
		case 4:
			if err := b.PutTTL(ns, "ttl", []byte("for an hour"), 3600e9); err != nil {
				t.Fatal(err)
			}
		}
		if err := b.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// The power fails: Badger's files as at the checkpoint (everything
	// since went only to its unsynced logs), the journal as synced.
	copyFile(t, filepath.Join(dir, storage.JournalFile), filepath.Join(snap, storage.JournalFile))
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	return dir, snap
}

// TestJournalReplaysWhatBadgerLost: after a power loss that took
// everything Badger wrote since its last full sync, the store comes back
// with every commit that Commit (or Sync) had confirmed, from the journal
// alone, deletes included; once more after a clean reopen.
func TestJournalReplaysWhatBadgerLost(t *testing.T) {
	const n = 40
	_, snap := journaled(t, n)
	check := func(st *storage.Store) {
		t.Helper()
		ctx := context.Background()
		ns := st.Namespace("j")
		for i := range n {
			v, err := ns.Get(ctx, fmt.Sprint("k", i))
			if err != nil || string(v) != fmt.Sprint("v", i) {
				t.Fatalf("k%d after the power loss: %q, %v", i, v, err)
			}
		}
		if _, err := ns.Get(ctx, "gone"); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("a deleted value came back: %v", err)
		}
		if v, err := ns.Get(ctx, "ttl"); err != nil || string(v) != "for an hour" {
			t.Fatalf("ttl: %q, %v", v, err)
		}
		if _, err := ns.Get(ctx, "big"); err != nil {
			t.Fatalf("big, synced before: %v", err)
		}
	}
	st, err := storage.Open(snap, storage.WithSweepInterval(0), storage.WithGCInterval(0), storage.WithSyncWrites(false))
	if err != nil {
		t.Fatal(err)
	}
	check(st)
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	check(open(t, snap))
}

// TestJournalTornRecord: a record the power loss tore (its Sync never
// returned) is not replayed, and neither is anything after it; the rest
// is.
func TestJournalTornRecord(t *testing.T) {
	const n = 10
	_, snap := journaled(t, n)
	path := filepath.Join(snap, storage.JournalFile)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	end := len(bytes.TrimRight(b, "\x00"))
	b[end-3] ^= 0xff // in the last record: the last commit's
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	st := open(t, snap)
	ns := st.Namespace("j")
	ctx := context.Background()
	for i := range n - 1 {
		if _, err := ns.Get(ctx, fmt.Sprint("k", i)); err != nil {
			t.Fatalf("k%d: %v", i, err)
		}
	}
	if _, err := ns.Get(ctx, fmt.Sprint("k", n-1)); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("the torn commit was replayed: %v", err)
	}
}

// TestJournalAfterCleanClose: a store closed normally has everything in
// Badger; reopening replays nothing and loses nothing.
func TestJournalAfterCleanClose(t *testing.T) {
	const n = 10
	dir, _ := journaled(t, n)
	st := open(t, dir)
	ns := st.Namespace("j")
	for i := range n {
		if _, err := ns.Get(context.Background(), fmt.Sprint("k", i)); err != nil {
			t.Fatalf("k%d: %v", i, err)
		}
	}
}

// TestJournalKeepsCommitOrder: writers racing to write and delete the
// same keys, each commit synced; after a power loss that took everything
// Badger wrote since the last full sync, the replayed store holds exactly
// what the live one did: the journal replays commits in Badger's order,
// and leaves out the transactions that lost a conflict.
func TestJournalKeepsCommitOrder(t *testing.T) {
	ctx := context.Background()
	dir, snap := t.TempDir(), t.TempDir()
	st := open(t, dir)
	ns := st.Namespace("race")
	if err := ns.Put(ctx, "big", randBytes(4<<10)); err != nil {
		t.Fatal(err)
	}
	if err := st.Sync(ctx); err != nil { // a checkpoint
		t.Fatal(err)
	}
	copyDir(t, dir, snap)
	const writers, rounds = 8, 40
	var g errgroup.Group
	for w := range writers {
		g.Go(func() error {
			for i := range rounds {
				b := st.NewBatch()
				// Every writer writes each round's key: which one wrote
				// it last is Badger's order of their commits.
				_ = b.Put(ns, fmt.Sprint("shared", i), []byte(fmt.Sprint(w)))
				_ = b.Put(ns, fmt.Sprint("own", w, "/", i), []byte("x"))
				if i%4 == 3 && w%2 == 0 {
					// A delete reads its key: racing writers conflict.
					_ = b.Delete(ns, fmt.Sprint("shared", i-1))
				}
				// A batch that keeps losing its conflict fails, and is in
				// neither store: that is part of what is tested.
				if err := b.Commit(ctx); err != nil && !errors.Is(err, storage.ErrConflict) {
					return err
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	contents := func(ns *storage.Namespace) map[string]string {
		t.Helper()
		m := map[string]string{}
		err := ns.List(ctx, storage.ListOptions{}, func(k string, v []byte) error {
			m[k] = string(v)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	live := contents(ns)
	copyFile(t, filepath.Join(dir, storage.JournalFile), filepath.Join(snap, storage.JournalFile))

	got := contents(open(t, snap).Namespace("race"))
	if len(got) != len(live) {
		t.Fatalf("%d keys after the replay, %d in the live store", len(got), len(live))
	}
	for k, want := range live {
		if got[k] != want {
			t.Fatalf("%s after the replay: %q; the live store had %q", k, got[k], want)
		}
	}
}

// TestJournalFullDisk: a store that has no room for its journal's zeros
// still opens and syncs through Badger; a journal it had is replayed
// first, so nothing confirmed is lost on the way.
func TestJournalFullDisk(t *testing.T) {
	const n = 10
	_, snap := journaled(t, n)
	// A journal cut short after its records (ten small ones): it has to
	// grow again.
	if err := os.Truncate(filepath.Join(snap, storage.JournalFile), 64<<10); err != nil {
		t.Fatal(err)
	}
	storage.FailPreallocate(t)
	st := open(t, snap)
	if storage.HasJournal(st) {
		t.Fatal("a journal without room for it")
	}
	ctx := context.Background()
	ns := st.Namespace("j")
	for i := range n {
		if _, err := ns.Get(ctx, fmt.Sprint("k", i)); err != nil {
			t.Fatalf("k%d: %v", i, err)
		}
	}
	b2 := st.NewBatch()
	if err := b2.Put(ns, "after", []byte("synced by Badger")); err != nil {
		t.Fatal(err)
	}
	if err := b2.Commit(ctx); err != nil {
		t.Fatalf("commit without a journal: %v", err)
	}
	if st := open(t, t.TempDir()); storage.HasJournal(st) {
		t.Fatal("a new store got a journal it has no room for")
	}
}
