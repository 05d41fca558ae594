package message

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"

	"github.com/kinmesh/kinmesh/protocols/contact"
	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/protocols/message/pb"
)

// Send sends text to a contact. It returns once the message is durably
// recorded (state pending) and queued for delivery; delivery proceeds in
// the background and state changes arrive as events. Concurrent Sends
// share one synced commit (group commit), so many senders, or one app
// sending from several goroutines, don't pay one fsync per message.
func (s *Service) Send(ctx context.Context, to e2ee.AccountID, text string) (*Message, error) {
	if err := checkText(text); err != nil {
		return nil, err
	}
	if _, ok := s.cfg.Contacts.Contact(to); !ok {
		return nil, ErrUnknownContact
	}
	if s.cfg.Contacts.Blocked(to) {
		return nil, ErrBlocked
	}
	req := &sendReq{to: to, text: text, done: make(chan struct{})}
	s.sending.Add(1)
	defer s.sending.Add(-1)
	select {
	case s.sends <- req:
	case <-s.ctx.Done():
		return nil, ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	select {
	case <-req.done:
		if req.err != nil && s.ctx.Err() != nil {
			return nil, ErrClosed // its commit was cut short by Close
		}
		return req.msg, req.err
	case <-s.ctx.Done():
		return nil, ErrClosed
	}
}

// sendReq is one Send waiting for the batcher.
type sendReq struct {
	to   e2ee.AccountID
	text string
	done chan struct{}
	msg  *Message
	err  error
}

// maxSendBatch caps how many Sends share one commit.
const maxSendBatch = 128

// sendLoop takes queued Sends and commits them in batches: whatever
// queued up while the previous batch was staged goes in the next. While
// Sends are queued it doesn't wait for a batch's sync before staging the
// next one: the waits run beside it, so one fsync can cover several
// batches (a pipeline).
func (s *Service) sendLoop() {
	for {
		var batch []*sendReq
		select {
		case <-s.ctx.Done():
			return
		case r := <-s.sends:
			batch = append(batch, r)
		}
		// Let Sends that are ready to queue do so first: a sync round
		// answers its batch's senders at once, and they come back
		// together. Traced with 8 senders: without this, half the
		// batches held one Send, each paying its own commit.
		runtime.Gosched()
	more:
		for len(batch) < maxSendBatch {
			select {
			case r := <-s.sends:
				batch = append(batch, r)
			default:
				break more
			}
		}
		s.sendBatch(batch)
	}
}

// sendBatch stages a batch of Sends and writes it under s.mu, wakes the
// lanes (they seal the envelopes while the disk syncs, and send them once
// it has), and waits for the disk, which answers the Sends. When no other
// Send is queued it waits itself, so the fsync starts at once: in a
// goroutine of its own it started only once a core was free, traced
// 0.17 ms later, behind the lane's sealing and the other work on 2 cores,
// and the fsync is on a lone message's critical path while the sealing
// has time to spare. When Sends are queued the wait runs beside the loop,
// which stages them meanwhile (the pipeline).
func (s *Service) sendBatch(batch []*sendReq) {
	s.mu.Lock()
	t := s.begin()
	var ok []*sendReq
	for _, r := range batch {
		if r.msg, r.err = t.stageSend(r.to, r.text); r.err == nil {
			ok = append(ok, r)
		}
	}
	if len(batch) > 1 {
		// Sends that queued up together wait for their commit before they
		// leave, and meanwhile more gather for the lane's round. Letting
		// them leave early overlapped the two devices' fsyncs under load
		// and cost 15-25% of sustained throughput (docs/benchmarks.md).
		for _, j := range t.jobs {
			j.early = false
		}
	}
	err := t.flush()
	s.mu.Unlock()
	answer := func(err error) {
		if err != nil {
			for _, r := range ok {
				r.msg, r.err = nil, err
			}
		}
		for _, r := range batch {
			close(r.done)
		}
	}
	if err != nil {
		answer(err)
		return
	}
	woken := map[e2ee.AccountID]bool{}
	for _, r := range ok {
		if !woken[r.to] {
			s.wake(r.to)
			woken[r.to] = true
		}
	}
	if len(s.sends) == 0 {
		answer(t.durable())
		return
	}
	s.wg.Go(func() { answer(t.durable()) })
}

// stageSend stages one 1:1 message in t: the message, the session's next
// state and its delivery job with the encrypted payload (the lane seals
// it; while there is no session, the job keeps the content and the lane
// encrypts it later).
func (t *tx) stageSend(to e2ee.AccountID, text string) (*Message, error) {
	rec, ok := t.s.cfg.Contacts.Contact(to)
	if !ok {
		return nil, ErrUnknownContact
	}
	seq, sentAt, err := t.nextSeq(string(to))
	if err != nil {
		return nil, err
	}
	m := &Message{
		ID: newID(), From: string(t.s.me), To: string(to), Text: text,
		SentAt: sentAt, Seq: seq, State: StatePending,
	}
	content, err := encodeContent(m, &pb.Content{Body: &pb.Content_Text{Text: &pb.Text{Text: text}}})
	if err != nil {
		return nil, err
	}
	j := &job{MsgID: m.ID, To: to}
	switch typ, payload, err := t.ratchetPairwise(rec, content, nil); {
	case err == nil:
		j.Type, j.Payload = typ, payload
		j.leave, j.early = t.reservedLeave(to)
	case err == errNoSession:
		j.Content = content
	default:
		return nil, err
	}
	t.putMessage(m)
	if err := t.addJob(j); err != nil {
		return nil, err
	}
	out := *m
	return &out, nil
}

// ratchetPairwise encrypts content for rec with the current session
// (starting one from bundle, or the invite's bundle, if there is none),
// stages the session's next state and returns the envelope's content type
// and payload. The lane seals it.
func (t *tx) ratchetPairwise(rec contact.Signed, content []byte, bundle *e2ee.Bundle) (e2ee.ContentType, []byte, error) {
	to := rec.AccountID()
	ss, err := t.Sessions(to)
	if err != nil {
		return 0, nil, err
	}
	if len(ss) == 0 {
		if bundle == nil {
			bundle = t.s.cfg.Contacts.InviteBundle(to)
		}
		if bundle == nil {
			return 0, nil, errNoSession
		}
		if bundle.Identity.AccountID() != to {
			return 0, nil, fmt.Errorf("message: bundle is not %s's: %w", to, e2ee.ErrSignature)
		}
		sess, err := e2ee.Initiate(t.s.cfg.Account.Identity, bundle)
		if err != nil {
			return 0, nil, fmt.Errorf("message: start session with %s: %w", to, err)
		}
		ss = []*e2ee.Session{sess}
	}
	msg, next, err := ss[0].Encrypt(content, nil)
	if err != nil {
		return 0, nil, fmt.Errorf("message: encrypt: %w", err)
	}
	typ := e2ee.ContentRatchet
	if e2ee.IsInitialMessage(msg) {
		typ = e2ee.ContentPreKeyMessage
	}
	t.setSessions(to, append([]*e2ee.Session{next}, ss[1:]...))
	return typ, msg, nil
}

// parallel runs f(0) … f(n-1) on up to GOMAXPROCS goroutines and returns
// the first error.
func parallel(n int, f func(int) error) error {
	workers := min(n, runtime.GOMAXPROCS(0))
	if workers <= 1 {
		for i := range n {
			if err := f(i); err != nil {
				return err
			}
		}
		return nil
	}
	var (
		next atomic.Int64
		wg   sync.WaitGroup
		errs = make([]error, workers)
	)
	for w := range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if err := f(i); err != nil && errs[w] == nil {
					errs[w] = err
				}
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

func checkText(text string) error {
	switch {
	case text == "":
		return ErrEmpty
	case len(text) > MaxTextLen:
		return ErrTooLong
	case !utf8.ValidString(text):
		return fmt.Errorf("message: text is not valid UTF-8")
	}
	return nil
}

// encodeContent fills a Content's header from m and encodes it.
func encodeContent(m *Message, c *pb.Content) ([]byte, error) {
	id, err := hex.DecodeString(m.ID)
	if err != nil {
		return nil, err
	}
	c.Id = id
	c.SentAt = m.SentAt.UnixMilli()
	c.Seq = m.Seq
	c.Group = m.Group
	b, err := proto.Marshal(c)
	if err != nil {
		return nil, err
	}
	if len(b) > MaxContentSize {
		return nil, ErrTooLong
	}
	return b, nil
}

// Messages returns the conversation with a contact or group, oldest first
// in each sender's order.
func (s *Service) Messages(ctx context.Context, with string) ([]Message, error) {
	var out []Message
	err := s.ns.List(ctx, listPrefix(s.keyMsgPrefix(with)), func(_ string, v []byte) error {
		m, err := decodeMessage(v, s.me)
		if err != nil {
			return err
		}
		out = append(out, *m)
		return nil
	})
	return out, err
}

// Message returns one message by id.
func (s *Service) Message(id string) (*Message, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, err := s.begin().Message(id)
	if err != nil || m == nil {
		return nil, false
	}
	out := *m
	return &out, true
}
