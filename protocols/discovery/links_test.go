package discovery

import (
	"crypto/rand"
	"errors"
	"testing"
	"time"

	"github.com/kinmesh/kinmesh/protocols/e2ee"
)

// TestLinks: what other relay-side services see of the phone links.
func TestLinks(t *testing.T) {
	r := startRelay(t, nil, relaxed...)
	c := newClient(t, r)
	alice, carol := newAccount(t, "alice"), newAccount(t, "carol")
	num := mustNumber(t, "+351912345678")
	ctx := testCtx(t)

	if _, ok, err := r.svc.LinkOf(ctx, alice.id.Public()); ok || err != nil {
		t.Fatalf("LinkOf before verifying: %v, %v", ok, err)
	}
	verify(t, c, r, alice, num)
	link, ok, err := r.svc.LinkOf(ctx, alice.id.Public())
	if !ok || err != nil || link.Account == "" || link.VerifiedAt.IsZero() {
		t.Fatalf("LinkOf: %+v, %v, %v", link, ok, err)
	}
	acct, ok, err := r.svc.LinkedAccount(ctx, link.Output)
	if !ok || err != nil || acct != link.Account {
		t.Fatalf("LinkedAccount: %q, %v, %v; want %q", acct, ok, err, link.Account)
	}

	// Another identity proves the number: it gets the same output, and
	// nothing is linked to it.
	tmp, err := e2ee.NewIdentity(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.RequestCode(ctx, r.ID(), tmp, num); err != nil {
		t.Fatal(err)
	}
	code := r.code(t, num)
	wrong := "000000"
	if code == wrong {
		wrong = "111111"
	}
	_, st, err := r.svc.RedeemCode(ctx, tmp.Public(), wrong)
	wantCode(t, err, ErrWrongCode)
	if st.AttemptsLeft != DefaultMaxAttempts-1 {
		t.Fatalf("attempts left %d, want %d", st.AttemptsLeft, DefaultMaxAttempts-1)
	}
	_, _, err = r.svc.RedeemCode(ctx, tmp.Public(), "12345")
	wantCode(t, err, ErrMalformed)
	out, _, err := r.svc.RedeemCode(ctx, tmp.Public(), code)
	if err != nil || out != link.Output {
		t.Fatalf("RedeemCode: %v; output equal %v", err, out == link.Output)
	}
	_, _, err = r.svc.RedeemCode(ctx, tmp.Public(), code)
	wantCode(t, err, ErrNoCode)
	if _, ok, _ := r.svc.LinkOf(ctx, tmp.Public()); ok {
		t.Fatal("redeeming a code linked the number")
	}
	if acct, _, _ := r.svc.LinkedAccount(ctx, link.Output); acct != link.Account {
		t.Fatal("redeeming a code moved the number")
	}
	if st, err := c.Status(ctx, r.ID(), tmp); err != nil || st.Verified || st.Pending {
		t.Fatalf("the throwaway identity's status: %+v, %v", st, err)
	}

	// The number moves to carol: it is hers now, alice has no link.
	verify(t, c, r, carol, num)
	if _, ok, _ := r.svc.LinkOf(ctx, alice.id.Public()); ok {
		t.Fatal("alice still linked after the number moved")
	}
	cl, _, _ := r.svc.LinkOf(ctx, carol.id.Public())
	if acct, ok, _ := r.svc.LinkedAccount(ctx, link.Output); !ok || acct != cl.Account || acct == link.Account {
		t.Fatalf("LinkedAccount after the move: %q, %v", acct, ok)
	}
	// Carol unlinks: no one's.
	if _, err := c.Unenrol(ctx, r.ID(), carol.id); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := r.svc.LinkedAccount(ctx, link.Output); ok || err != nil {
		t.Fatalf("LinkedAccount after unlinking: %v, %v", ok, err)
	}
}

// TestRedeemCodeLimits: expiry and the account's lockout apply.
func TestRedeemCodeLimits(t *testing.T) {
	clk := newClock()
	r := startRelay(t, clk, append(relaxed, WithCodePolicy(10*time.Minute, 2, time.Hour))...)
	c := newClient(t, r)
	num := mustNumber(t, "+351912345678")
	ctx := testCtx(t)
	tmp, _ := e2ee.NewIdentity(rand.Reader)
	if _, err := c.RequestCode(ctx, r.ID(), tmp, num); err != nil {
		t.Fatal(err)
	}
	clk.Advance(11 * time.Minute)
	_, _, err := r.svc.RedeemCode(ctx, tmp.Public(), r.code(t, num))
	wantCode(t, err, ErrCodeExpired)

	if _, err := c.RequestCode(ctx, r.ID(), tmp, num); err != nil {
		t.Fatal(err)
	}
	code := r.code(t, num)
	wrong := "000000"
	if code == wrong {
		wrong = "111111"
	}
	_, _, err = r.svc.RedeemCode(ctx, tmp.Public(), wrong)
	wantCode(t, err, ErrWrongCode)
	_, _, err = r.svc.RedeemCode(ctx, tmp.Public(), wrong)
	wantCode(t, err, ErrTooManyAttempts)
	var de *Error
	if !errors.As(err, &de) || de.RetryAfter != time.Hour {
		t.Fatalf("lockout: %v", err)
	}
	_, _, err = r.svc.RedeemCode(ctx, tmp.Public(), code)
	wantCode(t, err, ErrTooManyAttempts)
}
