package mailbox

import (
	"cmp"
	"errors"
	"time"

	"github.com/kinmesh/kinmesh/storage"
)

// Every change to a mailbox — deposit, ack, purge — goes through one
// goroutine, the committer. It takes the requests queued by all streams,
// stages them into one storage Batch and commits it with one fsync (group
// commit), then answers them. Being the only writer, it assigns seqs and
// keeps each mailbox's Meta (next seq, quota usage) without locks, with a
// write-through cache.

type opKind uint8

const (
	opDeposit opKind = iota + 1
	opAck
	opPurge
	opDrop     // delete unreadable items; nobody waits for the answer
	opRegister // register the mailbox (or keep it registered): its owner authenticated
)

// op is one request on its way through the committer.
type op struct {
	kind opKind
	mbox [idRawSize]byte
	id   uint64 // request id, for the answer

	envelopes [][]byte // deposit
	pre       []Code   // deposit: per-item codes decided before (CodeOK: candidate)
	seqs      []uint64 // ack
	known     []known  // ack: what the session delivered, per seq
	keys      []string // drop: the item keys to delete
	src       string   // register: the owner's source address, for its budget

	// Results, set by the committer.
	codes   []Code       // deposit, ack: per item
	err     Code         // whole request (CodeUnavailable)
	stored  []storedItem // deposit
	deleted int          // ack, purge

	retryAfter time.Duration // deposit, register: with CodeRateLimited
	mem        int           // memory reserved for the request, released after the answer
	done       func(*op)     // called once, by the committer or on shutdown; must not block
}

// submit hands o to the committer; false if the service is closing.
func (s *Service) submit(o *op) bool {
	select {
	case s.ops <- o:
		return true
	case <-s.ctx.Done():
		return false
	}
}

// Group limits: a group must fit in one Badger transaction (see
// storage.Batch; about 600 KB and 6,000 entries on a relay). Each envelope
// counts 200 bytes for its entry (generous: it had an expiry index entry
// too until items shared one), plus its sealed value when that stays under
// Badger's 1 KiB value threshold (a larger one lives in the value log).
// Commit splits a group that is too large anyway.
const (
	groupMaxOps   = 64
	groupMaxItems = 2048
	groupMaxCost  = 384 << 10

	sealOverhead = 1 + 24 + 16 + 8 + valueHeader // version, nonce, tag, expiry
)

func (o *op) cost() (items, cost int) {
	switch o.kind {
	case opDeposit:
		for _, e := range o.envelopes {
			cost += 200
			if n := len(e) + sealOverhead; n < 1<<10 {
				cost += n
			}
		}
		return len(o.envelopes), cost
	case opAck:
		return len(o.seqs), 200 * len(o.seqs)
	case opDrop:
		return len(o.keys), 200 * len(o.keys)
	}
	return 1, 0
}

