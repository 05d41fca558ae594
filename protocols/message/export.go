package message

import (
	"context"
	"time"
)

// AllMessages calls fn with every stored message, conversation by
// conversation (for export).
func (s *Service) AllMessages(ctx context.Context, fn func(Message) error) error {
	return s.ns.List(ctx, listPrefix("m/"), func(_ string, v []byte) error {
		m, err := decodeMessage(v, s.me)
		if err != nil {
			return err
		}
		return fn(*m)
	})
}

// Purge deletes this account's mailbox on every home relay (for account
// deletion) and returns each relay's result: nil when the relay confirmed.
func (s *Service) Purge(ctx context.Context) map[string]error {
	out := map[string]error{}
	for _, r := range s.record().Relays() {
		octx, cancel := context.WithTimeout(ctx, 20*time.Second)
		sess, err := s.cfg.Mailbox.Open(octx, r.ID, s.cfg.Account.MailboxAuth)
		if err == nil {
			_, err = sess.Purge(octx)
			sess.Close()
		}
		cancel()
		out[r.ID.String()] = err
	}
	return out
}
