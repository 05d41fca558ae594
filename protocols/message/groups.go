package message

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"unicode/utf8"

	"github.com/kinmesh/kinmesh/protocols/contact"
	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/protocols/message/pb"
)

// Group is a group as this account knows it.
type Group struct {
	ID      string   `json:"id"`
	Name    string   `json:"name"`
	Members []string `json:"members"` // account ids, this account included
	// Admin created the group and alone adds, removes and renames.
	Admin   string `json:"admin"`
	Version uint64 `json:"version"`
	// Left is true once this account left or was removed.
	Left bool `json:"left,omitempty"`
}

// maxRecordsPerUpdate keeps a GroupUpdate with member records well inside
// MaxContentSize (a record is about 2 KiB).
const maxRecordsPerUpdate = 16

// Group returns the group with id (nil if none).
func (t *tx) Group(id string) (*Group, error) {
	if g, ok := t.groups[id]; ok {
		return g, nil
	}
	g := &Group{}
	ok, err := t.get(t.s.keyGroup(id), g)
	if err != nil || !ok {
		return nil, err
	}
	t.groups[id] = g
	return g, nil
}

// mySenderKey returns our sender key in group, creating it on first use
// and rotating it when due.
func (t *tx) mySenderKey(group string) (*e2ee.SenderKey, bool, error) {
	if k, ok := t.myKeys[group]; ok {
		return k, false, nil
	}
	b, err := t.s.ns.Get(t.ctx(), t.s.keyMyKey(group))
	now := t.s.cfg.Now()
	if err == nil {
		k, err := e2ee.UnmarshalSenderKey(b)
		if err != nil {
			return nil, false, err
		}
		if k.NeedsRotation(now) {
			k, err = k.Rotate(rand.Reader, now)
			if err != nil {
				return nil, false, err
			}
			t.myKeys[group] = k
			return k, true, nil
		}
		t.myKeys[group] = k
		return k, false, nil
	}
	k, err := e2ee.NewSenderKey(rand.Reader, group, t.s.me, now)
	if err != nil {
		return nil, false, err
	}
	t.myKeys[group] = k
	return k, true, nil
}

// rotateMyKey replaces our sender key in group (a member left).
func (t *tx) rotateMyKey(group string) error {
	k, _, err := t.mySenderKey(group)
	if err != nil {
		return err
	}
	next, err := k.Rotate(rand.Reader, t.s.cfg.Now())
	if err != nil {
		return err
	}
	t.myKeys[group] = next
	return nil
}

func (t *tx) memberKey(group string, from e2ee.AccountID) (*e2ee.SenderKeyState, error) {
	id := group + "/" + string(from)
	if st, ok := t.memKeys[id]; ok {
		return st, nil
	}
	b, err := t.s.ns.Get(t.ctx(), t.s.keyMemberKey(group, from))
	if err != nil {
		return nil, nil
	}
	st, err := e2ee.UnmarshalSenderKeyState(b)
	if err != nil {
		return nil, err
	}
	t.memKeys[id] = st
	return st, nil
}

func (t *tx) commitGroups() error {
	for id, g := range t.groups {
		if err := t.put(t.s.keyGroup(id), g); err != nil {
			return err
		}
	}
	for g, k := range t.myKeys {
		if err := t.b.Put(t.s.ns, t.s.keyMyKey(g), k.Marshal()); err != nil {
			return err
		}
	}
	for id, st := range t.memKeys {
		if err := t.b.Put(t.s.ns, t.s.keyMemberKey(st.GroupID(), st.Sender()), st.Marshal()); err != nil {
			return fmt.Errorf("store sender key %s: %w", id, err)
		}
	}
	return nil
}

// decryptGroup decrypts a sender-key message from sender.
func (t *tx) decryptGroup(sender e2ee.PublicIdentity, payload []byte) ([]byte, e2ee.AccountID, error) {
	hdr, err := e2ee.ParseSenderKeyMessage(payload)
	if err != nil {
		return nil, "", err
	}
	from := sender.AccountID()
	g, err := t.Group(hdr.GroupID)
	if err != nil {
		return nil, "", err
	}
	if g == nil || g.Left || !slices.Contains(g.Members, string(from)) {
		return nil, "", fmt.Errorf("message: group message from a non-member: %w", e2ee.ErrSenderKeyUnknown)
	}
	st, err := t.memberKey(hdr.GroupID, from)
	if err != nil {
		return nil, "", err
	}
	if st == nil {
		return nil, "", e2ee.ErrSenderKeyUnknown
	}
	pt, next, err := st.Decrypt(payload, t.s.cfg.Now())
	if err != nil {
		return nil, "", err
	}
	t.memKeys[hdr.GroupID+"/"+string(from)] = next
	return pt, next.Sender(), nil
}

