package storage_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	"go.uber.org/goleak"

	"github.com/kinmesh/kinmesh/storage"
)

// fakeClock is an injected clock tests move by hand.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// open opens a store in dir (a new temporary one if dir is "") with the
// periodic sweep and GC off unless opts turn them on, and closes it at the
// end of the test.
func open(t testing.TB, dir string, opts ...storage.Option) *storage.Store {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	base := []storage.Option{storage.WithSweepInterval(0), storage.WithGCInterval(0), storage.WithSyncWrites(false)}
	st, err := storage.Open(dir, append(base, opts...)...)
	if err != nil {
		t.Fatalf("Open(%s): %v", dir, err)
	}
	t.Cleanup(func() {
		if err := st.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return st
}

// waitFor polls cond until it holds, failing the test after 30 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

func mustPut(t *testing.T, ns *storage.Namespace, key string, v []byte) {
	t.Helper()
	if err := ns.Put(context.Background(), key, v); err != nil {
		t.Fatalf("Put(%q): %v", key, err)
	}
}

func mustGet(t *testing.T, ns *storage.Namespace, key string, want []byte) {
	t.Helper()
	got, err := ns.Get(context.Background(), key)
	if err != nil {
		t.Fatalf("Get(%s/%q): %v", ns, key, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("Get(%s/%q) = %d bytes %.20q, want %d bytes %.20q", ns, key, len(got), got, len(want), want)
	}
}

func indexEntries(t *testing.T, st *storage.Store) [][2]string {
	t.Helper()
	e, err := storage.IndexEntries(st)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func TestRoundTrip(t *testing.T) {
	ctx := context.Background()
	st := open(t, "")
	tests := []struct {
		name  string
		ns    string
		key   string
		value []byte
	}{
		{"small", "identity", "self", []byte("alice")},
		{"empty value", "contacts", "empty", []byte{}},
		{"slash in key", "mailbox", "a/b//c/", []byte("x")},
		{"dot dot key", "mailbox", "../..", []byte("y")},
		{"nul and binary key", "mailbox", "\x00\xff\x01", []byte("z")},
		{"unicode key", "moments", "日本/ü", []byte("w")},
		{"longest key", "moments", strings.Repeat("k", storage.MaxKeyLen), []byte("v")},
		{"4 KiB value", "messages", "m1", randBytes(4 << 10)},
		{"value in value log", "media", "blob", randBytes(256 << 10)},
		{"largest value", "media", "max", randBytes(storage.MaxValueLen)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ns := st.Namespace(tt.ns)
			mustPut(t, ns, tt.key, tt.value)
			mustGet(t, ns, tt.key, tt.value)
			if ok, err := ns.Has(ctx, tt.key); err != nil || !ok {
				t.Fatalf("Has = %v, %v; want true, nil", ok, err)
			}
			if err := ns.Delete(ctx, tt.key); err != nil {
				t.Fatalf("Delete: %v", err)
			}
			if _, err := ns.Get(ctx, tt.key); !errors.Is(err, storage.ErrNotFound) {
				t.Fatalf("Get after Delete: got %v, want ErrNotFound", err)
			}
			if ok, err := ns.Has(ctx, tt.key); err != nil || ok {
				t.Fatalf("Has after Delete = %v, %v; want false, nil", ok, err)
			}
			if err := ns.Delete(ctx, tt.key); err != nil {
				t.Fatalf("second Delete: got %v, want nil", err)
			}
		})
	}
}

func TestNamespacesIsolated(t *testing.T) {
	ctx := context.Background()
	st := open(t, "")
	a, b := st.Namespace("a"), st.Namespace("b")
	if st.Namespace("a") != a {
		t.Fatal("Namespace(a) twice: got different namespaces, want the same")
	}
	mustPut(t, a, "k", []byte("in a"))
	mustPut(t, b, "k", []byte("in b"))
	mustGet(t, a, "k", []byte("in a"))
	mustGet(t, b, "k", []byte("in b"))
	if err := a.Delete(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	mustGet(t, b, "k", []byte("in b"))
	// A namespace that is a prefix of another sees none of its keys.
	ab := st.Namespace("a.b")
	mustPut(t, ab, "k2", []byte("in a.b"))
	n := 0
	if err := a.List(ctx, storage.ListOptions{}, func(string, []byte) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Fatalf("List(a) visited %d entries, want 0", n)
	}
}

func TestInvalidArguments(t *testing.T) {
	ctx := context.Background()
	st := open(t, "")
	ns := st.Namespace("ns")
	long := strings.Repeat("k", storage.MaxKeyLen+1)
	tests := []struct {
		name string
		op   func() error
		want error
	}{
		{"put empty key", func() error { return ns.Put(ctx, "", nil) }, storage.ErrInvalidKey},
		{"put long key", func() error { return ns.Put(ctx, long, nil) }, storage.ErrInvalidKey},
		{"get empty key", func() error { _, err := ns.Get(ctx, ""); return err }, storage.ErrInvalidKey},
		{"has long key", func() error { _, err := ns.Has(ctx, long); return err }, storage.ErrInvalidKey},
		{"has key empty key", func() error { _, err := ns.HasKey(ctx, ""); return err }, storage.ErrInvalidKey},
		{"delete empty key", func() error { return ns.Delete(ctx, "") }, storage.ErrInvalidKey},
		{"list long prefix", func() error {
			return ns.List(ctx, storage.ListOptions{Prefix: long}, func(string, []byte) error { return nil })
		}, storage.ErrInvalidKey},
		{"value too large", func() error { return ns.Put(ctx, "k", make([]byte, storage.MaxValueLen+1)) }, storage.ErrTooLarge},
		{"zero ttl", func() error { return ns.PutTTL(ctx, "k", nil, 0) }, storage.ErrInvalidTTL},
		{"negative ttl", func() error { return ns.PutTTL(ctx, "k", nil, -time.Second) }, storage.ErrInvalidTTL},
		{"ttl too long", func() error { return ns.PutTTL(ctx, "k", nil, storage.MaxTTL+1) }, storage.ErrInvalidTTL},
		{"longest ttl", func() error { return ns.PutTTL(ctx, "k", nil, storage.MaxTTL) }, nil},
		{"batch empty key", func() error { return st.NewBatch().Put(ns, "", nil) }, storage.ErrInvalidKey},
		{"batch zero ttl", func() error { return st.NewBatch().PutTTL(ns, "k", nil, 0) }, storage.ErrInvalidTTL},
		{"cancelled context", func() error {
			c, cancel := context.WithCancel(ctx)
			cancel()
			return ns.Put(c, "k", nil)
		}, context.Canceled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.op(); !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
	for _, name := range []string{"", "Upper", "a/b", "with space", strings.Repeat("n", 65)} {
		t.Run(fmt.Sprintf("namespace %q", name), func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Fatalf("Namespace(%q) did not panic", name)
				}
			}()
			st.Namespace(name)
		})
	}
}

func TestTTL(t *testing.T) {
	ctx := context.Background()
	clk := newFakeClock()
	st := open(t, "", storage.WithClock(clk.Now))
	mb := st.Namespace("mailbox")
	const day = 24 * time.Hour
	if err := mb.PutTTL(ctx, "deposit", []byte("15 days"), 15*day); err != nil {
		t.Fatal(err)
	}
	if err := mb.PutTTL(ctx, "short", []byte("1 hour"), time.Hour); err != nil {
		t.Fatal(err)
	}
	mustPut(t, mb, "forever", []byte("no ttl"))
	if got := len(indexEntries(t, st)); got != 2 {
		t.Fatalf("index entries after puts: got %d, want 2", got)
	}

	clk.Advance(14*day + 23*time.Hour)
	mustGet(t, mb, "deposit", []byte("15 days"))
	if _, err := mb.Get(ctx, "short"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Get(short) after 14d23h: got %v, want ErrNotFound", err)
	}
	if ok, err := mb.Has(ctx, "short"); err != nil || ok {
		t.Fatalf("Has(short) after expiry = %v, %v; want false, nil", ok, err)
	}
	n, err := st.Sweep(ctx)
	if err != nil || n != 1 {
		t.Fatalf("Sweep at 14d23h = %d, %v; want 1, nil", n, err)
	}
	if got, want := indexEntries(t, st), [][2]string{{"mailbox", "deposit"}}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("index after sweep: got %v, want %v", got, want)
	}
	mustGet(t, mb, "deposit", []byte("15 days"))

	clk.Advance(time.Hour)
	if _, err := mb.Get(ctx, "deposit"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Get(deposit) at 15d: got %v, want ErrNotFound", err)
	}
	if n, err := st.Sweep(ctx); err != nil || n != 1 {
		t.Fatalf("Sweep at 15d = %d, %v; want 1, nil", n, err)
	}
	if got := indexEntries(t, st); len(got) != 0 {
		t.Fatalf("index after last sweep: got %v, want empty", got)
	}
	if n, err := st.Sweep(ctx); err != nil || n != 0 {
		t.Fatalf("Sweep with nothing expired = %d, %v; want 0, nil", n, err)
	}
	// The value is gone from Badger, not just hidden.
	err = storage.RawDB(st).View(func(txn *badger.Txn) error {
		_, err := txn.Get(storage.DataKey("mailbox", "deposit"))
		return err
	})
	if !errors.Is(err, badger.ErrKeyNotFound) {
		t.Fatalf("raw Get after sweep: got %v, want ErrKeyNotFound", err)
	}
	mustGet(t, mb, "forever", []byte("no ttl"))
}

func TestTTLReplaced(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name      string
		second    func(ns *storage.Namespace) error
		at2h      error // Get after 2 h
		sweep2h   int
		at11h     error
		sweep11h  int
		indexLeft int
	}{
		{"by a put without ttl", func(ns *storage.Namespace) error { return ns.Put(ctx, "k", []byte("v2")) },
			nil, 0, nil, 0, 0},
		{"by a longer ttl", func(ns *storage.Namespace) error { return ns.PutTTL(ctx, "k", []byte("v2"), 10*time.Hour) },
			nil, 0, storage.ErrNotFound, 1, 0},
		{"by a delete", func(ns *storage.Namespace) error { return ns.Delete(ctx, "k") },
			storage.ErrNotFound, 0, storage.ErrNotFound, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := newFakeClock()
			st := open(t, "", storage.WithClock(clk.Now))
			ns := st.Namespace("ns")
			if err := ns.PutTTL(ctx, "k", []byte("v1"), time.Hour); err != nil {
				t.Fatal(err)
			}
			if err := tt.second(ns); err != nil {
				t.Fatal(err)
			}
			clk.Advance(2 * time.Hour)
			if _, err := ns.Get(ctx, "k"); !errors.Is(err, tt.at2h) {
				t.Fatalf("Get at 2h: got %v, want %v", err, tt.at2h)
			}
			if n, err := st.Sweep(ctx); err != nil || n != tt.sweep2h {
				t.Fatalf("Sweep at 2h = %d, %v; want %d, nil", n, err, tt.sweep2h)
			}
			clk.Advance(9 * time.Hour)
			if _, err := ns.Get(ctx, "k"); !errors.Is(err, tt.at11h) {
				t.Fatalf("Get at 11h: got %v, want %v", err, tt.at11h)
			}
			if n, err := st.Sweep(ctx); err != nil || n != tt.sweep11h {
				t.Fatalf("Sweep at 11h = %d, %v; want %d, nil", n, err, tt.sweep11h)
			}
			if got := indexEntries(t, st); len(got) != tt.indexLeft {
				t.Fatalf("index entries left: got %v, want %d", got, tt.indexLeft)
			}
		})
	}
}