// commitLoop is the committer. It runs a two-stage pipeline: while one
// group's batch is being committed (and synced) by a helper goroutine, it
// stages the requests that keep arriving into the next group, on top of
// the first group's records. When the commit is done it answers that
// group and launches the next. A failed commit fails its group, and the
// next group is staged again from what is on disk.
func (s *Service) commitLoop() {
	defer s.wg.Done()
	var (
		inflight *staging // being committed
		next     *staging // being staged
	)
	// settled answers the group in flight once its commit returned err;
	// the next group is restaged if that commit failed.
	settled := func(err error) {
		ok := s.finish(inflight, err)
		inflight = nil
		if !ok && next != nil {
			next = s.restage(next.ops)
		}
	}
	// settle waits for the commit in flight, if any.
	settle := func() {
		if inflight != nil {
			settled(<-inflight.done)
		}
	}
	// purge runs o once everything staged for its mailbox is committed;
	// groups that don't touch the mailbox go on underneath.
	purge := func(o *op) {
		if inflight.touches(o.mbox) || next.touches(o.mbox) {
			settle()
			if next != nil {
				inflight, next = s.launch(next), nil
				settle()
			}
		}
		s.purge(o)
	}
	for {
		var opsC <-chan *op = s.ops
		if next != nil && next.full() {
			opsC = nil
		}
		var doneC <-chan error
		if inflight != nil {
			doneC = inflight.done
		}
		select {
		case <-s.ctx.Done():
			settle()
			if next != nil {
				for _, o := range next.ops {
					o.err, o.stored = CodeUnavailable, nil
					o.done(o)
				}
			}
			s.failPending()
			return
		case err := <-doneC:
			settled(err)
		case o := <-opsC:
			if o.kind == opPurge {
				purge(o)
				continue
			}
			if next == nil {
				next = s.newStaging(inflight)
			}
			s.stage(next, o)
			// Take whatever else is queued already into the same group.
		gather:
			for !next.full() {
				select {
				case o := <-s.ops:
					if o.kind == opPurge {
						purge(o)
						break gather
					}
					s.stage(next, o)
				default:
					break gather
				}
			}
		}
		if inflight == nil && next != nil {
			inflight, next = s.launch(next), nil
		}
	}
}

// failPending answers whatever is still queued at shutdown.
func (s *Service) failPending() {
	for {
		select {
		case o := <-s.ops:
			o.err = CodeUnavailable
			o.done(o)
		default:
			return
		}
	}
}

// staging is a group of ops staged into one batch.
type staging struct {
	began   time.Time
	now     time.Time
	prev    *staging // the group committing underneath, if any
	batch   *storage.Batch
	ops     []*op
	items   int
	cost    int
	maxCost int
	metas   map[[idRawSize]byte]*meta // working copies
	dirty   map[[idRawSize]byte]bool
	deleted map[string]bool // item keys deleted in this batch
	expired struct {
		items int
		bytes int64
	}
	done chan error // the commit's outcome, once launched
}

func (s *Service) newStaging(prev *staging) *staging {
	return &staging{
		began:   time.Now(),
		now:     s.cfg.now(),
		prev:    prev,
		maxCost: s.cfg.groupCost,
		batch:   s.store.NewBatch(),
		metas:   make(map[[idRawSize]byte]*meta),
		dirty:   make(map[[idRawSize]byte]bool),
		deleted: make(map[string]bool),
	}
}

func (st *staging) full() bool {
	return len(st.ops) >= groupMaxOps || st.items >= groupMaxItems || st.cost >= st.maxCost
}

// stage adds o to st's batch.
func (s *Service) stage(st *staging, o *op) {
	st.ops = append(st.ops, o)
	i, c := o.cost()
	st.items, st.cost = st.items+i, st.cost+c
	o.codes, o.stored, o.deleted, o.err = nil, nil, 0, CodeOK
	m, err := s.loadMeta(st, o.mbox)
	if err != nil {
		s.log.Warn("mailbox record unreadable", "err", err)
		o.err = CodeUnavailable
		return
	}
	switch o.kind {
	case opDeposit:
		s.stageDeposit(st, m, o)
	case opAck:
		s.stageAck(st, m, o)
	case opRegister:
		s.stageRegister(st, m, o)
	case opDrop:
		for _, key := range o.keys {
			if !st.deletes(key) {
				_ = st.batch.Delete(s.ns, key)
				st.deleted[key] = true
			}
		}
	}
}

// restage stages ops again from scratch (their group's base failed).
func (s *Service) restage(ops []*op) *staging {
	st := s.newStaging(nil)
	for _, o := range ops {
		s.stage(st, o)
	}
	return st
}

