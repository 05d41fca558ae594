package storage

import (
	"context"
	"errors"
	"fmt"

	badger "github.com/dgraph-io/badger/v4"
)

// Sweep deletes every value whose expiry has passed on the store's clock,
// with its expiry index entry, and returns how many values it deleted. It
// walks only the expiry index, up to now. The store runs it every
// WithSweepInterval; tests with an injected clock call it directly.
func (s *Store) Sweep(ctx context.Context) (int, error) {
	if err := s.acquire(); err != nil {
		return 0, err
	}
	defer s.release()
	n, freed, err := s.sweep(ctx)
	if err != nil {
		return n, fmt.Errorf("storage: sweep: %w", err)
	}
	if freed >= s.cfg.profile.sizes().gcAfterSweep {
		s.kickGC()
	}
	return n, nil
}

// sweep deletes expired values in chunks, those indexed by key and then
// those indexed by group; freed counts their sealed bytes.
func (s *Store) sweep(ctx context.Context) (deleted int, freed int64, err error) {
	s.sweepMu.Lock()
	defer s.sweepMu.Unlock()
	now := s.now()
	deleted, freed, err = s.sweepKeys(ctx, now)
	if err != nil {
		return deleted, freed, err
	}
	n, f, err := s.sweepGroups(ctx, now)
	return deleted + n, freed + f, err
}

// sweepKeys walks the expiry index up to now and deletes what it names.
func (s *Store) sweepKeys(ctx context.Context, now uint64) (deleted int, freed int64, err error) {
	prefix := []byte(prefixExpiry)
	seek := prefix
	for {
		if err := s.alive(ctx); err != nil {
			return deleted, freed, err
		}
		var keys [][]byte
		err := s.db.View(func(txn *badger.Txn) error {
			it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
			defer it.Close()
			for it.Seek(seek); it.ValidForPrefix(prefix) && len(keys) < chunk; it.Next() {
				k := it.Item().KeyCopy(nil)
				if exp, _, _, ok := parseIndexKey(k); ok && exp > now {
					break // the index is in expiry order: the rest is alive
				}
				keys = append(keys, k)
			}
			return nil
		})
		if err != nil {
			return deleted, freed, err
		}
		if len(keys) == 0 {
			return deleted, freed, nil
		}
		last := keys[len(keys)-1]
		seek = append(last[:len(last):len(last)], 0)

		var n int
		var f int64
		err = s.update(false, func(txn *badger.Txn) error {
			n, f = 0, 0
			for _, ik := range keys {
				del, size, err := s.sweepOne(txn, ik)
				if err != nil {
					return err
				}
				if del {
					n++
					f += size
				}
			}
			return nil
		})
		if err != nil {
			return deleted, freed, err
		}
		deleted += n
		freed += f
		if len(keys) < chunk {
			return deleted, freed, nil
		}
	}
}

// sweepOne handles one expired index entry: it deletes the value it points
// to if that value still carries the same expiry (it may have been replaced
// or deleted since), and the index entry in any case.
func (s *Store) sweepOne(txn *badger.Txn, ik []byte) (deleted bool, size int64, err error) {
	exp, ns, key, ok := parseIndexKey(ik)
	if !ok {
		s.log.Warn("malformed expiry index entry removed")
		return false, 0, txn.Delete(ik)
	}
	dk := dataKey(ns, key)
	item, err := txn.Get(dk)
	switch {
	case errors.Is(err, badger.ErrKeyNotFound):
		return false, 0, txn.Delete(ik)
	case err != nil:
		return false, 0, err
	}
	var stored uint64
	err = item.Value(func(v []byte) error {
		var err error
		stored, _, err = s.sealer.open(ns, key, v)
		return err
	})
	if err != nil {
		s.log.Warn("expired value does not open; left for Badger's TTL", "namespace", ns, "err", err)
		return false, 0, txn.Delete(ik)
	}
	if stored != exp { // replaced since (a grouped value's sealed expiry never equals it)
		return false, 0, txn.Delete(ik)
	}
	if err := txn.Delete(dk); err != nil {
		return false, 0, err
	}
	return true, item.ValueSize(), txn.Delete(ik)
}

