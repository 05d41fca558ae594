package storage

import (
	"cmp"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"

	badger "github.com/dgraph-io/badger/v4"
)

// The journal is the store's own commit log, kept by a store that doesn't
// sync every write (WithSyncWrites(false)) so that Sync costs one write()
// and one fdatasync of a preallocated file instead of Badger's sync of its
// memory-mapped logs (docs/storage.md, "The journal").
//
// Every write transaction, as it commits, takes the next sequence number,
// writes it under journalSeqKey in the same transaction, and leaves a
// record of its writes (keys and the values as stored, sealed) in memory;
// seq order is Badger's commit order, because both are taken under one
// lock. Sync, while nothing since Badger's last full sync went to the
// value log, writes the records up to the last seq handed out and syncs the
// journal file, and Badger's logs stay unsynced. Otherwise (and when the
// file is full) Sync makes Badger durable as it always did and empties the
// journal: a checkpoint.
//
// After a crash, Badger comes back with a prefix of its commits (its
// logs are checksummed and replayed in order), the last of them naming its
// seq; Open replays the journal's records above that seq, in order, and
// makes them durable in Badger before the journal is written again.
// Records of an aborted transaction (a conflict) are never written.
//
// File layout: records back to back from offset 0, each
//
//	u32le len(body) | u32le CRC-32C(body) | body
//	body: u64le chain | u64le seq | uvarint n | n × op
//	op:   u8 kind (0 set, 1 delete) | uvarint len(key) | key
//	      set only: uvarint len(value) | value | u64le expiresAt | u8 userMeta
//
// The journal in effect is the chain of records from offset 0 that all
// carry the first record's chain id, with increasing seqs and good
// checksums: each checkpoint and each Open starts a new chain with a random
// id at offset 0, so what an older chain left further on is never read as
// part of a newer one. The file is written with zeros to its full size
// once, so a sync never has to allocate blocks.
const (
	journalFile    = "kinmesh.journal"
	journalSeqKey  = "m/journal"
	journalHead    = 8
	journalRecHead = 16                  // chain, seq
	maxJournalBody = MaxValueLen + 1<<20 // a transaction fits in far less (storage.Batch)
)

var (
	errJournalFull = errors.New("storage: journal full")
	castagnoli     = crc32.MakeTable(crc32.Castagnoli)
)

// jop is one write of a transaction.
type jop struct {
	key, value []byte
	del        bool
	expires    uint64
	meta       byte
}

// jrecord is a transaction's record until it is written or checkpointed.
type jrecord struct {
	seq   uint64
	ops   []jop
	state atomic.Int32 // 0 committing, 1 committed, 2 aborted
}

type journal struct {
	f    *os.File
	size int64

	mu      sync.Mutex  // guards seq, pending and held; held across each commit's CommitWith
	seq     uint64      // the last seq handed out
	pending []*jrecord  // not yet written, in seq order
	held    int64       // bytes of keys and values pending holds
	flush   atomic.Bool // a background Sync is on its way (Store.commitWith)

	cmu  sync.Mutex // with cond: records resolving
	cond *sync.Cond

	wmu     sync.Mutex // one write or checkpoint at a time; guards what follows
	off     int64      // where the next record goes
	chain   uint64     // the chain id of the records being written
	written uint64     // every record up to this seq is written or in a synced Badger
	buf     []byte
	synced  func(name string) // test hook: the journal was synced
}

// wtxn is a write transaction that records its writes for the journal.
type wtxn struct {
	*badger.Txn
	ops      []jop
	recorded bool
}

func (s *Store) newWTxn() *wtxn {
	return &wtxn{Txn: s.db.NewTransaction(true), recorded: s.j != nil}
}

// SetEntry sets e in the transaction (and its record).
func (w *wtxn) SetEntry(e *badger.Entry) error {
	if err := w.Txn.SetEntry(e); err != nil {
		return err
	}
	if w.recorded {
		w.ops = append(w.ops, jop{key: e.Key, value: e.Value, expires: e.ExpiresAt, meta: e.UserMeta})
	}
	return nil
}

