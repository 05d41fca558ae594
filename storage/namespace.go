package storage

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base32"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	badger "github.com/dgraph-io/badger/v4"
)

const (
	prefixData    = "d/"
	prefixExpiry  = "x/"
	prefixGroup   = "y/" // group expiry index (Batch.PutTTLGrouped)
	prefixDue     = "g/" // a group's due record (group.go)
	keyCheckValue = "m/check"

	// opaqueLen is how many bytes of the HMAC Opaque keeps (160 bits).
	opaqueLen = 20
	// chunk bounds the keys one DeleteAll or Sweep transaction handles.
	chunk = 512
)

var opaqueEncoding = base32.NewEncoding("0123456789abcdefghijklmnopqrstuv").WithPadding(base32.NoPadding)

// Namespace is one subsystem's part of a Store. Keys in different namespaces
// never collide. It is safe for concurrent use.
type Namespace struct {
	s         *Store
	name      string
	opaqueKey []byte
}

// Name returns the namespace's name.
func (n *Namespace) Name() string { return n.name }

func dataKey(ns, key string) []byte {
	b := make([]byte, 0, len(prefixData)+len(ns)+1+len(key))
	b = append(b, prefixData...)
	b = append(b, ns...)
	b = append(b, '/')
	return append(b, key...)
}

func indexKey(expiry uint64, ns, key string) []byte {
	return expiryKey(prefixExpiry, expiry, ns, key)
}

func expiryKey(prefix string, expiry uint64, ns, key string) []byte {
	b := make([]byte, 0, len(prefix)+8+len(ns)+1+len(key))
	b = append(b, prefix...)
	b = binary.BigEndian.AppendUint64(b, expiry)
	b = append(b, ns...)
	b = append(b, '/')
	return append(b, key...)
}

// parseIndexKey splits an index key; ok is false for a malformed one.
func parseIndexKey(k []byte) (expiry uint64, ns, key string, ok bool) {
	return parseExpiryKey(prefixExpiry, k)
}

func parseExpiryKey(prefix string, k []byte) (expiry uint64, ns, key string, ok bool) {
	if !bytes.HasPrefix(k, []byte(prefix)) || len(k) < len(prefix)+8+3 {
		return 0, "", "", false
	}
	expiry = binary.BigEndian.Uint64(k[len(prefix):])
	rest := k[len(prefix)+8:]
	i := bytes.IndexByte(rest, '/')
	if i < 1 || i == len(rest)-1 {
		return 0, "", "", false
	}
	return expiry, string(rest[:i]), string(rest[i+1:]), true
}

// Opaque returns a key naming parts without revealing them: the first 160
// bits of HMAC-SHA256 over the length-prefixed parts, under a key derived from
// the store key for this namespace, as 32 characters of lowercase base32hex.
// The same parts give the same key in the same namespace of the same store,
// and unrelated keys anywhere else.
func (n *Namespace) Opaque(parts ...[]byte) string {
	mac := hmac.New(sha256.New, n.opaqueKey)
	var l [binary.MaxVarintLen64]byte
	for _, p := range parts {
		mac.Write(l[:binary.PutUvarint(l[:], uint64(len(p)))])
		mac.Write(p)
	}
	return opaqueEncoding.EncodeToString(mac.Sum(nil)[:opaqueLen])
}

// Put stores v under key, replacing any value and TTL.
func (n *Namespace) Put(ctx context.Context, key string, v []byte) error {
	return n.put(ctx, "put", key, v, 0)
}

// PutTTL stores v under key until ttl from now on the store's clock. It then
// reads as not found, and the sweep deletes it.
func (n *Namespace) PutTTL(ctx context.Context, key string, v []byte, ttl time.Duration) error {
	if ttl <= 0 {
		return fmt.Errorf("storage: put %s/%q: %w", n.name, key, ErrInvalidTTL)
	}
	return n.put(ctx, "put", key, v, ttl)
}

func (n *Namespace) put(ctx context.Context, op, key string, v []byte, ttl time.Duration) error {
	w, err := n.prepare(op, key, v, ttl)
	if err != nil {
		return err
	}
	if err := n.s.acquire(); err != nil {
		return err
	}
	defer n.s.release()
	if err := ctx.Err(); err != nil {
		return err
	}
	err = n.s.update(false, func(txn *wtxn) error { return w.apply(n.s, txn) })
	if err != nil {
		return fmt.Errorf("storage: %s %s/%q: %w", op, n.name, key, err)
	}
	return nil
}

