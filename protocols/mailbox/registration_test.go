package mailbox

import (
	badger "github.com/dgraph-io/badger/v4"

	"errors"
	"testing"
	"time"
)

// TestUnknownMailbox: a relay takes mail only for mailboxes whose owner
// authenticated there. A deposit to any other id is refused, envelope by
// envelope, as unknown, and leaves nothing on disk; once the owner has
// authenticated, the same deposit is taken.
func TestUnknownMailbox(t *testing.T) {
	tr := &countingTracer{}
	r := startRelay(t, WithMetricsTracer(tr))
	c := newClient(t, r)
	k := newKey(t)
	res, err := c.Deposit(testCtx(t), r.h.ID(), k.ID(), envelopes(3, 100, "nobody"))
	if err != nil {
		t.Fatal(err)
	}
	wantErrs(t, res, ErrUnknownMailbox, ErrUnknownMailbox, ErrUnknownMailbox)
	if got := tr.get("rejected_unknown_mailbox"); got != 3 {
		t.Fatalf("%d envelopes counted refused as unknown, want 3", got)
	}
	if got := keysNaming(t, r, k.ID()); len(got) != 0 {
		t.Fatalf("keys naming the unknown mailbox: %v, want none", got)
	}
	// An oversized envelope keeps its own code.
	res, err = c.Deposit(testCtx(t), r.h.ID(), k.ID(), [][]byte{make([]byte, MaxEnvelopeSize+1), []byte("x")})
	if err != nil {
		t.Fatal(err)
	}
	wantErrs(t, res, ErrEnvelopeTooLarge, ErrUnknownMailbox)

	s := openSession(t, newClient(t, r), r, k)
	mustDeposit(t, c, r, k.ID(), envelopes(3, 100, "owner"))
	if got := fetchAll(t, s); len(got) != 3 {
		t.Fatalf("fetched %d items, want the 3 deposited after the owner came", len(got))
	}
}

// TestRegistrationLapses: a mailbox stays registered for the registration
// period after its owner's last authentication, counted from the start of
// that day; each authentication on a later day renews it. Once it lapses
// deposits are refused, until the owner is back.
func TestRegistrationLapses(t *testing.T) {
	const period = MaxAge + 24*time.Hour
	r := startRelay(t, WithRegistrationTTL(period))
	c := newClient(t, r)
	k := ownerKey(t, r)
	deposit := func(want error) {
		t.Helper()
		res, err := c.Deposit(testCtx(t), r.h.ID(), k.ID(), envelopes(1, 100, "x"))
		if err != nil {
			t.Fatal(err)
		}
		if !errors.Is(res[0].Err, want) {
			t.Fatalf("deposit at %v: %v, want %v", r.clock.Now(), res[0].Err, want)
		}
	}
	r.clock.Advance(period - 24*time.Hour)
	deposit(nil)
	register(t, c, r, k) // renewed: a period from today
	r.clock.Advance(period - 24*time.Hour)
	deposit(nil)
	r.clock.Advance(24 * time.Hour)
	deposit(ErrUnknownMailbox)
	register(t, c, r, k)
	deposit(nil)
}

// TestSourceRegistrationRate: the owners at one address (every client
// here: all on loopback) share a budget of new registrations; coming back
// to a registered mailbox costs nothing from it, a restart of the relay
// doesn't refill it, and it refills with time.
func TestSourceRegistrationRate(t *testing.T) {
	r := startRelay(t, WithSourceRegistrationRate(1, 2))
	c := newClient(t, r)
	first := ownerKey(t, r)
	ownerKey(t, r)
	third := newKey(t)
	if _, err := c.Open(testCtx(t), r.h.ID(), third); !errors.Is(err, ErrRateLimited) {
		t.Fatalf("third registration: %v, want %v", err, ErrRateLimited)
	}
	res, err := c.Deposit(testCtx(t), r.h.ID(), third.ID(), envelopes(1, 100, "x"))
	if err != nil {
		t.Fatal(err)
	}
	wantErrs(t, res, ErrUnknownMailbox)
	register(t, c, r, first) // registered already: free
	r.restart(t, func(*badger.DB) {})
	if _, err := c.Open(testCtx(t), r.h.ID(), third); !errors.Is(err, ErrRateLimited) {
		t.Fatalf("third registration after a restart: %v, want %v", err, ErrRateLimited)
	}
	r.clock.Advance(time.Hour)
	register(t, c, r, third)
	mustDeposit(t, c, r, third.ID(), envelopes(1, 100, "x"))
}