// Delete deletes key in the transaction (and its record).
func (w *wtxn) Delete(key []byte) error {
	if err := w.Txn.Delete(key); err != nil {
		return err
	}
	if w.recorded {
		w.ops = append(w.ops, jop{key: key, del: true})
	}
	return nil
}

// commitWith commits w; done gets the outcome, possibly before
// commitWith returns. With a journal the transaction takes its seq and
// record first.
func (s *Store) commitWith(w *wtxn, done func(error)) {
	if s.j == nil {
		w.Txn.CommitWith(done)
		return
	}
	s.j.commit(w, done)
	s.flushIfCrowded()
}

// commit commits w and waits for the outcome.
func (s *Store) commit(w *wtxn) error {
	if s.j == nil {
		return w.Txn.Commit()
	}
	ch := make(chan error, 1)
	s.j.commit(w, func(err error) { ch <- err })
	s.flushIfCrowded()
	return <-ch
}

// flushIfCrowded syncs in the background when the journal's pending
// records hold too much (journal.crowded), one such Sync at a time.
func (s *Store) flushIfCrowded() {
	if !s.j.crowded() || !s.j.flush.CompareAndSwap(false, true) {
		return
	}
	if err := s.acquire(); err != nil {
		s.j.flush.Store(false)
		return
	}
	go func() {
		defer s.release()
		defer s.j.flush.Store(false)
		if err := s.syncAll(); err != nil {
			s.log.Warn("syncing the journal failed", "err", err)
		}
	}()
}

func (j *journal) commit(w *wtxn, done func(error)) {
	j.mu.Lock()
	defer j.mu.Unlock()
	seq := j.seq + 1
	if err := w.Txn.SetEntry(badger.NewEntry([]byte(journalSeqKey), binary.BigEndian.AppendUint64(nil, seq))); err != nil {
		go done(err) // not under j.mu
		return
	}
	j.seq = seq
	r := &jrecord{seq: seq, ops: w.ops}
	j.pending = append(j.pending, r)
	for _, op := range w.ops {
		j.held += int64(len(op.key) + len(op.value))
	}
	// Badger takes the commit's place in its order inside CommitWith,
	// under j.mu like the seq. done may run before CommitWith returns
	// (a refused transaction): resolve takes only cmu.
	w.Txn.CommitWith(func(err error) {
		j.resolve(r, err == nil)
		done(err)
	})
}

func (j *journal) resolve(r *jrecord, ok bool) {
	st := int32(2)
	if ok {
		st = 1
	}
	j.cmu.Lock()
	r.state.Store(st)
	j.cond.Broadcast()
	j.cmu.Unlock()
}

// last returns the last seq handed out: what a Sync starting now covers.
func (j *journal) last() uint64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.seq
}

// take returns the pending records up to seq target, once each has
// resolved. Called with wmu held.
func (j *journal) take(target uint64) []*jrecord {
	j.mu.Lock()
	n, _ := slices.BinarySearchFunc(j.pending, target+1, func(r *jrecord, seq uint64) int { return cmp.Compare(r.seq, seq) })
	recs := j.pending[:n:n]
	j.mu.Unlock()
	j.cmu.Lock()
	for _, r := range recs {
		for r.state.Load() == 0 {
			j.cond.Wait()
		}
	}
	j.cmu.Unlock()
	return recs
}

// drop forgets the first n pending records (written or checkpointed).
func (j *journal) drop(n int) {
	j.mu.Lock()
	for _, r := range j.pending[:n] {
		for _, op := range r.ops {
			j.held -= int64(len(op.key) + len(op.value))
		}
	}
	clear(j.pending[:n])
	j.pending = j.pending[n:]
	j.mu.Unlock()
}

// crowded reports whether the records waiting for a Sync hold more than
// a quarter of the journal's size: writes that nobody syncs (CommitUnsynced,
// Namespace.Put on such a store) would otherwise pile up in memory.
func (j *journal) crowded() bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.held > j.size/4
}

