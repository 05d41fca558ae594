package message

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"

	"google.golang.org/protobuf/proto"

	"github.com/kinmesh/kinmesh/protocols/contact"
	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/protocols/message/pb"
	"github.com/kinmesh/kinmesh/storage"
)

// errTransient marks a failure worth retrying (storage), as opposed to an
// envelope that will never be readable.
var errTransient = errors.New("message: temporary failure, try again")

// receiveChunk bounds how many envelopes one commit covers.
const receiveChunk = 128

// errUnstorable: processing this one envelope would stage more than one
// store transaction can hold; it is dropped rather than retried forever.
var errUnstorable = errors.New("message: envelope's effects too large to store")

// receive processes envelopes, in order. For each it returns nil when the
// envelope is handled for good (stored, a duplicate, or dropped on
// purpose: blocked sender, unreadable), errTransient when it should come
// again, or the reason it is unreadable. Callers ack (relay) or answer OK
// (direct) only for nil.
func (s *Service) receive(envs [][]byte) []error {
	errs := make([]error, len(envs))
	limit := receiveChunk
	for i := 0; i < len(envs); {
		n, chunkErrs, tooBig := s.receiveChunk(envs[i:min(i+limit, len(envs))])
		switch {
		case tooBig && limit > 1:
			limit /= 2
		case tooBig:
			s.dropUnstorable(envs[i])
			errs[i] = errUnstorable
			i++
		default:
			copy(errs[i:], chunkErrs[:n])
			i += n
			limit = receiveChunk
		}
	}
	return errs
}

// dropUnstorable remembers an envelope as processed without acting on it.
func (s *Service) dropUnstorable(env []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.begin()
	t.markSeen(sha256.Sum256(env))
	if err := t.commit(); err != nil {
		s.log.Warn("dropping an oversized envelope failed", "err", err)
	}
}

// inbound is what one envelope became.
type inbound struct {
	from    e2ee.AccountID
	content *pb.Content
}

// receiveChunk processes envelopes in one transaction, stopping early when
// the transaction has staged maxTxOps writes. It returns how many it
// consumed and their results; tooBig when the commit didn't fit.
func (s *Service) receiveChunk(envs [][]byte) (int, []error, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.begin()
	errs := make([]error, len(envs))
	var events []Event
	delivered := map[e2ee.AccountID][][]byte{}
	n := 0
	for i, env := range envs {
		if i > 0 && t.ops() >= maxTxOps {
			break
		}
		n = i + 1
		h := sha256.Sum256(env)
		seen, err := t.Seen(h)
		if err != nil {
			errs[i] = errTransient
			continue
		}
		if seen {
			continue
		}
		in, err := t.open(env)
		switch {
		case errors.Is(err, errParked):
			t.park(h, env, in)
			t.markSeen(h)
			continue
		case errors.Is(err, errDropped):
			t.markSeen(h)
			continue
		case err != nil:
			s.log.Debug("unreadable envelope dropped", "err", err)
			t.markSeen(h)
			errs[i] = err
			continue
		}
		t.markSeen(h)
		evs, ack := t.apply(in)
		events = append(events, evs...)
		if ack != nil {
			delivered[in.from] = append(delivered[in.from], ack)
		}
	}
	events = append(events, t.unpark(delivered)...)
	for from, ids := range delivered {
		if err := t.queueReceipt(from, pb.Receipt_DELIVERED, ids); err != nil {
			s.log.Debug("queue delivery receipt", "to", from, "err", err)
		}
	}
	// A chunk that stored no new message (receipts, duplicates) need not
	// wait for the disk: losing it leaves a state to be moved again.
	t.lazy = len(delivered) == 0 && len(t.memKeys) == 0 && len(t.groups) == 0
	if err := t.commit(); err != nil {
		if errors.Is(err, storage.ErrTooLarge) {
			return 0, nil, true
		}
		s.log.Warn("storing received messages failed", "err", err)
		for i := range errs[:n] {
			errs[i] = errTransient
		}
		return n, errs, false
	}
	for _, e := range events {
		s.emit(e)
	}
	return n, errs, false
}

var (
	// errParked: a group message whose sender key hasn't arrived yet; kept
	// locally until it does.
	errParked = errors.New("message: waiting for the sender's group key")
	// errDropped: dropped on purpose (blocked sender).
	errDropped = errors.New("message: dropped")
)

