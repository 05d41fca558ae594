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

// encryptPairwise encrypts content for rec with the current session,
// starting one from bundle if there is none (bundle may be nil), and seals
// it. The session's next state is staged in t.
func (t *tx) encryptPairwise(rec contact.Signed, content []byte, bundle *e2ee.Bundle) ([]byte, error) {
	to := rec.AccountID()
	ss, err := t.Sessions(to)
	if err != nil {
		return nil, err
	}
	if len(ss) == 0 {
		if bundle == nil {
			bundle = t.s.cfg.Contacts.InviteBundle(to)
		}
		if bundle == nil {
			return nil, errNoSession
		}
		if bundle.Identity.AccountID() != to {
			return nil, fmt.Errorf("message: bundle is not %s's: %w", to, e2ee.ErrSignature)
		}
		sess, err := e2ee.Initiate(t.s.cfg.Account.Identity, bundle)
		if err != nil {
			return nil, fmt.Errorf("message: start session with %s: %w", to, err)
		}
		ss = []*e2ee.Session{sess}
	}
	msg, next, err := ss[0].Encrypt(content, nil)
	if err != nil {
		return nil, fmt.Errorf("message: encrypt: %w", err)
	}
	typ := e2ee.ContentRatchet
	if e2ee.IsInitialMessage(msg) {
		typ = e2ee.ContentPreKeyMessage
	}
	env, err := t.s.seal(rec, typ, msg)
	if err != nil {
		return nil, err
	}
	t.setSessions(to, append([]*e2ee.Session{next}, ss[1:]...))
	return env, nil
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
	if !e2ee.IsInitialMessage(payload) {
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
	if len(consumed) > 0 {
		t.setPrekeys(pk.Consume(consumed...))
		if t.s.tracking {
			t.s.consumed = append(t.s.consumed, consumed...)
		}
	}
	t.setSessions(from, append([]*e2ee.Session{sess}, ss...))
	return pt, sess.Peer().AccountID(), nil
}
