package message

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kinmesh/kinmesh/protocols/contact"
	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/protocols/message/pb"
	"github.com/kinmesh/kinmesh/storage"
)

// Keys in the "message" namespace. Anything naming a contact or a
// conversation goes through Opaque.
//
//	prekeys                                  our e2ee.PrekeyStore
//	p/<opaque account>                       our pairwise sessions with account: their IDs, current first (JSON)
//	p/<opaque account>/<session id>          one of them (e2ee.Session.Marshal)
//	s/<opaque account>                       all of them in one value, as engines before
//	                                         per-session keys wrote it (read, then moved to p/)
//	c/<opaque conversation>                  conversation counters
//	m/<opaque conv>/<ms>/<opaque from>/<seq>  a message (record.go), ms and seq as %016x
//	i/<message id>                           → message key
//	j/<opaque recipient>/<job seq>           a delivery job (record.go)
//	jobseq                                   job counter
//	h/<envelope hash>                        envelopes already processed (TTL)
//	g/<opaque group>                         a group (JSON)
//	k/<opaque group>                         our sender key in a group
//	d/<opaque group>                         who holds it, whether it is due for rotation (JSON)
//	K/<opaque group>/<opaque sender>         a member's sender key state
//	w/<opaque sender>/<envelope item hash>    a group message waiting for its sender key (JSON, TTL)
const (
	keyPrekeys = "prekeys"
	keyJobSeq  = "jobseq"
	seenTTL    = MaxAge + 24*time.Hour
)

// opaque returns the store's opaque name for v (an account, conversation
// or group id), remembered: it is an HMAC, and every message written
// needs two.
func (s *Service) opaque(v string) string {
	s.opaqueMu.Lock()
	defer s.opaqueMu.Unlock()
	if o, ok := s.opaqueIDs[v]; ok {
		return o
	}
	if len(s.opaqueIDs) >= maxOpaqueIDs || s.opaqueIDs == nil {
		s.opaqueIDs = map[string]string{}
	}
	o := s.ns.Opaque([]byte(v))
	s.opaqueIDs[v] = o
	return o
}

// maxOpaqueIDs bounds the opaque names remembered (then they start over).
const maxOpaqueIDs = 4096

func (s *Service) keySessions(a e2ee.AccountID) string { return "p/" + s.opaque(string(a)) }
func (s *Service) keySession(a e2ee.AccountID, id string) string {
	return s.keySessions(a) + "/" + id
}
func (s *Service) keyLegacySessions(a e2ee.AccountID) string { return "s/" + s.opaque(string(a)) }
func (s *Service) keyConv(conv string) string                { return "c/" + s.opaque(conv) }
func (s *Service) keyMsgPrefix(conv string) string           { return "m/" + s.opaque(conv) + "/" }
func (s *Service) keyMsg(m *Message) string {
	conv := m.To
	if m.Group != "" {
		conv = m.Group
	} else if m.Incoming {
		conv = m.From
	}
	return fmt.Sprintf("%s%016x/%s/%016x", s.keyMsgPrefix(conv), m.SentAt.UnixMilli(), s.opaque(m.From)[:12], m.Seq)
}
func keyIndex(id string) string                          { return "i/" + id }
func (s *Service) keyJobPrefix(to e2ee.AccountID) string { return "j/" + s.opaque(string(to)) + "/" }
func keySeen(h [32]byte) string                          { return "h/" + hex.EncodeToString(h[:16]) }
func (s *Service) keyGroup(g string) string              { return "g/" + s.opaque(g) }
func (s *Service) keyMyKey(g string) string              { return "k/" + s.opaque(g) }
func (s *Service) keyMyKeyShare(g string) string         { return "d/" + s.opaque(g) }
func (s *Service) keyParkedPrefix(from e2ee.AccountID) string {
	return "w/" + s.opaque(string(from)) + "/"
}
func (s *Service) keyMemberKey(g string, from e2ee.AccountID) string {
	return "K/" + s.opaque(g) + "/" + s.opaque(string(from))
}

