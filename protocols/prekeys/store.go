package prekeys

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/storage"
)

// Relay store layout, in namespace "prekeys". <a> is Opaque(account's
// Ed25519 key): 32 characters that reveal nothing without the store key.
//
//	<a>/a         StoredAccount: identity, signed prekey, last-resort prekey
//	<a>/c         StoredCounters: highest one-time id accepted, counts
//	<a>/o/<id>    StoredPrekey: a one-time X25519 prekey
//	<a>/q/<id>    StoredPrekey: a one-time ML-KEM-768 prekey
//	n             uvarint: accounts stored
//
// <id> is 8 lowercase hex digits, so listing a prefix yields the lowest id
// first.
const accountsKey = "n"

type accountKeys struct{ base string }

func (s *Service) keys(account []byte) accountKeys { return accountKeys{s.ns.Opaque(account)} }

func (k accountKeys) prefix() string        { return k.base + "/" }
func (k accountKeys) account() string       { return k.base + "/a" }
func (k accountKeys) counters() string      { return k.base + "/c" }
func (k accountKeys) oneTimePrefix() string { return k.base + "/o/" }
func (k accountKeys) pqPrefix() string      { return k.base + "/q/" }
func (k accountKeys) oneTime(id e2ee.PrekeyID) string {
	return k.oneTimePrefix() + fmt.Sprintf("%08x", uint32(id))
}
func (k accountKeys) pq(id e2ee.PrekeyID) string {
	return k.pqPrefix() + fmt.Sprintf("%08x", uint32(id))
}

// idFromKey parses the id at the end of a one-time prekey's key.
func idFromKey(key string) (e2ee.PrekeyID, bool) {
	i := strings.LastIndexByte(key, '/')
	if i < 0 || len(key)-i-1 != 8 {
		return 0, false
	}
	v, err := strconv.ParseUint(key[i+1:], 16, 32)
	if err != nil || v == 0 {
		return 0, false
	}
	return e2ee.PrekeyID(v), true
}

// lock serializes everything that touches one account.
func (s *Service) lock(k accountKeys) *sync.Mutex {
	var h uint32 = 2166136261
	for i := 0; i < len(k.base); i++ {
		h = (h ^ uint32(k.base[i])) * 16777619
	}
	l := &s.locks[h%uint32(len(s.locks))]
	l.Lock()
	return l
}

// load reads an account's record and counters; acct is nil if the relay
// holds nothing for it.
func (s *Service) load(ctx context.Context, k accountKeys) (acct *storedAccount, c counters, err error) {
	b, err := s.ns.Get(ctx, k.account())
	if errors.Is(err, storage.ErrNotFound) {
		return nil, counters{}, nil
	}
	if err != nil {
		return nil, counters{}, err
	}
	if acct, err = decodeStoredAccount(b); err != nil {
		return nil, counters{}, err
	}
	b, err = s.ns.Get(ctx, k.counters())
	switch {
	case errors.Is(err, storage.ErrNotFound):
		return acct, counters{}, nil
	case err != nil:
		return nil, counters{}, err
	}
	c, err = decodeCounters(b)
	return acct, c, err
}

// first returns the key and value of the lowest-id entry under prefix.
func (s *Service) first(ctx context.Context, prefix string) (key string, v []byte, err error) {
	err = s.ns.List(ctx, storage.ListOptions{Prefix: prefix, Limit: 1}, func(k string, val []byte) error {
		key, v = k, val
		return nil
	})
	return key, v, err
}

// ids lists the ids held under prefix, ascending.
func (s *Service) ids(ctx context.Context, prefix string) ([]e2ee.PrekeyID, error) {
	var out []e2ee.PrekeyID
	err := s.ns.List(ctx, storage.ListOptions{Prefix: prefix}, func(k string, _ []byte) error {
		if id, ok := idFromKey(k); ok {
			out = append(out, id)
		}
		return nil
	})
	return out, err
}