func TestSweepManyChunks(t *testing.T) {
	ctx := context.Background()
	clk := newFakeClock()
	st := open(t, "", storage.WithClock(clk.Now))
	ns := st.Namespace("ns")
	const n = 1300 // more than two sweep chunks
	b := st.NewBatch()
	for i := range n {
		ttl := time.Hour
		if i%2 == 1 {
			ttl = 3 * time.Hour
		}
		if err := b.PutTTL(ns, fmt.Sprintf("k%05d", i), []byte("v"), ttl); err != nil {
			t.Fatal(err)
		}
		if b.Len() == 500 {
			if err := b.Commit(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := b.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	clk.Advance(2 * time.Hour)
	if got, err := st.Sweep(ctx); err != nil || got != n/2 {
		t.Fatalf("Sweep at 2h = %d, %v; want %d, nil", got, err, n/2)
	}
	clk.Advance(2 * time.Hour)
	if got, err := st.Sweep(ctx); err != nil || got != n/2 {
		t.Fatalf("Sweep at 4h = %d, %v; want %d, nil", got, err, n/2)
	}
	if got := indexEntries(t, st); len(got) != 0 {
		t.Fatalf("index entries left: %d, want 0", len(got))
	}
}

func TestExpiredReadWakesSweeper(t *testing.T) {
	ctx := context.Background()
	clk := newFakeClock()
	// A periodic sweep far away: only the read can wake the sweeper.
	st := open(t, "", storage.WithClock(clk.Now), storage.WithSweepInterval(time.Hour))
	ns := st.Namespace("ns")
	if err := ns.PutTTL(ctx, "k", []byte("v"), time.Minute); err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Hour)
	if _, err := ns.Get(ctx, "k"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Get: got %v, want ErrNotFound", err)
	}
	waitFor(t, "the sweeper to delete the expired value", func() bool { return len(indexEntries(t, st)) == 0 })
}

func TestWrongKey(t *testing.T) {
	ctx := context.Background()
	pass := []byte("correct horse battery staple")
	tests := []struct {
		name    string
		create  []storage.Option
		tamper  func(t *testing.T, dir string)
		reopen  []storage.Option
		wantErr error
	}{
		{
			name: "key file swapped",
			tamper: func(t *testing.T, dir string) {
				if err := os.WriteFile(filepath.Join(dir, storage.KeyFileName), randBytes(32), 0o600); err != nil {
					t.Fatal(err)
				}
			},
			wantErr: storage.ErrWrongKey,
		},
		{
			name: "key file truncated",
			tamper: func(t *testing.T, dir string) {
				if err := os.WriteFile(filepath.Join(dir, storage.KeyFileName), randBytes(31), 0o600); err != nil {
					t.Fatal(err)
				}
			},
			wantErr: storage.ErrWrongKey,
		},
		{
			name: "key file removed",
			tamper: func(t *testing.T, dir string) {
				if err := os.Remove(filepath.Join(dir, storage.KeyFileName)); err != nil {
					t.Fatal(err)
				}
			},
			wantErr: storage.ErrWrongKey,
		},
		{
			name:    "key file store opened with a passphrase",
			reopen:  []storage.Option{storage.WithPassphrase(pass)},
			wantErr: storage.ErrWrongKey,
		},
		{
			name:    "wrong passphrase",
			create:  []storage.Option{storage.WithPassphrase(pass), storage.FastKDF()},
			reopen:  []storage.Option{storage.WithPassphrase([]byte("Correct horse battery staple"))},
			wantErr: storage.ErrWrongKey,
		},
		{
			name:    "passphrase store opened without one",
			create:  []storage.Option{storage.WithPassphrase(pass), storage.FastKDF()},
			wantErr: storage.ErrWrongKey,
		},
		{
			name:   "right passphrase",
			create: []storage.Option{storage.WithPassphrase(pass), storage.FastKDF()},
			reopen: []storage.Option{storage.WithPassphrase(pass)},
		},
		{
			name: "right key file",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			st, err := storage.Open(dir, append(tt.create, storage.WithSyncWrites(false))...)
			if err != nil {
				t.Fatal(err)
			}
			mustPut(t, st.Namespace("identity"), "self", []byte("secret"))
			if err := st.Close(); err != nil {
				t.Fatal(err)
			}
			if tt.tamper != nil {
				tt.tamper(t, dir)
			}
			st, err = storage.Open(dir, tt.reopen...)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("reopen: got %v, want %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			defer st.Close()
			got, err := st.Namespace("identity").Get(ctx, "self")
			if err != nil || string(got) != "secret" {
				t.Fatalf("Get after reopen = %q, %v; want \"secret\", nil", got, err)
			}
		})
	}
}

func TestPassphraseKeyNotOnDisk(t *testing.T) {
	dir := t.TempDir()
	pass := []byte("hunter2 hunter2")
	st := open(t, dir, storage.WithPassphrase(pass), storage.FastKDF())
	mustPut(t, st.Namespace("identity"), "self", []byte("secret"))
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	key, err := storage.DeriveKey(dir, pass)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, storage.KeyFileName)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("passphrase store has %s (stat: %v)", storage.KeyFileName, err)
	}
	for _, needle := range [][]byte{key, pass} {
		if path := findInDir(t, dir, needle); path != "" {
			t.Fatalf("store key or passphrase found on disk in %s", path)
		}
	}
}

