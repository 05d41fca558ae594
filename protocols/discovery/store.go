package discovery

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/cloudflare/circl/oprf"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/kinmesh/kinmesh/storage"
)

// Relay store layout, in namespace "discovery". <A> is
// Opaque("a", account's Ed25519 key) and <I> is Opaque("i", directory
// id): 32 characters that reveal nothing without the store key. No key or
// value holds a phone number.
//
//	key        the OPRF private key (32 bytes)
//	meta       StoredMeta: last sequence number, floor, live entries
//	a/<A>      StoredLink: the account's verified number, as its OPRF output
//	p/<A>      StoredPending: OPRF output, code, expiry, wrong attempts (TTL: code TTL + 1 day)
//	l/<A>      StoredLock: lockout end (TTL: the lockout)
//	o/<I>      StoredOwner: <A> of the account whose entry the id is
//	i/<I>      uvarint: sequence number of the id's latest change
//	e/<seq>    StoredEntry: a change of the directory (entry or deletion)
//	t/<seq>    StoredEntry without box: the deletions, oldest first, for compaction
//
// <seq> is 16 lowercase hex digits, so listing e/ yields changes in order.
const (
	keyOPRF = "key"
	keyMeta = "meta"
)

func (s *Service) accountKey(signKey []byte) string { return s.ns.Opaque([]byte("a"), signKey) }
func (s *Service) idKey(id EntryID) string          { return s.ns.Opaque([]byte("i"), id[:]) }

func linkKey(acct string) string    { return "a/" + acct }
func pendingKey(acct string) string { return "p/" + acct }
func lockKey(acct string) string    { return "l/" + acct }
func ownerKey(ik string) string     { return "o/" + ik }
func indexKey(ik string) string     { return "i/" + ik }
func entryKey(seq uint64) string    { return fmt.Sprintf("e/%016x", seq) }
func deletionKey(seq uint64) string { return fmt.Sprintf("t/%016x", seq) }

func seqFromKey(k string) (uint64, bool) {
	i := strings.LastIndexByte(k, '/')
	if i < 0 || len(k)-i-1 != 16 {
		return 0, false
	}
	v, err := strconv.ParseUint(k[i+1:], 16, 64)
	return v, err == nil && v > 0
}

// loadKey reads the relay's OPRF private key, creating it on first use.
func loadKey(ctx context.Context, ns *storage.Namespace) (*oprf.PrivateKey, error) {
	b, err := ns.Get(ctx, keyOPRF)
	if errors.Is(err, storage.ErrNotFound) {
		k, err := oprf.GenerateKey(suite, rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("discovery: generate OPRF key: %w", err)
		}
		if b, err = k.MarshalBinary(); err != nil {
			return nil, err
		}
		if err := ns.Put(ctx, keyOPRF, b); err != nil {
			return nil, fmt.Errorf("discovery: store OPRF key: %w", err)
		}
		return k, nil
	}
	if err != nil {
		return nil, fmt.Errorf("discovery: load OPRF key: %w", err)
	}
	k := new(oprf.PrivateKey)
	if err := k.UnmarshalBinary(suite, b); err != nil {
		return nil, fmt.Errorf("discovery: stored OPRF key: %w", err)
	}
	return k, nil
}

func loadMeta(ctx context.Context, ns *storage.Namespace) (meta, error) {
	b, err := ns.Get(ctx, keyMeta)
	if errors.Is(err, storage.ErrNotFound) {
		return meta{}, nil
	}
	if err != nil {
		return meta{}, fmt.Errorf("discovery: load directory meta: %w", err)
	}
	return decodeMeta(b)
}