// sync writes the records up to seq target and syncs the file. It
// returns errJournalFull, having written nothing, when they don't fit or
// are many (maxJournalSync).
func (j *journal) sync(target uint64) error {
	j.wmu.Lock()
	defer j.wmu.Unlock()
	if target <= j.written {
		return nil // a Sync that ran meanwhile wrote them
	}
	recs := j.take(target)
	if len(recs) == 0 {
		return nil
	}
	if size := recordsSize(recs); size > maxJournalSync || j.off+size > j.size {
		// Large: a full sync costs about what writing it again would
		// (its cost is the bytes, not the call), and writes it once.
		return errJournalFull
	}
	j.buf = j.buf[:0]
	for _, r := range recs {
		if r.state.Load() == 1 {
			j.buf = appendRecord(j.buf, j.chain, r.seq, r.ops)
		}
	}
	if j.off+int64(len(j.buf)) > j.size {
		return errJournalFull
	}
	if len(j.buf) > 0 {
		if _, err := j.f.WriteAt(j.buf, j.off); err != nil {
			return fmt.Errorf("write journal: %w", err)
		}
		if err := datasync(j.f); err != nil {
			return fmt.Errorf("sync journal: %w", err)
		}
		j.off += int64(len(j.buf))
		if j.synced != nil {
			j.synced(journalFile)
		}
	}
	j.written = target
	j.drop(len(recs))
	if cap(j.buf) > 4<<20 {
		j.buf = nil // a big batch's buffer is not kept
	}
	return nil
}

// maxJournalSync is the most a Sync writes to the journal; more goes
// through Badger (a checkpoint).
const maxJournalSync = 128 << 10

// recordsSize is about what the committed ones of recs take in the file.
func recordsSize(recs []*jrecord) int64 {
	var n int64
	for _, r := range recs {
		if r.state.Load() != 1 {
			continue
		}
		n += journalHead + journalRecHead + 10
		for _, op := range r.ops {
			n += int64(len(op.key)+len(op.value)) + 20
		}
	}
	return n
}

// checkpoint runs full, which makes every write Badger has taken durable
// in Badger's own files, once the records up to seq target have resolved
// (Badger has taken them); then the journal starts a new chain at offset
// 0. Records after target stay pending: they go to the new chain.
func (j *journal) checkpoint(target uint64, full func() error) error {
	j.wmu.Lock()
	defer j.wmu.Unlock()
	recs := j.take(target)
	if err := full(); err != nil {
		return err
	}
	j.written = max(j.written, target)
	j.drop(len(recs))
	j.off, j.chain = 0, newChain()
	return nil
}

func newChain() uint64 {
	var b [8]byte
	rand.Read(b[:])
	return binary.LittleEndian.Uint64(b[:])
}

func (j *journal) close() error { return j.f.Close() }

// appendRecord appends the record of one transaction to b.
func appendRecord(b []byte, chain, seq uint64, ops []jop) []byte {
	start := len(b)
	b = append(b, make([]byte, journalHead)...)
	b = binary.LittleEndian.AppendUint64(b, chain)
	b = binary.LittleEndian.AppendUint64(b, seq)
	b = binary.AppendUvarint(b, uint64(len(ops)))
	for _, op := range ops {
		if op.del {
			b = append(b, 1)
			b = binary.AppendUvarint(b, uint64(len(op.key)))
			b = append(b, op.key...)
			continue
		}
		b = append(b, 0)
		b = binary.AppendUvarint(b, uint64(len(op.key)))
		b = append(b, op.key...)
		b = binary.AppendUvarint(b, uint64(len(op.value)))
		b = append(b, op.value...)
		b = binary.LittleEndian.AppendUint64(b, op.expires)
		b = append(b, op.meta)
	}
	body := b[start+journalHead:]
	binary.LittleEndian.PutUint32(b[start:], uint32(len(body)))
	binary.LittleEndian.PutUint32(b[start+4:], crc32.Checksum(body, castagnoli))
	return b
}

