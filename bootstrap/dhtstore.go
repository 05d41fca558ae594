package bootstrap

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	ds "github.com/ipfs/go-datastore"
	dssync "github.com/ipfs/go-datastore/sync"
)

// DefaultDHTMaxBytes bounds the DHT value records a relay keeps by
// default (Config.DHTMaxBytes): about 18,000 contact records of 1.8 KB.
const DefaultDHTMaxBytes = 32 << 20

// errDHTFull refuses a new record once the relay's DHT store is full.
var errDHTFull = errors.New("dht record store full")

// capStore is the datastore of a relay's DHT value records (the signed
// contact records devices publish): in memory, as kad-dht's own default,
// but bounded. Records are validated before they get here, yet anyone can
// make accounts, so a flood of valid records would otherwise grow the
// relay's memory without end. Once max bytes are held a record under a new
// key is refused (the put fails; its publisher's other servers keep it)
// while known keys are still updated; kad-dht's value GC deletes records
// 36 hours after they were put, which frees room.
type capStore struct {
	ds.Batching
	log *slog.Logger
	max int64

	mu    sync.Mutex
	size  map[ds.Key]int
	total int64
	full  bool // the last new key was refused (logged once per episode)
}

func newCapStore(max int64, log *slog.Logger) *capStore {
	return &capStore{Batching: dssync.MutexWrap(ds.NewMapDatastore()), log: log, max: max, size: map[ds.Key]int{}}
}

// Put stores value under key if it fits.
func (s *capStore) Put(ctx context.Context, key ds.Key, value []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	old, known := s.size[key]
	if s.total-int64(old)+int64(len(value)) > s.max {
		if !known && !s.full {
			s.log.Warn("DHT record store full: new records refused until old ones expire (dht_max_bytes)", "bytes", s.total)
		}
		s.full = s.full || !known
		return fmt.Errorf("%w: %d of %d bytes held", errDHTFull, s.total, s.max)
	}
	if err := s.Batching.Put(ctx, key, value); err != nil {
		return err
	}
	s.total += int64(len(value) - old)
	s.size[key] = len(value)
	if !known {
		s.full = false
	}
	return nil
}

// Delete removes key.
func (s *capStore) Delete(ctx context.Context, key ds.Key) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.Batching.Delete(ctx, key); err != nil {
		return err
	}
	s.total -= int64(s.size[key])
	delete(s.size, key)
	return nil
}

// Batch returns a batch whose puts and deletes go through the bound.
func (s *capStore) Batch(context.Context) (ds.Batch, error) { return ds.NewBasicBatch(s), nil }

// Bytes returns the bytes of records held.
func (s *capStore) Bytes() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.total
}