// findInDir returns a file under dir that contains needle, or "".
func findInDir(t *testing.T, dir string, needle []byte) string {
	t.Helper()
	found := ""
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || found != "" {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if bytes.Contains(b, needle) {
			found = path
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}

func TestCorrupt(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name   string
		value  []byte
		tamper func(sealed []byte) (key string, v []byte)
	}{
		{"flipped ciphertext byte", []byte("hello"), func(s []byte) (string, []byte) { s[len(s)-20] ^= 1; return "k", s }},
		{"flipped tag byte", []byte("hello"), func(s []byte) (string, []byte) { s[len(s)-1] ^= 0x80; return "k", s }},
		{"flipped nonce byte", []byte("hello"), func(s []byte) (string, []byte) { s[5] ^= 1; return "k", s }},
		{"unknown version", []byte("hello"), func(s []byte) (string, []byte) { s[0] = 2; return "k", s }},
		{"truncated", []byte("hello"), func(s []byte) (string, []byte) { return "k", s[:30] }},
		{"empty", []byte("hello"), func(s []byte) (string, []byte) { return "k", nil }},
		{"moved to another key", []byte("hello"), func(s []byte) (string, []byte) { return "other", s }},
		{"large value flipped", randBytes(64 << 10), func(s []byte) (string, []byte) { s[1000] ^= 4; return "k", s }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := open(t, "")
			ns := st.Namespace("ns")
			mustPut(t, ns, "k", tt.value)
			db := storage.RawDB(st)
			var sealed []byte
			err := db.View(func(txn *badger.Txn) error {
				item, err := txn.Get(storage.DataKey("ns", "k"))
				if err != nil {
					return err
				}
				sealed, err = item.ValueCopy(nil)
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			key, v := tt.tamper(sealed)
			if err := db.Update(func(txn *badger.Txn) error { return txn.Set(storage.DataKey("ns", key), v) }); err != nil {
				t.Fatal(err)
			}
			if _, err := ns.Get(ctx, key); !errors.Is(err, storage.ErrCorrupt) {
				t.Fatalf("Get: got %v, want ErrCorrupt", err)
			}
			if _, err := ns.Has(ctx, key); !errors.Is(err, storage.ErrCorrupt) {
				t.Fatalf("Has: got %v, want ErrCorrupt", err)
			}
			err = ns.List(ctx, storage.ListOptions{Prefix: key}, func(string, []byte) error { return nil })
			if !errors.Is(err, storage.ErrCorrupt) || !strings.Contains(err.Error(), fmt.Sprintf("%q", key)) {
				t.Fatalf("List: got %v, want ErrCorrupt naming %q", err, key)
			}
			// A corrupt value can be deleted.
			if err := ns.Delete(ctx, key); err != nil {
				t.Fatalf("Delete: %v", err)
			}
			if _, err := ns.Get(ctx, key); !errors.Is(err, storage.ErrNotFound) {
				t.Fatalf("Get after Delete: got %v, want ErrNotFound", err)
			}
		})
	}
}

// TestHasKey: HasKey finds a key without reading its value, so it also
// finds a value expired but not swept yet and one that fails to open.
func TestHasKey(t *testing.T) {
	ctx := context.Background()
	clk := newFakeClock()
	st := open(t, "", storage.WithClock(clk.Now))
	ns := st.Namespace("ns")
	hasKey := func(key string, want bool) {
		t.Helper()
		if got, err := ns.HasKey(ctx, key); err != nil || got != want {
			t.Fatalf("HasKey(%q) = %v, %v; want %v", key, got, err, want)
		}
	}
	hasKey("k", false)
	mustPut(t, ns, "k", []byte("v"))
	mustPut(t, ns, "large", randBytes(64<<10)) // in the value log
	if err := ns.PutTTL(ctx, "short", []byte("v"), time.Hour); err != nil {
		t.Fatal(err)
	}
	hasKey("k", true)
	hasKey("large", true)
	clk.Advance(time.Hour)
	if ok, err := ns.Has(ctx, "short"); err != nil || ok {
		t.Fatalf("Has(short) after expiry = %v, %v; want false", ok, err)
	}
	hasKey("short", true)
	if _, err := st.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	hasKey("short", false)
	err := storage.RawDB(st).Update(func(txn *badger.Txn) error {
		return txn.Set(storage.DataKey("ns", "corrupt"), []byte("not sealed"))
	})
	if err != nil {
		t.Fatal(err)
	}
	hasKey("corrupt", true)
	if err := ns.Delete(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	hasKey("k", false)
	hasKey("other", false)
	hasKey("large", true)
}

// TestListPastCorrupt: with ListOptions.Corrupt, List reports a value that
// fails to open and goes on to the values after it.
func TestListPastCorrupt(t *testing.T) {
	ctx := context.Background()
	st := open(t, "")
	ns := st.Namespace("ns")
	for _, k := range []string{"a", "b", "c", "d"} {
		mustPut(t, ns, k, []byte("value "+k))
	}
	// Move b's sealed value to c: both fail to open.
	db := storage.RawDB(st)
	err := db.Update(func(txn *badger.Txn) error {
		item, err := txn.Get(storage.DataKey("ns", "b"))
		if err != nil {
			return err
		}
		v, err := item.ValueCopy(nil)
		if err != nil {
			return err
		}
		if err := txn.Set(storage.DataKey("ns", "b"), v[:len(v)-1]); err != nil {
			return err
		}
		return txn.Set(storage.DataKey("ns", "c"), v)
	})
	if err != nil {
		t.Fatal(err)
	}
	var got, corrupt []string
	opts := storage.ListOptions{Limit: 2, Corrupt: func(key string) error {
		corrupt = append(corrupt, key)
		return nil
	}}
	err = ns.List(ctx, opts, func(key string, v []byte) error {
		if want := "value " + key; string(v) != want {
			t.Errorf("List: %q holds %q, want %q", key, v, want)
		}
		got = append(got, key)
		return nil
	})
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	if fmt.Sprint(got) != "[a d]" || fmt.Sprint(corrupt) != "[b c]" {
		t.Fatalf("List: got values %v and corrupt %v, want [a d] and [b c]", got, corrupt)
	}
	// An error from Corrupt stops List.
	stop := errors.New("stop")
	opts.Corrupt = func(string) error { return stop }
	got = nil
	err = ns.List(ctx, opts, func(key string, _ []byte) error {
		got = append(got, key)
		return nil
	})
	if !errors.Is(err, stop) || fmt.Sprint(got) != "[a]" {
		t.Fatalf("List stopped by Corrupt: got %v after %v, want stop after [a]", err, got)
	}
}

func TestReopenKeepsData(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	clk := newFakeClock()
	st, err := storage.Open(dir, storage.WithClock(clk.Now))
	if err != nil {
		t.Fatal(err)
	}
	ns := st.Namespace("contacts")
	big := randBytes(100 << 10)
	mustPut(t, ns, "bob", []byte("bob's card"))
	mustPut(t, ns, "big", big)
	if err := ns.PutTTL(ctx, "temp", []byte("t"), time.Hour); err != nil {
		t.Fatal(err)
	}
	op := ns.Opaque([]byte("mailbox-1"))
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	clk.Advance(2 * time.Hour)
	st2 := open(t, dir, storage.WithClock(clk.Now))
	ns2 := st2.Namespace("contacts")
	mustGet(t, ns2, "bob", []byte("bob's card"))
	mustGet(t, ns2, "big", big)
	if _, err := ns2.Get(ctx, "temp"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Get(temp) after reopen past its TTL: got %v, want ErrNotFound", err)
	}
	if n, err := st2.Sweep(ctx); err != nil || n != 1 {
		t.Fatalf("Sweep after reopen = %d, %v; want 1, nil", n, err)
	}
	if got := ns2.Opaque([]byte("mailbox-1")); got != op {
		t.Fatalf("Opaque after reopen = %q, want %q", got, op)
	}
}

func TestBatch(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st, err := storage.Open(dir, storage.WithSweepInterval(0))
	if err != nil {
		t.Fatal(err)
	}
	mb, ids := st.Namespace("mailbox"), st.Namespace("ids")
	mustPut(t, mb, "old", []byte("to delete"))

	b := st.NewBatch()
	for i := range 100 {
		if err := b.PutTTL(mb, fmt.Sprintf("m%03d", i), []byte(fmt.Sprint("env ", i)), time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Put(ids, "seen", []byte("100")); err != nil {
		t.Fatal(err)
	}
	if err := b.Delete(mb, "old"); err != nil {
		t.Fatal(err)
	}
	if got := b.Len(); got != 102 {
		t.Fatalf("Len = %d, want 102", got)
	}
	if err := b.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if got := b.Len(); got != 0 {
		t.Fatalf("Len after Commit = %d, want 0", got)
	}
	if err := b.Commit(ctx); err != nil {
		t.Fatalf("Commit of an empty batch: %v", err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	st = open(t, dir)
	mb, ids = st.Namespace("mailbox"), st.Namespace("ids")
	n := 0
	err = mb.List(ctx, storage.ListOptions{}, func(key string, v []byte) error {
		if want := fmt.Sprintf("m%03d", n); key != want {
			t.Errorf("entry %d: key %q, want %q", n, key, want)
		}
		n++
		return nil
	})
	if err != nil || n != 100 {
		t.Fatalf("List after reopen visited %d, %v; want 100, nil", n, err)
	}
	mustGet(t, ids, "seen", []byte("100"))
	if got := len(indexEntries(t, st)); got != 100 {
		t.Fatalf("index entries: got %d, want 100", got)
	}
}

func TestBatchAtomic(t *testing.T) {
	ctx := context.Background()
	st := open(t, "")
	ns, other := st.Namespace("ns"), st.Namespace("other")
	foreign := open(t, "").Namespace("ns")
	tests := []struct {
		name  string
		build func(b *storage.Batch)
		want  error
	}{
		{"invalid key", func(b *storage.Batch) {
			_ = b.Put(ns, "a", []byte("1"))
			_ = b.Put(other, "", []byte("2"))
			_ = b.Put(ns, "c", []byte("3"))
		}, storage.ErrInvalidKey},
		{"too large", func(b *storage.Batch) {
			// 4000 inline values of 500 B: 2 MB, over the device
			// profile's ~300 KB transaction limit.
			for i := range 4000 {
				_ = b.Put(ns, fmt.Sprint("big", i), make([]byte, 500))
			}
		}, storage.ErrTooLarge},
		{"namespace of another store", func(b *storage.Batch) {
			_ = b.Put(ns, "a", []byte("1"))
			_ = b.Put(foreign, "b", []byte("2"))
		}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := st.NewBatch()
			tt.build(b)
			err := b.Commit(ctx)
			if err == nil || (tt.want != nil && !errors.Is(err, tt.want)) {
				t.Fatalf("Commit: got %v, want %v", err, tt.want)
			}
			if err2 := b.Commit(ctx); err2 == nil {
				t.Fatalf("second Commit: got nil, want an error again")
			}
			for _, n := range []*storage.Namespace{ns, other} {
				err := n.List(ctx, storage.ListOptions{}, func(k string, _ []byte) error {
					return fmt.Errorf("found %s/%q after a failed batch", n, k)
				})
				if err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// TestBatchIsolation checks readers never see half a batch.
func TestBatchIsolation(t *testing.T) {
	ctx := context.Background()
	st := open(t, "")
	ns := st.Namespace("ns")
	const keys, rounds = 10, 50
	done := make(chan error, 1)
	go func() {
		for r := range rounds {
			b := st.NewBatch()
			for k := range keys {
				if err := b.Put(ns, fmt.Sprint("k", k), []byte(fmt.Sprint(r))); err != nil {
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
	for finished := false; !finished; {
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
			finished = true
		default:
		}
		seen := map[string]bool{}
		err := ns.List(ctx, storage.ListOptions{}, func(_ string, v []byte) error { seen[string(v)] = true; return nil })
		if err != nil {
			t.Fatal(err)
		}
		if len(seen) > 1 {
			t.Fatalf("one List saw values of several batches: %v", seen)
		}
	}
}

func TestList(t *testing.T) {
	ctx := context.Background()
	clk := newFakeClock()
	st := open(t, "", storage.WithClock(clk.Now))
	ns := st.Namespace("mailbox")
	var all []string
	for i := range 25 {
		k := fmt.Sprintf("box1/%02d", i)
		all = append(all, k)
		mustPut(t, ns, k, []byte(k))
	}
	mustPut(t, ns, "box0/x", []byte("before"))
	mustPut(t, ns, "box2/x", []byte("after"))
	if err := ns.PutTTL(ctx, "box1/07x", []byte("expires"), time.Minute); err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Hour)

	list := func(opts storage.ListOptions) []string {
		t.Helper()
		var keys []string
		err := ns.List(ctx, opts, func(k string, v []byte) error {
			if k != string(v) && !strings.HasPrefix(k, "box0") && !strings.HasPrefix(k, "box2") {
				t.Errorf("value of %q is %q", k, v)
			}
			keys = append(keys, k)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return keys
	}

	// Page through box1 ten at a time.
	var paged []string
	after := ""
	for pages := 0; ; pages++ {
		page := list(storage.ListOptions{Prefix: "box1/", StartAfter: after, Limit: 10})
		paged = append(paged, page...)
		if len(page) < 10 {
			if pages != 2 {
				t.Fatalf("got %d full pages, want 2", pages)
			}
			break
		}
		after = page[len(page)-1]
	}
	if fmt.Sprint(paged) != fmt.Sprint(all) {
		t.Fatalf("paged keys:\n got %v\nwant %v", paged, all)
	}

	tests := []struct {
		name string
		opts storage.ListOptions
		want []string
	}{
		{"everything", storage.ListOptions{}, append(append([]string{"box0/x"}, all...), "box2/x")},
		{"limit", storage.ListOptions{Limit: 2}, []string{"box0/x", "box1/00"}},
		{"start after a missing key", storage.ListOptions{Prefix: "box1/", StartAfter: "box1/23x"}, []string{"box1/24"}},
		{"start after before the prefix", storage.ListOptions{Prefix: "box2/", StartAfter: "a"}, []string{"box2/x"}},
		{"start after past the prefix", storage.ListOptions{Prefix: "box0/", StartAfter: "box1"}, nil},
		{"no match", storage.ListOptions{Prefix: "box9"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := list(tt.opts); fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
		})
	}

	t.Run("fn error stops", func(t *testing.T) {
		stop := errors.New("stop")
		n := 0
		err := ns.List(ctx, storage.ListOptions{}, func(string, []byte) error { n++; return stop })
		if err != stop || n != 1 {
			t.Fatalf("List = %v after %d calls; want stop after 1", err, n)
		}
	})
	t.Run("fn deletes as it goes", func(t *testing.T) {
		err := ns.List(ctx, storage.ListOptions{Prefix: "box1/"}, func(k string, _ []byte) error { return ns.Delete(ctx, k) })
		if err != nil {
			t.Fatal(err)
		}
		if got := list(storage.ListOptions{}); fmt.Sprint(got) != "[box0/x box2/x]" {
			t.Fatalf("after deleting box1: got %v, want [box0/x box2/x]", got)
		}
	})
	t.Run("negative limit", func(t *testing.T) {
		if err := ns.List(ctx, storage.ListOptions{Limit: -1}, func(string, []byte) error { return nil }); err == nil {
			t.Fatal("got nil, want an error")
		}
	})
}

func TestDeleteAll(t *testing.T) {
	ctx := context.Background()
	st := open(t, "")
	a, keep := st.Namespace("a"), st.Namespace("a-keep")
	const n = 1200
	b := st.NewBatch()
	for i := range n {
		var err error
		if i%3 == 0 {
			err = b.PutTTL(a, fmt.Sprint("k", i), []byte("v"), time.Hour)
		} else {
			err = b.Put(a, fmt.Sprint("k", i), []byte("v"))
		}
		if err != nil {
			t.Fatal(err)
		}
		if b.Len() == 400 {
			if err := b.Commit(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := keep.PutTTL(ctx, "k1", []byte("kept"), time.Hour); err != nil {
		t.Fatal(err)
	}
	if got, err := a.DeleteAll(ctx); err != nil || got != n {
		t.Fatalf("DeleteAll = %d, %v; want %d, nil", got, err, n)
	}
	if _, err := a.Get(ctx, "k1"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Get after DeleteAll: got %v, want ErrNotFound", err)
	}
	mustGet(t, keep, "k1", []byte("kept"))
	if got, want := indexEntries(t, st), [][2]string{{"a-keep", "k1"}}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("index after DeleteAll: got %v, want %v", got, want)
	}
	if got, err := a.DeleteAll(ctx); err != nil || got != 0 {
		t.Fatalf("second DeleteAll = %d, %v; want 0, nil", got, err)
	}
}

func TestOpaque(t *testing.T) {
	st := open(t, "")
	mb, ct := st.Namespace("mailbox"), st.Namespace("contacts")
	other := open(t, "").Namespace("mailbox")
	id := []byte("mailbox id 1")
	k := mb.Opaque(id)
	if len(k) != 32 || strings.Trim(k, "0123456789abcdefghijklmnopqrstuv") != "" {
		t.Fatalf("Opaque = %q, want 32 characters of base32hex", k)
	}
	tests := []struct {
		name string
		a, b string
		same bool
	}{
		{"same parts", k, mb.Opaque([]byte("mailbox id 1")), true},
		{"same parts through another Namespace value", k, st.Namespace("mailbox").Opaque(id), true},
		{"other namespace", k, ct.Opaque(id), false},
		{"other store", k, other.Opaque(id), false},
		{"other parts", k, mb.Opaque([]byte("mailbox id 2")), false},
		{"parts are not concatenated", mb.Opaque([]byte("ab"), []byte("c")), mb.Opaque([]byte("a"), []byte("bc")), false},
		{"empty part counts", mb.Opaque([]byte("a")), mb.Opaque([]byte("a"), nil), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if (tt.a == tt.b) != tt.same {
				t.Fatalf("Opaque %q vs %q: got equal=%v, want %v", tt.a, tt.b, tt.a == tt.b, tt.same)
			}
		})
	}
	mustPut(t, mb, k+"/msg1", []byte("usable as a key"))
}

func TestPlaintextNeverOnDisk(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st, err := storage.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	marker := []byte("KINMESH-PLAINTEXT-MARKER-7f3a9c")
	secretID := []byte("alice@example.family")
	small := append([]byte("small "), marker...)
	large := bytes.Repeat(marker, 2000) // 62 KB: in the value log
	mb := st.Namespace("mailbox")
	key := mb.Opaque(secretID)
	mustPut(t, mb, key, small)
	mustPut(t, mb, key+"/large", large)
	if err := mb.PutTTL(ctx, key+"/ttl", small, time.Hour); err != nil {
		t.Fatal(err)
	}
	b := st.NewBatch()
	_ = b.Put(st.Namespace("identity"), "self", large)
	if err := b.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	for _, needle := range [][]byte{marker, secretID} {
		if path := findInDir(t, dir, needle); path != "" {
			t.Fatalf("plaintext %q found in %s", needle, path)
		}
	}
	// The scan itself works: the opaque key is on disk in the clear.
	if findInDir(t, dir, []byte(key)) == "" {
		t.Fatal("opaque key not found on disk: the scan is broken")
	}
}

func TestFilePermissions(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "new", "store")
	open(t, dir)
	tests := []struct {
		path string
		want fs.FileMode
	}{
		{dir, 0o700},
		{filepath.Join(dir, storage.KeyFileName), 0o600},
	}
	for _, tt := range tests {
		fi, err := os.Stat(tt.path)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != tt.want {
			t.Errorf("%s: mode %v, want %v", tt.path, got, tt.want)
		}
	}
	pdir := t.TempDir()
	open(t, pdir, storage.WithPassphrase([]byte("p")), storage.FastKDF())
	fi, err := os.Stat(filepath.Join(pdir, storage.KDFFileName))
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != 0o600 {
		t.Errorf("%s: mode %v, want 0600", storage.KDFFileName, got)
	}
}

func TestClose(t *testing.T) {
	ctx := context.Background()
	st, err := storage.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ns := st.Namespace("ns")
	b := st.NewBatch()
	_ = b.Put(ns, "k", []byte("v"))
	if err := st.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := st.Close(); err != nil {
		t.Fatalf("second Close: got %v, want nil", err)
	}
	tests := []struct {
		name string
		op   func() error
	}{
		{"Put", func() error { return ns.Put(ctx, "k", nil) }},
		{"PutTTL", func() error { return ns.PutTTL(ctx, "k", nil, time.Hour) }},
		{"Get", func() error { _, err := ns.Get(ctx, "k"); return err }},
		{"Has", func() error { _, err := ns.Has(ctx, "k"); return err }},
		{"HasKey", func() error { _, err := ns.HasKey(ctx, "k"); return err }},
		{"Delete", func() error { return ns.Delete(ctx, "k") }},
		{"List", func() error { return ns.List(ctx, storage.ListOptions{}, func(string, []byte) error { return nil }) }},
		{"DeleteAll", func() error { _, err := ns.DeleteAll(ctx); return err }},
		{"Commit", func() error { return b.Commit(ctx) }},
		{"Sweep", func() error { _, err := st.Sweep(ctx); return err }},
		{"DiskUsage", func() error { _, err := st.DiskUsage(ctx); return err }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.op(); !errors.Is(err, storage.ErrClosed) {
				t.Fatalf("got %v, want ErrClosed", err)
			}
		})
	}
}

func TestCloseWaitsForList(t *testing.T) {
	ctx := context.Background()
	st, err := storage.Open(t.TempDir(), storage.WithSyncWrites(false))
	if err != nil {
		t.Fatal(err)
	}
	ns := st.Namespace("ns")
	for i := range 10 {
		mustPut(t, ns, fmt.Sprint(i), []byte("v"))
	}
	closed := make(chan error, 1)
	visited := 0
	listErr := ns.List(ctx, storage.ListOptions{}, func(k string, _ []byte) error {
		visited++
		if visited == 1 {
			go func() { closed <- st.Close() }()
			// Store calls made from fn while Close waits for List fail
			// fast; they do not deadlock.
			waitFor(t, "Close to begin", func() bool {
				_, err := ns.Get(ctx, "1")
				return errors.Is(err, storage.ErrClosed)
			})
		}
		return nil
	})
	if !errors.Is(listErr, storage.ErrClosed) || visited != 1 {
		t.Fatalf("List during Close = %v after %d entries; want ErrClosed after 1", listErr, visited)
	}
	if err := <-closed; err != nil {
		t.Fatalf("Close: %v", err)
	}
}

func TestNoGoroutineLeak(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	ctx := context.Background()
	clk := newFakeClock()
	st, err := storage.Open(t.TempDir(), storage.WithClock(clk.Now),
		storage.WithSweepInterval(time.Millisecond), storage.WithGCInterval(time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	ns := st.Namespace("ns")
	for i := range 20 {
		if err := ns.PutTTL(ctx, fmt.Sprint(i), randBytes(16<<10), time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	clk.Advance(time.Hour)
	waitFor(t, "the periodic sweep", func() bool { return len(indexEntries(t, st)) == 0 })
	storage.CollectGarbage(st)
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestLocked(t *testing.T) {
	dir := t.TempDir()
	st := open(t, dir)
	if _, err := storage.Open(dir); !errors.Is(err, storage.ErrLocked) {
		t.Fatalf("second Open: got %v, want ErrLocked", err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	open(t, dir)
}

func TestOpenErrors(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		dir  string
		opts []storage.Option
	}{
		{"dir is a file", file, nil},
		{"dir under a file", filepath.Join(file, "sub"), nil},
		{"empty passphrase", t.TempDir(), []storage.Option{storage.WithPassphrase(nil)}},
		{"nil clock", t.TempDir(), []storage.Option{storage.WithClock(nil)}},
		{"nil logger", t.TempDir(), []storage.Option{storage.WithLogger(nil)}},
		{"negative sweep interval", t.TempDir(), []storage.Option{storage.WithSweepInterval(-1)}},
		{"negative gc interval", t.TempDir(), []storage.Option{storage.WithGCInterval(-1)}},
		{"unknown profile", t.TempDir(), []storage.Option{storage.WithProfile(7)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, err := storage.Open(tt.dir, tt.opts...)
			if err == nil {
				st.Close()
				t.Fatal("got nil, want an error")
			}
			if !strings.Contains(err.Error(), tt.dir) {
				t.Fatalf("error %q does not name the directory", err)
			}
		})
	}
	t.Run("both key file and kdf file", func(t *testing.T) {
		dir := t.TempDir()
		open(t, dir, storage.WithPassphrase([]byte("p")), storage.FastKDF()).Close()
		if err := os.WriteFile(filepath.Join(dir, storage.KeyFileName), randBytes(32), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := storage.Open(dir, storage.WithPassphrase([]byte("p"))); err == nil {
			t.Fatal("got nil, want an error")
		}
	})
}

// TestDurableAcrossSIGKILL commits a batch in another process, kills it with
// SIGKILL as soon as Commit returned, and finds the batch on reopen.
func TestDurableAcrossSIGKILL(t *testing.T) {
	if runtime.GOOS == "windows" || runtime.GOOS == "plan9" {
		t.Skip("needs SIGKILL")
	}
	dir := t.TempDir()
	cmd, out := startChild(t, "commit", dir)
	if !out.Scan() || out.Text() != "committed" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("child said %q (%v), want \"committed\"", out.Text(), out.Err())
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	st := open(t, dir)
	n := 0
	err := st.Namespace("mailbox").List(context.Background(), storage.ListOptions{}, func(string, []byte) error { n++; return nil })
	if err != nil || n != 10 {
		t.Fatalf("after SIGKILL: %d deposits, %v; want 10, nil", n, err)
	}
}

func TestDiskUsage(t *testing.T) {
	ctx := context.Background()
	st := open(t, "")
	before, err := st.DiskUsage(ctx)
	if err != nil || before == 0 {
		t.Fatalf("DiskUsage = %d, %v; want > 0, nil", before, err)
	}
	ns := st.Namespace("media")
	for i := range 8 {
		mustPut(t, ns, fmt.Sprint(i), randBytes(256<<10))
	}
	after, err := st.DiskUsage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if after < before+2<<20 {
		t.Fatalf("DiskUsage after writing 2 MiB: %d, want at least %d", after, before+2<<20)
	}
}

// TestLowOnSpace: LowOnSpace compares the file system's real free space
// with the floor WithMinFree sets.
func TestLowOnSpace(t *testing.T) {
	free, err := open(t, "").FreeSpace()
	if err != nil || free == 0 {
		t.Fatalf("FreeSpace = %d, %v; want > 0", free, err)
	}
	for _, c := range []struct {
		name string
		opts []storage.Option
		low  bool
	}{
		{"no floor", nil, false},
		{"floor under the free space", []storage.Option{storage.WithMinFree(free / 2)}, false},
		{"floor over the free space", []storage.Option{storage.WithMinFree(free + 1<<40)}, true},
	} {
		st := open(t, "", c.opts...)
		for range 2 { // the second answer comes from the cache
			if got := st.LowOnSpace(); got != c.low {
				t.Errorf("%s: LowOnSpace = %v, want %v", c.name, got, c.low)
			}
		}
	}
}

func TestWipe(t *testing.T) {
	ctx := context.Background()
	for _, pass := range [][]byte{nil, []byte("p")} {
		t.Run(fmt.Sprintf("passphrase=%v", pass != nil), func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "store")
			opts := []storage.Option{storage.FastKDF()}
			if pass != nil {
				opts = append(opts, storage.WithPassphrase(pass))
			}
			st, err := storage.Open(dir, opts...)
			if err != nil {
				t.Fatal(err)
			}
			if err := st.Namespace("ns").Put(ctx, "k", []byte("v")); err != nil {
				t.Fatal(err)
			}
			if err := st.Wipe(); err != nil {
				t.Fatalf("Wipe: %v", err)
			}
			if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("dir after Wipe: stat says %v, want not exist", err)
			}
			if err := st.Close(); err != nil {
				t.Fatalf("Close after Wipe: %v", err)
			}
		})
	}
	t.Run("closed store dir", func(t *testing.T) {
		dir := t.TempDir()
		st, err := storage.Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		st.Close()
		if err := storage.Wipe(dir); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("dir after Wipe: stat says %v, want not exist", err)
		}
	})
}

// logSink keeps the records logged through its handlers.
type logSink struct {
	mu   sync.Mutex
	recs []string // "component LEVEL message"
}

type recordHandler struct {
	sink  *logSink
	attrs []slog.Attr
}

func (h *recordHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *recordHandler) Handle(_ context.Context, r slog.Record) error {
	comp := ""
	for _, a := range h.attrs {
		if a.Key == "component" {
			comp = a.Value.String()
		}
	}
	h.sink.mu.Lock()
	defer h.sink.mu.Unlock()
	h.sink.recs = append(h.sink.recs, comp+" "+r.Level.String()+" "+r.Message)
	return nil
}
func (h *recordHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &recordHandler{sink: h.sink, attrs: append(append([]slog.Attr(nil), h.attrs...), as...)}
}
func (h *recordHandler) WithGroup(string) slog.Handler { return h }

func TestBadgerLogsThroughSlog(t *testing.T) {
	sink := &logSink{}
	st := open(t, "", storage.WithLogger(slog.New(&recordHandler{sink: sink})))
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	sink.mu.Lock()
	defer sink.mu.Unlock()
	badgerLines := 0
	for _, r := range sink.recs {
		if strings.HasPrefix(r, "badger ") {
			badgerLines++
			if !strings.HasPrefix(r, "badger DEBUG ") {
				t.Errorf("badger line at a level above debug: %q", r)
			}
		}
	}
	if badgerLines == 0 {
		t.Fatalf("no badger lines among %q", sink.recs)
	}
}

func TestConcurrentUse(t *testing.T) {
	ctx := context.Background()
	clk := newFakeClock()
	st := open(t, "", storage.WithClock(clk.Now), storage.WithSweepInterval(time.Millisecond))
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ns := st.Namespace(fmt.Sprint("ns", w%2))
			for i := range 100 {
				k := fmt.Sprint(w, "-", i%10)
				var err error
				switch i % 4 {
				case 0:
					err = ns.PutTTL(ctx, k, []byte(k), time.Duration(i)*time.Second+time.Second)
				case 1:
					err = ns.Put(ctx, k, []byte(k))
				case 2:
					var v []byte
					v, err = ns.Get(ctx, k)
					if errors.Is(err, storage.ErrNotFound) {
						err = nil
					} else if err == nil && string(v) != k {
						err = fmt.Errorf("Get(%q) = %q", k, v)
					}
				case 3:
					err = ns.Delete(ctx, k)
				}
				if err != nil {
					errs <- err
					return
				}
				clk.Advance(time.Second)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestBatchCommitUnsynced(t *testing.T) {
	dir := t.TempDir()
	s, err := storage.Open(dir, storage.WithSyncWrites(false), storage.WithSweepInterval(0))
	if err != nil {
		t.Fatal(err)
	}
	ns := s.Namespace("t")
	b := s.NewBatch()
	if err := b.Put(ns, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	if err := b.CommitUnsynced(context.Background()); err != nil {
		t.Fatalf("CommitUnsynced: %v", err)
	}
	if got, err := ns.Get(context.Background(), "k"); err != nil || string(got) != "v" {
		t.Fatalf("Get after CommitUnsynced = %q, %v", got, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = storage.Open(dir, storage.WithSweepInterval(0))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got, err := s.Namespace("t").Get(context.Background(), "k"); err != nil || string(got) != "v" {
		t.Fatalf("after reopen: got %q, %v", got, err)
	}
}

func TestSync(t *testing.T) {
	s, err := storage.Open(t.TempDir(), storage.WithSyncWrites(false), storage.WithSweepInterval(0))
	if err != nil {
		t.Fatal(err)
	}
	ns := s.Namespace("t")
	b := s.NewBatch()
	if err := b.Put(ns, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	if err := b.CommitUnsynced(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := s.Sync(context.Background()); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Sync(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Sync with a cancelled context = %v, want context.Canceled", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Sync(context.Background()); !errors.Is(err, storage.ErrClosed) {
		t.Fatalf("Sync after Close = %v, want ErrClosed", err)
	}
}

func TestBatchCommitAsync(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := storage.Open(dir, storage.WithSyncWrites(false), storage.WithSweepInterval(0))
	if err != nil {
		t.Fatal(err)
	}
	ns := s.Namespace("t")
	const n = 200
	outcomes := make(chan error, n+1)
	for i := range n {
		k := fmt.Sprint("k", i)
		b := s.NewBatch()
		if err := b.Put(ns, k, []byte(k)); err != nil {
			t.Fatal(err)
		}
		if err := b.PutTTL(ns, k+"/ttl", []byte(k), time.Hour); err != nil {
			t.Fatal(err)
		}
		if err := b.CommitAsync(ctx, func(err error) { outcomes <- err }); err != nil {
			t.Fatalf("CommitAsync: %v", err)
		}
		// Visible to any read that starts after it returned, written or not.
		mustGet(t, ns, k, []byte(k))
		mustGet(t, ns, k+"/ttl", []byte(k))
	}
	// A delete could conflict: committed before CommitAsync returns.
	b := s.NewBatch()
	if err := b.Delete(ns, "k0"); err != nil {
		t.Fatal(err)
	}
	returned := false
	if err := b.CommitAsync(ctx, func(err error) {
		if returned {
			t.Error("done of a batch with a delete called after CommitAsync returned")
		}
		outcomes <- err
	}); err != nil {
		t.Fatalf("CommitAsync with a delete: %v", err)
	}
	returned = true
	if _, err := ns.Get(ctx, "k0"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Get of the deleted key = %v, want ErrNotFound", err)
	}
	// Close waits for the commits in flight; they are all there after.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for range n + 1 {
		if err := <-outcomes; err != nil {
			t.Fatalf("done(%v), want nil", err)
		}
	}
	if err := b.Put(ns, "late", []byte("v")); err != nil {
		t.Fatal(err)
	}
	if err := b.CommitAsync(ctx, nil); !errors.Is(err, storage.ErrClosed) {
		t.Fatalf("CommitAsync after Close = %v, want ErrClosed", err)
	}
	s = open(t, dir)
	ns = s.Namespace("t")
	for i := 1; i < n; i++ {
		k := fmt.Sprint("k", i)
		mustGet(t, ns, k, []byte(k))
	}
}

// TestSyncCoversRotatedLogs: a write confirmed by Sync is on disk even when
// Badger rotated its memtable log or value-log file since the write went
// in (Badger's own DB.Sync syncs only the newest of each). Writes go in
// unsynced until both kinds have rotated; after each Sync, every log file
// that was already retired before it (not the newest of its kind) and
// still exists must have been synced, and the directory once a log file
// was new.
func TestSyncCoversRotatedLogs(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st := open(t, dir)
	var mu sync.Mutex
	synced := map[string]bool{}
	storage.OnLogSynced(st, func(name string) {
		mu.Lock()
		synced[name] = true
		mu.Unlock()
	})
	ns := st.Namespace("t")
	// retiredLogs lists the log files that are not the newest of their kind.
	retiredLogs := func() []string {
		ents, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		newest := map[string]string{}
		var logs []string
		for _, e := range ents {
			ext := filepath.Ext(e.Name())
			if ext != ".mem" && ext != ".vlog" {
				continue
			}
			logs = append(logs, e.Name())
			if n := newest[ext]; len(e.Name()) > len(n) || (len(e.Name()) == len(n) && e.Name() > n) {
				newest[ext] = e.Name()
			}
		}
		var out []string
		for _, n := range logs {
			if newest[filepath.Ext(n)] != n {
				out = append(out, n)
			}
		}
		return out
	}
	checked := map[string]int{} // by kind: retired files found synced
	counted := map[string]bool{}
	small, large := randBytes(900), randBytes(4<<10)
	for i := 0; (checked[".mem"] < 2 || checked[".vlog"] < 1) && i < 2000; i++ {
		b := st.NewBatch()
		for j := range 60 {
			v := small
			if j%2 == 0 {
				v = large // to the value log
			}
			if err := b.Put(ns, fmt.Sprint(i, "/", j), v); err != nil {
				t.Fatal(err)
			}
		}
		if err := b.CommitUnsynced(ctx); err != nil {
			t.Fatal(err)
		}
		before := retiredLogs()
		if err := st.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		for _, n := range before {
			if synced[n] {
				if !counted[n] {
					checked[filepath.Ext(n)]++
					counted[n] = true
				}
				continue
			}
			if _, err := os.Stat(filepath.Join(dir, n)); err == nil {
				// Retired before the Sync and still there (not flushed
				// to a table yet): DB.Sync left it alone, so Sync had to.
				mu.Unlock()
				t.Fatalf("after Sync, the retired log %s was never synced", n)
			}
		}
		mu.Unlock()
	}
	if checked[".mem"] < 2 || checked[".vlog"] < 1 {
		t.Fatalf("retired logs seen synced: %v; want 2 memtable logs and 1 value log", checked)
	}
	mu.Lock()
	defer mu.Unlock()
	if !synced["."] {
		t.Fatal("the directory was never synced after new log files came")
	}
}
