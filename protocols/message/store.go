package message

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/storage"
)

// Keys in the "message" namespace. Anything naming a contact or a
// conversation goes through Opaque.
//
//	prekeys                                  our e2ee.PrekeyStore
//	s/<opaque account>                       pairwise sessions with account
//	c/<opaque conversation>                  conversation counters
//	m/<opaque conv>/<ms>/<opaque from>/<seq>  a message (JSON), ms and seq as %016x
//	i/<message id>                           → message key
//	j/<opaque recipient>/<job seq>           a delivery job (JSON)
//	jobseq                                   job counter
//	h/<envelope hash>                        envelopes already processed (TTL)
//	g/<opaque group>                         a group (JSON)
//	k/<opaque group>                         our sender key in a group
//	K/<opaque group>/<opaque sender>         a member's sender key state
const (
	keyPrekeys = "prekeys"
	keyJobSeq  = "jobseq"
	seenTTL    = MaxAge + 24*time.Hour
)

func (s *Service) opaque(v string) string { return s.ns.Opaque([]byte(v)) }

func (s *Service) keySessions(a e2ee.AccountID) string { return "s/" + s.opaque(string(a)) }
func (s *Service) keyConv(conv string) string          { return "c/" + s.opaque(conv) }
func (s *Service) keyMsgPrefix(conv string) string     { return "m/" + s.opaque(conv) + "/" }
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
func (s *Service) keyMemberKey(g string, from e2ee.AccountID) string {
	return "K/" + s.opaque(g) + "/" + s.opaque(string(from))
}

// job is a unit of delivery work: one envelope (or, until a session
// exists, the plaintext content) for one recipient.
type job struct {
	Key   string         `json:"-"`
	Seq   uint64         `json:"seq"`
	MsgID string         `json:"msg_id,omitempty"` // the message whose state it drives ("" for receipts, control)
	To    e2ee.AccountID `json:"to"`
	Group string         `json:"group,omitempty"`
	// Content is the encoded pb.Content, kept only until the recipient has
	// a session (then Envelope replaces it).
	Content  []byte `json:"content,omitempty"`
	Envelope []byte `json:"envelope,omitempty"`
	Created  time.Time
	// Relays that durably hold the envelope; Sent when a device took it.
	Relays   []string `json:"relays,omitempty"`
	Sent     bool     `json:"sent,omitempty"`
	Attempts int      `json:"attempts,omitempty"`
	LastErr  string   `json:"last_err,omitempty"`
}

// done reports whether the job needs no more transport: handed to the
// device, or held by every one of n home relays.
func (j *job) done(n int) bool { return j.Sent || (n > 0 && len(j.Relays) >= n) }

type convState struct {
	Seq    uint64 `json:"seq"`
	LastMs int64  `json:"last_ms"`
}

// tx stages a set of changes under s.mu and commits them in one synced
// batch. Reads go through it so they see its own staged writes.
type tx struct {
	s        *Service
	b        *storage.Batch
	sessions map[e2ee.AccountID][]*e2ee.Session
	prekeys  *e2ee.PrekeyStore
	pkDirty  bool
	convs    map[string]*convState
	msgs     map[string]*Message // by id
	jobs     []*job
	delJobs  []string
	seen     map[[32]byte]bool
	groups   map[string]*Group
	myKeys   map[string]*e2ee.SenderKey
	memKeys  map[string]*e2ee.SenderKeyState // group + "/" + sender
	jobSeq   uint64
	// keysArrived are members whose group sender keys this tx applied.
	keysArrived []e2ee.AccountID
	// lazy commits without waiting for the disk: for changes that can be
	// recomputed or repeated (transport bookkeeping, receipts), never for
	// a message we promise to keep.
	lazy  bool
	after []func() // run after a successful commit
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
		2*len(t.seen) + len(t.groups) + len(t.myKeys) + len(t.memKeys) + 2
}

func (s *Service) begin() *tx {
	return &tx{
		s:        s,
		b:        s.cfg.Store.NewBatch(),
		sessions: map[e2ee.AccountID][]*e2ee.Session{},
		convs:    map[string]*convState{},
		msgs:     map[string]*Message{},
		seen:     map[[32]byte]bool{},
		groups:   map[string]*Group{},
		myKeys:   map[string]*e2ee.SenderKey{},
		memKeys:  map[string]*e2ee.SenderKeyState{},
	}
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
	var raw [][]byte
	if _, err := t.get(t.s.keySessions(a), &raw); err != nil {
		return nil, err
	}
	var ss []*e2ee.Session
	for _, r := range raw {
		sess, err := e2ee.UnmarshalSession(r)
		if err != nil {
			return nil, fmt.Errorf("load session: %w", err)
		}
		ss = append(ss, sess)
	}
	t.sessions[a] = ss
	return ss, nil
}

func (t *tx) setSessions(a e2ee.AccountID, ss []*e2ee.Session) {
	if len(ss) > maxSessionsPerPeer {
		ss = ss[:maxSessionsPerPeer]
	}
	t.sessions[a] = ss
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
	var key string
	ok, err := t.get(keyIndex(id), &key)
	if err != nil || !ok {
		return nil, err
	}
	m := &Message{}
	ok, err = t.get(key, m)
	if err != nil || !ok {
		return nil, err
	}
	t.msgs[id] = m
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
	t.jobs = append(t.jobs, j)
	return nil
}

func (t *tx) updateJob(j *job)     { t.jobs = append(t.jobs, j) }
func (t *tx) deleteJob(key string) { t.delJobs = append(t.delJobs, key) }

// Seen reports whether an envelope with hash h was processed already.
func (t *tx) Seen(h [32]byte) (bool, error) {
	if t.seen[h] {
		return true, nil
	}
	return t.s.ns.Has(t.ctx(), keySeen(h))
}

func (t *tx) markSeen(h [32]byte) { t.seen[h] = true }

// commit writes everything staged in one synced batch, then runs the
// after-commit actions.
func (t *tx) commit() error {
	for a, ss := range t.sessions {
		raw := make([][]byte, len(ss))
		for i, sess := range ss {
			raw[i] = sess.Marshal()
		}
		if err := t.put(t.s.keySessions(a), raw); err != nil {
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
		if err := t.put(key, m); err != nil {
			return err
		}
		if err := t.put(keyIndex(m.ID), key); err != nil {
			return err
		}
	}
	for _, j := range t.jobs {
		if err := t.put(j.Key, j); err != nil {
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
	for h := range t.seen {
		if err := t.b.PutTTL(t.s.ns, keySeen(h), []byte{1}, seenTTL); err != nil {
			return err
		}
	}
	if err := t.commitGroups(); err != nil {
		return err
	}
	if t.b.Len() > 0 {
		commit := t.b.Commit
		if t.lazy {
			commit = t.b.CommitUnsynced
		}
		if err := commit(t.ctx()); err != nil {
			return fmt.Errorf("message: commit: %w", err)
		}
	}
	for _, f := range t.after {
		f()
	}
	return nil
}