// launch writes st's records into its batch and commits it in a helper
// goroutine; st.done delivers the outcome.
func (s *Service) launch(st *staging) *staging {
	for mbox := range st.dirty {
		m := st.metas[mbox]
		ttl := time.Unix(max(m.expires, m.registered), 0).Sub(st.now)
		prefix := s.prefix(mbox)
		// The record's earlier index entries would say when it was
		// written: they go, and the record gets one for its new expiry.
		_ = st.batch.ForgetGroup(s.ns, metaGroup(prefix))
		if ttl <= 0 {
			_ = st.batch.Delete(s.ns, metaKey(prefix))
		} else {
			_ = st.batch.PutTTLGrouped(s.ns, metaGroup(prefix), metaKey(prefix), encodeMeta(m), ttl)
		}
	}
	st.prev = nil // staged: the group underneath is done with
	st.done = make(chan error, 1)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		st.done <- st.batch.Commit(s.ctx)
	}()
	return st
}

// finish answers st's ops after its commit returned err, and reports
// whether st's records are now the mailboxes' state (true on success, and
// after a split that succeeded or failed on its own).
func (s *Service) finish(st *staging, err error) bool {
	st.batch = nil // written or not: free the sealed values
	if errors.Is(err, storage.ErrTooLarge) && len(st.ops) > 1 {
		// Too large for one transaction: commit it in halves, in order.
		half := len(st.ops) / 2
		s.commitNow(st.ops[:half])
		s.commitNow(st.ops[half:])
		return false
	}
	if err != nil {
		if s.ctx.Err() == nil {
			s.log.Warn("mailbox commit failed", "ops", len(st.ops), "err", err)
		}
		for _, o := range st.ops {
			o.err, o.stored, o.deleted = CodeUnavailable, nil, 0
			o.done(o)
		}
		return false
	}
	for mbox, m := range st.metas {
		if m.registered == 0 && !st.dirty[mbox] {
			continue // a mailbox nobody registered: nothing to remember
		}
		s.cacheMeta(mbox, m)
	}
	s.tr.expired(st.expired.items, st.expired.bytes)
	items := 0
	for _, o := range st.ops {
		switch o.kind {
		case opDeposit:
			items += len(o.stored)
			var bytes int64
			for _, it := range o.stored {
				bytes += int64(len(it.envelope))
			}
			s.tr.deposited(len(o.stored), bytes)
			for i, c := range o.codes {
				if c != CodeOK && o.pre[i] == CodeOK { // the stream counted the others
					s.tr.rejected(c, 1)
				}
			}
			if len(o.stored) > 0 {
				s.notify(o.mbox, o.stored)
			}
		case opAck:
			items += o.deleted
			s.tr.acked(o.deleted)
		}
		o.done(o)
	}
	s.tr.committed(len(st.ops), items, time.Since(st.began))
	return true
}

// commitNow stages and commits ops synchronously.
func (s *Service) commitNow(ops []*op) {
	if len(ops) == 0 {
		return
	}
	st := s.restage(ops)
	s.launch(st)
	s.finish(st, <-st.done)
}

// loadMeta returns the working copy of mbox's record: from this staging,
// the cache or the store, or a new one.
func (s *Service) loadMeta(st *staging, mbox [idRawSize]byte) (*meta, error) {
	if m, ok := st.metas[mbox]; ok {
		return m, nil
	}
	var m *meta
	if p, ok := st.prev.meta(mbox); ok {
		m = p.clone()
	} else if c, ok := s.metas[mbox]; ok {
		m = c.clone()
	} else {
		b, err := s.ns.Get(s.ctx, metaKey(s.prefix(mbox)))
		switch {
		case err == nil:
			if m, err = decodeMeta(b); err != nil {
				// Unreadable: start over rather than refuse the mailbox
				// forever. Seqs stay increasing (seedSeq).
				s.log.Warn("replacing unreadable mailbox record", "err", err)
				m = nil
			}
		case errors.Is(err, storage.ErrNotFound):
		default:
			return nil, err
		}
	}
	if m == nil {
		m = &meta{next: seedSeq(st.now)}
	}
	n, b := m.prune(st.now.Unix(), int64(s.cfg.maxAge/time.Second))
	st.expired.items += n
	st.expired.bytes += b
	st.metas[mbox] = m
	return m, nil
}