// job is a unit of delivery work: one inner message for one recipient.
// Until a session exists it holds the plaintext content; then the
// encrypted payload, which each lane round that moves the job seals, alone
// or batched with the jobs that travel with it, outside the engine's lock
// (sealing, an X-Wing HPKE encapsulation, is the costly part of a send).
type job struct {
	Key   string         `json:"-"`
	Seq   uint64         `json:"seq"`
	MsgID string         `json:"msg_id,omitempty"` // the message whose state it drives ("" for receipts, control)
	To    e2ee.AccountID `json:"to"`
	Group string         `json:"group,omitempty"`
	// Content is the encoded pb.Content, kept only until the recipient has
	// a session (then Payload replaces it).
	Content []byte `json:"content,omitempty"`
	// Payload is the encrypted content, of envelope content type Type.
	Payload []byte           `json:"payload,omitempty"`
	Type    e2ee.ContentType `json:"type,omitempty"`
	// Envelope is a job's sealed envelope as engines before batching
	// stored it (no Payload then): it travels as it is.
	Envelope []byte `json:"envelope,omitempty"`
	Created  time.Time
	// Relays that durably hold the envelope; Sent when a device took it.
	Relays   []string `json:"relays,omitempty"`
	Sent     bool     `json:"sent,omitempty"`
	Attempts int      `json:"attempts,omitempty"`
	LastErr  string   `json:"last_err,omitempty"`

	// gen is the write generation (syncer) of the commit that wrote the
	// job: on disk before its transport is recorded (sent, queued).
	// leave is the one that must be on disk before the envelope leaves:
	// gen, or, for a message encrypted within its session's reservation
	// (early), the earlier commit that wrote that reservation.
	gen, leave uint64
	early      bool
}

// done reports whether the job needs no more transport: handed to the
// device, or held by every one of n home relays.
func (j *job) done(n int) bool { return j.Sent || (n > 0 && len(j.Relays) >= n) }

type convState struct {
	Seq    uint64 `json:"seq"`
	LastMs int64  `json:"last_ms"`
}

// tx stages a set of changes under s.mu and commits them in one batch.
// Reads go through it so they see its own staged writes.
//
// A commit writes the batch without waiting for the disk while s.mu is
// held (flush), so the next transaction reads it at once, and waits for a
// sync after (durable), which concurrent commits share: the disk's fsync
// latency no longer holds the lock, and a burst of commits costs one or
// two fsyncs. Nothing that depends on a commit leaves the device (an
// envelope sent, an answer OK, a relay ack, Send returning) before it is
// durable; lanes wait for the generation of the commit that encrypted a
// job before sending it.
type tx struct {
	s        *Service
	b        *storage.Batch
	sessions map[e2ee.AccountID][]*e2ee.Session
	// newSessions are the peers whose sessions this tx changed.
	newSessions map[e2ee.AccountID]bool
	prekeys     *e2ee.PrekeyStore
	pkDirty     bool
	convs       map[string]*convState
	msgs        map[string]*Message // by id
	indexed     map[string]bool     // ids in msgs whose index entry is stored
	jobs        []*job
	newJobs     map[string]bool // keys of the jobs this tx adds
	delJobs     []string
	seen        map[[32]byte][]byte // hash → mark: a message id, or seenMark
	groups      map[string]*Group
	myKeys      map[string]*e2ee.SenderKey
	shares      map[string]*keyShare            // by group: who holds myKeys[group]
	memKeys     map[string]*e2ee.SenderKeyState // group + "/" + sender
	jobSeq      uint64

	// wroteSessions are the sessions flush wrote, as [peer, session ID].
	wroteSessions [][2]string

	// oldSessions are the sessions this tx loaded as committed before it,
	// by peer; legacySessions the peers whose sessions are still in the
	// legacy layout (none of theirs is in oldSessions).
	oldSessions    map[e2ee.AccountID][]*e2ee.Session
	legacySessions map[e2ee.AccountID]bool

	// keysArrived are members whose group sender keys this tx applied.
	keysArrived []e2ee.AccountID
	// lazy commits without waiting for the disk: for changes that can be
	// recomputed or repeated (transport bookkeeping, receipts), never for
	// a message we promise to keep.
	lazy bool
	// async (lazy, and no new jobs) doesn't even wait for the write: the
	// commit returns once it is ordered (storage.Batch.CommitAsync), so a
	// read after it sees it, and the next commit's sync covers it.
	async  bool
	after  []func()            // run after a successful commit
	inline []*pb.InlineReceipt // receipts for the answer, once durable (receive)
	events []Event             // emitted once durable (receive)
	gen    uint64              // write generation of the flushed batch (0: nothing written)
}

// maxTxOps bounds the writes one transaction stages, so a commit stays
// well within the device store's transaction limit (a few thousand small
// entries): callers that may stage many split their work.
const maxTxOps = 400

// maxReceiptIDs caps the message ids one receipt carries or is acted on.
const maxReceiptIDs = 128

