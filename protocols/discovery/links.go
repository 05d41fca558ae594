package discovery

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/storage"
)

// Phone links for other relay-side services. The relay's account
// recovery backups (protocols/backup) are stored under an account's
// verified number and released to whoever proves that number again with a
// fresh SMS code; these methods give such a service what it needs of the
// links without the wire protocol: an account's link (LinkOf), the
// account a number is linked to (LinkedAccount), and the check of a code
// that proves a number without linking it to anything (RedeemCode). None
// of them takes or returns a phone number: numbers are known here only
// by their OPRF output.

// Link is an account's verified number on this relay.
type Link struct {
	// Output is the number's OPRF output under the relay's key.
	Output Output
	// Account is the relay's opaque name of the account (stable for the
	// life of the relay's store; it reveals nothing without the store
	// key). LinkedAccount returns the same string.
	Account string
	// VerifiedAt is when the account verified the number.
	VerifiedAt time.Time
}

// LinkOf returns the number id's account has verified on this relay; ok
// is false if it has none.
func (s *Service) LinkOf(ctx context.Context, id e2ee.PublicIdentity) (l Link, ok bool, err error) {
	acct := s.accountKey(id.Sign)
	link, err := s.link(ctx, acct)
	if err != nil || link == nil {
		return Link{}, false, err
	}
	return Link{Output: link.output, Account: acct, VerifiedAt: link.verifiedAt}, true, nil
}

// LinkedAccount returns the opaque name (Link.Account) of the account the
// number with output out is linked to now; ok is false if it is linked to
// none (never verified here, unlinked, or its account deleted).
func (s *Service) LinkedAccount(ctx context.Context, out Output) (account string, ok bool, err error) {
	v, err := s.ns.Get(ctx, ownerKey(s.idKey(out.ID())))
	if errors.Is(err, storage.ErrNotFound) {
		return "", false, nil
	}
	if err != nil {
		return "", false, err
	}
	acct, err := decodeOwner(v)
	if err != nil {
		return "", false, err
	}
	// The owner record and the link change in one batch; check both all
	// the same, so a half-written state can only fail closed.
	link, err := s.link(ctx, acct)
	if err != nil || link == nil || link.output != out {
		return "", false, err
	}
	return acct, true, nil
}

// RedeemCode checks code against the verification id's account has
// pending on this relay (SendCode, through the wire protocol), under every
// rule VerifyCode applies — expiry, the account's wrong-code attempts and
// lockout, the number's daily guesses — and, if it is right, consumes the
// code and returns the OPRF output of the number it was sent to. Unlike
// VerifyCode it links nothing and enrols nothing: it proves that whoever
// holds id can read SMS sent to the number now. Account recovery uses it
// with a throwaway identity.
//
// The Status is the account's verification state after a wrong code (its
// AttemptsLeft). Errors are *Error with CodeMalformed (not 6 digits),
// CodeNoCode, CodeCodeExpired, CodeWrongCode, CodeTooManyAttempts (see
// RetryAfter) or CodeUnavailable.
func (s *Service) RedeemCode(ctx context.Context, id e2ee.PublicIdentity, code string) (Output, Status, error) {
	out, st, r := s.redeem(ctx, s.accountKey(id.Sign), code, s.cfg.now())
	s.tr.request("redeem_code", r.code)
	if r.code != CodeOK {
		if r.status != nil {
			st = *r.status
		}
		return Output{}, st, &Error{Code: r.code, RetryAfter: r.retryAfter}
	}
	return out, st, nil
}

func (s *Service) redeem(ctx context.Context, acct, code string, now time.Time) (Output, Status, response) {
	if !validCode(code) {
		return Output{}, Status{}, response{code: CodeMalformed}
	}
	l := s.lockAccount(acct)
	defer l.Unlock()
	until, err := s.lockedUntil(ctx, acct, now)
	if err != nil {
		return Output{}, Status{}, s.unavailable("redeem code: read lock", err)
	}
	if !until.IsZero() {
		return Output{}, Status{}, response{code: CodeTooManyAttempts, retryAfter: until.Sub(now)}
	}
	p, err := s.pending(ctx, acct)
	if err != nil {
		return Output{}, Status{}, s.unavailable("redeem code: read pending", err)
	}
	if p == nil {
		return Output{}, Status{}, response{code: CodeNoCode}
	}
	if now.After(p.expires) {
		if err := s.ns.Delete(ctx, pendingKey(acct)); err != nil {
			return Output{}, Status{}, s.unavailable("redeem code: delete expired", err)
		}
		return Output{}, Status{}, response{code: CodeCodeExpired}
	}
	if ok, wait := s.guessLim.Take(p.output.ID().String()); !ok {
		if err := s.ns.Delete(ctx, pendingKey(acct)); err != nil {
			return Output{}, Status{}, s.unavailable("redeem code: void code", err)
		}
		return Output{}, Status{}, response{code: CodeTooManyAttempts, retryAfter: wait}
	}
	if !codesEqual(code, p.code) {
		p.attempts++
		if p.attempts >= s.cfg.maxAttempts {
			b := s.store.NewBatch()
			err := errors.Join(
				b.Delete(s.ns, pendingKey(acct)),
				b.PutTTL(s.ns, lockKey(acct), encodeLock(now.Add(s.cfg.lockout)), s.cfg.lockout),
			)
			if err == nil {
				err = b.Commit(ctx)
			}
			if err != nil {
				return Output{}, Status{}, s.unavailable("redeem code: lock", err)
			}
			return Output{}, Status{}, response{code: CodeTooManyAttempts, retryAfter: s.cfg.lockout}
		}
		if err := s.ns.PutTTL(ctx, pendingKey(acct), p.encode(), p.expires.Sub(now)+24*time.Hour); err != nil {
			return Output{}, Status{}, s.unavailable("redeem code: store attempt", err)
		}
		st, err := s.status(ctx, acct, now)
		if err != nil {
			return Output{}, Status{}, s.unavailable("redeem code: status", err)
		}
		return Output{}, *st, response{code: CodeWrongCode, status: st}
	}
	b := s.store.NewBatch()
	if err := b.Delete(s.ns, pendingKey(acct)); err != nil {
		return Output{}, Status{}, s.unavailable("redeem code: consume", err)
	}
	if err := b.Commit(ctx); err != nil {
		return Output{}, Status{}, s.unavailable("redeem code: consume", fmt.Errorf("commit: %w", err))
	}
	return p.output, Status{PublicKey: s.pub}, response{}
}