// write is one sealed Put or PutTTL, or a Delete.
type write struct {
	ns, key string
	group   string // PutTTLGrouped: indexed by this group, not by key
	del     bool
	forget  bool // ForgetGroup: key is the group
	sealed  []byte
	expiry  uint64
	ttl     time.Duration // Badger's native TTL
}

// groupedExpiry marks a sealed expiry as indexed by group (PutTTLGrouped):
// the value has no expiry index entry of its own. Expiries are Unix
// nanoseconds, far below this bit until the year 2262 (MaxTTL is 100
// years).
const groupedExpiry = 1 << 63

// splitExpiry returns a sealed expiry's time and whether the value is
// indexed by group.
func splitExpiry(sealed uint64) (expiry uint64, grouped bool) {
	return sealed &^ groupedExpiry, sealed&groupedExpiry != 0
}

func (n *Namespace) prepare(op, key string, v []byte, ttl time.Duration) (write, error) {
	return n.prepareIn(op, "", key, ttl, v)
}

// prepareIn seals a put of the parts of v joined; a group puts it in that
// group (PutTTLGrouped).
func (n *Namespace) prepareIn(op, group, key string, ttl time.Duration, v ...[]byte) (write, error) {
	if err := validKey(key); err != nil {
		return write{}, fmt.Errorf("storage: %s %s: %w", op, n.name, err)
	}
	size := 0
	for _, p := range v {
		size += len(p)
	}
	if size > MaxValueLen {
		return write{}, fmt.Errorf("storage: %s %s/%q: value of %d bytes: %w", op, n.name, key, size, ErrTooLarge)
	}
	if ttl < 0 || ttl > MaxTTL {
		return write{}, fmt.Errorf("storage: %s %s/%q: ttl %v: %w", op, n.name, key, ttl, ErrInvalidTTL)
	}
	w := write{ns: n.name, key: key, group: group, ttl: ttl}
	if ttl > 0 {
		w.expiry = n.s.now() + uint64(ttl)
	}
	sealedExpiry := w.expiry
	if group != "" {
		sealedExpiry |= groupedExpiry
	}
	w.sealed = n.s.sealer.seal(n.name, key, sealedExpiry, v...)
	return w, nil
}

func (w write) apply(s *Store, txn *wtxn) error {
	if w.forget {
		return forgetIn(s, txn, w.ns, w.key)
	}
	dk := dataKey(w.ns, w.key)
	if w.del {
		return deleteIn(s, txn, w.ns, w.key, dk)
	}
	s.noteWrite(int64(len(dk) + len(w.sealed)))
	if len(w.sealed) >= s.valueThreshold {
		s.vlogWrites.Add(1) // Badger puts this value in the value log (syncAll)
	}
	e := badger.NewEntry(dk, w.sealed)
	if w.expiry == 0 {
		return txn.SetEntry(e)
	}
	e.ExpiresAt = w.nativeExpiry()
	if err := txn.SetEntry(e); err != nil {
		return err
	}
	if w.group != "" {
		return nil // the batch writes the group's entry (Batch.apply)
	}
	ie := badger.NewEntry(indexKey(w.expiry, w.ns, w.key), nil)
	ie.ExpiresAt = e.ExpiresAt
	return txn.SetEntry(ie)
}

// nativeExpiry is w's expiry for Badger's TTL: whole seconds of real time,
// rounded up, so the backstop never fires before the sealed expiry.
func (w write) nativeExpiry() uint64 {
	return uint64(time.Now().Add(w.ttl).Unix()) + 1
}

// deleteIn deletes a value and its expiry index entry within txn.
func deleteIn(s *Store, txn *wtxn, ns, key string, dk []byte) error {
	item, err := txn.Get(dk)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	var expiry uint64
	err = item.Value(func(v []byte) error {
		expiry, _, err = s.sealer.open(ns, key, v)
		return err
	})
	// A value indexed by group leaves the group's entry to the sweep (it
	// names the group, not the key).
	if _, grouped := splitExpiry(expiry); err == nil && expiry != 0 && !grouped {
		if err := txn.Delete(indexKey(expiry, ns, key)); err != nil {
			return err
		}
	}
	// A corrupt value is deleted too; its index entry, if any, goes at its
	// time with the sweep or Badger's TTL.
	return txn.Delete(dk)
}

