package message

import (
	"errors"
	"fmt"

	"github.com/kinmesh/kinmesh/protocols/contact"
	"github.com/kinmesh/kinmesh/protocols/e2ee"
)

// errNoSession means we have no session with the recipient and no bundle
// to start one; the lane fetches a bundle and tries again.
var errNoSession = errors.New("message: no session yet")

// seal wraps an encrypted payload in a sealed-sender envelope to rec.
func (s *Service) seal(rec contact.Signed, typ e2ee.ContentType, payload []byte) ([]byte, error) {
	return e2ee.SealEnvelope(rec.MailboxKey, e2ee.EnvelopeContent{
		Sender:      s.cfg.Account.Identity.Public(),
		Certificate: s.record().Raw,
		Type:        typ,
		Payload:     payload,
	})
}

// decryptPairwise decrypts a pairwise payload from sender: with any of our
// sessions with it (the one that works becomes current), or, for a PQXDH
// initial message, with a new session, consuming the one-time prekeys it
// used. It returns the authenticated peer.
func (t *tx) decryptPairwise(sender e2ee.PublicIdentity, payload []byte) ([]byte, e2ee.AccountID, error) {
	from := sender.AccountID()
	ss, err := t.Sessions(from)
	if err != nil {
		return nil, "", err
	}
	var firstErr error
	for i, sess := range ss {
		pt, next, err := sess.Decrypt(payload, nil)
		if err == nil {
			rest := append(append([]*e2ee.Session{}, ss[:i]...), ss[i+1:]...)
			t.setSessions(from, append([]*e2ee.Session{next}, rest...))
			return pt, next.Peer().AccountID(), nil
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	if !e2ee.IsInitialMessage(payload) || errors.Is(firstErr, e2ee.ErrTooManySkipped) {
		// (A session that found the message too far ahead of its chain
		// knows it: it is no new session's.)
		if firstErr == nil {
			firstErr = fmt.Errorf("message: no session with %s: %w", from, e2ee.ErrDecrypt)
		}
		return nil, "", firstErr
	}
	pk, err := t.Prekeys()
	if err != nil {
		return nil, "", err
	}
	sess, pt, consumed, err := e2ee.Respond(t.s.cfg.Account.Identity, pk, payload, nil)
	if err != nil {
		return nil, "", fmt.Errorf("message: new session from %s: %w", from, err)
	}
	if peer := sess.Peer().AccountID(); peer != from {
		// Checked before anything is kept: a stranger's first message
		// claiming a contact must not become our session with the
		// contact (what we send next would go to the stranger).
		return nil, "", fmt.Errorf("message: new session claims %s, is %s's: %w", from, peer, e2ee.ErrSenderMismatch)
	}
	if len(consumed) > 0 {
		t.setPrekeys(pk.Consume(consumed...))
		if t.s.tracking {
			t.s.consumed = append(t.s.consumed, consumed...)
		}
	}
	t.setSessions(from, append([]*e2ee.Session{sess}, ss...))
	return pt, sess.Peer().AccountID(), nil
}
