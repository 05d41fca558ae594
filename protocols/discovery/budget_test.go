package discovery

import (
	"fmt"
	"testing"
	"time"
)

// TestFullLimiterTableAdmitsNewcomers: made-up accounts fill the relay's
// per-account send table, and an honest newcomer still gets its code.
func TestFullLimiterTableAdmitsNewcomers(t *testing.T) {
	const tracked = 8
	tests := []struct {
		name   string
		number func(i int) string // the number fake account i asks for
	}{
		// Most of these are refused by the number's budget: they must not
		// take room in the account table at all.
		{"one number", func(int) string { return "+447700900500" }},
		// Each of these sends a text: the table overflows, and the
		// newcomer takes the place of the key used least recently.
		{"a number each", func(i int) string { return fmt.Sprintf("+4477009006%02d", i) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := startRelay(t, nil, WithMaxTracked(tracked), WithAccountOpRate(1<<20, 1<<20))
			c := newClient(t, r)
			for i := range 3 * tracked {
				_, err := c.RequestCode(testCtx(t), r.ID(), newAccount(t, "fake").id, mustNumber(t, tt.number(i)))
				if err != nil {
					wantCode(t, err, ErrRateLimited)
				}
			}
			n := mustNumber(t, "+447700900999")
			if _, err := c.RequestCode(testCtx(t), r.ID(), newAccount(t, "honest").id, n); err != nil {
				t.Fatalf("the honest newcomer's request: %v", err)
			}
			r.code(t, n)
			if got := r.svc.sendLim.Len(); got > tracked {
				t.Fatalf("the account table holds %d keys, want at most %d", got, tracked)
			}
		})
	}
}

// TestSMSBudget: the relay sends at most its budget of texts an hour and
// a day, whoever asks, restarts or not; beyond it requests are refused
// with the time until there is room, send nothing and spend none of the
// asker's budgets.
func TestSMSBudget(t *testing.T) {
	clk := newClock()
	r := startRelay(t, clk, WithSMSBudget(2, 3), WithAccountOpRate(1<<20, 1<<20))
	c := newClient(t, r)
	num := func(i int) Number { return mustNumber(t, fmt.Sprintf("+3519123450%02d", i)) }
	for i := range 2 {
		if _, err := c.RequestCode(testCtx(t), r.ID(), newAccount(t, "a").id, num(i)); err != nil {
			t.Fatalf("text %d: %v", i, err)
		}
	}
	late := newAccount(t, "late")
	_, err := c.RequestCode(testCtx(t), r.ID(), late.id, num(2))
	wantCode(t, err, ErrRateLimited)
	if wait := RetryAfter(err); wait < 29*time.Minute || wait > 31*time.Minute {
		t.Fatalf("retry after %v, want about 30 minutes (the hour's budget)", wait)
	}
	if _, ok := r.gw.LastMessage(num(2)); ok {
		t.Fatal("a text was sent beyond the hour's budget")
	}
	if got := r.svc.sendLim.Len(); got != 2 {
		t.Fatalf("the account table holds %d keys, want 2: a refused request takes no room", got)
	}
	clk.Advance(30 * time.Minute)
	if _, err := c.RequestCode(testCtx(t), r.ID(), late.id, num(2)); err != nil {
		t.Fatalf("after waiting: %v", err)
	}
	r.code(t, num(2))
	// The day's budget of 3 is spent now.
	_, err = c.RequestCode(testCtx(t), r.ID(), newAccount(t, "b").id, num(3))
	wantCode(t, err, ErrRateLimited)
	if wait := RetryAfter(err); wait < 7*time.Hour || wait > 8*time.Hour {
		t.Fatalf("retry after %v, want 7–8 hours (the day's budget)", wait)
	}
	if _, ok := r.gw.LastMessage(num(3)); ok {
		t.Fatal("a text was sent beyond the day's budget")
	}
	// A restart of the relay doesn't refill it.
	r.Stop()
	r.Start()
	_, err = c.RequestCode(testCtx(t), r.ID(), newAccount(t, "c").id, num(4))
	wantCode(t, err, ErrRateLimited)
	if wait := RetryAfter(err); wait < 7*time.Hour || wait > 8*time.Hour {
		t.Fatalf("after a restart: retry after %v, want 7–8 hours (the day's budget)", wait)
	}
}

// TestLookupBudgetPerNumber: one number verified on three accounts in
// turn gets one number's lookup budget, not three accounts' worth.
func TestLookupBudgetPerNumber(t *testing.T) {
	const perDay, burst = 10, 20
	r := startRelay(t, nil, WithEvaluationRate(perDay, burst), WithNumberSendRate(100, 100), WithAccountOpRate(1<<20, 1<<20))
	c := newClient(t, r)
	sim := mustNumber(t, "+351912345777")
	lookups := func(from, n int) []Number {
		var out []Number
		for i := range n {
			out = append(out, mustNumber(t, fmt.Sprintf("+3519130%05d", from+i)))
		}
		return out
	}
	pk := r.svc.PublicKey()

	a1 := newAccount(t, "first")
	verify(t, c, r, a1, sim)
	if _, err := c.Evaluate(testCtx(t), r.ID(), a1.id, pk, lookups(0, 15)); err != nil {
		t.Fatalf("first account, 15 of 20: %v", err)
	}

	// The number moves to a fresh account: its budget doesn't start over.
	a2 := newAccount(t, "second")
	st := verify(t, c, r, a2, sim)
	if st.EvaluationsLeft != burst-15 {
		t.Fatalf("the second account may look up %d, want the number's %d left", st.EvaluationsLeft, burst-15)
	}
	_, err := c.Evaluate(testCtx(t), r.ID(), a2.id, pk, lookups(100, 15))
	wantCode(t, err, ErrRateLimited)
	if _, err := c.Evaluate(testCtx(t), r.ID(), a2.id, pk, lookups(100, burst-15)); err != nil {
		t.Fatalf("second account, the number's last %d: %v", burst-15, err)
	}

	a3 := newAccount(t, "third")
	verify(t, c, r, a3, sim)
	_, err = c.Evaluate(testCtx(t), r.ID(), a3.id, pk, lookups(200, 1))
	wantCode(t, err, ErrRateLimited)
	if wait := RetryAfter(err); wait < time.Duration(day/perDay)*time.Second-time.Second {
		t.Fatalf("retry after %v, want about %v (one lookup of the number's daily budget)", wait, time.Duration(day/perDay)*time.Second)
	}

	// Another account with its own number is unaffected.
	other := discoverer(t, c, r)
	if _, err := c.Evaluate(testCtx(t), r.ID(), other.id, pk, lookups(300, burst)); err != nil {
		t.Fatalf("an account with another number: %v", err)
	}
}