// readRecord decodes the record at the start of b: its chain, seq and
// ops (aliasing b), and its length. ok is false for anything that is not
// a whole, intact record (zeros, a torn write, garbage).
func readRecord(b []byte) (chain, seq uint64, ops []jop, n int, ok bool) {
	if len(b) < journalHead {
		return 0, 0, nil, 0, false
	}
	size := binary.LittleEndian.Uint32(b)
	if size < journalRecHead+1 || size > maxJournalBody || int64(size) > int64(len(b)-journalHead) {
		return 0, 0, nil, 0, false
	}
	body := b[journalHead : journalHead+int(size)]
	if crc32.Checksum(body, castagnoli) != binary.LittleEndian.Uint32(b[4:]) {
		return 0, 0, nil, 0, false
	}
	chain = binary.LittleEndian.Uint64(body)
	seq = binary.LittleEndian.Uint64(body[8:])
	p := body[journalRecHead:]
	count, k := binary.Uvarint(p)
	if k <= 0 || count > uint64(len(p)) {
		return 0, 0, nil, 0, false
	}
	p = p[k:]
	bytesOf := func() ([]byte, bool) {
		l, k := binary.Uvarint(p)
		if k <= 0 || l > uint64(len(p)-k) {
			return nil, false
		}
		v := p[k : k+int(l)]
		p = p[k+int(l):]
		return v, true
	}
	ops = make([]jop, 0, count)
	for range count {
		if len(p) < 1 {
			return 0, 0, nil, 0, false
		}
		kind := p[0]
		p = p[1:]
		var op jop
		var good bool
		if op.key, good = bytesOf(); !good || len(op.key) == 0 {
			return 0, 0, nil, 0, false
		}
		switch kind {
		case 1:
			op.del = true
		case 0:
			if op.value, good = bytesOf(); !good || len(p) < 9 {
				return 0, 0, nil, 0, false
			}
			op.expires = binary.LittleEndian.Uint64(p)
			op.meta = p[8]
			p = p[9:]
		default:
			return 0, 0, nil, 0, false
		}
		ops = append(ops, op)
	}
	if len(p) != 0 {
		return 0, 0, nil, 0, false
	}
	return chain, seq, ops, journalHead + int(size), true
}

// eachInChain calls fn with the records of the journal in effect, read
// from r (size bytes) one at a time: from offset 0 while they share the
// first one's chain id and their seqs increase. ops alias a buffer reused
// for the next record.
func eachInChain(r io.ReaderAt, size int64, fn func(seq uint64, ops []jop) error) error {
	var chain, last uint64
	var buf []byte
	var head [journalHead]byte
	for off, first := int64(0), true; off+journalHead <= size; first = false {
		if _, err := r.ReadAt(head[:], off); err != nil {
			return fmt.Errorf("journal: read: %w", err)
		}
		n := int64(binary.LittleEndian.Uint32(head[:]))
		if n < journalRecHead+1 || n > maxJournalBody || off+journalHead+n > size {
			return nil
		}
		buf = slices.Grow(buf[:0], int(journalHead+n))[:journalHead+n]
		if _, err := r.ReadAt(buf, off); err != nil {
			return fmt.Errorf("journal: read: %w", err)
		}
		c, seq, ops, _, ok := readRecord(buf)
		if !ok || (!first && (c != chain || seq <= last)) {
			return nil
		}
		chain, last = c, seq
		if err := fn(seq, ops); err != nil {
			return err
		}
		off += journalHead + n
	}
	return nil
}

