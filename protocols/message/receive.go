package message

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/kinmesh/kinmesh/protocols/contact"
	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/protocols/message/pb"
	"github.com/kinmesh/kinmesh/storage"
)

// errTransient marks a failure worth retrying (storage), as opposed to an
// envelope that will never be readable.
var errTransient = errors.New("message: temporary failure, try again")

// errLater marks an envelope with a message too far ahead of its ratchet
// chain (e2ee.ErrTooManySkipped): not acted on and not marked seen, so the
// same message decrypts when it comes again after the ones before it
// (another relay's copy, or this one at the next drain).
var errLater = errors.New("message: ahead of earlier messages, bring it again later")

// errSplit: a batch envelope's items filled the transaction before the
// last one; the envelope is taken again in the next (receiveItems).
var errSplit = errors.New("message: envelope continues in the next transaction")

// receiveChunk bounds how many envelopes one commit covers.
const receiveChunk = 128

// errUnstorable: processing this one envelope would stage more than one
// store transaction can hold; it is dropped rather than retried forever.
var errUnstorable = errors.New("message: envelope's effects too large to store")

// inline collects the delivery receipts of a direct delivery whose sender
// takes them in the answer (Deliver.want_receipts), instead of as
// messages of their own.
//
// A receipt goes inline only to a device of the messages' sender (the
// stream's peer is in the sender's contact record), within room bytes;
// the rest are queued as usual. An inline receipt is kept nowhere: if the
// answer is lost, the sender still has the message as not sent and
// delivers it again, and the copy that comes again, a duplicate, gets a
// receipt again (markSeenAs). So a delivery that asks for them gets, in
// its answer, receipts for every message it brought that the device has,
// new or not.
type inline struct {
	peer peer.ID
	room int // bytes of receipts the answer may still carry
	out  []*pb.InlineReceipt
}

// maxInlineReceipts is what the receipts in one DeliverAck may add up to
// (their payloads, and inlineFraming each); the ones that don't fit are
// queued. A full frame (maxDirectBatch batch envelopes of up to 64
// messages) needs about 32 receipts of maxReceiptIDs ids: about 75 KB.
const maxInlineReceipts = 96 << 10

// inlineFraming bounds the protobuf framing of one InlineReceipt in a
// DeliverAck.
const inlineFraming = 16

// takes reports whether receipts to account to may go inline: to's
// device sent the frame.
func (in *inline) takes(s *Service, to e2ee.AccountID) bool {
	if in == nil {
		return false
	}
	rec, ok := s.cfg.Contacts.Contact(to)
	return ok && slices.Contains(rec.Devices, in.peer)
}

// receive processes envelopes. For each it returns nil when the envelope
// is handled for good (stored, a duplicate, or dropped on purpose:
// blocked sender, unreadable), errTransient when it should come again, or
// the reason it is unreadable. Callers ack (relay) or answer OK (direct)
// only for nil, and receive returns only once what it stored is on disk.
// With in (a direct delivery that takes its receipts in the answer), the
// delivery receipts for the sender's device are put in in.out instead of
// queued, once they are on disk.
//
// The work comes in three steps. Claim: copies of one envelope arriving
// at once (from each home relay, or direct and relayed) are processed
// once; envelopes another call claimed first are left to it. Open: the
// sealed-sender envelopes of the new ones are opened outside s.mu, on
// every core (an X-Wing HPKE decapsulation each, the costly part).
// Apply: in order, in transactions of up to receiveChunk envelopes under
// s.mu (decrypt, store, queue receipts), each written without waiting for
// the disk; then one wait for the disk covers them all. The envelopes
// left to another call are then looked at again, once it has finished:
// normally they are processed by then.
func (s *Service) receive(envs [][]byte, in *inline, stream *e2ee.StreamOpener) []error {
	errs := make([]error, len(envs))
	if len(envs) == 0 {
		return errs
	}
	hs := make([][32]byte, len(envs))
	for i, env := range envs {
		hs[i] = sha256.Sum256(env)
	}
	mine, wait := s.eng.claims.claim(hs)
	var own []int
	for i := range envs {
		if mine[i] {
			own = append(own, i)
		}
	}
	s.receiveOwn(envs, hs, own, errs, in, stream)
	s.eng.claims.release(hs, mine)
	var later []int
	for i := range envs {
		if mine[i] {
			continue
		}
		select {
		case <-wait[i]:
			later = append(later, i)
		case <-s.ctx.Done():
			errs[i] = errTransient
		}
	}
	if len(later) > 0 {
		sub := make([][]byte, len(later))
		for k, i := range later {
			sub[k] = envs[i]
		}
		for k, err := range s.receive(sub, in, stream) {
			errs[later[k]] = err
		}
	}
	return errs
}

