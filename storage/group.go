package storage

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	badger "github.com/dgraph-io/badger/v4"
)

// Grouped TTLs (Batch.PutTTLGrouped): the values of a group expire in key
// order, so the group needs one index entry, not one per value. Two keys
// hold it:
//
//	"y/" be64(due) ns "/" group             the entry, in the sweep's order
//	"g/" ns "/" be16(len(group)) group      the group's due record: be64(due)
//
// due is the expiry of the group's first value (or earlier). A batch with
// grouped puts reads the due record of each of its groups and writes it
// back (so that a sweep moving the entry at the same time conflicts with
// the batch and is retried), creating the entry if the group has none and
// moving it earlier if a value expires before it. The sweep of a due group
// deletes its expired values from the first on and moves the entry to the
// first value alive, or deletes it with the record when none is left.

// groupKey is the index entry of group in ns, due at due.
func groupKey(due uint64, ns, group string) []byte {
	return expiryKey(prefixGroup, due, ns, group)
}

// parseGroupKey splits a group index key; ok is false for a malformed one.
func parseGroupKey(k []byte) (due uint64, ns, group string, ok bool) {
	return parseExpiryKey(prefixGroup, k)
}

// dueKey is the key of group's due record in ns.
func dueKey(ns, group string) []byte {
	b := make([]byte, 0, len(prefixDue)+len(ns)+1+2+len(group))
	b = append(b, prefixDue...)
	b = append(b, ns...)
	b = append(b, '/')
	b = binary.BigEndian.AppendUint16(b, uint16(len(group)))
	return append(b, group...)
}

// dueOf reads group's due record within txn (a read the transaction's
// conflict check covers); ok is false if the group has no entry. Badger's
// TTL of the entry comes along, to be kept when the entry is rewritten.
func dueOf(txn *badger.Txn, ns, group string) (due, native uint64, ok bool, err error) {
	item, err := txn.Get(dueKey(ns, group))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return 0, 0, false, nil
	}
	if err != nil {
		return 0, 0, false, err
	}
	err = item.Value(func(v []byte) error {
		if len(v) != 8 {
			return fmt.Errorf("group due record of %d bytes: %w", len(v), ErrCorrupt)
		}
		due = binary.BigEndian.Uint64(v)
		return nil
	})
	return due, item.ExpiresAt(), err == nil, err
}

// setDue files group's entry at due within txn, replacing the one at old
// (if had). native is Badger's TTL for both keys (0: none).
func setDue(txn *wtxn, ns, group string, old uint64, had bool, due, native uint64) error {
	if had && old != due {
		if err := txn.Delete(groupKey(old, ns, group)); err != nil {
			return err
		}
	}
	for _, e := range []*badger.Entry{
		badger.NewEntry(groupKey(due, ns, group), nil),
		badger.NewEntry(dueKey(ns, group), binary.BigEndian.AppendUint64(nil, due)),
	} {
		e.ExpiresAt = native
		if err := txn.SetEntry(e); err != nil {
			return err
		}
	}
	return nil
}

// dropDue deletes group's entry at due and its due record within txn.
func dropDue(txn *wtxn, ns, group string, due uint64) error {
	if err := txn.Delete(groupKey(due, ns, group)); err != nil {
		return err
	}
	return txn.Delete(dueKey(ns, group))
}

// fileGroups gives the groups of a batch's grouped puts their entries: due
// no later than the group's earliest value in the batch.
func fileGroups(txn *wtxn, puts []write) error {
	type group struct {
		ns, name      string
		first, native uint64
	}
	var groups []*group
	byName := make(map[string]*group)
	for _, w := range puts {
		id := w.ns + "/" + w.group
		g := byName[id]
		if g == nil {
			g = &group{ns: w.ns, name: w.group, first: w.expiry}
			byName[id] = g
			groups = append(groups, g)
		}
		g.first, g.native = min(g.first, w.expiry), max(g.native, w.nativeExpiry())
	}
	for _, g := range groups {
		old, native, had, err := dueOf(txn.Txn, g.ns, g.name)
		if err != nil && !errors.Is(err, ErrCorrupt) {
			return fmt.Errorf("%s/%q: group entry: %w", g.ns, g.name, err)
		}
		due := old
		if !had || g.first < old {
			due = g.first
		}
		if err := setDue(txn, g.ns, g.name, old, had, due, max(native, g.native)); err != nil {
			return fmt.Errorf("%s/%q: group entry: %w", g.ns, g.name, err)
		}
	}
	return nil
}

// forgetIn deletes group's entry in ns within txn if it is not due yet.
func forgetIn(s *Store, txn *wtxn, ns, group string) error {
	due, _, had, err := dueOf(txn.Txn, ns, group)
	if err != nil || !had || due <= s.now() {
		return err
	}
	return dropDue(txn, ns, group, due)
}