// ops estimates how many store writes commit would make.
func (t *tx) ops() int {
	return 2*len(t.msgs) + len(t.sessions) + len(t.convs) + len(t.jobs) + 2*len(t.delJobs) +
		2*len(t.seen) + len(t.groups) + len(t.myKeys) + len(t.shares) + len(t.memKeys) + 2
}

func (s *Service) begin() *tx {
	t := &tx{
		s:           s,
		b:           s.cfg.Store.NewBatch(),
		sessions:    map[e2ee.AccountID][]*e2ee.Session{},
		newSessions: map[e2ee.AccountID]bool{},
		convs:       map[string]*convState{},
		msgs:        map[string]*Message{},
		indexed:     map[string]bool{},
		seen:        map[[32]byte][]byte{},
		groups:      map[string]*Group{},
		myKeys:      map[string]*e2ee.SenderKey{},
		shares:      map[string]*keyShare{},
		memKeys:     map[string]*e2ee.SenderKeyState{},
	}
	t.oldSessions, t.legacySessions = map[e2ee.AccountID][]*e2ee.Session{}, map[e2ee.AccountID]bool{}
	return t
}

func (t *tx) ctx() context.Context { return t.s.ctx }

func (t *tx) get(key string, v any) (bool, error) {
	b, err := t.s.ns.Get(t.ctx(), key)
	if errors.Is(err, storage.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return true, json.Unmarshal(b, v)
}

func (t *tx) put(key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return t.b.Put(t.s.ns, key, b)
}

// Sessions returns the pairwise sessions with a, current first.
func (t *tx) Sessions(a e2ee.AccountID) ([]*e2ee.Session, error) {
	if ss, ok := t.sessions[a]; ok {
		return ss, nil
	}
	if ss, ok := t.s.eng.sessions.get(a); ok {
		t.sessions[a], t.oldSessions[a] = ss, ss
		return ss, nil
	}
	ss, legacy, err := t.loadSessions(a)
	if err != nil {
		return nil, err
	}
	t.sessions[a] = ss
	if legacy {
		// Not cached until a commit has moved them to their own keys.
		t.legacySessions[a] = true
		return ss, nil
	}
	t.oldSessions[a] = ss
	t.s.eng.sessions.put(a, ss)
	return ss, nil
}

// loadSessions reads the sessions with a from the store: from their own
// keys, or from the legacy single value (legacy true).
func (t *tx) loadSessions(a e2ee.AccountID) (ss []*e2ee.Session, legacy bool, err error) {
	var ids []string
	ok, err := t.get(t.s.keySessions(a), &ids)
	if err != nil {
		return nil, false, err
	}
	if ok {
		for _, id := range ids {
			b, err := t.s.ns.Get(t.ctx(), t.s.keySession(a, id))
			if err != nil {
				return nil, false, fmt.Errorf("load session %s: %w", id, err)
			}
			sess, err := e2ee.UnmarshalSession(b)
			if err != nil {
				return nil, false, fmt.Errorf("load session %s: %w", id, err)
			}
			ss = append(ss, sess)
		}
		return ss, false, nil
	}
	var raw [][]byte
	if ok, err = t.get(t.s.keyLegacySessions(a), &raw); err != nil || !ok {
		return nil, false, err
	}
	for _, r := range raw {
		sess, err := e2ee.UnmarshalSession(r)
		if err != nil {
			return nil, false, fmt.Errorf("load session: %w", err)
		}
		ss = append(ss, sess)
	}
	return ss, true, nil
}

// setSessions stages ss (current first) as the sessions with a, which
// Sessions has loaded in t: at most maxSessionsPerPeer, one per ID.
func (t *tx) setSessions(a e2ee.AccountID, ss []*e2ee.Session) {
	seen := map[[16]byte]bool{}
	ss = slices.DeleteFunc(slices.Clone(ss), func(x *e2ee.Session) bool {
		dup := seen[x.ID()]
		seen[x.ID()] = true
		return dup
	})
	if len(ss) > maxSessionsPerPeer {
		ss = ss[:maxSessionsPerPeer]
	}
	t.sessions[a] = ss
	t.newSessions[a] = true
}

// putSessions stages the writes of a's sessions: each session this tx
// changed under its own key, the list of IDs if it changed, and the
// deletion of the sessions dropped (and of the legacy value).
func (t *tx) putSessions(a e2ee.AccountID) error {
	ss, old, legacy := t.sessions[a], t.oldSessions[a], t.legacySessions[a]
	ids, oldIDs := sessionIDs(ss), sessionIDs(old)
	for i, sess := range ss {
		if t.stored(a, sess) {
			continue // what is stored for it stays right
		}
		if err := t.b.Put(t.s.ns, t.s.keySession(a, ids[i]), sess.Marshal()); err != nil {
			return err
		}
		t.wroteSessions = append(t.wroteSessions, [2]string{string(a), ids[i]})
	}
	if legacy || !slices.Equal(ids, oldIDs) {
		if err := t.put(t.s.keySessions(a), ids); err != nil {
			return err
		}
	}
	for _, id := range oldIDs {
		if !slices.Contains(ids, id) {
			if err := t.b.Delete(t.s.ns, t.s.keySession(a, id)); err != nil {
				return err
			}
		}
	}
	if legacy {
		return t.b.Delete(t.s.ns, t.s.keyLegacySessions(a))
	}
	return nil
}

func sessionIDs(ss []*e2ee.Session) []string {
	ids := make([]string, len(ss))
	for i, sess := range ss {
		id := sess.ID()
		ids[i] = hex.EncodeToString(id[:])
	}
	return ids
}

// stored reports whether what the store holds for sess, one of a's
// sessions in t, is right as it is: sess persists as a committed session
// (e2ee.Session.StoresAs).
func (t *tx) stored(a e2ee.AccountID, sess *e2ee.Session) bool {
	return slices.ContainsFunc(t.oldSessions[a], sess.StoresAs)
}

// movesSessions reports whether flush would write a session.
func (t *tx) movesSessions() bool {
	for a := range t.newSessions {
		for _, sess := range t.sessions[a] {
			if !t.stored(a, sess) {
				return true
			}
		}
	}
	return false
}

// reservedLeave reports whether the message the current session with a
// just encrypted is within the reservation (e2ee.SendReserve) of the
// session's committed state, so that no session write of this tx is
// needed before it leaves, and returns the generation of the commit that
// wrote that state.
func (t *tx) reservedLeave(a e2ee.AccountID) (uint64, bool) {
	ss := t.sessions[a]
	if len(ss) == 0 || !t.stored(a, ss[0]) {
		return 0, false
	}
	id := ss[0].ID()
	return t.s.eng.sessions.writtenAt(a, hex.EncodeToString(id[:]))
}

// Prekeys returns our prekey store.
func (t *tx) Prekeys() (*e2ee.PrekeyStore, error) {
	if t.prekeys != nil {
		return t.prekeys, nil
	}
	b, err := t.s.ns.Get(t.ctx(), keyPrekeys)
	if err != nil {
		return nil, fmt.Errorf("load prekeys: %w", err)
	}
	t.prekeys, err = e2ee.UnmarshalPrekeyStore(b)
	return t.prekeys, err
}

func (t *tx) setPrekeys(p *e2ee.PrekeyStore) { t.prekeys, t.pkDirty = p, true }

// nextSeq returns the next sequence number and send time in conv: sent_at
// strictly increases, whatever the clock does.
func (t *tx) nextSeq(conv string) (uint64, time.Time, error) {
	c, ok := t.convs[conv]
	if !ok {
		c = &convState{}
		if _, err := t.get(t.s.keyConv(conv), c); err != nil {
			return 0, time.Time{}, err
		}
		t.convs[conv] = c
	}
	c.Seq++
	ms := t.s.cfg.Now().UnixMilli()
	if ms <= c.LastMs {
		ms = c.LastMs + 1
	}
	c.LastMs = ms
	return c.Seq, time.UnixMilli(ms), nil
}

// Message returns the message with id, if stored.
func (t *tx) Message(id string) (*Message, error) {
	if m, ok := t.msgs[id]; ok {
		return m, nil
	}
	if m, ok := t.s.eng.msgs.get(id); ok {
		t.msgs[id], t.indexed[id] = m, true
		return m, nil
	}
	var key string
	ok, err := t.get(keyIndex(id), &key)
	if err != nil || !ok {
		return nil, err
	}
	b, err := t.s.ns.Get(t.ctx(), key)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	m, err := decodeMessage(b, t.s.me)
	if err != nil {
		return nil, err
	}
	t.msgs[id], t.indexed[id] = m, true
	return m, nil
}

func (t *tx) putMessage(m *Message) { t.msgs[m.ID] = m }

func (t *tx) addJob(j *job) error {
	if t.jobSeq == 0 {
		var n uint64
		if _, err := t.get(keyJobSeq, &n); err != nil {
			return err
		}
		t.jobSeq = n
	}
	t.jobSeq++
	j.Seq = t.jobSeq
	j.Key = fmt.Sprintf("%s%016x", t.s.keyJobPrefix(j.To), j.Seq)
	if j.Created.IsZero() {
		j.Created = t.s.cfg.Now()
	}
	if t.newJobs == nil {
		t.newJobs = map[string]bool{}
	}
	t.newJobs[j.Key] = true
	t.jobs = append(t.jobs, j)
	return nil
}

func (t *tx) updateJob(j *job)     { t.jobs = append(t.jobs, j) }
func (t *tx) deleteJob(key string) { t.delJobs = append(t.delJobs, key) }

// Seen reports whether an envelope with hash h was processed already.
func (t *tx) Seen(h [32]byte) (bool, error) {
	if t.seen[h] != nil {
		return true, nil
	}
	return t.s.ns.Has(t.ctx(), keySeen(h))
}

// seenMark is the mark of a processed envelope or inner message that
// stored no message.
var seenMark = []byte{1}

// markSeen marks h processed, keeping a message id already noted for it.
func (t *tx) markSeen(h [32]byte) {
	if t.seen[h] == nil {
		t.seen[h] = seenMark
	}
}

// markSeenAs marks the inner message h processed as the message with
// this (raw, 16-byte) id: a copy that comes again directly gets its
// delivery receipt again (seenAs).
func (t *tx) markSeenAs(h [32]byte, id []byte) { t.seen[h] = id }

// seenAs returns the raw message id the inner message h was processed
// as, or nil (not processed, or not a stored message).
func (t *tx) seenAs(h [32]byte) ([]byte, error) {
	v, ok := t.seen[h]
	if !ok {
		var err error
		v, err = t.s.ns.Get(t.ctx(), keySeen(h))
		if errors.Is(err, storage.ErrNotFound) {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
	}
	if len(v) != 16 {
		return nil, nil
	}
	return v, nil
}

// commit writes everything staged and, unless the tx is lazy, waits until
// it is on disk; then it runs the after-commit actions.
func (t *tx) commit() error {
	if err := t.flush(); err != nil {
		return err
	}
	return t.durable()
}

// flush writes everything staged in one batch, without waiting for the
// disk, and updates the job index. Call it with s.mu held; then durable,
// after releasing s.mu where possible.
func (t *tx) flush() error {
	for a := range t.newSessions {
		if err := t.putSessions(a); err != nil {
			return err
		}
	}
	if t.pkDirty {
		if err := t.b.Put(t.s.ns, keyPrekeys, t.prekeys.Marshal()); err != nil {
			return err
		}
	}
	for conv, c := range t.convs {
		if err := t.put(t.s.keyConv(conv), c); err != nil {
			return err
		}
	}
	for _, m := range t.msgs {
		key := t.s.keyMsg(m)
		b, err := encodeMessage(m, t.s.me)
		if err != nil {
			return err
		}
		if err := t.b.Put(t.s.ns, key, b); err != nil {
			return err
		}
		if t.indexed[m.ID] {
			continue // the key never changes
		}
		if err := t.put(keyIndex(m.ID), key); err != nil {
			return err
		}
	}
	idx := t.s.jobIndex()
	deleted := make(map[string]bool, len(t.delJobs))
	for _, k := range t.delJobs {
		deleted[k] = true
	}
	for _, j := range t.jobs {
		if !t.newJobs[j.Key] && !idx.has(j.Key) || deleted[j.Key] {
			continue // deleted meanwhile or by this tx (its receipt came): don't bring it back
		}
		b, err := encodeJob(j)
		if err != nil {
			return err
		}
		if err := t.b.Put(t.s.ns, j.Key, b); err != nil {
			return err
		}
	}
	for _, k := range t.delJobs {
		if err := t.b.Delete(t.s.ns, k); err != nil {
			return err
		}
	}
	if t.jobSeq > 0 {
		if err := t.put(keyJobSeq, t.jobSeq); err != nil {
			return err
		}
	}
	for h, mark := range t.seen {
		if err := t.b.PutTTL(t.s.ns, keySeen(h), mark, seenTTL); err != nil {
			return err
		}
	}
	if err := t.commitGroups(); err != nil {
		return err
	}
	if t.b.Len() == 0 {
		return nil
	}
	if t.async && t.lazy && len(t.newJobs) == 0 && len(t.wroteSessions) == 0 {
		// No generation: nothing needs this batch on disk.
		err := t.b.CommitAsync(t.ctx(), func(err error) {
			if err != nil {
				t.s.log.Warn("recording delivery state failed", "err", err)
			}
		})
		if err != nil {
			return fmt.Errorf("message: commit: %w", err)
		}
	} else {
		if err := t.b.CommitUnsynced(t.ctx()); err != nil {
			return fmt.Errorf("message: commit: %w", err)
		}
		t.gen = t.s.eng.sync.wrote()
	}
	idx.apply(t)
	t.s.eng.msgs.put(t.msgs)
	for a := range t.newSessions {
		t.s.eng.sessions.put(a, t.sessions[a])
	}
	for _, w := range t.wroteSessions {
		t.s.eng.sessions.wrote(e2ee.AccountID(w[0]), w[1], t.gen)
	}
	return nil
}

// durable waits until the flushed batch is on disk (not for a lazy tx),
// then runs the after-commit actions.
func (t *tx) durable() error {
	if !t.lazy && t.gen > 0 {
		if err := t.s.eng.sync.wait(t.ctx(), t.s.cfg.Store, t.gen); err != nil {
			return fmt.Errorf("message: commit: %w", err)
		}
	}
	for _, f := range t.after {
		f()
	}
	return nil
}

// engineState is the engine's state beside the store: the job index, the
// syncer and the envelopes being received. Its zero value is ready.
type engineState struct {
	sync     syncer
	jobs     jobIndex
	claims   claims
	certs    certCache
	dials    rests
	msgs     msgCache
	sessions sessionCache
	direct   streamPool
}

// certCache remembers the sender certificates (signed contact records)
// that verified, by hash: every envelope carries its sender's, and
// checking its signatures again for each costs as much as opening the
// envelope.
type certCache struct {
	mu sync.Mutex
	m  map[[32]byte]contact.Signed
}

// maxCachedCerts bounds the cache; when full it starts over.
const maxCachedCerts = 1024

// parse is contact.Parse, remembering the records that verified.
func (c *certCache) parse(raw []byte) (contact.Signed, bool) {
	h := sha256.Sum256(raw)
	c.mu.Lock()
	rec, ok := c.m[h]
	c.mu.Unlock()
	if ok {
		return rec, true
	}
	rec, err := contact.Parse(raw)
	if err != nil {
		return contact.Signed{}, false
	}
	c.mu.Lock()
	if c.m == nil || len(c.m) >= maxCachedCerts {
		c.m = map[[32]byte]contact.Signed{}
	}
	c.m[h] = rec
	c.mu.Unlock()
	return rec, true
}

// syncer shares fsyncs between commits (group commit): each flushed batch
// takes a generation; wait returns once a sync that started after the
// batch was written has finished. One sync runs at a time, and whoever
// waits when it ends starts the next, for everything written meanwhile.
type syncer struct {
	written atomic.Uint64
	mu      sync.Mutex
	synced  uint64
	// unsure is the last generation a failed sync was for: what was
	// written up to it may not be on disk until a later sync succeeds.
	unsure uint64
	round  chan struct{} // closed when the running sync ends; nil if none runs
	// fail, a test hook, runs before each sync; its error fails the sync.
	fail atomic.Pointer[func() error]
}

// wrote records a write and returns its generation.
func (y *syncer) wrote() uint64 { return y.written.Add(1) }

// owed returns the generation to wait for before trusting that anything
// written is on disk (0 if nothing): the target of a failed sync no
// sync has covered since.
func (y *syncer) owed() uint64 {
	y.mu.Lock()
	defer y.mu.Unlock()
	if y.unsure > y.synced {
		return y.unsure
	}
	return 0
}

// wait returns once generation gen is on disk.
func (y *syncer) wait(ctx context.Context, st *storage.Store, gen uint64) error {
	y.mu.Lock()
	for y.synced < gen {
		if y.round != nil {
			round := y.round
			y.mu.Unlock()
			select {
			case <-round:
			case <-ctx.Done():
				return ctx.Err()
			}
			y.mu.Lock()
			continue
		}
		round := make(chan struct{})
		y.round = round
		target := y.written.Load()
		y.mu.Unlock()
		err := y.sync(ctx, st)
		y.mu.Lock()
		if err == nil && target > y.synced {
			y.synced = target
		}
		if err != nil {
			y.unsure = max(y.unsure, target)
		}
		y.round = nil
		close(round)
		if err != nil {
			y.mu.Unlock()
			return err
		}
	}
	y.mu.Unlock()
	return nil
}

func (y *syncer) sync(ctx context.Context, st *storage.Store) error {
	if f := y.fail.Load(); f != nil {
		if err := (*f)(); err != nil {
			return err
		}
	}
	return st.Sync(ctx)
}

// jobIndex holds every delivery job in memory, by key, by recipient (in
// job order) and by message, so that a lane finds its work and a receipt
// its jobs without listing the store (a listing also walks every deleted
// job until compaction removes it). It mirrors the store's "j/" keys: it
// is loaded from them once and then changed only by committed
// transactions (tx.flush, under s.mu). Entries keep their job, envelope
// included, while it has gone nowhere yet, up to maxCachedJobBytes in all;
// other jobs are read from the store when a lane needs them.
type jobIndex struct {
	mu     sync.Mutex
	loaded bool
	byKey  map[string]*jobEntry
	byTo   map[e2ee.AccountID]*jobQueue
	byMsg  map[string][]*jobEntry
	cached int // bytes of envelopes and contents held by entries
}

// maxCachedJobBytes bounds the job bytes the index keeps in memory.
const maxCachedJobBytes = 8 << 20

type jobEntry struct {
	key    string
	to     e2ee.AccountID
	msgID  string
	relays []string
	sent   bool
	gen    uint64
	leave  uint64 // job.leave
	job    *job   // nil: read it from the store
	gone   bool
}

// done is job.done for the entry.
func (e *jobEntry) done(n int) bool { return e.sent || (n > 0 && len(e.relays) >= n) }

// jobQueue is a recipient's jobs in job order; deleted entries are
// skipped and swept out once they are the majority.
type jobQueue struct {
	list []*jobEntry
	live int
}

// jobIndex returns the loaded index.
func (s *Service) jobIndex() *jobIndex {
	idx := &s.eng.jobs
	idx.mu.Lock()
	defer idx.mu.Unlock()
	if !idx.loaded {
		idx.load(s)
	}
	return idx
}

// load reads every job from the store. Called with idx.mu held.
func (idx *jobIndex) load(s *Service) {
	idx.byKey = map[string]*jobEntry{}
	idx.byTo = map[e2ee.AccountID]*jobQueue{}
	idx.byMsg = map[string][]*jobEntry{}
	err := s.ns.List(s.ctx, listPrefix("j/"), func(k string, v []byte) error {
		j := &job{}
		if err := decodeJob(v, j); err != nil {
			s.log.Warn("unreadable delivery job dropped from the index", "err", err)
			return nil
		}
		j.Key = k
		idx.put(j, 0, 0)
		return nil
	})
	if err != nil && s.ctx.Err() == nil {
		s.log.Warn("loading delivery jobs", "err", err)
	}
	idx.loaded = true
}

func (idx *jobIndex) has(key string) bool {
	idx.mu.Lock()
	defer idx.mu.Unlock()
	_, ok := idx.byKey[key]
	return ok
}

// apply records a committed transaction's job changes.
func (idx *jobIndex) apply(t *tx) {
	if len(t.jobs) == 0 && len(t.delJobs) == 0 {
		return
	}
	idx.mu.Lock()
	defer idx.mu.Unlock()
	for _, j := range t.jobs {
		gen := uint64(0)
		if t.newJobs[j.Key] || !t.lazy {
			gen = t.gen
		}
		leave := gen
		if t.newJobs[j.Key] && j.early {
			leave = j.leave
		}
		if t.newJobs[j.Key] || idx.byKey[j.Key] != nil {
			idx.put(j, gen, leave)
		}
	}
	for _, k := range t.delJobs {
		idx.remove(k)
	}
}

// put adds or updates the entry for j. gen, if not 0, is the write
// generation of the commit that wrote it, leave the one its envelope
// needs on disk before it leaves (job.gen, job.leave). Called with idx.mu
// held.
func (idx *jobIndex) put(j *job, gen, leave uint64) {
	e := idx.byKey[j.Key]
	if e == nil {
		e = &jobEntry{key: j.Key, to: j.To, msgID: j.MsgID}
		idx.byKey[j.Key] = e
		q := idx.byTo[j.To]
		if q == nil {
			q = &jobQueue{}
			idx.byTo[j.To] = q
		}
		q.list = append(q.list, e)
		q.live++
		if e.msgID != "" {
			idx.byMsg[e.msgID] = append(idx.byMsg[e.msgID], e)
		}
	}
	e.relays, e.sent = slices.Clone(j.Relays), j.Sent
	e.gen, e.leave = max(e.gen, gen), max(e.leave, leave)
	idx.uncache(e)
	// Keep what has gone nowhere yet: a lane will want it soon.
	if !j.Sent && len(j.Relays) == 0 {
		idx.cache(e, j)
	}
}

func jobBytes(j *job) int { return len(j.Envelope) + len(j.Content) + len(j.Payload) }

// cache keeps a copy of j in e if the budget allows.
func (idx *jobIndex) cache(e *jobEntry, j *job) {
	if size := jobBytes(j); idx.cached+size <= maxCachedJobBytes {
		c := *j
		c.Relays = nil
		e.job = &c
		idx.cached += size
	}
}

func (idx *jobIndex) uncache(e *jobEntry) {
	if e.job != nil {
		idx.cached -= jobBytes(e.job)
		e.job = nil
	}
}

// remove deletes the entry for key. Called with idx.mu held.
func (idx *jobIndex) remove(key string) {
	e := idx.byKey[key]
	if e == nil {
		return
	}
	delete(idx.byKey, key)
	idx.uncache(e)
	e.gone = true
	if e.msgID != "" {
		rest := slices.DeleteFunc(idx.byMsg[e.msgID], func(x *jobEntry) bool { return x == e })
		if len(rest) == 0 {
			delete(idx.byMsg, e.msgID)
		} else {
			idx.byMsg[e.msgID] = rest
		}
	}
	q := idx.byTo[e.to]
	q.live--
	switch {
	case q.live == 0:
		delete(idx.byTo, e.to)
	case q.live < len(q.list)/2:
		q.list = slices.DeleteFunc(q.list, func(x *jobEntry) bool { return x.gone })
	}
}

// recipients returns every recipient with jobs.
func (idx *jobIndex) recipients() []e2ee.AccountID {
	idx.mu.Lock()
	defer idx.mu.Unlock()
	out := make([]e2ee.AccountID, 0, len(idx.byTo))
	for to := range idx.byTo {
		out = append(out, to)
	}
	return out
}

// pick returns up to max of to's jobs that still need transport, in
// order: first those no relay or device holds yet, then those some relays
// hold but not all of n. Entries without their job come back with job nil
// and the key to read it by.
func (idx *jobIndex) pick(to e2ee.AccountID, n, max int) []jobEntry {
	idx.mu.Lock()
	defer idx.mu.Unlock()
	q := idx.byTo[to]
	if q == nil {
		return nil
	}
	var fresh, partial []jobEntry
	for _, e := range q.list {
		switch {
		case e.gone || e.done(n):
		case len(e.relays) == 0:
			fresh = append(fresh, *e)
		case len(partial) < max:
			partial = append(partial, *e)
		}
		if len(fresh) == max {
			break
		}
	}
	return append(fresh, partial[:min(len(partial), max-len(fresh))]...)
}

// jobsFor returns the keys of to's jobs for the messages in ids.
func (idx *jobIndex) jobsFor(to e2ee.AccountID, ids map[string]bool) []string {
	idx.mu.Lock()
	defer idx.mu.Unlock()
	var keys []string
	for id := range ids {
		for _, e := range idx.byMsg[id] {
			if e.to == to {
				keys = append(keys, e.key)
			}
		}
	}
	return keys
}

// claims are the envelopes being received right now, by hash, so that
// copies of one envelope arriving at once (from several relays, or direct
// and relayed) are opened and processed once: whoever claims it first
// does the work; the others wait for it and then find it processed.
type claims struct {
	mu sync.Mutex
	m  map[[32]byte]chan struct{}
}

// claim claims the hashes not claimed yet: mine[i] says hs[i] is now
// ours; otherwise wait[i] is closed when its holder releases it (a hash
// twice in hs: the second waits for the first).
func (c *claims) claim(hs [][32]byte) (mine []bool, wait []chan struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[[32]byte]chan struct{}{}
	}
	mine, wait = make([]bool, len(hs)), make([]chan struct{}, len(hs))
	for i, h := range hs {
		if ch, ok := c.m[h]; ok {
			wait[i] = ch
			continue
		}
		c.m[h] = make(chan struct{})
		mine[i] = true
	}
	return mine, wait
}

// release releases the hashes claimed (mine).
func (c *claims) release(hs [][32]byte, mine []bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, h := range hs {
		if mine[i] {
			close(c.m[h])
			delete(c.m, h)
		}
	}
}
