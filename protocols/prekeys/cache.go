package prekeys

import (
	"context"
)

// cacheSize bounds the accounts whose records the relay keeps decoded in
// memory (about 3.5 KB each).
const cacheSize = 1024

// cached is an account's record and counters as last read or written,
// and its bundle without one-time prekeys, encoded once. Entries are
// read and changed only with the account's lock held, so they always
// match the store.
type cached struct {
	acct       *storedAccount
	c          counters
	lastResort []byte // encoded bundle with the last-resort keys only; nil until needed
}

// cachedAccount returns the account's cached record, reading the store on
// a miss; nil if the relay holds nothing for it. Called with the
// account's lock held.
func (s *Service) cachedAccount(ctx context.Context, k accountKeys) (*cached, error) {
	s.cacheMu.Lock()
	e := s.cache[k.base]
	s.cacheMu.Unlock()
	if e != nil {
		return e, nil
	}
	acct, c, err := s.load(ctx, k)
	if err != nil || acct == nil {
		return nil, err
	}
	e = &cached{acct: acct, c: c}
	s.cacheMu.Lock()
	defer s.cacheMu.Unlock()
	if len(s.cache) >= cacheSize {
		for key := range s.cache { // evict an arbitrary entry
			delete(s.cache, key)
			break
		}
	}
	s.cache[k.base] = e
	return e, nil
}

// forget drops the account's cache entry, after any change other than a
// fetch's. Called with the account's lock held.
func (s *Service) forget(k accountKeys) {
	s.cacheMu.Lock()
	defer s.cacheMu.Unlock()
	delete(s.cache, k.base)
}
