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
		err = s.update(false, func(txn *wtxn) error {
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
func (s *Store) sweepOne(txn *wtxn, ik []byte) (deleted bool, size int64, err error) {
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
