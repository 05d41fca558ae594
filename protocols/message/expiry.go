package message

import (
	"context"
	"encoding/hex"
	"slices"
	"time"

	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/protocols/message/pb"
)

// expiryLoop marks messages undelivered after MaxAge as expired, at start
// and every ExpiryInterval.
func (s *Service) expiryLoop() {
	t := time.NewTicker(s.cfg.ExpiryInterval)
	defer t.Stop()
	for {
		if _, err := s.ExpireNow(); err != nil && s.ctx.Err() == nil {
			s.log.Warn("expiry check failed", "err", err)
		}
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
	}
}

// ExpireNow marks every outgoing message older than MaxAge that has no
// delivery receipt as expired and drops its delivery jobs. It returns how
// many messages expired. It runs periodically; tests call it with an
// injected clock.
func (s *Service) ExpireNow() (int, error) {
	now := s.cfg.Now()
	var hits []expiredJob
	err := s.ns.List(s.ctx, listPrefix("j/"), func(k string, v []byte) error {
		var j job
		if err := decodeJob(v, &j); err != nil {
			s.log.Warn("unreadable delivery job skipped by the expiry check", "key", k, "err", err)
			return nil // the others still expire
		}
		if now.Sub(j.Created) >= MaxAge {
			hits = append(hits, expiredJob{k, j, j.MsgID})
		}
		return nil
	})
	if err != nil || len(hits) == 0 {
		return 0, err
	}
	const per = maxTxOps / 4
	total := 0
	for start := 0; start < len(hits); start += per {
		n, err := s.expire(hits[start:min(start+per, len(hits))])
		total += n
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

// expiredJob is a delivery job past MaxAge.
type expiredJob struct {
	key   string
	j     job
	msgID string
}

func (s *Service) expire(hits []expiredJob) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.begin()
	var changed []*Message
	for _, h := range hits {
		t.deleteJob(h.key)
		if h.msgID == "" {
			continue
		}
		m, err := t.Message(h.msgID)
		if err != nil || m == nil || m.State.rank() >= StateDelivered.rank() {
			continue
		}
		if setState(m, string(h.j.To), StateExpired, 0) {
			t.putMessage(m)
			changed = append(changed, m)
		}
	}
	if err := t.commit(); err != nil {
		return 0, err
	}
	for _, m := range changed {
		c := *m
		s.emit(Event{Type: "state", Message: &c})
	}
	return len(changed), nil
}

// MarkRead marks every unread incoming message in the conversation with
// a contact or group as read and sends read receipts to their senders.
func (s *Service) MarkRead(ctx context.Context, with string) (int, error) {
	msgs, err := s.Messages(ctx, with)
	if err != nil {
		return 0, err
	}
	msgs = slices.DeleteFunc(msgs, func(m Message) bool { return !m.Incoming || m.State == StateRead })
	const per = maxTxOps / 4
	total := 0
	for start := 0; start < len(msgs); start += per {
		n, err := s.markRead(msgs[start:min(start+per, len(msgs))])
		total += n
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

func (s *Service) markRead(msgs []Message) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.begin()
	bySender := map[e2ee.AccountID][][]byte{}
	n := 0
	for i := range msgs {
		m := &msgs[i]
		if !m.Incoming || m.State == StateRead {
			continue
		}
		m.State = StateRead
		t.putMessage(m)
		id, _ := hex.DecodeString(m.ID)
		bySender[e2ee.AccountID(m.From)] = append(bySender[e2ee.AccountID(m.From)], id)
		n++
	}
	for from, ids := range bySender {
		for len(ids) > 0 {
			chunk := ids[:min(len(ids), maxReceiptIDs)]
			ids = ids[len(chunk):]
			if err := t.queueReceipt(from, pb.Receipt_READ, chunk); err != nil {
				s.log.Debug("queue read receipt", "to", from, "err", err)
			}
		}
	}
	return n, t.commit()
}