// Get returns the value under key, or ErrNotFound.
func (n *Namespace) Get(ctx context.Context, key string) ([]byte, error) {
	return n.get(ctx, "get", key)
}

// Has reports whether key has a value that has not expired.
func (n *Namespace) Has(ctx context.Context, key string) (bool, error) {
	_, err := n.get(ctx, "has", key)
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

// HasKey reports whether key holds a value, without reading the value:
// a lookup in Badger's memtables and table indexes, much cheaper than Has
// when the value lives in the value log. Unlike Has it can't see a value's
// own expiry: a value expired on the store's clock that the sweep has not
// deleted yet still counts, and so does one that fails to open. Use it
// where the caller knows the value's age itself.
func (n *Namespace) HasKey(ctx context.Context, key string) (bool, error) {
	if err := validKey(key); err != nil {
		return false, fmt.Errorf("storage: has key %s: %w", n.name, err)
	}
	if err := n.s.acquire(); err != nil {
		return false, err
	}
	defer n.s.release()
	if err := ctx.Err(); err != nil {
		return false, err
	}
	err := n.s.db.View(func(txn *badger.Txn) error {
		_, err := txn.Get(dataKey(n.name, key))
		return err
	})
	if errors.Is(err, badger.ErrKeyNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("storage: has key %s/%q: %w", n.name, key, err)
	}
	return true, nil
}

func (n *Namespace) get(ctx context.Context, op, key string) ([]byte, error) {
	if err := validKey(key); err != nil {
		return nil, fmt.Errorf("storage: %s %s: %w", op, n.name, err)
	}
	if err := n.s.acquire(); err != nil {
		return nil, err
	}
	defer n.s.release()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var (
		value  []byte
		expiry uint64
	)
	err := n.s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(dataKey(n.name, key))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return ErrNotFound
		}
		if err != nil {
			return err
		}
		return item.Value(func(v []byte) error {
			expiry, value, err = n.s.sealer.open(n.name, key, v)
			return err
		})
	})
	if err == nil && expired(expiry, n.s.now()) {
		n.s.kickSweep()
		err = ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("storage: %s %s/%q: %w", op, n.name, key, err)
	}
	return value, nil
}

// Delete deletes key's value. Deleting a missing key is not an error.
func (n *Namespace) Delete(ctx context.Context, key string) error {
	if err := validKey(key); err != nil {
		return fmt.Errorf("storage: delete %s: %w", n.name, err)
	}
	if err := n.s.acquire(); err != nil {
		return err
	}
	defer n.s.release()
	if err := ctx.Err(); err != nil {
		return err
	}
	dk := dataKey(n.name, key)
	err := n.s.update(false, func(txn *wtxn) error { return deleteIn(n.s, txn, n.name, key, dk) })
	if err != nil {
		return fmt.Errorf("storage: delete %s/%q: %w", n.name, key, err)
	}
	return nil
}

// ListOptions selects what List visits.
type ListOptions struct {
	// Prefix limits List to keys that start with it.
	Prefix string
	// StartAfter resumes a listing after this key (exclusive): pass the last
	// key of the previous page.
	StartAfter string
	// Limit is the most entries List visits; 0 means no limit.
	Limit int
	// Corrupt, when set, makes List go past a value that fails to open:
	// it calls Corrupt with the value's key (not counted by Limit) and
	// goes on. An error from Corrupt stops List and is returned as is.
	Corrupt func(key string) error
}