// touches reports whether st stages a change to mbox.
func (st *staging) touches(mbox [idRawSize]byte) bool {
	if st == nil {
		return false
	}
	_, ok := st.metas[mbox]
	return ok
}

// meta returns the record of mbox as the group underneath left it.
func (st *staging) meta(mbox [idRawSize]byte) (*meta, bool) {
	if st == nil {
		return nil, false
	}
	m, ok := st.metas[mbox]
	return m, ok
}

// deletes reports whether key is deleted by this group or the one
// underneath.
func (st *staging) deletes(key string) bool {
	return st.deleted[key] || (st.prev != nil && st.prev.deleted[key])
}

// seedSeq is the first seq of a new mailbox: the time in microseconds, so
// seqs keep increasing even when a mailbox record expired (16 idle days)
// or was purged and the mailbox starts again.
func seedSeq(now time.Time) uint64 {
	return max(uint64(now.UnixMicro()), 1)
}

const metaCacheMax = 4096

func (s *Service) cacheMeta(mbox [idRawSize]byte, m *meta) {
	if len(s.metas) >= metaCacheMax {
		n := 0
		for k := range s.metas {
			delete(s.metas, k)
			if n++; n >= metaCacheMax/2 {
				break
			}
		}
	}
	s.metas[mbox] = m
}

// stageRegister registers o's mailbox until a registration period from
// the start of today (whole days: the record says no more about when its
// owner was last here), or leaves it be when it was registered so today.
// A mailbox not registered now takes one from the budget of the owner's
// address, or is refused as rate limited.
func (s *Service) stageRegister(st *staging, m *meta, o *op) {
	today := st.now.Truncate(24 * time.Hour)
	until := today.Add(s.cfg.regTTL).Unix()
	if m.registered >= until {
		return
	}
	if m.registered <= st.now.Unix() {
		if ok, wait := s.regLim.Take(o.src); !ok {
			o.err, o.retryAfter = CodeRateLimited, wait
			return
		}
	}
	m.registered = until
	st.dirty[o.mbox] = true
}

func (s *Service) stageDeposit(st *staging, m *meta, o *op) {
	o.codes = make([]Code, len(o.envelopes))
	if m.registered <= st.now.Unix() {
		// Nobody fetches mail here: the owner has not authenticated in a
		// registration period, or purged the mailbox.
		for i, c := range o.pre {
			o.codes[i] = cmp.Or(c, CodeUnknownMailbox)
		}
		return
	}
	count, bytes := m.usage()
	prefix := s.prefix(o.mbox)
	nowNs, nowSec := st.now.UnixNano(), st.now.Unix()
	head := valueHead(nowNs)
	full := false
	for i, env := range o.envelopes {
		if c := o.pre[i]; c != CodeOK {
			o.codes[i] = c
			continue
		}
		if full || count+1 > s.cfg.maxItems || bytes+int64(len(env)) > s.cfg.maxBytes {
			full = true
			o.codes[i] = CodeMailboxFull
			continue
		}
		seq := m.next
		if err := st.batch.PutTTLGroupedAfter(s.ns, itemGroup(prefix), itemKey(prefix, seq), head, env, s.cfg.maxAge); err != nil {
			// Sticky in the batch: Commit fails and answers unavailable.
			o.codes[i] = CodeUnavailable
			continue
		}
		m.next++
		m.add(nowSec, len(env), s.width)
		count++
		bytes += int64(len(env))
		o.stored = append(o.stored, storedItem{seq: seq, deposited: nowNs, envelope: env})
	}
	if len(o.stored) > 0 {
		m.expires = max(m.expires, nowSec+int64(s.cfg.maxAge/time.Second)+2*s.width)
		st.dirty[o.mbox] = true
	}
}

// known is what a session remembers of an item it delivered (fetched or
// pushed), so an ack of it needs no read: its deposit time and size.
type known struct {
	deposited int64
	size      int
	ok        bool
}