// openEnvelope opens an envelope to our mailbox key: a single one, or a
// stream envelope of a direct stream with its opener (nil: none came).
func (s *Service) openEnvelope(env []byte, stream *e2ee.StreamOpener) (e2ee.EnvelopeContent, error) {
	if stream != nil && e2ee.IsStreamEnvelope(env) {
		return stream.Open(env)
	}
	return s.cfg.Account.MailboxKey.OpenEnvelope(env)
}

// opened is an envelope opened ahead of its transaction.
type opened struct {
	done bool
	c    e2ee.EnvelopeContent
	err  error
}

// receiveOwn processes envs[i] for i in own (claimed by this call) and
// sets errs[i].
func (s *Service) receiveOwn(envs [][]byte, hs [][32]byte, own []int, errs []error, in *inline, stream *e2ee.StreamOpener) {
	if len(own) == 0 {
		return
	}
	oenvs, ohs, pre := make([][]byte, len(own)), make([][32]byte, len(own)), make([]opened, len(own))
	var todo, dups []int
	for k, i := range own {
		oenvs[k], ohs[k] = envs[i], hs[i]
		// Processed before (another relay's copy, a retry): nothing to
		// open, unless the sender takes receipts inline: a retry means
		// it didn't get them.
		if seen, err := s.ns.Has(s.ctx, keySeen(hs[i])); err != nil || !seen {
			todo = append(todo, k)
		} else {
			dups = append(dups, k)
			if in != nil {
				todo = append(todo, k)
			}
		}
	}
	_ = parallel(len(todo), func(x int) error {
		k := todo[x]
		pre[k].c, pre[k].err = s.openEnvelope(oenvs[k], stream)
		pre[k].done = true
		return nil
	})
	out := make([]error, len(own))
	var txs []*tx
	var done []int // how many of own each tx in txs covered, cumulatively
	limit := receiveChunk
	for i := 0; i < len(own); {
		end := min(i+limit, len(own))
		n, chunkErrs, t, tooBig := s.receiveChunk(oenvs[i:end], ohs[i:end], pre[i:end], in, stream)
		switch {
		case tooBig && limit > 1:
			limit /= 2
		case tooBig:
			s.dropUnstorable(oenvs[i])
			out[i] = errUnstorable
			i++
		default:
			copy(out[i:], chunkErrs[:n])
			i += n
			limit = receiveChunk
			if t != nil {
				txs = append(txs, t)
				done = append(done, i)
				// Wake lanes now (receipts to send): they encrypt while
				// the disk syncs and wait for it before sending.
				for _, f := range t.after {
					f()
				}
			}
		}
	}
	// One wait for the disk for every transaction above. A duplicate is
	// answered only once what processed it is on disk too: normally its
	// claim kept it waiting until then, but if that sync failed, the copy
	// that comes again waits for a sync that succeeds.
	var gen uint64
	for _, t := range txs {
		if !t.lazy {
			gen = max(gen, t.gen)
		}
	}
	if len(dups) > 0 {
		gen = max(gen, s.eng.sync.owed())
	}
	if err := s.eng.sync.wait(s.ctx, s.cfg.Store, gen); err != nil {
		s.log.Warn("storing received messages failed", "err", err)
		for _, k := range dups {
			out[k] = errTransient
		}
		from := 0
		for x, t := range txs {
			if !t.lazy {
				for k := from; k < done[x]; k++ {
					out[k] = errTransient
				}
			}
			from = done[x]
		}
		for x := len(txs) - 1; x >= 0; x-- {
			if !txs[x].lazy {
				txs = txs[:x]
				break
			}
		}
	} else if in != nil {
		for _, t := range txs {
			in.out = append(in.out, t.inline...)
		}
	}
	for _, t := range txs {
		for _, e := range t.events {
			s.emit(e)
		}
	}
	for k, i := range own {
		errs[i] = out[k]
	}
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

// receiveChunk processes envelopes (with their hashes, and opened ahead
// where pre says so; envelopes seen before only with in) in one transaction, stopping early when it has
// staged maxTxOps writes, and writes it without waiting for the disk. It
// returns how many it consumed, their results and the written transaction
// (nil if nothing was written), whose events and after-commit actions are
// the caller's once it is durable; tooBig when it didn't fit in one
// write.
func (s *Service) receiveChunk(envs [][]byte, hs [][32]byte, pre []opened, in *inline, stream *e2ee.StreamOpener) (int, []error, *tx, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.begin()
	errs := make([]error, len(envs))
	delivered := map[e2ee.AccountID][][]byte{}
	n := 0
	for i, env := range envs {
		if i > 0 && t.ops() >= maxTxOps {
			break
		}
		n = i + 1
		h := hs[i]
		seen, err := t.Seen(h)
		if err != nil {
			errs[i] = errTransient
			continue
		}
		if seen && in == nil {
			continue
		}
		c, err := pre[i].c, pre[i].err
		if !pre[i].done {
			c, err = s.openEnvelope(env, stream)
		}
		var items []e2ee.EnvelopeContent
		if err == nil {
			items, err = envelopeItems(c)
		}
		if err != nil {
			s.log.Debug("unreadable envelope dropped", "err", err)
			t.markSeen(h)
			errs[i] = err
			continue
		}
		err = t.receiveItems(items, delivered, in)
		if errors.Is(err, errSplit) {
			// A batch whose effects fill more than one transaction (a
			// backlog's receipts name up to maxReceiptIDs messages each):
			// this one ends here, and the envelope comes again in the
			// next, its handled items seen.
			n = i
			break
		}
		if errors.Is(err, errTransient) || errors.Is(err, errLater) {
			errs[i] = err
			continue
		}
		if !seen {
			t.markSeen(h)
		}
		if len(items) == 1 {
			// A batch is handled once each item is: its unreadable ones
			// are dropped on their own.
			errs[i] = err
		}
	}
	t.events = append(t.events, t.unpark(delivered)...)
	room := 0
	if in != nil {
		room = in.room
	}
	for from, ids := range delivered {
		var inlineRoom *int
		if in.takes(s, from) {
			inlineRoom = &room
		}
		for len(ids) > 0 {
			n := min(len(ids), maxReceiptIDs)
			if err := t.sendReceipt(from, pb.Receipt_DELIVERED, ids[:n], inlineRoom); err != nil {
				s.log.Debug("delivery receipt", "to", from, "err", err)
			}
			ids = ids[n:]
		}
	}
	// A chunk that stored no new message (receipts, duplicates) need not
	// wait for the disk: losing it leaves a state to be moved again. But
	// when no Send is under way, one that moved a session (a receipt) is
	// synced: its DH ratchet step started the sending chain the next
	// message will use, and that message may leave before its own commit
	// syncs only once the chain's reservation is on disk
	// (tx.reservedLeave). While Sends are under way their syncs cover it
	// soon enough, and a sync of its own would only delay theirs (paired
	// runs: sustained throughput 10-20% lower).
	t.lazy = len(delivered) == 0 && len(t.memKeys) == 0 && len(t.groups) == 0 &&
		(s.sending.Load() > 0 || !t.movesSessions())
	if err := t.flush(); err != nil {
		if errors.Is(err, storage.ErrTooLarge) {
			return 0, nil, nil, true
		}
		t.inline = nil
		s.log.Warn("storing received messages failed", "err", err)
		for i := range errs[:n] {
			errs[i] = errTransient
		}
		return n, errs, nil, false
	}
	if in != nil {
		in.room = room
	}
	return n, errs, t, false
}

var (
	// errParked: a group message whose sender key hasn't arrived yet; kept
	// locally until it does.
	errParked = errors.New("message: waiting for the sender's group key")
	// errDropped: dropped on purpose (blocked sender).
	errDropped = errors.New("message: dropped")
)

// envelopeItems returns the inner messages of an opened envelope, each as
// if it had come in its own: the envelope itself, or the items of a batch.
func envelopeItems(c e2ee.EnvelopeContent) ([]e2ee.EnvelopeContent, error) {
	if c.Type != e2ee.ContentBatch {
		return []e2ee.EnvelopeContent{c}, nil
	}
	items, err := e2ee.ParseBatch(c.Payload)
	if err != nil {
		return nil, err
	}
	out := make([]e2ee.EnvelopeContent, len(items))
	for i, it := range items {
		out[i] = e2ee.EnvelopeContent{Sender: c.Sender, Certificate: c.Certificate, Type: it.Type, Payload: it.Payload}
	}
	return out, nil
}

// itemHash names an inner message whatever envelope brought it: a job
// that went alone to one relay and in a batch to another comes twice.
func itemHash(c e2ee.EnvelopeContent) [32]byte {
	h := sha256.New()
	h.Write([]byte("kinmesh/message/item/v1"))
	h.Write([]byte{byte(c.Type)})
	h.Write(c.Payload)
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// receiveItems decrypts and applies the inner messages of one envelope,
// skipping those seen before, and adds the ids that want a delivery
// receipt to delivered. It returns errTransient if the envelope should
// come again (its items handled so far are marked seen, so they won't be
// applied twice), errLater if some item was too far ahead of its chain
// (the rest are handled), errSplit if the transaction filled up before
// the last item (the ones handled are marked seen: the envelope is to be
// taken again in the next transaction), else the error of the last
// unreadable item, if any.
//
// With in (a direct delivery taking its receipts inline), an item seen
// before that stored a message from its sender is acknowledged again if
// that sender's device brought it (inline.takes): a retry.
func (t *tx) receiveItems(items []e2ee.EnvelopeContent, delivered map[e2ee.AccountID][][]byte, in *inline) error {
	var last error
	later, handled := false, false
	for _, c := range items {
		if handled && t.ops() >= maxTxOps {
			return errSplit
		}
		h := itemHash(c)
		seen, err := t.Seen(h)
		if err != nil {
			return errTransient
		}
		if seen {
			if from := c.Sender.AccountID(); in.takes(t.s, from) {
				t.ackAgain(h, from, delivered)
			}
			continue
		}
		msg, err := t.decrypt(c)
		if errors.Is(err, e2ee.ErrTooManySkipped) && t.s.stillLater(h) {
			later = true // not seen: it decrypts once the messages before it came
			continue
		}
		t.markSeen(h)
		handled = true
		switch {
		case errors.Is(err, errParked):
			t.park(h, c, msg)
			continue
		case errors.Is(err, errDropped):
			continue
		case err != nil:
			t.s.log.Debug("unreadable message dropped", "type", c.Type, "err", err)
			last = err
			continue
		}
		evs, ack := t.apply(msg)
		t.events = append(t.events, evs...)
		if ack != nil {
			t.markSeenAs(h, ack)
			delivered[msg.from] = append(delivered[msg.from], ack)
		}
	}
	if later {
		return errLater
	}
	return last
}

// maxLaterWait is how long an inner message too far ahead of its chain
// waits for the ones before it (left on the relay, brought again at each
// drain) before it is dropped as unreadable. They come within a drain or
// two when another relay's copies are behind; if they never come (lost,
// or never sent: anyone with a session can make such messages on purpose)
// it would otherwise sit on our relays for 15 days, taking our quota.
const maxLaterWait = 24 * time.Hour

// maxLaterTracked bounds the far-ahead messages remembered; past it the
// memory starts over (a message's wait starts again).
const maxLaterTracked = 4096

// stillLater reports whether the far-ahead message h may still wait for
// the ones before it. Called with s.mu held.
func (s *Service) stillLater(h [32]byte) bool {
	now := s.cfg.Now()
	first, ok := s.laterSince[h]
	if !ok {
		if s.laterSince == nil || len(s.laterSince) >= maxLaterTracked {
			s.laterSince = map[[32]byte]time.Time{}
		}
		s.laterSince[h] = now
		return true
	}
	if now.Sub(first) < s.laterFor {
		return true
	}
	delete(s.laterSince, h)
	return false
}

// decrypt decrypts an opened envelope's payload, checking that the
// claimed sender is the one the session authenticates.
func (t *tx) decrypt(c e2ee.EnvelopeContent) (inbound, error) {
	var err error
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
	if rec, ok := t.s.eng.certs.parse(c.Certificate); ok && rec.AccountID() == from {
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
	old, err := t.Message(id)
	switch {
	case err != nil:
		return nil, nil // not stored: no receipt says it is
	case old != nil && old.Incoming && old.From == string(in.from):
		// Already stored: acknowledge again, the first receipt may be lost.
		return nil, c.Id
	case old != nil:
		// Another message has this id (ours, or another sender's: ids
		// are random, so only someone who saw it can reuse it). Not
		// stored, and no receipt: its sender must not see it delivered.
		t.s.log.Debug("message id already taken: dropped", "from", in.from)
		return nil, nil
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
	for _, k := range t.s.jobIndex().jobsFor(to, ids) {
		t.deleteJob(k)
	}
}

// takeReceipts applies the delivery receipts a device of rec gave back
// with its answer to a Deliver frame (decrypted with the session with
// rec, as any message from rec); their events go to t.events. Like a
// receipt that came as a message, a session it moves is synced only when
// no Send is under way (receiveChunk): otherwise t stays lazy.
func (t *tx) takeReceipts(rec contact.Signed, receipts []*pb.InlineReceipt) {
	if len(receipts) == 0 {
		return
	}
	from := rec.AccountID()
	for _, r := range receipts {
		c := e2ee.EnvelopeContent{Sender: rec.Identity, Type: e2ee.ContentType(r.GetType()), Payload: r.GetPayload()}
		if c.Type != e2ee.ContentRatchet && c.Type != e2ee.ContentPreKeyMessage {
			continue
		}
		in, err := t.decrypt(c)
		if err != nil {
			t.s.log.Debug("unreadable inline receipt dropped", "from", from, "err", err)
			continue
		}
		if rc := in.content.GetReceipt(); rc != nil && rc.GetKind() == pb.Receipt_DELIVERED {
			t.events = append(t.events, t.applyReceipt(from, rc)...)
		}
	}
	t.lazy = t.lazy && (t.s.sending.Load() > 0 || !t.movesSessions())
}

// ackAgain adds to delivered the message the inner message h was stored
// as, if it is from that sender and still stored: its copy came again
// directly, so the receipt sent inline may have been lost.
func (t *tx) ackAgain(h [32]byte, from e2ee.AccountID, delivered map[e2ee.AccountID][][]byte) {
	id, err := t.seenAs(h)
	if err != nil || id == nil {
		return
	}
	m, err := t.Message(hex.EncodeToString(id))
	if err != nil || m == nil || !m.Incoming || m.From != string(from) {
		return
	}
	if slices.ContainsFunc(delivered[from], func(x []byte) bool { return string(x) == string(id) }) {
		return
	}
	delivered[from] = append(delivered[from], id)
}

// queueReceipt encrypts a receipt for ids and queues it to to.
func (t *tx) queueReceipt(to e2ee.AccountID, kind pb.Receipt_Kind, ids [][]byte) error {
	return t.sendReceipt(to, kind, ids, nil)
}

// sendReceipt encrypts a receipt for ids to account to and puts it in
// t.inline, if in takes it whole (its encrypted size within room), or
// queues it.
func (t *tx) sendReceipt(to e2ee.AccountID, kind pb.Receipt_Kind, ids [][]byte, room *int) error {
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
	switch typ, payload, err := t.ratchetPairwise(rec, content, nil); {
	case err == nil:
		j.Type, j.Payload = typ, payload
	case errors.Is(err, errNoSession):
		j.Content = content
	default:
		return err
	}
	if n := len(j.Payload) + inlineFraming; room != nil && j.Payload != nil && n <= *room {
		*room -= n
		t.inline = append(t.inline, &pb.InlineReceipt{Type: uint32(j.Type), Payload: j.Payload})
		return nil
	}
	if err := t.addJob(j); err != nil {
		return err
	}
	t.after = append(t.after, func() { t.s.wake(to) })
	return nil
}