// open opens an envelope and decrypts its payload, checking that the
// claimed sender is the one the session authenticates.
func (t *tx) open(env []byte) (inbound, error) {
	c, err := t.s.cfg.Account.MailboxKey.OpenEnvelope(env)
	if err != nil {
		return inbound{}, err
	}
	from := c.Sender.AccountID()
	if t.s.cfg.Contacts.Blocked(from) {
		return inbound{}, errDropped
	}
	var pt []byte
	var auth e2ee.AccountID
	switch c.Type {
	case e2ee.ContentPreKeyMessage, e2ee.ContentRatchet:
		pt, auth, err = t.decryptPairwise(c.Sender, c.Payload)
	case e2ee.ContentSenderKey:
		pt, auth, err = t.decryptGroup(c.Sender, c.Payload)
		if errors.Is(err, e2ee.ErrSenderKeyUnknown) {
			return inbound{from: from}, errParked
		}
	default:
		err = fmt.Errorf("message: content type %v: %w", c.Type, e2ee.ErrMalformed)
	}
	if err != nil {
		return inbound{}, err
	}
	if err := c.CheckSender(auth); err != nil {
		return inbound{}, err
	}
	if rec, err := contact.Parse(c.Certificate); err == nil && rec.AccountID() == from {
		t.s.cfg.Contacts.Learn(rec)
	}
	var content pb.Content
	if err := proto.Unmarshal(pt, &content); err != nil || len(content.Id) != 16 {
		return inbound{}, fmt.Errorf("message: content from %s: %w", from, e2ee.ErrMalformed)
	}
	return inbound{from: from, content: &content}, nil
}

// apply acts on one decrypted content. It returns events and, for a new
// message that wants a delivery receipt, its id.
func (t *tx) apply(in inbound) ([]Event, []byte) {
	c := in.content
	switch body := c.Body.(type) {
	case *pb.Content_Text:
		return t.applyText(in, body.Text.GetText())
	case *pb.Content_Receipt:
		return t.applyReceipt(in.from, body.Receipt), nil
	case *pb.Content_GroupUpdate:
		return t.applyGroupUpdate(in.from, c.Group, body.GroupUpdate), nil
	case *pb.Content_SenderKey:
		return t.applySenderKey(in.from, c.Group, body.SenderKey), nil
	case *pb.Content_Location:
		return t.applyLocation(in.from, c, body.Location), nil
	case *pb.Content_Control:
		return t.applyControl(in.from, body.Control), nil
	}
	return nil, nil
}

func (t *tx) applyText(in inbound, text string) ([]Event, []byte) {
	c := in.content
	id := hex.EncodeToString(c.Id)
	if checkText(text) != nil {
		return nil, nil
	}
	if old, err := t.Message(id); err != nil || old != nil {
		// Already stored: acknowledge again, the first receipt may be lost.
		return nil, c.Id
	}
	m := &Message{
		ID: id, From: string(in.from), To: string(t.s.me), Text: text,
		SentAt: timeFromMs(c.SentAt), Seq: c.Seq, State: StateReceived,
		Incoming: true, ReceivedAt: t.s.cfg.Now(),
	}
	if c.Group != "" {
		g, err := t.Group(c.Group)
		if err != nil || g == nil || !slices.Contains(g.Members, string(in.from)) {
			return nil, nil // not a member (any more): not ours to show
		}
		m.Group, m.To = c.Group, c.Group
	}
	t.putMessage(m)
	out := *m
	return []Event{{Type: "message", Message: &out}}, c.Id
}

func (t *tx) applyReceipt(from e2ee.AccountID, r *pb.Receipt) []Event {
	st := StateDelivered
	if r.GetKind() == pb.Receipt_READ {
		st = StateRead
	}
	var events []Event
	done := map[string]bool{}
	ids := r.GetIds()
	ids = ids[:min(len(ids), maxReceiptIDs)]
	for _, raw := range ids {
		id := hex.EncodeToString(raw)
		m, err := t.Message(id)
		if err != nil || m == nil || m.Incoming {
			continue
		}
		if m.Group == "" && m.To != string(from) {
			continue // a receipt for someone else's message: ignore
		}
		if m.Group != "" {
			if _, member := m.Recipients[string(from)]; !member {
				continue
			}
		}
		done[id] = true
		if setState(m, string(from), st, 0) {
			t.putMessage(m)
			c := *m
			events = append(events, Event{Type: "state", Message: &c})
		}
	}
	if len(done) > 0 {
		t.dropJobs(from, done)
	}
	return events
}

// dropJobs deletes the jobs for messages in ids to recipient: delivered,
// so nothing more to move.
func (t *tx) dropJobs(to e2ee.AccountID, ids map[string]bool) {
	_ = t.s.ns.List(t.ctx(), listPrefix(t.s.keyJobPrefix(to)), func(k string, v []byte) error {
		var j job
		if jsonUnmarshal(v, &j) == nil && ids[j.MsgID] {
			t.deleteJob(k)
		}
		return nil
	})
}

// queueReceipt encrypts a receipt for ids and queues it to from.
func (t *tx) queueReceipt(to e2ee.AccountID, kind pb.Receipt_Kind, ids [][]byte) error {
	rec, ok := t.s.cfg.Contacts.Contact(to)
	if !ok {
		return ErrUnknownContact
	}
	m := &Message{ID: newID()}
	content, err := encodeContent(m, &pb.Content{Body: &pb.Content_Receipt{Receipt: &pb.Receipt{Kind: kind, Ids: ids}}})
	if err != nil {
		return err
	}
	j := &job{To: to}
	switch env, err := t.encryptPairwise(rec, content, nil); {
	case err == nil:
		j.Envelope = env
	case errors.Is(err, errNoSession):
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