func (s *Service) stageAck(st *staging, m *meta, o *op) {
	o.codes = make([]Code, len(o.seqs))
	prefix := s.prefix(o.mbox)
	for i, seq := range o.seqs {
		key := itemKey(prefix, seq)
		if seq == 0 || st.deletes(key) {
			o.codes[i] = CodeNotFound
			continue
		}
		if i < len(o.known) && o.known[i].ok {
			// Delivered on this session and not acked on it since, so
			// its deposit time and size are known; but another session
			// of the mailbox may have acked it meanwhile. The committer
			// is the only writer of items and the group underneath is
			// checked above, so the key's presence in the store says
			// whether it is there; finding it reads no value.
			k := o.known[i]
			held, err := s.ns.HasKey(s.ctx, key)
			if err != nil {
				o.codes[i] = CodeUnavailable
				continue
			}
			if !held {
				o.codes[i] = CodeNotFound
				continue
			}
			_ = st.batch.Delete(s.ns, key)
			st.deleted[key] = true
			if s.expired(k.deposited, st.now) {
				o.codes[i] = CodeNotFound
				continue
			}
			m.remove(k.deposited/int64(time.Second), k.size)
			o.deleted++
			st.dirty[o.mbox] = true
			continue
		}
		v, err := s.ns.Get(s.ctx, key)
		switch {
		case errors.Is(err, storage.ErrNotFound):
			o.codes[i] = CodeNotFound
			continue
		case errors.Is(err, storage.ErrCorrupt):
			// Unreadable: it can never be delivered; delete it.
			s.log.Warn("deleting an unreadable mailbox item")
			s.tr.unreadable(1)
			_ = st.batch.Delete(s.ns, key)
			st.deleted[key] = true
			o.codes[i] = CodeNotFound
			continue
		case err != nil:
			o.codes[i] = CodeUnavailable
			continue
		}
		_ = st.batch.Delete(s.ns, key)
		st.deleted[key] = true
		dep, env, ok := decodeValue(v)
		if !ok || s.expired(dep, st.now) {
			o.codes[i] = CodeNotFound
			continue
		}
		m.remove(dep/int64(time.Second), len(env))
		o.deleted++
		st.dirty[o.mbox] = true
	}
	if n, _ := m.usage(); o.deleted > 0 && n == 0 {
		// The last item delivered: the index entries of its deposits,
		// which say when they came, go too (the expired ones' stay for
		// the sweep).
		_ = st.batch.ForgetGroup(s.ns, itemGroup(prefix))
	}
}

// purge deletes a whole mailbox: its items, readable, unreadable or
// expired, with their index entries, then its record. A mailbox with
// neither costs no write.
func (s *Service) purge(o *op) {
	prefix := s.prefix(o.mbox)
	began := time.Now()
	n, err := s.ns.DeleteGroup(s.ctx, itemGroup(prefix))
	o.deleted = n
	held := n > 0
	if err == nil && !held {
		held, err = s.hasMeta(o.mbox)
	}
	if err == nil && held {
		if _, err = s.ns.DeleteGroup(s.ctx, metaGroup(prefix)); err == nil {
			s.tr.committed(1, n, time.Since(began))
		}
	}
	delete(s.metas, o.mbox)
	s.forgetDelivered(o.mbox)
	if err != nil {
		if s.ctx.Err() == nil {
			s.log.Warn("mailbox purge failed", "err", err)
		}
		o.err = CodeUnavailable
	}
	s.tr.purged(o.deleted)
	o.done(o)
}

// hasMeta reports whether mbox has a record, cached or stored (readable
// or not).
func (s *Service) hasMeta(mbox [idRawSize]byte) (bool, error) {
	if _, ok := s.metas[mbox]; ok {
		return true, nil
	}
	held, err := s.ns.Has(s.ctx, metaKey(s.prefix(mbox)))
	if errors.Is(err, storage.ErrCorrupt) {
		return true, nil
	}
	return held, err
}