// status reports what the relay holds for the account. Called with the
// account's lock held.
func (s *Service) status(ctx context.Context, k accountKeys, acct *storedAccount, c counters) (*Status, error) {
	st := &Status{
		SignedPrekey:        acct.signed.ID,
		SignedPrekeyCreated: acct.signed.Created,
		LastResort:          acct.lastResort.ID,
		LastResortCreated:   acct.lastResort.Created,
		MaxOneTimeID:        c.maxID,
	}
	var err error
	if st.OneTimeIDs, err = s.ids(ctx, k.oneTimePrefix()); err != nil {
		return nil, err
	}
	if st.PQOneTimeIDs, err = s.ids(ctx, k.pqPrefix()); err != nil {
		return nil, err
	}
	return st, nil
}

// takeOneTime removes the lowest one-time prekey of each kind, durably,
// and returns them (nil where none was left) and the new counters. Called
// with the account's lock held.
func (s *Service) takeOneTime(ctx context.Context, k accountKeys, c counters) (x *e2ee.DHPrekey, q *e2ee.KEMPrekey, next counters, err error) {
	b := s.store.NewBatch()
	next = c
	if c.oneTime > 0 {
		key, v, err := s.first(ctx, k.oneTimePrefix())
		if err != nil {
			return nil, nil, c, err
		}
		if key == "" {
			next.oneTime = 0 // heal a count that drifted
		} else {
			next.oneTime--
			if err := b.Delete(s.ns, key); err != nil {
				return nil, nil, c, err
			}
			if m, err := decodeStoredPrekey(v); err == nil {
				if p, err := dhFromStored(m, true); err == nil {
					x = &p
				}
			}
			if x == nil {
				s.log.Warn("dropping unreadable one-time prekey", "key", key)
			}
		}
	}
	if c.pqs > 0 {
		key, v, err := s.first(ctx, k.pqPrefix())
		if err != nil {
			return nil, nil, c, err
		}
		if key == "" {
			next.pqs = 0
		} else {
			next.pqs--
			if err := b.Delete(s.ns, key); err != nil {
				return nil, nil, c, err
			}
			if m, err := decodeStoredPrekey(v); err == nil {
				if p, err := kemFromStored(m, false); err == nil {
					q = &p
				}
			}
			if q == nil {
				s.log.Warn("dropping unreadable one-time pq prekey", "key", key)
			}
		}
	}
	if next == c {
		return nil, nil, c, nil
	}
	if err := b.Put(s.ns, k.counters(), next.encode()); err != nil {
		return nil, nil, c, err
	}
	// Synced before the bundle leaves: a one-time prekey is handed out
	// once, even across a crash.
	if err := b.Commit(ctx); err != nil {
		return nil, nil, c, err
	}
	return x, q, next, nil
}

// cmpPrekey orders prekeys by creation time, then id.
func cmpPrekey(aCreated, bCreated int64, aID, bID e2ee.PrekeyID) int {
	if c := cmp.Compare(aCreated, bCreated); c != 0 {
		return c
	}
	return cmp.Compare(aID, bID)
}

