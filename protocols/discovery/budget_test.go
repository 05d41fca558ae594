package discovery

import (
	"fmt"
	"testing"
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
			if got := r.svc.sendLim.tracked(); got > tracked {
				t.Fatalf("the account table holds %d keys, want at most %d", got, tracked)
			}
		})
	}
}