// openJournal opens (or creates, at size bytes of zeros) the journal in
// dir and replays into db what Badger lost of it: the records above the
// seq db recovered. sync makes db durable once they are in.
func openJournal(dir string, size int64, db *badger.DB, syncDB func() error) (*journal, int, error) {
	path := filepath.Join(dir, journalFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if errors.Is(err, syscall.ENOSPC) {
		return nil, 0, fmt.Errorf("%w: create %s: %w", errNoJournal, journalFile, err) // nothing to replay
	}
	if err != nil {
		return nil, 0, fmt.Errorf("open journal: %w", err)
	}
	j := &journal{f: f, size: size, chain: newChain()}
	j.cond = sync.NewCond(&j.cmu)
	n, err := j.recover(db, syncDB)
	if err != nil {
		return nil, n, errors.Join(err, f.Close())
	}
	return j, n, nil
}

func (j *journal) recover(db *badger.DB, syncDB func() error) (int, error) {
	fi, err := j.f.Stat()
	if err != nil {
		return 0, fmt.Errorf("journal: %w", err)
	}
	// What is there first: a journal that can't grow (a full disk) is
	// still replayed before the store goes on without one.
	recovered, err := journalSeq(db)
	if err != nil {
		return 0, err
	}
	j.seq = recovered
	replayed := 0
	err = eachInChain(j.f, fi.Size(), func(seq uint64, ops []jop) error {
		if seq <= recovered {
			return nil
		}
		if err := replay(db, seq, ops); err != nil {
			return fmt.Errorf("journal: replay seq %d: %w", seq, err)
		}
		j.seq = seq
		replayed++
		return nil
	})
	if err != nil {
		return 0, err
	}
	if replayed > 0 {
		if err := syncDB(); err != nil {
			return 0, fmt.Errorf("journal: sync what it replayed: %w", err)
		}
	}
	j.written = j.seq
	if fi.Size() >= j.size {
		j.size = fi.Size()
		return replayed, nil
	}
	// New (or from a smaller profile): zeros to the full size, once, so
	// syncs never allocate.
	if err := preallocate(j.f, fi.Size(), j.size); err != nil {
		return replayed, fmt.Errorf("%w: preallocate %d bytes: %w", errNoJournal, j.size, err)
	}
	if err := syncFile(filepath.Dir(j.f.Name())); err != nil {
		return replayed, fmt.Errorf("journal: %w", err)
	}
	return replayed, nil
}

// errNoJournal: the journal can't be made (no room for it); what it held
// is replayed, and the store works without one (Badger's syncs).
var errNoJournal = errors.New("storage: no journal")

// preallocate writes zeros to f from offset from to to and syncs it (a
// variable: tests make it fail as a full disk would).
var preallocate = func(f *os.File, from, to int64) error {
	zeros := make([]byte, min(to-from, 64<<10))
	for off := from; off < to; off += int64(len(zeros)) {
		if _, err := f.WriteAt(zeros[:min(int64(len(zeros)), to-off)], off); err != nil {
			return err
		}
	}
	return f.Sync()
}

// replay commits one record's writes, and its seq, in db.
func replay(db *badger.DB, seq uint64, ops []jop) error {
	txn := db.NewTransaction(true)
	defer txn.Discard()
	for _, op := range ops {
		var err error
		if op.del {
			err = txn.Delete(op.key)
		} else {
			e := badger.NewEntry(op.key, op.value).WithMeta(op.meta)
			e.ExpiresAt = op.expires
			err = txn.SetEntry(e)
		}
		if err != nil {
			return err
		}
	}
	if err := txn.SetEntry(badger.NewEntry([]byte(journalSeqKey), binary.BigEndian.AppendUint64(nil, seq))); err != nil {
		return err
	}
	return txn.Commit()
}

// journalSeq returns the seq of the last journaled commit db holds (0 for
// none).
func journalSeq(db *badger.DB) (uint64, error) {
	v, err := readRaw(db, journalSeqKey)
	switch {
	case err != nil:
		return 0, fmt.Errorf("journal: read seq: %w", err)
	case v == nil:
		return 0, nil
	case len(v) != 8:
		return 0, fmt.Errorf("journal: seq of %d bytes", len(v))
	}
	return binary.BigEndian.Uint64(v), nil
}
