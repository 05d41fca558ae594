package storage

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	badger "github.com/dgraph-io/badger/v4"
)

// Batch groups puts and deletes, in any namespaces of one Store, into one
// atomic transaction that Commit writes with one fsync. Values are sealed
// (and TTLs start) when they are added. A Batch is safe for concurrent use.
//
// A batch must fit in one Badger transaction: about 300 KB and 3,000
// entries with ProfileDevice, twice that with ProfileRelay. Each operation
// counts its key plus about 60 bytes, a TTL put twice (value and index
// entry; a grouped one once, and each group of the batch twice more), and a
// value under about 1 KiB counts in full (a larger one lives in Badger's
// value log and counts 12 bytes). Commit returns ErrTooLarge otherwise.
type Batch struct {
	s   *Store
	mu  sync.Mutex
	ops []write
	err error // first error adding an operation; sticky
}

// NewBatch returns an empty batch.
func (s *Store) NewBatch() *Batch { return &Batch{s: s} }

// Put adds a put of v under key in ns.
func (b *Batch) Put(ns *Namespace, key string, v []byte) error {
	return b.add(ns, "put", "", key, 0, false, v)
}

// PutTTL adds a put of v under key in ns that expires ttl from now.
func (b *Batch) PutTTL(ns *Namespace, key string, v []byte, ttl time.Duration) error {
	if ttl <= 0 {
		return b.fail(fmt.Errorf("storage: batch put %s/%q: %w", ns.name, key, ErrInvalidTTL))
	}
	return b.add(ns, "put", "", key, ttl, false, v)
}

// PutTTLGrouped adds a put of v under key in ns that expires ttl from now,
// like PutTTL, but indexed by group rather than by key: where PutTTL writes
// an index entry per value, a group has one entry, due when its first value
// expires (group.go). group must be a proper prefix of key. The caller
// promises that the values of a group expire in key order (none expires
// before another of the group with a smaller key that is still there): the
// sweep of a due group deletes its expired values from its first key on and
// stops at the first one alive, whose expiry the entry moves to. A value
// that breaks the promise (the clock stepped back) is hidden from reads at
// its expiry all the same, and deleted once the values before it have
// expired.
func (b *Batch) PutTTLGrouped(ns *Namespace, group, key string, v []byte, ttl time.Duration) error {
	return b.PutTTLGroupedAfter(ns, group, key, nil, v, ttl)
}

// PutTTLGroupedAfter is PutTTLGrouped of head || v, sealed from where the
// two are rather than joined first: for a large value behind a small
// header (a relay's envelope behind its deposit time), it saves an
// allocation and a copy of the value.
func (b *Batch) PutTTLGroupedAfter(ns *Namespace, group, key string, head, v []byte, ttl time.Duration) error {
	if ttl <= 0 {
		return b.fail(fmt.Errorf("storage: batch put %s/%q: %w", ns.name, key, ErrInvalidTTL))
	}
	if group == "" || len(group) >= len(key) || key[:len(group)] != group {
		return b.fail(fmt.Errorf("storage: batch put %s/%q: group %q is not a proper prefix of the key: %w", ns.name, key, group, ErrInvalidKey))
	}
	return b.add(ns, "put", group, key, ttl, false, head, v)
}

// ForgetGroup adds the deletion of group's index entry in ns
// (PutTTLGrouped) if it is not due yet: for a caller that knows the group's
// values are all deleted (Delete of a grouped value leaves the entry), so
// that the entry, which says when the group's first value was to expire,
// does not outlive them. A due entry stays for the sweep, since values may
// still be there. The batch's own grouped puts get an entry all the same.
func (b *Batch) ForgetGroup(ns *Namespace, group string) error {
	if err := validKey(group); err != nil {
		return b.fail(fmt.Errorf("storage: batch forget group %s: %w", ns.name, err))
	}
	if ns.s != b.s {
		return b.fail(fmt.Errorf("storage: batch forget group %s: namespace of another store", ns.name))
	}
	return b.push(write{ns: ns.name, key: group, del: true, forget: true})
}

// Delete adds a delete of key in ns.
func (b *Batch) Delete(ns *Namespace, key string) error {
	return b.add(ns, "delete", "", key, 0, true)
}

// Len returns the number of operations in the batch.
func (b *Batch) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.ops)
}

func (b *Batch) add(ns *Namespace, op, group, key string, ttl time.Duration, del bool, v ...[]byte) error {
	if ns.s != b.s {
		return b.fail(fmt.Errorf("storage: batch %s %s: namespace of another store", op, ns.name))
	}
	var w write
	if del {
		if err := validKey(key); err != nil {
			return b.fail(fmt.Errorf("storage: batch delete %s: %w", ns.name, err))
		}
		w = write{ns: ns.name, key: key, del: true}
	} else {
		var err error
		if w, err = ns.prepareIn("batch put", group, key, ttl, v...); err != nil {
			return b.fail(err)
		}
	}
	return b.push(w)
}