// CreateGroup creates a group with this account as admin and the given
// contacts as members, and tells every member.
func (s *Service) CreateGroup(ctx context.Context, name string, members []e2ee.AccountID) (*Group, error) {
	if err := checkGroupName(name); err != nil {
		return nil, err
	}
	if len(members)+1 > MaxGroupMembers {
		return nil, ErrGroupTooLarge
	}
	g := &Group{ID: newID(), Name: name, Admin: string(s.me), Members: []string{string(s.me)}, Version: 1}
	for _, m := range members {
		if m == s.me || slices.Contains(g.Members, string(m)) {
			continue
		}
		if _, ok := s.cfg.Contacts.Contact(m); !ok {
			return nil, fmt.Errorf("%w: %s", ErrUnknownContact, m)
		}
		g.Members = append(g.Members, string(m))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.begin()
	t.groups[g.ID] = g
	if _, _, err := t.mySenderKey(g.ID); err != nil {
		return nil, err
	}
	var rest []recordChunk
	for _, m := range g.Members[1:] {
		if err := t.sendGroupUpdate(g, e2ee.AccountID(m), true, false, &rest); err != nil {
			return nil, err
		}
	}
	if err := t.distributeKey(g, others(g, s.me)); err != nil {
		return nil, err
	}
	if err := t.commit(); err != nil {
		return nil, err
	}
	s.sendRecordChunks(g, rest)
	out := *g
	s.emit(Event{Type: "group", Group: &out})
	return &out, nil
}

// AddMembers adds contacts to a group (admin only).
func (s *Service) AddMembers(ctx context.Context, group string, add []e2ee.AccountID) (*Group, error) {
	return s.changeGroup(group, func(t *tx, g *Group) (added, removed []e2ee.AccountID, err error) {
		for _, m := range add {
			if slices.Contains(g.Members, string(m)) {
				continue
			}
			if _, ok := s.cfg.Contacts.Contact(m); !ok {
				return nil, nil, fmt.Errorf("%w: %s", ErrUnknownContact, m)
			}
			g.Members = append(g.Members, string(m))
			added = append(added, m)
		}
		if len(g.Members) > MaxGroupMembers {
			return nil, nil, ErrGroupTooLarge
		}
		return added, nil, nil
	})
}

// RemoveMembers removes members from a group (admin only). Every remaining
// member rotates its sender key, so the removed can't read what follows.
func (s *Service) RemoveMembers(ctx context.Context, group string, remove []e2ee.AccountID) (*Group, error) {
	return s.changeGroup(group, func(t *tx, g *Group) (added, removed []e2ee.AccountID, err error) {
		for _, m := range remove {
			if m == s.me {
				continue
			}
			if i := slices.Index(g.Members, string(m)); i >= 0 {
				g.Members = slices.Delete(g.Members, i, i+1)
				removed = append(removed, m)
			}
		}
		return nil, removed, nil
	})
}

// RenameGroup renames a group (admin only).
func (s *Service) RenameGroup(ctx context.Context, group, name string) (*Group, error) {
	if err := checkGroupName(name); err != nil {
		return nil, err
	}
	return s.changeGroup(group, func(t *tx, g *Group) (added, removed []e2ee.AccountID, err error) {
		g.Name = name
		return nil, nil, nil
	})
}

func (s *Service) changeGroup(id string, change func(*tx, *Group) (added, removed []e2ee.AccountID, err error)) (*Group, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.begin()
	g, err := t.Group(id)
	if err != nil {
		return nil, err
	}
	if g == nil {
		return nil, ErrUnknownGroup
	}
	if g.Left || g.Admin != string(s.me) {
		return nil, ErrNotMember
	}
	added, removed, err := change(t, g)
	if err != nil {
		return nil, err
	}
	g.Version++
	var rest []recordChunk
	for _, m := range others(g, s.me) {
		if err := t.sendGroupUpdate(g, m, slices.Contains(added, m), false, &rest); err != nil {
			return nil, err
		}
	}
	for _, m := range removed {
		if err := t.sendGroupUpdate(g, m, false, false, nil); err != nil {
			return nil, err
		}
	}
	switch {
	case len(removed) > 0:
		if err := t.rotateMyKey(g.ID); err != nil {
			return nil, err
		}
		if err := t.distributeKey(g, others(g, s.me)); err != nil {
			return nil, err
		}
	case len(added) > 0:
		if err := t.distributeKey(g, added); err != nil {
			return nil, err
		}
	}
	if err := t.commit(); err != nil {
		return nil, err
	}
	s.sendRecordChunks(g, rest)
	out := *g
	s.emit(Event{Type: "group", Group: &out})
	return &out, nil
}

// LeaveGroup leaves a group.
func (s *Service) LeaveGroup(ctx context.Context, id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.begin()
	g, err := t.Group(id)
	if err != nil {
		return err
	}
	if g == nil {
		return ErrUnknownGroup
	}
	if g.Left {
		return nil
	}
	for _, m := range others(g, s.me) {
		if err := t.sendGroupUpdate(g, m, false, true, nil); err != nil {
			return err
		}
	}
	g.Left = true
	return t.commit()
}

// Groups returns every group this account is or was in.
func (s *Service) Groups(ctx context.Context) ([]Group, error) {
	var out []Group
	err := s.ns.List(ctx, listPrefix("g/"), func(_ string, v []byte) error {
		var g Group
		if err := jsonUnmarshal(v, &g); err != nil {
			return err
		}
		out = append(out, g)
		return nil
	})
	return out, err
}

// SendGroup sends text to a group: encrypted once with our sender key,
// sealed to every other member's mailbox key.
func (s *Service) SendGroup(ctx context.Context, group, text string) (*Message, error) {
	if err := checkText(text); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.begin()
	g, err := t.Group(group)
	if err != nil {
		return nil, err
	}
	if g == nil {
		return nil, ErrUnknownGroup
	}
	if g.Left || !slices.Contains(g.Members, string(s.me)) {
		return nil, ErrNotMember
	}
	k, fresh, err := t.mySenderKey(group)
	if err != nil {
		return nil, err
	}
	if fresh {
		if err := t.distributeKey(g, others(g, s.me)); err != nil {
			return nil, err
		}
	}
	seq, sentAt, err := t.nextSeq(group)
	if err != nil {
		return nil, err
	}
	m := &Message{
		ID: newID(), From: string(s.me), To: group, Group: group, Text: text,
		SentAt: sentAt, Seq: seq, State: StatePending, Recipients: map[string]State{},
	}
	content, err := encodeContent(m, &pb.Content{Body: &pb.Content_Text{Text: &pb.Text{Text: text}}})
	if err != nil {
		return nil, err
	}
	ct, next, err := k.Encrypt(content)
	if err != nil {
		return nil, err
	}
	t.myKeys[group] = next
	var members []e2ee.AccountID
	for _, member := range others(g, s.me) {
		rec, ok := s.cfg.Contacts.Contact(member)
		if !ok || s.cfg.Contacts.Blocked(member) {
			m.Recipients[string(member)] = StateFailed
			continue
		}
		env, err := s.seal(rec, e2ee.ContentSenderKey, ct)
		if err != nil {
			return nil, err
		}
		if err := t.addJob(&job{MsgID: m.ID, To: member, Group: group, Envelope: env}); err != nil {
			return nil, err
		}
		m.Recipients[string(member)] = StatePending
		members = append(members, member)
	}
	if len(members) == 0 && len(m.Recipients) > 0 {
		m.State, m.Reason = StateFailed, "no member can be reached"
	}
	t.putMessage(m)
	if err := t.commit(); err != nil {
		return nil, err
	}
	for _, member := range members {
		s.wake(member)
	}
	out := *m
	return &out, nil
}

// others returns the members of g other than me.
func others(g *Group, me e2ee.AccountID) []e2ee.AccountID {
	var out []e2ee.AccountID
	for _, m := range g.Members {
		if m != string(me) {
			out = append(out, e2ee.AccountID(m))
		}
	}
	return out
}

// sendGroupUpdate queues g's state to member, pairwise; withRecords adds
// the signed contact records of the other members, in chunks of
// maxRecordsPerUpdate. With rest nil every chunk is staged in t; otherwise
// only the first, which carries the update, and the other chunks (records
// only: same version) are appended to rest for sendRecordChunks, so that a
// large group's O(members²) records never have to fit one transaction.
func (t *tx) sendGroupUpdate(g *Group, to e2ee.AccountID, withRecords, left bool, rest *[]recordChunk) error {
	var records [][]byte
	if withRecords {
		for _, m := range others(g, t.s.me) {
			if rec, ok := t.s.cfg.Contacts.Contact(m); ok && m != to {
				records = append(records, rec.Raw)
			}
		}
	}
	for first := true; ; first = false {
		chunk := records[:min(len(records), maxRecordsPerUpdate)]
		records = records[len(chunk):]
		if !first && rest != nil {
			*rest = append(*rest, recordChunk{to: to, records: chunk})
		} else if err := t.queueGroupUpdate(g, to, chunk, left); err != nil {
			return err
		}
		if len(records) == 0 {
			return nil
		}
	}
}

func (t *tx) queueGroupUpdate(g *Group, to e2ee.AccountID, records [][]byte, left bool) error {
	u := &pb.GroupUpdate{Name: g.Name, Members: g.Members, Version: g.Version, Records: records, Left: left}
	return t.queuePairwise(to, g.ID, &pb.Content{Body: &pb.Content_GroupUpdate{GroupUpdate: u}})
}

// recordChunk is a chunk of member records still to send to a member.
type recordChunk struct {
	to      e2ee.AccountID
	records [][]byte
}

// sendRecordChunks queues the records chunks sendGroupUpdate left over, in
// transactions of a bounded size, after the update itself was committed.
// Called with s.mu held. If it fails (or the device stops) part way, the
// members concerned lack some records until the next update or until they
// hear from those members (every envelope carries its sender's record).
func (s *Service) sendRecordChunks(g *Group, chunks []recordChunk) {
	const per = maxTxOps / 4 // a job and the session's next state
	for start := 0; start < len(chunks); start += per {
		t := s.begin()
		for _, c := range chunks[start:min(start+per, len(chunks))] {
			if err := t.queueGroupUpdate(g, c.to, c.records, false); err != nil {
				s.log.Warn("queueing a group's member records failed", "err", err)
				return
			}
		}
		if err := t.commit(); err != nil {
			s.log.Warn("queueing a group's member records failed", "err", err)
			return
		}
	}
}

// distributeKey sends our current sender key in g to members, pairwise.
func (t *tx) distributeKey(g *Group, members []e2ee.AccountID) error {
	k, _, err := t.mySenderKey(g.ID)
	if err != nil {
		return err
	}
	d := k.Distribution().Marshal()
	for _, m := range members {
		if err := t.queuePairwise(m, g.ID, &pb.Content{Body: &pb.Content_SenderKey{SenderKey: &pb.SenderKey{Distribution: d}}}); err != nil {
			return err
		}
	}
	return nil
}

// queuePairwise encrypts a control content to one contact and queues it.
func (t *tx) queuePairwise(to e2ee.AccountID, group string, c *pb.Content) error {
	rec, ok := t.s.cfg.Contacts.Contact(to)
	if !ok {
		return nil // not reachable: it learns the state from the next update
	}
	m := &Message{ID: newID(), Group: group}
	content, err := encodeContent(m, c)
	if err != nil {
		return err
	}
	j := &job{To: to, Group: group}
	switch env, err := t.encryptPairwise(rec, content, nil); {
	case err == nil:
		j.Envelope = env
	case err == errNoSession:
		j.Content = content
	default:
		return err
	}
	if err := t.addJob(j); err != nil {
		return err
	}
	t.after = append(t.after, func() { t.s.wake(to) })
	return nil
}

// applyGroupUpdate applies a member's view of a group.
func (t *tx) applyGroupUpdate(from e2ee.AccountID, id string, u *pb.GroupUpdate) []Event {
	// Members whose records we learn now: a records chunk that follows
	// the update (a large group's records come in several) makes them
	// reachable, and they get our sender key then.
	var learned []e2ee.AccountID
	for _, raw := range u.GetRecords() {
		if rec, err := contact.Parse(raw); err == nil {
			if _, known := t.s.cfg.Contacts.Contact(rec.AccountID()); !known {
				learned = append(learned, rec.AccountID())
			}
			t.s.cfg.Contacts.Learn(rec)
		}
	}
	g, err := t.Group(id)
	if err != nil || id == "" || len(id) > 64 {
		return nil
	}
	me := string(t.s.me)
	if u.GetLeft() {
		if g == nil || !slices.Contains(g.Members, string(from)) {
			return nil
		}
		g.Members = slices.DeleteFunc(g.Members, func(m string) bool { return m == string(from) })
		t.groups[id] = g
		if err := t.rotateMyKey(id); err == nil {
			_ = t.distributeKey(g, others(g, t.s.me))
		}
		return []Event{{Type: "group", Group: cloneGroup(g)}}
	}
	if len(u.GetMembers()) > MaxGroupMembers || checkGroupName(u.GetName()) != nil {
		return nil
	}
	switch {
	case g == nil:
		if !slices.Contains(u.Members, me) || !slices.Contains(u.Members, string(from)) {
			return nil
		}
		g = &Group{ID: id, Admin: string(from)}
	case u.Version <= g.Version:
		// Old news, or a records chunk of the update we have: members we
		// couldn't reach when it came get our sender key now.
		if u.Version == g.Version && string(from) == g.Admin && !g.Left && slices.Contains(g.Members, me) {
			var to []e2ee.AccountID
			for _, m := range learned {
				if string(m) != me && slices.Contains(g.Members, string(m)) {
					to = append(to, m)
				}
			}
			if len(to) > 0 {
				if err := t.distributeKey(g, to); err != nil {
					t.s.log.Debug("distribute sender key", "group", id, "err", err)
				}
			}
		}
		return nil
	case string(from) != g.Admin:
		return nil // only the admin changes the group
	}
	newcomer := g.Version == 0 || g.Left
	removed := diff(g.Members, u.Members)
	added := diff(u.Members, g.Members)
	g.Name, g.Members, g.Version = u.Name, slices.Clone(u.Members), u.Version
	g.Left = !slices.Contains(g.Members, me)
	t.groups[id] = g
	if g.Left {
		return []Event{{Type: "group", Group: cloneGroup(g)}}
	}
	var err2 error
	switch {
	case newcomer:
		err2 = t.distributeKey(g, others(g, t.s.me))
	case len(removed) > 0:
		if err2 = t.rotateMyKey(id); err2 == nil {
			err2 = t.distributeKey(g, others(g, t.s.me))
		}
	case len(added) > 0:
		var to []e2ee.AccountID
		for _, a := range added {
			if a != me {
				to = append(to, e2ee.AccountID(a))
			}
		}
		err2 = t.distributeKey(g, to)
	}
	if err2 != nil {
		t.s.log.Debug("distribute sender key", "group", id, "err", err2)
	}
	return []Event{{Type: "group", Group: cloneGroup(g)}}
}

// applySenderKey stores a member's sender key distribution.
func (t *tx) applySenderKey(from e2ee.AccountID, group string, sk *pb.SenderKey) []Event {
	d, err := e2ee.ParseSenderKeyDistribution(sk.GetDistribution())
	if err != nil || d.GroupID != group {
		return nil
	}
	g, err := t.Group(group)
	if err != nil || g == nil || !slices.Contains(g.Members, string(from)) {
		return nil
	}
	now := t.s.cfg.Now()
	st, err := t.memberKey(group, from)
	if err != nil {
		return nil
	}
	if st == nil {
		st, err = e2ee.NewSenderKeyState(d, from, now)
	} else {
		st, err = st.Apply(d, now)
	}
	if err != nil {
		return nil
	}
	t.memKeys[group+"/"+string(from)] = st
	t.keysArrived = append(t.keysArrived, from)
	return nil
}

func diff(a, b []string) []string {
	var out []string
	for _, x := range a {
		if !slices.Contains(b, x) {
			out = append(out, x)
		}
	}
	return out
}

func cloneGroup(g *Group) *Group {
	c := *g
	c.Members = slices.Clone(g.Members)
	return &c
}

func checkGroupName(name string) error {
	if name == "" || !utf8.ValidString(name) || utf8.RuneCountInString(name) > MaxGroupNameLen {
		return ErrBadName
	}
	return nil
}

// park keeps a group message whose sender key hasn't arrived.
func (t *tx) park(h [32]byte, env []byte, in inbound) {
	key := "p/" + t.s.opaque(string(in.from)) + "/" + hex.EncodeToString(h[:16])
	_ = t.b.PutTTL(t.s.ns, key, env, MaxAge)
}

// unpark retries parked envelopes of senders whose keys arrived in this
// transaction.
func (t *tx) unpark(delivered map[e2ee.AccountID][][]byte) []Event {
	var events []Event
	senders := map[e2ee.AccountID]bool{}
	for _, k := range t.keysArrived {
		senders[k] = true
	}
	for from := range senders {
		prefix := "p/" + t.s.opaque(string(from)) + "/"
		var keys []string
		var envs [][]byte
		_ = t.s.ns.List(t.ctx(), listPrefix(prefix), func(k string, v []byte) error {
			keys = append(keys, k)
			envs = append(envs, v)
			return nil
		})
		for i, env := range envs {
			in, err := t.open(env)
			if err != nil {
				if !errors.Is(err, errParked) {
					_ = t.b.Delete(t.s.ns, keys[i])
				}
				continue
			}
			_ = t.b.Delete(t.s.ns, keys[i])
			evs, ack := t.apply(in)
			events = append(events, evs...)
			if ack != nil {
				delivered[in.from] = append(delivered[in.from], ack)
			}
		}
	}
	return events
}
