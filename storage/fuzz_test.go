package storage_test

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/kinmesh/kinmesh/storage"
)

// FuzzPutGet round-trips arbitrary keys and values through a real store.
func FuzzPutGet(f *testing.F) {
	f.Add("k", []byte("v"))
	f.Add("a/b/../c", []byte{})
	f.Add("\x00\xff", []byte("\x00"))
	f.Add("", []byte("x"))
	st := open(f, "")
	ns := st.Namespace("fuzz")
	ctx := context.Background()
	f.Fuzz(func(t *testing.T, key string, value []byte) {
		err := ns.Put(ctx, key, value)
		if len(key) == 0 || len(key) > storage.MaxKeyLen {
			if !errors.Is(err, storage.ErrInvalidKey) {
				t.Fatalf("Put(%q): got %v, want ErrInvalidKey", key, err)
			}
			return
		}
		if err != nil {
			t.Fatalf("Put(%q): %v", key, err)
		}
		got, err := ns.Get(ctx, key)
		if err != nil || !bytes.Equal(got, value) {
			t.Fatalf("Get(%q) = %q, %v; want %q, nil", key, got, err, value)
		}
		found := false
		err = ns.List(ctx, storage.ListOptions{Prefix: key, Limit: 1}, func(k string, v []byte) error {
			found = k == key && bytes.Equal(v, value)
			return nil
		})
		if err != nil || !found {
			t.Fatalf("List(prefix %q): found=%v, %v; want the entry first", key, found, err)
		}
		if err := ns.Delete(ctx, key); err != nil {
			t.Fatalf("Delete(%q): %v", key, err)
		}
	})
}
