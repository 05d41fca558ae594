package bootstrap

import (
	"context"
	"errors"
	"log/slog"
	"testing"

	ds "github.com/ipfs/go-datastore"
)

// TestCapStore: the relay's DHT record store refuses a record under a new
// key once full, still updates known keys within the bound, and takes new
// ones again once records are deleted (kad-dht's GC); batches go through
// the same bound.
func TestCapStore(t *testing.T) {
	ctx := context.Background()
	s := newCapStore(3000, slog.New(slog.DiscardHandler))
	rec := func(n int) []byte { return make([]byte, n) }
	for _, k := range []string{"/kmc/a", "/kmc/b"} {
		if err := s.Put(ctx, ds.NewKey(k), rec(1000)); err != nil {
			t.Fatalf("Put %s: %v", k, err)
		}
	}
	if err := s.Put(ctx, ds.NewKey("/kmc/c"), rec(1001)); !errors.Is(err, errDHTFull) {
		t.Fatalf("a new record past the bound: %v, want errDHTFull", err)
	}
	if has, _ := s.Has(ctx, ds.NewKey("/kmc/c")); has {
		t.Fatal("the refused record is stored")
	}
	if err := s.Put(ctx, ds.NewKey("/kmc/a"), rec(1900)); err != nil {
		t.Fatalf("a known record updated within the bound: %v", err)
	}
	if err := s.Put(ctx, ds.NewKey("/kmc/a"), rec(2100)); !errors.Is(err, errDHTFull) {
		t.Fatalf("a known record grown past the bound: %v, want errDHTFull", err)
	}
	if got := s.Bytes(); got != 2900 {
		t.Fatalf("Bytes = %d, want 2900", got)
	}
	if err := s.Delete(ctx, ds.NewKey("/kmc/b")); err != nil {
		t.Fatal(err)
	}
	b, err := s.Batch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Put(ctx, ds.NewKey("/kmc/c"), rec(1000)); err != nil {
		t.Fatal(err)
	}
	if err := b.Put(ctx, ds.NewKey("/kmc/d"), rec(1000)); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(ctx); !errors.Is(err, errDHTFull) {
		t.Fatalf("a batch past the bound: %v, want errDHTFull", err)
	}
	if got := s.Bytes(); got != 2900 {
		t.Fatalf("Bytes after the batch = %d, want 2900 (a and c)", got)
	}
}