// push appends w, unless the batch already failed.
func (b *Batch) push(w write) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err == nil {
		b.ops = append(b.ops, w)
	}
	return b.err
}

// fail records err as the batch's error, which Commit returns: a batch that
// lost an operation never commits.
func (b *Batch) fail(err error) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err == nil {
		b.err = err
	}
	return err
}

// Commit writes every operation atomically and syncs it to disk, whatever
// WithSyncWrites says. On success the batch is empty again and can be
// reused; on failure nothing was written and Commit may be retried, except
// after an error adding an operation, which Commit keeps returning.
func (b *Batch) Commit(ctx context.Context) error { return b.commit(ctx, true) }

// CommitUnsynced writes every operation atomically like Commit, but
// returns without waiting for the disk unless the store syncs every write
// (WithSyncWrites). The batch survives a crash of the process (it is in
// the operating system's cache), not a power loss: use it for state that
// can be recomputed or repeated, never for a promise made to someone else.
func (b *Batch) CommitUnsynced(ctx context.Context) error { return b.commit(ctx, false) }

// CommitAsync writes every operation atomically like CommitUnsynced, but
// returns once the batch has its place in the store's order of commits,
// before it is written. A read that starts after CommitAsync returns sees
// the batch (Badger's reads wait for the commits ordered before them), and
// a commit that returns after it was written after it, so a Sync after
// that covers both. done, if not nil, is called with the outcome, from
// another goroutine. A batch with deletes (a delete reads its key, so its
// transaction could conflict with another) is committed as CommitUnsynced
// does and done called before CommitAsync returns. Use it where even
// CommitUnsynced's wait is too long, for state that can be recomputed or
// repeated.
func (b *Batch) CommitAsync(ctx context.Context, done func(error)) error {
	if done == nil {
		done = func(error) {}
	}
	b.mu.Lock()
	if slices.ContainsFunc(b.ops, func(w write) bool { return w.del }) {
		b.mu.Unlock()
		err := b.commit(ctx, false)
		done(err)
		return err
	}
	defer b.mu.Unlock()
	if b.err != nil {
		return b.err
	}
	if err := b.s.acquire(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		b.s.release()
		return err
	}
	if len(b.ops) == 0 {
		b.s.release()
		go done(nil)
		return nil
	}
	txn := b.s.newWTxn()
	if err := b.apply(txn); err != nil {
		txn.Discard()
		b.s.release()
		if errors.Is(err, badger.ErrTxnTooBig) {
			err = ErrTooLarge
		}
		return fmt.Errorf("storage: commit batch of %d: %w", len(b.ops), err)
	}
	n := len(b.ops)
	b.s.commitWith(txn, func(err error) {
		defer b.s.release()
		if err != nil {
			done(fmt.Errorf("storage: commit batch of %d: %w", n, err))
			return
		}
		b.s.kickCompact()
		b.s.noteWrite(0)
		done(nil)
	})
	b.ops = nil
	return nil
}

// Sync flushes every write committed so far (CommitUnsynced batches, and
// single writes of a store opened WithSyncWrites(false)) to disk. Callers
// that commit unsynced under a lock and sync after releasing it let
// concurrent writers share one fsync (group commit): a Sync covers every
// write that returned before it started.
func (s *Store) Sync(ctx context.Context) error {
	if err := s.acquire(); err != nil {
		return err
	}
	defer s.release()
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := s.syncAll(); err != nil {
		return fmt.Errorf("storage: sync: %w", err)
	}
	return nil
}

func (b *Batch) commit(ctx context.Context, sync bool) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err != nil {
		return b.err
	}
	if err := b.s.acquire(); err != nil {
		return err
	}
	defer b.s.release()
	if err := ctx.Err(); err != nil {
		return err
	}
	if len(b.ops) == 0 {
		return nil
	}
	if err := b.s.update(sync, b.apply); err != nil {
		return fmt.Errorf("storage: commit batch of %d: %w", len(b.ops), err)
	}
	b.ops = nil
	return nil
}

// apply stages the batch's operations in txn, then files its grouped
// puts in their groups' due records (fileGroups). Called with b.mu held.
func (b *Batch) apply(txn *wtxn) error {
	var groups []write
	for _, w := range b.ops {
		if err := w.apply(b.s, txn); err != nil {
			if errors.Is(err, badger.ErrTxnTooBig) {
				return err
			}
			return fmt.Errorf("%s/%q: %w", w.ns, w.key, err)
		}
		if w.group != "" {
			groups = append(groups, w)
		}
	}
	return fileGroups(txn, groups)
}