// sweepGroups walks the group index up to now and sweeps each due group
// (sweepGroup).
func (s *Store) sweepGroups(ctx context.Context, now uint64) (deleted int, freed int64, err error) {
	prefix := []byte(prefixGroup)
	seek := prefix
	for {
		if err := s.alive(ctx); err != nil {
			return deleted, freed, err
		}
		var due [][]byte
		err := s.db.View(func(txn *badger.Txn) error {
			it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix, PrefetchValues: false})
			defer it.Close()
			for it.Seek(seek); it.ValidForPrefix(prefix) && len(due) < chunk; it.Next() {
				k := it.Item().KeyCopy(nil)
				if at, _, _, ok := parseGroupKey(k); ok && at > now {
					break // in due order: the rest is not due
				}
				due = append(due, k)
			}
			return nil
		})
		if err != nil || len(due) == 0 {
			return deleted, freed, err
		}
		for _, gk := range due {
			n, f, err := s.sweepGroup(ctx, gk, now)
			deleted, freed = deleted+n, freed+f
			if errors.Is(err, badger.ErrConflict) {
				// Puts into the group kept committing under the sweep:
				// the entry stays due, for the next sweep.
				s.log.Debug("group sweep conflicted; left for the next sweep")
				continue
			}
			if err != nil {
				return deleted, freed, err
			}
		}
		last := due[len(due)-1]
		seek = append(last[:len(last):len(last)], 0) // moved entries are due later
		if len(due) < chunk {
			return deleted, freed, nil
		}
	}
}

// sweepGroup handles the due entry gk: it deletes the group's expired
// values in key order from its first, in transactions of at most chunk
// values, and in the last one moves the entry to the first value alive or
// deletes it. An entry its group's due record does not name is stale and
// goes. A value of the group indexed by key goes with its index entry; one
// that doesn't open is left to Badger's TTL.
func (s *Store) sweepGroup(ctx context.Context, gk []byte, now uint64) (deleted int, freed int64, err error) {
	at, ns, group, ok := parseGroupKey(gk)
	if !ok {
		s.log.Warn("malformed group index entry removed")
		return 0, 0, s.update(false, func(txn *wtxn) error { return txn.Delete(gk) })
	}
	nsPrefix := dataKey(ns, "")
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
		err := s.update(false, func(txn *wtxn) error {
			n, f, more, next = 0, 0, false, seek
			due, native, had, err := dueOf(txn.Txn, ns, group)
			if err != nil && !errors.Is(err, ErrCorrupt) {
				return err
			}
			if !had || due != at {
				return txn.Delete(gk) // stale
			}
			it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
			defer it.Close()
			for it.Seek(seek); it.ValidForPrefix(prefix); it.Next() {
				if n == chunk {
					more = true
					return nil
				}
				item := it.Item()
				dk := item.KeyCopy(nil)
				next = append(dk[:len(dk):len(dk)], 0)
				key := string(dk[len(nsPrefix):])
				var sealed uint64
				err := item.Value(func(v []byte) error {
					var err error
					sealed, _, err = s.sealer.open(ns, key, v)
					return err
				})
				if err != nil {
					s.log.Warn("a grouped value does not open; left for Badger's TTL", "namespace", ns, "err", err)
					continue
				}
				exp, grouped := splitExpiry(sealed)
				if exp == 0 {
					continue // never expires: not in the group's order
				}
				if exp > now {
					// The first alive: the entry moves to its expiry.
					s.settling()
					return setDue(txn, ns, group, due, true, exp, max(native, item.ExpiresAt()))
				}
				if !grouped {
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
			s.settling()
			return dropDue(txn, ns, group, due)
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

// settling runs the test hook withBeforeGroupSettle, if set.
func (s *Store) settling() {
	if s.cfg.beforeGroupSettle != nil {
		s.cfg.beforeGroupSettle()
	}
}

// DeleteGroup deletes every value in the namespace whose key starts with
// group, alive or expired, with its expiry index entry or the group's
// entry (Batch.PutTTLGrouped), and returns how many values it deleted. It
// is not atomic: values put in the group meanwhile may survive. It reads
// each value, to find its index entry.
func (n *Namespace) DeleteGroup(ctx context.Context, group string) (int, error) {
	if err := validKey(group); err != nil {
		return 0, fmt.Errorf("storage: delete group %s: %w", n.name, err)
	}
	if err := n.s.acquire(); err != nil {
		return 0, err
	}
	defer n.s.release()
	nsPrefix := dataKey(n.name, "")
	prefix := dataKey(n.name, group)
	seek := prefix
	deleted := 0
	for more := true; more; {
		if err := n.s.alive(ctx); err != nil {
			return deleted, fmt.Errorf("storage: delete group %s: %w", n.name, err)
		}
		var (
			count int
			next  []byte
		)
		err := n.s.update(true, func(txn *wtxn) error {
			count, more, next = 0, false, seek
			it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix, PrefetchValues: false})
			defer it.Close()
			var keys [][]byte
			for it.Seek(seek); it.ValidForPrefix(prefix); it.Next() {
				if len(keys) == chunk {
					more = true
					break
				}
				keys = append(keys, it.Item().KeyCopy(nil))
			}
			for _, dk := range keys {
				if err := deleteIn(n.s, txn, n.name, string(dk[len(nsPrefix):]), dk); err != nil {
					return err
				}
				next = append(dk[:len(dk):len(dk)], 0)
				count++
			}
			if more {
				return nil
			}
			due, _, had, err := dueOf(txn.Txn, n.name, group)
			switch {
			case err != nil && !errors.Is(err, ErrCorrupt):
				return err
			case !had:
				return txn.Delete(dueKey(n.name, group)) // a corrupt record, if any
			}
			return dropDue(txn, n.name, group, due)
		})
		if err != nil {
			return deleted, fmt.Errorf("storage: delete group %s: %w", n.name, err)
		}
		deleted, seek = deleted+count, next
	}
	if deleted > 0 {
		n.s.kickGC()
	}
	return deleted, nil
}