// applyUpload stores what is new in up for the account (identity already
// authenticated and equal to up.Identity). Called with the account's lock
// held. It returns the status and CodeOK, or CodeStale / CodeQuota (with
// the status, nothing changed), or an error.
func (s *Service) applyUpload(ctx context.Context, k accountKeys, up *e2ee.Upload) (*Status, Code, error) {
	acct, c, err := s.load(ctx, k)
	if err != nil {
		return nil, CodeUnavailable, err
	}
	isNew := acct == nil
	var replaceSigned, replaceLR, stale bool
	if isNew {
		replaceSigned, replaceLR = true, true
		acct = &storedAccount{identity: up.Identity, identityWire: up.Identity.Marshal()}
	} else {
		cs := cmpPrekey(up.SignedPrekey.Created.Unix(), acct.signed.Created.Unix(), up.SignedPrekey.ID, acct.signed.ID)
		cl := cmpPrekey(up.LastResort.Created.Unix(), acct.lastResort.Created.Unix(), up.LastResort.ID, acct.lastResort.ID)
		replaceSigned, replaceLR = cs > 0, cl > 0
		stale = cs < 0 || cl < 0
	}
	var addX []e2ee.DHPrekey
	for _, p := range up.OneTime {
		if p.ID > c.maxID {
			addX = append(addX, p)
		}
	}
	var addQ []e2ee.KEMPrekey
	for _, p := range up.PQOneTime {
		if p.ID > c.maxID {
			addQ = append(addQ, p)
		}
	}
	report := func() (*Status, error) { return s.status(ctx, k, acct, c) }
	if c.oneTime+len(addX) > e2ee.MaxOneTimePrekeys || c.pqs+len(addQ) > e2ee.MaxOneTimePrekeys {
		st, err := report()
		return st, CodeQuota, err
	}
	if !replaceSigned && !replaceLR && len(addX) == 0 && len(addQ) == 0 {
		st, err := report()
		if stale {
			return st, CodeStale, err
		}
		return st, CodeOK, err
	}
	if isNew {
		s.countMu.Lock()
		defer s.countMu.Unlock()
		if s.accounts >= s.cfg.maxAccounts {
			return &Status{}, CodeQuota, nil
		}
	}

	b := s.store.NewBatch()
	if replaceSigned {
		acct.signed = up.SignedPrekey
	}
	if replaceLR {
		acct.lastResort = up.LastResort
	}
	if replaceSigned || replaceLR {
		if err := b.Put(s.ns, k.account(), acct.encode()); err != nil {
			return nil, CodeUnavailable, err
		}
	}
	next := c
	for _, p := range addX {
		next.maxID = max(next.maxID, p.ID)
		if err := b.Put(s.ns, k.oneTime(p.ID), marshal(storedFromDH(p))); err != nil {
			return nil, CodeUnavailable, err
		}
	}
	for _, p := range addQ {
		next.maxID = max(next.maxID, p.ID)
		if err := b.Put(s.ns, k.pq(p.ID), marshal(storedFromKEM(p))); err != nil {
			return nil, CodeUnavailable, err
		}
	}
	next.oneTime += len(addX)
	next.pqs += len(addQ)
	if next != c || isNew {
		if err := b.Put(s.ns, k.counters(), next.encode()); err != nil {
			return nil, CodeUnavailable, err
		}
	}
	if isNew {
		if err := b.Put(s.ns, accountsKey, binary.AppendUvarint(nil, uint64(s.accounts+1))); err != nil {
			return nil, CodeUnavailable, err
		}
	}
	if err := b.Commit(ctx); err != nil {
		return nil, CodeUnavailable, err
	}
	if isNew {
		s.accounts++
		s.tr.accounts(s.accounts)
	}
	s.tr.added(len(addX), len(addQ))
	c = next
	st, err := report()
	if err != nil {
		return nil, CodeUnavailable, err
	}
	st.AddedOneTime, st.AddedPQOneTime = len(addX), len(addQ)
	st.ReplacedSigned, st.ReplacedLastResort = replaceSigned, replaceLR
	return st, CodeOK, nil
}

// purge deletes everything the relay holds for the account, in one synced
// batch, and returns how many records it deleted. Called with the
// account's lock held.
func (s *Service) purge(ctx context.Context, k accountKeys) (int, error) {
	var keys []string
	err := s.ns.List(ctx, storage.ListOptions{Prefix: k.prefix()}, func(key string, _ []byte) error {
		keys = append(keys, key)
		return nil
	})
	if err != nil {
		return 0, err
	}
	if len(keys) == 0 {
		return 0, nil
	}
	existed := slices.Contains(keys, k.account())
	b := s.store.NewBatch()
	for _, key := range keys {
		if err := b.Delete(s.ns, key); err != nil {
			return 0, err
		}
	}
	if existed {
		s.countMu.Lock()
		defer s.countMu.Unlock()
		n := max(s.accounts-1, 0)
		if err := b.Put(s.ns, accountsKey, binary.AppendUvarint(nil, uint64(n))); err != nil {
			return 0, err
		}
		if err := b.Commit(ctx); err != nil {
			return 0, err
		}
		s.accounts = n
		s.tr.accounts(n)
		return len(keys), nil
	}
	if err := b.Commit(ctx); err != nil {
		return 0, err
	}
	return len(keys), nil
}

// loadAccountCount reads the stored account count.
func loadAccountCount(ctx context.Context, ns *storage.Namespace) (int, error) {
	b, err := ns.Get(ctx, accountsKey)
	if errors.Is(err, storage.ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	return decodeAccountCount(b)
}

func decodeAccountCount(b []byte) (int, error) {
	n, m := binary.Uvarint(b)
	if m <= 0 || m != len(b) {
		return 0, fmt.Errorf("prekeys: stored account count: %w", ErrMalformed)
	}
	return int(min(n, 1<<31)), nil
}