// sweepGroups walks the group index up to now: for each group with a due
// entry it deletes the group's expired values from its first key on
// (sweepGroup), then the due entries.
func (s *Store) sweepGroups(ctx context.Context, now uint64) (deleted int, freed int64, err error) {
	prefix := []byte(prefixGroup)
	for {
		if err := s.alive(ctx); err != nil {
			return deleted, freed, err
		}
		var due [][]byte
		err := s.db.View(func(txn *badger.Txn) error {
			it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
			defer it.Close()
			for it.Seek(prefix); it.ValidForPrefix(prefix) && len(due) < chunk; it.Next() {
				k := it.Item().KeyCopy(nil)
				if exp, _, _, ok := parseGroupKey(k); ok && exp > now {
					break // in expiry order: the rest is not due
				}
				due = append(due, k)
			}
			return nil
		})
		if err != nil || len(due) == 0 {
			return deleted, freed, err
		}
		swept := make(map[string]bool)
		for _, gk := range due {
			_, ns, group, ok := parseGroupKey(gk)
			if !ok {
				s.log.Warn("malformed group index entry removed")
				continue
			}
			if swept[ns+"/"+group] {
				continue
			}
			swept[ns+"/"+group] = true
			n, f, err := s.sweepGroup(ctx, ns, group, now)
			deleted, freed = deleted+n, freed+f
			if err != nil {
				return deleted, freed, err
			}
		}
		err = s.update(false, func(txn *badger.Txn) error {
			for _, gk := range due {
				if exp, ns, group, ok := parseGroupKey(gk); ok {
					if err := txn.Delete(twinKey(exp, ns, group)); err != nil {
						return err
					}
				}
				if err := txn.Delete(gk); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil || len(due) < chunk {
			return deleted, freed, err
		}
	}
}

// sweepGroup deletes the expired values of group in ns, in key order from
// its first, in transactions of at most chunk values, and stops at the
// first value alive (PutTTLGrouped's promise: the rest expire later). A
// value of the group indexed by key goes with its index entry; one that
// doesn't open is left to Badger's TTL.
func (s *Store) sweepGroup(ctx context.Context, ns, group string, now uint64) (deleted int, freed int64, err error) {
	prefix := dataKey(ns, group)
	seek := prefix
	for {
		if err := s.alive(ctx); err != nil {
			return deleted, freed, err
		}
		var (
			n    int
			f    int64
			more bool
			next []byte
		)
		err := s.update(false, func(txn *badger.Txn) error {
			n, f, more, next = 0, 0, false, nil
			it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
			defer it.Close()
			for it.Seek(seek); it.ValidForPrefix(prefix); it.Next() {
				if n == chunk {
					more = true
					break
				}
				item := it.Item()
				dk := item.KeyCopy(nil)
				next = append(dk[:len(dk):len(dk)], 0)
				key := string(dk[len(dataKey(ns, "")):])
				var sealed uint64
				err := item.Value(func(v []byte) error {
					var err error
					sealed, _, err = s.sealer.open(ns, key, v)
					return err
				})
				if err != nil {
					s.log.Warn("expired value does not open; left for Badger's TTL", "namespace", ns, "err", err)
					continue
				}
				if !expired(sealed, now) {
					return nil // the rest of the group is alive
				}
				if exp, grouped := splitExpiry(sealed); !grouped {
					if err := txn.Delete(indexKey(exp, ns, key)); err != nil {
						return err
					}
				}
				if err := txn.Delete(dk); err != nil {
					return err
				}
				n++
				f += item.ValueSize()
			}
			return nil
		})
		if err != nil {
			return deleted, freed, err
		}
		deleted, freed = deleted+n, freed+f
		if !more {
			return deleted, freed, nil
		}
		seek = next
	}
}
