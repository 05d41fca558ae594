package message

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/kinmesh/kinmesh/protocols/contact"
	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/protocols/message/pb"
	"github.com/kinmesh/kinmesh/storage"
)

// Group is a group as this account knows it.
type Group struct {
	ID      string   `json:"id"`
	Name    string   `json:"name"`
	Members []string `json:"members"` // account ids, this account included
	// Admin alone adds, removes and renames: the creator, or the member
	// it handed the group to when it left.
	Admin   string `json:"admin"`
	Version uint64 `json:"version"`
	// Left is true once this account left or was removed.
	Left bool `json:"left"`
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

// keyShare is how far our current sender key in a group has gone. Keys
// are distributed lazily, as Signal does: a member gets our key with the
// first message we send it, not when it joins, and a removal marks the key
// for rotation at our next send instead of rotating and redistributing at
// once. So a group of n costs each sender n-1 distributions when it sends,
// not every member n-1 at every change.
type keyShare struct {
	// KeyID is the key the holders were sent.
	KeyID uint32 `json:"key_id"`
	// Holders are the members that were sent its distribution.
	Holders []string `json:"holders,omitempty"`
	// Rotate: a member left or was removed since; the next send replaces
	// the key first, and sends the new one to the remaining members only.
	Rotate bool `json:"rotate,omitempty"`
}

// keyShare returns the share of our sender key in group (zero if none).
func (t *tx) keyShare(group string) (*keyShare, error) {
	if ks, ok := t.shares[group]; ok {
		return ks, nil
	}
	ks := &keyShare{}
	if _, err := t.get(t.s.keyMyKeyShare(group), ks); err != nil {
		return nil, err
	}
	t.shares[group] = ks
	return ks, nil
}

// rotateKeyLater marks our sender key in group for rotation at our next
// send to it: a member left or was removed. Nothing is sent now, and
// nothing is encrypted with the old key after this commits. If the share
// can't be read, a new one (due for rotation, no holders) replaces it.
func (t *tx) rotateKeyLater(group string) {
	ks, err := t.keyShare(group)
	if err != nil {
		ks = &keyShare{}
		t.shares[group] = ks
	}
	ks.Rotate = true
}

// mySenderKey returns our sender key in group and who holds it: created
// on first use, and rotated, with no holders then, when a member left
// since the last send (keyShare.Rotate) or when its age or use says so.
func (t *tx) mySenderKey(group string) (*e2ee.SenderKey, *keyShare, error) {
	ks, err := t.keyShare(group)
	if err != nil {
		return nil, nil, err
	}
	k, ok := t.myKeys[group]
	if !ok {
		switch b, err := t.s.ns.Get(t.ctx(), t.s.keyMyKey(group)); {
		case err == nil:
			if k, err = e2ee.UnmarshalSenderKey(b); err != nil {
				return nil, nil, err
			}
		case !errors.Is(err, storage.ErrNotFound):
			return nil, nil, err
		}
	}
	now := t.s.cfg.Now()
	fresh := true
	switch {
	case k == nil:
		k, err = e2ee.NewSenderKey(rand.Reader, group, t.s.me, now)
	case ks.Rotate || k.NeedsRotation(now):
		k, err = k.Rotate(rand.Reader, now)
	default:
		fresh = false
	}
	if err != nil {
		return nil, nil, err
	}
	if fresh || ks.KeyID != k.KeyID() {
		*ks = keyShare{KeyID: k.KeyID()}
	}
	t.myKeys[group] = k
	return k, ks, nil
}

// lackingKey returns the other members of g that don't hold our current
// key (of share ks) and can be sent it: their record is known and they are
// not blocked. The others get it at a later send, once they can.
func (t *tx) lackingKey(g *Group, ks *keyShare) []e2ee.AccountID {
	held := make(map[string]bool, len(ks.Holders))
	for _, h := range ks.Holders {
		held[h] = true
	}
	var out []e2ee.AccountID
	for _, m := range others(g, t.s.me) {
		if held[string(m)] {
			continue
		}
		if _, ok := t.s.cfg.Contacts.Contact(m); !ok || t.s.cfg.Contacts.Blocked(m) {
			continue
		}
		out = append(out, m)
	}
	return out
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
	for g, ks := range t.shares {
		if err := t.put(t.s.keyMyKeyShare(g), ks); err != nil {
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
	var rest []recordChunk
	for _, m := range g.Members[1:] {
		if err := t.sendGroupUpdate(g, e2ee.AccountID(m), true, false, &rest); err != nil {
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
// member rotates its sender key before its next send to the group, so the
// removed can't read what follows.
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
	// The added get our sender key with our next message; after a
	// removal, that message goes under a new key.
	if len(removed) > 0 {
		t.rotateKeyLater(g.ID)
	}
	if err := t.commit(); err != nil {
		return nil, err
	}
	s.sendRecordChunks(g, rest)
	out := *g
	s.emit(Event{Type: "group", Group: &out})
	return &out, nil
}

// LeaveGroup leaves a group. A member's leave is a GroupUpdate{left} to
// the others. The admin, leaving a group others are still in, hands it on
// instead: a new version without the admin, naming as admin the member who
// has been in it longest (the first of Members), so the group can still
// change. Either way the others rotate their keys before they next send.
func (s *Service) LeaveGroup(ctx context.Context, id string) (*Group, error) {
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
	if g.Left {
		out := *g
		return &out, nil
	}
	rest := others(g, s.me)
	handOver := g.Admin == string(s.me) && len(rest) > 0
	if handOver {
		g.Members = slices.DeleteFunc(g.Members, func(m string) bool { return m == string(s.me) })
		g.Admin = g.Members[0]
		g.Version++
	}
	for _, m := range rest {
		if err := t.sendGroupUpdate(g, m, false, !handOver, nil); err != nil {
			return nil, err
		}
	}
	g.Left = true
	if err := t.commit(); err != nil {
		return nil, err
	}
	out := *g
	s.emit(Event{Type: "group", Group: &out})
	return &out, nil
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
	// Our sender key goes first to the members that lack it, in the lanes
	// the message takes after it: everyone after a rotation, else the
	// members added, or unreachable, since our last send.
	k, ks, err := t.mySenderKey(group)
	if err != nil {
		return nil, err
	}
	lacking := t.lackingKey(g, ks)
	// Many go in transactions of their own, written ahead (the message's
	// commit syncs them too), so that the send's stays bounded whatever
	// the group's size.
	for len(lacking) > maxKeysInSend {
		n := min(len(lacking), keysPerTx)
		if err := t.distributeKey(g, k, ks, lacking[:n]); err != nil {
			return nil, err
		}
		if err := t.flush(); err != nil {
			return nil, err
		}
		ahead := t
		defer func() { _ = ahead.durable() }() // its lanes' wakes
		lacking = lacking[n:]
		t = s.begin()
		t.myKeys[group], t.shares[group] = k, ks
	}
	if err := t.distributeKey(g, k, ks, lacking); err != nil {
		return nil, err
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
		if _, ok := s.cfg.Contacts.Contact(member); !ok || s.cfg.Contacts.Blocked(member) {
			m.Recipients[string(member)] = StateFailed
			continue
		}
		if err := t.addJob(&job{MsgID: m.ID, To: member, Group: group, Type: e2ee.ContentSenderKey, Payload: ct}); err != nil {
			return nil, err
		}
		m.Recipients[string(member)] = StatePending
		members = append(members, member)
	}
	switch {
	case len(m.Recipients) == 0:
		m.State, m.Reason = StateFailed, "no other member in the group"
	case len(members) == 0:
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
	u := &pb.GroupUpdate{Name: g.Name, Members: g.Members, Version: g.Version, Records: records, Left: left, Admin: g.Admin}
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

// Bounds on the sender-key distributions one SendGroup stages: up to
// maxKeysInSend go in the message's own transaction; more go ahead of it
// in transactions of up to keysPerTx (a job and the session's next state
// each).
const (
	maxKeysInSend = 32
	keysPerTx     = maxTxOps / 4
)

// distributeKey sends k, our sender key in g, to members pairwise and
// records them as its holders in ks.
func (t *tx) distributeKey(g *Group, k *e2ee.SenderKey, ks *keyShare, members []e2ee.AccountID) error {
	if len(members) == 0 {
		return nil
	}
	d := k.Distribution().Marshal()
	for _, m := range members {
		if err := t.queuePairwise(m, g.ID, &pb.Content{Body: &pb.Content_SenderKey{SenderKey: &pb.SenderKey{Distribution: d}}}); err != nil {
			return err
		}
		ks.Holders = append(ks.Holders, string(m))
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
	switch typ, payload, err := t.ratchetPairwise(rec, content, nil); {
	case err == nil:
		j.Type, j.Payload = typ, payload
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

// applyGroupUpdate applies a member's view of a group. It sends nothing:
// our sender key goes to new members with our next message, and a removal
// or a leave only marks our key for rotation before that message.
func (t *tx) applyGroupUpdate(from e2ee.AccountID, id string, u *pb.GroupUpdate) []Event {
	g, err := t.Group(id)
	if err != nil || id == "" || len(id) > 64 {
		return nil
	}
	me := string(t.s.me)
	// Member records, from the admin only (or from whoever adds us to a
	// group new to us): those we learn from a records chunk that follows
	// the update (a large group's records come in several) become
	// reachable, and get our sender key with our next message.
	if g == nil && slices.Contains(u.GetMembers(), me) || g != nil && string(from) == g.Admin {
		for _, raw := range u.GetRecords() {
			if rec, err := contact.Parse(raw); err == nil {
				t.s.cfg.Contacts.Learn(rec)
			}
		}
	}
	if u.GetLeft() {
		if g == nil || !slices.Contains(g.Members, string(from)) {
			return nil
		}
		g.Members = slices.DeleteFunc(g.Members, func(m string) bool { return m == string(from) })
		t.groups[id] = g
		if !g.Left {
			t.rotateKeyLater(id)
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
		return nil // old news, or a records chunk of the update we have
	case string(from) != g.Admin:
		return nil // only the admin changes the group
	}
	rejoined := g.Version > 0 && g.Left
	newcomer := g.Version == 0 || g.Left
	removed := diff(g.Members, u.Members)
	added := diff(u.Members, g.Members)
	g.Name, g.Members, g.Version = u.Name, slices.Clone(u.Members), u.Version
	if a := u.GetAdmin(); a != "" && slices.Contains(g.Members, a) {
		g.Admin = a // handed on (the admin left)
	}
	g.Left = !slices.Contains(g.Members, me)
	t.groups[id] = g
	if g.Left {
		return []Event{{Type: "group", Group: cloneGroup(g)}}
	}
	// Rotate before our next send if someone left; and if we come back,
	// since we don't know who left while we were out.
	if len(removed) > 0 || rejoined {
		t.rotateKeyLater(id)
	}
	// A member's key can come before the update that makes it a member
	// to us (its lane overtakes the admin's): retry its parked messages.
	joined := added
	if newcomer {
		joined = g.Members
	}
	for _, m := range joined {
		if m != me && t.hasMemberKey(id, e2ee.AccountID(m)) {
			t.keysArrived = append(t.keysArrived, e2ee.AccountID(m))
		}
	}
	return []Event{{Type: "group", Group: cloneGroup(g)}}
}

// hasMemberKey reports whether we hold a sender key of from in group.
func (t *tx) hasMemberKey(group string, from e2ee.AccountID) bool {
	if _, ok := t.memKeys[group+"/"+string(from)]; ok {
		return true
	}
	ok, err := t.s.ns.Has(t.ctx(), t.s.keyMemberKey(group, from))
	return err == nil && ok
}

// applySenderKey stores a member's sender key distribution. It is kept
// even from someone we don't know as a member (yet): with lazy
// distribution the sender sends its key once, and it may overtake the
// admin's update that adds it, or us. decryptGroup only ever uses the key
// of a current member.
func (t *tx) applySenderKey(from e2ee.AccountID, group string, sk *pb.SenderKey) []Event {
	d, err := e2ee.ParseSenderKeyDistribution(sk.GetDistribution())
	if err != nil || d.GroupID != group {
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

// parked is a group message kept until its sender key arrives.
type parked struct {
	Sender      []byte           `json:"sender"` // e2ee.PublicIdentity.Marshal
	Certificate []byte           `json:"certificate,omitempty"`
	Type        e2ee.ContentType `json:"type"`
	Payload     []byte           `json:"payload"`
}

// Bounds on parked group messages. Parking happens before anything
// authenticates the message (that takes the sender key it waits for), so
// anyone could otherwise fill the disk with them for 15 days, claiming any
// sender. Honest senders send their key ahead of their messages: only a
// race parks, a few at a time. maxParkedPerSender also bounds what one
// arriving key retries in one transaction.
const (
	maxParked          = 1024
	maxParkedPerSender = 64
)

// parkedCount is what is parked, per sender (by opaque name) and in all;
// known once counted from the store (countParked). Under s.mu.
type parkedCount struct {
	known     bool
	countedAt time.Time
	total     int
	per       map[string]int
}

// park keeps a group message (an envelope's inner message c, named h)
// whose sender key hasn't arrived, unless the bounds are reached: then it
// is dropped, as unreadable.
func (t *tx) park(h [32]byte, c e2ee.EnvelopeContent, in inbound) {
	o := t.s.opaque(string(in.from))
	pc := &t.s.parked
	full := func() bool { return pc.total >= maxParked || pc.per[o] >= maxParkedPerSender }
	if !pc.known || (full() && t.s.cfg.Now().Sub(pc.countedAt) >= time.Minute) {
		t.s.countParked(t.ctx()) // (again: some may have expired)
	}
	if !pc.known || full() {
		t.s.log.Debug("group message waiting for its key dropped: too many wait", "from", in.from)
		return
	}
	key := t.s.keyParkedPrefix(in.from) + hex.EncodeToString(h[:16])
	b, err := json.Marshal(parked{Sender: c.Sender.Marshal(), Certificate: c.Certificate, Type: c.Type, Payload: c.Payload})
	if err == nil && t.b.PutTTL(t.s.ns, key, b, MaxAge) == nil {
		pc.total++
		pc.per[o]++
	}
}

// countParked counts the parked messages in the store. Called with s.mu
// held.
func (s *Service) countParked(ctx context.Context) {
	pc := parkedCount{countedAt: s.cfg.Now(), per: map[string]int{}}
	err := s.ns.List(ctx, listPrefix("w/"), func(k string, _ []byte) error {
		if o, _, ok := strings.Cut(strings.TrimPrefix(k, "w/"), "/"); ok {
			pc.total++
			pc.per[o]++
		}
		return nil
	})
	if err != nil {
		s.log.Warn("counting parked group messages failed", "err", err)
		s.parked.known = false
		return
	}
	pc.known = true
	s.parked = pc
}

// unpark retries parked messages of senders whose keys arrived in this
// transaction.
func (t *tx) unpark(delivered map[e2ee.AccountID][][]byte) []Event {
	var events []Event
	senders := map[e2ee.AccountID]bool{}
	for _, k := range t.keysArrived {
		senders[k] = true
	}
	for from := range senders {
		prefix := t.s.keyParkedPrefix(from)
		var keys []string
		var msgs []parked
		_ = t.s.ns.List(t.ctx(), listPrefix(prefix), func(k string, v []byte) error {
			var p parked
			if jsonUnmarshal(v, &p) == nil {
				keys, msgs = append(keys, k), append(msgs, p)
			} else {
				_ = t.b.Delete(t.s.ns, k)
			}
			return nil
		})
		for i, p := range msgs {
			sender, err := e2ee.ParsePublicIdentity(p.Sender)
			var in inbound
			if err == nil {
				in, err = t.decrypt(e2ee.EnvelopeContent{Sender: sender, Certificate: p.Certificate, Type: p.Type, Payload: p.Payload})
			}
			if errors.Is(err, errParked) {
				continue
			}
			if t.b.Delete(t.s.ns, keys[i]) == nil && t.s.parked.known {
				o := t.s.opaque(string(from))
				t.s.parked.total--
				if t.s.parked.per[o]--; t.s.parked.per[o] <= 0 {
					delete(t.s.parked.per, o)
				}
			}
			if err != nil {
				continue
			}
			evs, ack := t.apply(in)
			events = append(events, evs...)
			if ack != nil {
				delivered[in.from] = append(delivered[in.from], ack)
			}
		}
	}
	return events
}