// List calls fn for each unexpired entry that opts selects, in byte-wise key
// order, from one consistent snapshot. The value passed to fn is fn's to
// keep. An error from fn stops List and is returned as is. fn may use the
// store (for example Delete the key it was given) but must not Close it.
//
// A value that fails to open stops List with an error wrapping ErrCorrupt and
// naming the key, which the caller can Delete, unless opts.Corrupt is set.
func (n *Namespace) List(ctx context.Context, opts ListOptions, fn func(key string, v []byte) error) error {
	if len(opts.Prefix) > MaxKeyLen || len(opts.StartAfter) > MaxKeyLen {
		return fmt.Errorf("storage: list %s: %w", n.name, ErrInvalidKey)
	}
	if opts.Limit < 0 {
		return fmt.Errorf("storage: list %s: negative limit %d", n.name, opts.Limit)
	}
	if err := n.s.acquire(); err != nil {
		return err
	}
	defer n.s.release()

	nsPrefix := dataKey(n.name, "")
	prefix := dataKey(n.name, opts.Prefix)
	seek := prefix
	if opts.StartAfter != "" {
		after := append(dataKey(n.name, opts.StartAfter), 0)
		if bytes.Compare(after, seek) > 0 {
			seek = after
		}
	}
	now := n.s.now()
	txn := n.s.db.NewTransaction(false)
	defer txn.Discard()
	it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
	defer it.Close()
	visited := 0
	for it.Seek(seek); it.ValidForPrefix(prefix); it.Next() {
		if opts.Limit > 0 && visited >= opts.Limit {
			break
		}
		if err := n.s.alive(ctx); err != nil {
			return err
		}
		item := it.Item()
		key := string(item.Key()[len(nsPrefix):])
		var (
			expiry uint64
			value  []byte
		)
		err := item.Value(func(v []byte) error {
			var err error
			expiry, value, err = n.s.sealer.open(n.name, key, v)
			return err
		})
		if opts.Corrupt != nil && errors.Is(err, ErrCorrupt) {
			if err := opts.Corrupt(key); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("storage: list %s: key %q: %w", n.name, key, err)
		}
		if expired(expiry, now) {
			n.s.kickSweep()
			continue
		}
		visited++
		if err := fn(key, value); err != nil {
			return err
		}
	}
	return nil
}

// DeleteAll deletes every value in the namespace and their expiry index
// entries, and returns how many values it deleted. It is not atomic: values
// written to the namespace meanwhile may survive.
func (n *Namespace) DeleteAll(ctx context.Context) (int, error) {
	if err := n.s.acquire(); err != nil {
		return 0, err
	}
	defer n.s.release()
	deleted, err := n.s.deletePrefix(ctx, dataKey(n.name, ""), nil)
	if err != nil {
		return deleted, fmt.Errorf("storage: delete all %s: %w", n.name, err)
	}
	_, err = n.s.deletePrefix(ctx, []byte(prefixExpiry), func(k []byte) bool {
		_, ns, _, ok := parseIndexKey(k)
		return ok && ns == n.name
	})
	if err == nil {
		_, err = n.s.deletePrefix(ctx, []byte(prefixGroup), func(k []byte) bool {
			_, ns, _, ok := parseGroupKey(k)
			return ok && ns == n.name
		})
	}
	if err == nil {
		_, err = n.s.deletePrefix(ctx, []byte(prefixDue+n.name+"/"), nil)
	}
	if err != nil {
		return deleted, fmt.Errorf("storage: delete all %s: index: %w", n.name, err)
	}
	n.s.log.Debug("namespace wiped", "namespace", n.name, "deleted", deleted)
	n.s.kickGC()
	return deleted, nil
}

// deletePrefix deletes the keys under prefix that match (all with a nil
// match) in transactions of at most chunk keys, and returns how many it
// deleted.
func (s *Store) deletePrefix(ctx context.Context, prefix []byte, match func([]byte) bool) (int, error) {
	deleted := 0
	seek := prefix
	for {
		if err := s.alive(ctx); err != nil {
			return deleted, err
		}
		var keys [][]byte
		done := true
		err := s.db.View(func(txn *badger.Txn) error {
			it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
			defer it.Close()
			scanned := 0
			for it.Seek(seek); it.ValidForPrefix(prefix); it.Next() {
				if len(keys) == chunk || scanned == 8*chunk {
					done = false
					break
				}
				scanned++
				k := it.Item().KeyCopy(nil)
				seek = append(k[:len(k):len(k)], 0)
				if match == nil || match(k) {
					keys = append(keys, k)
				}
			}
			return nil
		})
		if err != nil {
			return deleted, err
		}
		if len(keys) > 0 {
			err = s.update(true, func(txn *wtxn) error {
				for _, k := range keys {
					if err := txn.Delete(k); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				return deleted, err
			}
			deleted += len(keys)
		}
		if done {
			return deleted, nil
		}
	}
}

// String returns the namespace's name.
func (n *Namespace) String() string { return n.name }