// link reads the account's verified number link (nil if none).
func (s *Service) link(ctx context.Context, acct string) (*storedLink, error) {
	b, err := s.ns.Get(ctx, linkKey(acct))
	if errors.Is(err, storage.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	l, err := decodeStoredLink(b)
	if err != nil {
		return nil, err
	}
	return &l, nil
}

// indexOf returns the sequence number of id's latest change (0 if none).
func (s *Service) indexOf(ctx context.Context, ik string) (uint64, error) {
	b, err := s.ns.Get(ctx, indexKey(ik))
	if errors.Is(err, storage.ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	v, n := binary.Uvarint(b)
	if n <= 0 || n != len(b) {
		return 0, fmt.Errorf("stored index: %w", ErrMalformed)
	}
	return v, nil
}

// dropChange deletes id's latest change from the log (in b) and reports
// whether it was a live entry.
func (s *Service) dropChange(ctx context.Context, b *storage.Batch, ik string) (live bool, err error) {
	seq, err := s.indexOf(ctx, ik)
	if err != nil || seq == 0 {
		return false, err
	}
	v, err := s.ns.Get(ctx, entryKey(seq))
	if errors.Is(err, storage.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	e, err := decodeStoredEntry(v)
	if err != nil {
		return false, err
	}
	if err := b.Delete(s.ns, entryKey(seq)); err != nil {
		return false, err
	}
	if e.box == nil {
		return false, b.Delete(s.ns, deletionKey(seq))
	}
	return true, nil
}

// deleteEntry records the deletion of id's entry (in b, advancing m).
// Called with dirMu held.
func (s *Service) deleteEntry(ctx context.Context, b *storage.Batch, m *meta, id EntryID, now time.Time) error {
	ik := s.idKey(id)
	live, err := s.dropChange(ctx, b, ik)
	if err != nil || !live {
		return err // nothing live: a deletion is already recorded, or nothing ever was
	}
	m.lastSeq++
	m.entries--
	del := storedEntry{id: id, deleted: now}
	return errors.Join(
		b.Put(s.ns, entryKey(m.lastSeq), del.encode()),
		b.Put(s.ns, deletionKey(m.lastSeq), del.encode()),
		b.Put(s.ns, indexKey(ik), binary.AppendUvarint(nil, m.lastSeq)),
	)
}

// enrol links the account to the number whose OPRF output is out and
// makes record the number's directory entry, in one synced batch: the
// account's previous number leaves the directory, and an account that
// verified this number before loses its link.
func (s *Service) enrol(ctx context.Context, acct string, out Output, record []byte, verifiedAt time.Time) (Code, error) {
	s.dirMu.Lock()
	defer s.dirMu.Unlock()
	now := s.cfg.now()
	id := out.ID()
	ik := s.idKey(id)
	m := s.meta
	b := s.store.NewBatch()

	old, err := s.link(ctx, acct)
	if err != nil {
		return CodeUnavailable, err
	}
	if old != nil && old.output.ID() != id {
		if err := s.deleteEntry(ctx, b, &m, old.output.ID(), now); err != nil {
			return CodeUnavailable, err
		}
		if err := b.Delete(s.ns, ownerKey(s.idKey(old.output.ID()))); err != nil {
			return CodeUnavailable, err
		}
	}
	if v, err := s.ns.Get(ctx, ownerKey(ik)); err == nil {
		if prev, err := decodeOwner(v); err == nil && prev != acct {
			// The number moved to this account: the other loses its link.
			if err := b.Delete(s.ns, linkKey(prev)); err != nil {
				return CodeUnavailable, err
			}
		}
	} else if !errors.Is(err, storage.ErrNotFound) {
		return CodeUnavailable, err
	}
	live, err := s.dropChange(ctx, b, ik)
	if err != nil {
		return CodeUnavailable, err
	}
	if !live {
		if m.entries >= s.cfg.maxEntries {
			return CodeQuota, nil
		}
		m.entries++
	}
	m.lastSeq++
	entry := storedEntry{id: id, box: out.seal(record)}
	err = errors.Join(
		b.Put(s.ns, entryKey(m.lastSeq), entry.encode()),
		b.Put(s.ns, indexKey(ik), binary.AppendUvarint(nil, m.lastSeq)),
		b.Put(s.ns, linkKey(acct), storedLink{output: out, verifiedAt: verifiedAt}.encode()),
		b.Put(s.ns, ownerKey(ik), encodeOwner(acct)),
		b.Delete(s.ns, pendingKey(acct)),
		b.Put(s.ns, keyMeta, m.encode()),
	)
	if err != nil {
		return CodeUnavailable, err
	}
	if err := b.Commit(ctx); err != nil {
		return CodeUnavailable, err
	}
	s.meta = m
	s.tr.entries(m.entries)
	return CodeOK, nil
}

// removeAccount deletes the account's link, directory entry and pending
// verification, and returns how many directory entries it removed.
func (s *Service) removeAccount(ctx context.Context, acct string, now time.Time) (int, error) {
	s.dirMu.Lock()
	defer s.dirMu.Unlock()
	link, err := s.link(ctx, acct)
	if err != nil {
		return 0, err
	}
	m := s.meta
	b := s.store.NewBatch()
	removed := 0
	if link != nil {
		id := link.output.ID()
		before := m.entries
		if err := s.deleteEntry(ctx, b, &m, id, now); err != nil {
			return 0, err
		}
		removed = before - m.entries
		if err := errors.Join(b.Delete(s.ns, ownerKey(s.idKey(id))), b.Delete(s.ns, linkKey(acct))); err != nil {
			return 0, err
		}
	}
	if err := errors.Join(b.Delete(s.ns, pendingKey(acct)), b.Put(s.ns, keyMeta, m.encode())); err != nil {
		return 0, err
	}
	if err := b.Commit(ctx); err != nil {
		return 0, err
	}
	s.meta = m
	s.tr.entries(m.entries)
	return removed, nil
}

// compactEvery is how often the directory forgets old deletions.
const compactEvery = time.Hour

// maybeCompact forgets the deletions older than the tombstone TTL, at
// most once per compactEvery, raising the floor: clients that may have
// missed one must start over (meta.startOver).
func (s *Service) maybeCompact(ctx context.Context) error {
	s.dirMu.Lock()
	defer s.dirMu.Unlock()
	now := s.cfg.now()
	if !s.lastCompact.IsZero() && now.Sub(s.lastCompact) < compactEvery && !now.Before(s.lastCompact) {
		return nil
	}
	s.lastCompact = now
	m := s.meta
	for {
		type del struct {
			seq uint64
			e   storedEntry
		}
		var dels []del
		done := false
		err := s.ns.List(ctx, storage.ListOptions{Prefix: "t/", Limit: 512}, func(k string, v []byte) error {
			seq, ok := seqFromKey(k)
			e, err := decodeStoredEntry(v)
			if !ok || err != nil {
				return fmt.Errorf("deletion record %q: %w", k, ErrMalformed)
			}
			if now.Sub(e.deleted) < s.cfg.tombstoneTTL {
				done = true
				return errStop
			}
			dels = append(dels, del{seq, e})
			return nil
		})
		if err != nil && !errors.Is(err, errStop) {
			return err
		}
		if len(dels) == 0 {
			return nil
		}
		b := s.store.NewBatch()
		for _, d := range dels {
			ik := s.idKey(d.e.id)
			cur, err := s.indexOf(ctx, ik)
			if err != nil {
				return err
			}
			errs := []error{b.Delete(s.ns, deletionKey(d.seq)), b.Delete(s.ns, entryKey(d.seq))}
			if cur == d.seq {
				errs = append(errs, b.Delete(s.ns, indexKey(ik)))
			}
			if err := errors.Join(errs...); err != nil {
				return err
			}
			m.floor = max(m.floor, d.seq)
		}
		if err := b.Put(s.ns, keyMeta, m.encode()); err != nil {
			return err
		}
		if err := b.Commit(ctx); err != nil {
			return err
		}
		s.meta = m
		if done || len(dels) < 512 {
			return nil
		}
	}
}

var errStop = errors.New("stop")

// startOver reports whether a client whose listing stands at at must
// list again from 0: whether a deletion it may need was forgotten.
//
// Pages are read in order, each after the changes it covers were made,
// so the client has seen every change up to at.Since that the log held
// when it listed that far. The entries it holds came from pages read no
// earlier than its listing's first page, whose version is at.Base. A
// change replaces the id's previous change in the log, so an entry the
// client holds left the log only through a change of its id made after
// the page that carried the entry was read: beyond at.Base. The client
// needs that change if it is beyond at.Since. An update, or the id
// entered again, stays in the log as the id's latest change; a deletion
// stays until compaction forgets it, oldest first, raising the floor to
// the newest it forgot. So the client may go on unless floor >
// max(at.Since, at.Base). A client that holds nothing (Since and Base
// both 0) never starts over; one whose Since or Base is beyond the log's
// last change lists a log this relay never had (it lost its data) and
// always does.
func (m meta) startOver(at Listing) bool {
	switch {
	case at.Since > m.lastSeq || at.Base > m.lastSeq:
		return true
	case at.Since == 0 && at.Base == 0:
		return false
	}
	return m.floor > max(at.Since, at.Base)
}

// list answers a directory page request.
func (s *Service) list(ctx context.Context, remote peer.ID, at Listing, limit int) response {
	if ok, wait := s.listLim.Take(remote.String()); !ok {
		return response{code: CodeRateLimited, retryAfter: wait}
	}
	if err := s.maybeCompact(ctx); err != nil {
		s.log.Warn("compact directory", "err", err)
	}
	m := s.metaNow()
	if s.cfg.beforePage != nil {
		s.cfg.beforePage()
	}
	p, err := s.page(ctx, m, at, limit)
	if err == nil && !p.StartOver && s.metaNow().startOver(at) {
		// A compaction (started by another list) ran while the page was
		// read, and may have forgotten a deletion the page would have
		// carried: the listing must start over now. Compaction holds
		// dirMu throughout, so meta read after the page reflects every
		// compaction the page's read saw. A listing from 0 needs no such
		// check.
		p, err = s.page(ctx, s.metaNow(), at, limit)
	}
	if err != nil {
		return s.unavailable("list directory", err)
	}
	return response{page: p}
}

// metaNow returns the directory's bookkeeping as of now.
func (s *Service) metaNow() meta {
	s.dirMu.Lock()
	defer s.dirMu.Unlock()
	return s.meta
}

// page reads the page a listing at at asks for from the log, with m the
// directory's bookkeeping read before.
func (s *Service) page(ctx context.Context, m meta, at Listing, limit int) (*Page, error) {
	p := &Page{PublicKey: s.pub, Version: m.lastSeq, Total: m.entries}
	since := at.Since
	if m.startOver(at) {
		p.StartOver, since = true, 0
	}
	p.Next = since
	if limit == 0 {
		p.More = since < m.lastSeq
		return p, nil
	}
	opts := storage.ListOptions{Prefix: "e/", Limit: limit + 1}
	if since > 0 {
		opts.StartAfter = entryKey(since)
	}
	size := 0
	err := s.ns.List(ctx, opts, func(k string, v []byte) error {
		if len(p.Entries) == limit || size >= maxPageBytes {
			p.More = true
			return errStop
		}
		seq, ok := seqFromKey(k)
		e, err := decodeStoredEntry(v)
		if !ok || err != nil {
			return fmt.Errorf("directory entry %q: %w", k, ErrMalformed)
		}
		p.Entries = append(p.Entries, Entry{Seq: seq, ID: e.id, Box: e.box})
		p.Next = seq
		size += len(e.box) + IDSize + 16
		return nil
	})
	if err != nil && !errors.Is(err, errStop) {
		return nil, err
	}
	if !p.More {
		p.Next = max(p.Next, m.lastSeq)
	}
	p.Version = max(p.Version, p.Next)
	return p, nil
}
