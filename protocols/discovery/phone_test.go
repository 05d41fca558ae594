package discovery

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

func TestParseNumber(t *testing.T) {
	tests := []struct {
		name, in string
		want     Number
		ok       bool
	}{
		{"e164", "+351912345678", "+351912345678", true},
		{"spaces and dashes", " +44 (20) 7946-0958 ", "+442079460958", true},
		{"00 prefix", "0033 6 12 34 56 78", "+33612345678", true},
		{"dots and slashes", "+1.415/555.2671", "+14155552671", true},
		{"eight digits", "+12345678", "+12345678", true},
		{"fifteen digits", "+123456789012345", "+123456789012345", true},
		{"seven digits", "+1234567", "", false},
		{"sixteen digits", "+1234567890123456", "", false},
		{"no country code", "912345678", "", false},
		{"national trunk prefix", "0912345678", "", false},
		{"country code starting with 0", "+0123456789", "", false},
		{"letters", "+351 91 CALL ME", "", false},
		{"empty", "", "", false},
		{"plus only", "+", "", false},
		{"double plus", "++351912345678", "", false},
		{"too long", "+351" + strings.Repeat(" ", 80) + "912345678", "", false},
		{"unicode digits", "+٣٥١٩١٢٣٤٥٦٧٨", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseNumber(tt.in)
			if tt.ok {
				if err != nil || got != tt.want {
					t.Fatalf("ParseNumber(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
				}
				if !got.Valid() {
					t.Fatalf("%q not Valid", got)
				}
				return
			}
			if !errors.Is(err, ErrInvalidNumber) {
				t.Fatalf("ParseNumber(%q) = %q, %v; want ErrInvalidNumber", tt.in, got, err)
			}
			if err != nil && strings.Contains(err.Error(), strings.TrimSpace(tt.in)) && tt.in != "" && tt.in != "+" {
				t.Fatalf("error %q repeats the number", err)
			}
		})
	}
	if m := Number("+351912345678").Masked(); m != "…78" {
		t.Fatalf("Masked = %q, want …78", m)
	}
}

// TestVerifyEndToEnd: a device asks its relay for a code, the console
// gateway "sends" it, the device submits it: the number is linked and
// enrolled, and the relay's store holds no trace of it in any readable
// form.
func TestVerifyEndToEnd(t *testing.T) {
	clk := newClock()
	r := startRelay(t, clk)
	c := newClient(t, r)
	alice := newAccount(t, "alice")
	n := mustNumber(t, "+351 912 345 678")

	st, err := c.Status(testCtx(t), r.ID(), alice.id)
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	if st.Verified || st.Pending || !st.PublicKey.Equal(r.svc.PublicKey()) {
		t.Fatalf("fresh status %+v, want nothing but the relay's key", st)
	}
	st, err = c.RequestCode(testCtx(t), r.ID(), alice.id, n)
	if err != nil {
		t.Fatalf("RequestCode: %v", err)
	}
	if !st.Pending || !st.CodeExpires.Equal(clk.Now().Add(DefaultCodeTTL)) || st.AttemptsLeft != DefaultMaxAttempts {
		t.Fatalf("status after request %+v, want pending until %v with %d attempts", st, clk.Now().Add(DefaultCodeTTL), DefaultMaxAttempts)
	}
	text, _ := r.gw.LastMessage(n)
	code := r.code(t, n)
	if !strings.Contains(text, code) || !strings.Contains(text, "10 minutes") {
		t.Fatalf("SMS text %q", text)
	}
	clk.Advance(9 * time.Minute)
	st, err = c.VerifyCode(testCtx(t), r.ID(), alice.id, code[:3]+" "+code[3:], alice.record)
	if err != nil {
		t.Fatalf("VerifyCode: %v", err)
	}
	if !st.Verified || st.Pending || !st.VerifiedAt.Equal(clk.Now()) {
		t.Fatalf("status after verification %+v", st)
	}
	if r.svc.Entries() != 1 {
		t.Fatalf("directory holds %d entries, want 1", r.svc.Entries())
	}
	// The code is used up.
	_, err = c.VerifyCode(testCtx(t), r.ID(), alice.id, code, alice.record)
	wantCode(t, err, ErrNoCode)

	// Nothing in the store, keys or decrypted values, reveals the number.
	for k, v := range r.records(t) {
		for _, needle := range numberEncodings(n) {
			if bytes.Contains([]byte(k), needle) || bytes.Contains(v, needle) {
				t.Fatalf("store record %q holds the number (as %q)", k, needle)
			}
		}
	}
	// Nor do the files on disk (sealed anyway; this checks nothing
	// slipped out unsealed, e.g. in a key).
	if f, ok := scanDir(t, r.dir, numberEncodings(n)); ok {
		t.Fatalf("relay file %s holds the number", f)
	}
}

func TestWrongCodesLockOut(t *testing.T) {
	clk := newClock()
	r := startRelay(t, clk)
	c := newClient(t, r)
	a := newAccount(t, "a")
	n := mustNumber(t, "+4915112345678")
	if _, err := c.RequestCode(testCtx(t), r.ID(), a.id, n); err != nil {
		t.Fatal(err)
	}
	good := r.code(t, n)
	bad := "000000"
	if good == bad {
		bad = "111111"
	}
	for left := DefaultMaxAttempts - 1; left > 0; left-- {
		st, err := c.VerifyCode(testCtx(t), r.ID(), a.id, bad, a.record)
		wantCode(t, err, ErrWrongCode)
		if st.AttemptsLeft != left {
			t.Fatalf("attempts left %d, want %d", st.AttemptsLeft, left)
		}
	}
	_, err := c.VerifyCode(testCtx(t), r.ID(), a.id, bad, a.record)
	wantCode(t, err, ErrTooManyAttempts)
	if d := RetryAfter(err); d != DefaultLockout {
		t.Fatalf("retry after %v, want %v", d, DefaultLockout)
	}
	// Locked: the right code is refused, and so is a new one.
	_, err = c.VerifyCode(testCtx(t), r.ID(), a.id, good, a.record)
	wantCode(t, err, ErrTooManyAttempts)
	_, err = c.RequestCode(testCtx(t), r.ID(), a.id, n)
	wantCode(t, err, ErrTooManyAttempts)
	st, err := c.Status(testCtx(t), r.ID(), a.id)
	if err != nil || !st.LockedUntil.Equal(clk.Now().Add(DefaultLockout)) || st.Pending {
		t.Fatalf("status %+v, %v; want locked until %v, nothing pending", st, err, clk.Now().Add(DefaultLockout))
	}
	// The lock survives a restart.
	r.Stop()
	r.Start()
	_, err = c.RequestCode(testCtx(t), r.ID(), a.id, n)
	wantCode(t, err, ErrTooManyAttempts)

	clk.Advance(DefaultLockout + time.Second)
	verify(t, c, r, a, n)
	if r.svc.Entries() != 1 {
		t.Fatalf("entries %d, want 1", r.svc.Entries())
	}
}

func TestCodeExpires(t *testing.T) {
	clk := newClock()
	r := startRelay(t, clk)
	c := newClient(t, r)
	a := newAccount(t, "a")
	n := mustNumber(t, "+14155552671")
	if _, err := c.RequestCode(testCtx(t), r.ID(), a.id, n); err != nil {
		t.Fatal(err)
	}
	clk.Advance(DefaultCodeTTL + time.Second)
	st, err := c.Status(testCtx(t), r.ID(), a.id)
	if err != nil || st.Pending {
		t.Fatalf("status %+v, %v; want nothing pending", st, err)
	}
	_, err = c.VerifyCode(testCtx(t), r.ID(), a.id, r.code(t, n), a.record)
	wantCode(t, err, ErrCodeExpired)
	_, err = c.VerifyCode(testCtx(t), r.ID(), a.id, r.code(t, n), a.record)
	wantCode(t, err, ErrNoCode)
	if r.svc.Entries() != 0 {
		t.Fatalf("entries %d, want 0", r.svc.Entries())
	}
}

func TestSendRateLimits(t *testing.T) {
	t.Run("per account", func(t *testing.T) {
		clk := newClock()
		r := startRelay(t, clk)
		c := newClient(t, r)
		a := newAccount(t, "a")
		for i := range DefaultSendBurst {
			if _, err := c.RequestCode(testCtx(t), r.ID(), a.id, mustNumber(t, "+3519123456"+string(rune('0'+i))+"0")); err != nil {
				t.Fatalf("send %d: %v", i, err)
			}
		}
		_, err := c.RequestCode(testCtx(t), r.ID(), a.id, mustNumber(t, "+351912345699"))
		wantCode(t, err, ErrRateLimited)
		wait := RetryAfter(err)
		if want := time.Duration(day/DefaultSendsPerDay) * time.Second; wait < want-time.Second || wait > want+time.Second {
			t.Fatalf("retry after %v, want about %v", wait, want)
		}
		clk.Advance(wait)
		if _, err := c.RequestCode(testCtx(t), r.ID(), a.id, mustNumber(t, "+351912345699")); err != nil {
			t.Fatalf("after waiting: %v", err)
		}
	})
	t.Run("per number", func(t *testing.T) {
		r := startRelay(t, nil)
		c := newClient(t, r)
		victim := mustNumber(t, "+447700900123")
		for i := range DefaultNumberSendBurst {
			if _, err := c.RequestCode(testCtx(t), r.ID(), newAccount(t, "x").id, victim); err != nil {
				t.Fatalf("send %d: %v", i, err)
			}
		}
		_, err := c.RequestCode(testCtx(t), r.ID(), newAccount(t, "y").id, victim)
		wantCode(t, err, ErrRateLimited)
		// Other numbers are unaffected.
		if _, err := c.RequestCode(testCtx(t), r.ID(), newAccount(t, "z").id, mustNumber(t, "+447700900124")); err != nil {
			t.Fatalf("other number: %v", err)
		}
	})
	t.Run("guesses per number", func(t *testing.T) {
		r := startRelay(t, nil, WithGuessRate(3, 3), WithNumberSendRate(100, 100))
		c := newClient(t, r)
		victim := mustNumber(t, "+447700900125")
		// Two attackers, each with a fresh code and attempts to spare.
		m1, m2 := newAccount(t, "m1"), newAccount(t, "m2")
		for _, m := range []*account{m1, m2} {
			if _, err := c.RequestCode(testCtx(t), r.ID(), m.id, victim); err != nil {
				t.Fatal(err)
			}
		}
		wrong := func(m *account) error {
			code := r.code(t, victim)
			bad := "123456"
			if code == bad {
				bad = "654321"
			}
			_, err := c.VerifyCode(testCtx(t), r.ID(), m.id, bad, m.record)
			return err
		}
		wantCode(t, wrong(m1), ErrWrongCode)
		wantCode(t, wrong(m2), ErrWrongCode)
		wantCode(t, wrong(m1), ErrWrongCode)
		wantCode(t, wrong(m2), ErrTooManyAttempts) // the number's budget is spent
		_, err := c.VerifyCode(testCtx(t), r.ID(), m2.id, "123456", m2.record)
		wantCode(t, err, ErrNoCode) // and m2's code is void
	})
}

// TestVerifyRefusesBadInput: malformed requests change nothing and burn
// no attempts.
func TestVerifyRefusesBadInput(t *testing.T) {
	r := startRelay(t, nil)
	c := newClient(t, r)
	a, b := newAccount(t, "a"), newAccount(t, "b")
	n := mustNumber(t, "+33612345678")

	for _, raw := range []string{"12345", "+1 555", "+0612345678", "call me", strings.Repeat("9", 70)} {
		resp, err := rawOwner(t, c, r.ID(), signed(a.id, a.id.Public().Marshal(), ownerBody{op: opSendCode, number: raw}))
		if err != nil || resp.code != CodeInvalidNumber {
			t.Fatalf("number %q: %v, %v; want INVALID_NUMBER", raw, resp.code, err)
		}
	}
	if _, err := c.RequestCode(testCtx(t), r.ID(), a.id, "12345"); !errors.Is(err, ErrInvalidNumber) {
		t.Fatalf("client sent an invalid number: %v", err)
	}
	_, err := c.VerifyCode(testCtx(t), r.ID(), a.id, "123456", a.record)
	wantCode(t, err, ErrNoCode)
	if _, err := c.RequestCode(testCtx(t), r.ID(), a.id, n); err != nil {
		t.Fatal(err)
	}
	code := r.code(t, n)
	// A record of another account, signed by it: refused, no attempt used.
	_, err = c.VerifyCode(testCtx(t), r.ID(), a.id, code, b.record)
	wantCode(t, err, ErrMalformed)
	resp, err := rawOwner(t, c, r.ID(), signed(a.id, a.id.Public().Marshal(), ownerBody{op: opVerifyCode, code: code, record: b.record.Raw}))
	if err != nil || resp.code != CodeMalformed {
		t.Fatalf("record of another account: %v, %v; want MALFORMED", resp.code, err)
	}
	resp, err = rawOwner(t, c, r.ID(), signed(a.id, a.id.Public().Marshal(), ownerBody{op: opVerifyCode, code: "12a456", record: a.record.Raw}))
	if err != nil || resp.code != CodeMalformed {
		t.Fatalf("code with a letter: %v, %v; want MALFORMED", resp.code, err)
	}
	_, err = c.VerifyCode(testCtx(t), r.ID(), a.id, "12345", a.record)
	wantCode(t, err, ErrMalformed)
	st, err := c.Status(testCtx(t), r.ID(), a.id)
	if err != nil || st.AttemptsLeft != DefaultMaxAttempts {
		t.Fatalf("status %+v, %v; want every attempt left", st, err)
	}
	verify(t, c, r, a, n)
}

// TestAccountAuthRefused: every way of getting the account proof wrong is
// UNAUTHORIZED (or MALFORMED for what is not a proof at all): no code is
// sent, nothing is looked up.
func TestAccountAuthRefused(t *testing.T) {
	r := startRelay(t, nil, WithRequireVerified(false))
	c := newClient(t, r)
	bob, mallory := newAccount(t, "bob"), newAccount(t, "mallory")
	n := mustNumber(t, "+351912000111")
	body := ownerBody{op: opSendCode, number: string(n)}
	enc := encodeOwnerBody(body)
	bobID := bob.id.Public().Marshal()
	otherPeer := newHost(t).ID()
	tests := []struct {
		name string
		sign func([]byte, peer.ID, peer.ID) request
		want Code
	}{
		{"signed by another identity", signed(mallory.id, bobID, body), CodeUnauthorized},
		{"forged signature", func([]byte, peer.ID, peer.ID) request {
			return request{kind: reqOwner, identity: bobID, body: enc, sig: make([]byte, 64)}
		}, CodeUnauthorized},
		{"other nonce", func(nonce []byte, relay, self peer.ID) request {
			return request{kind: reqOwner, identity: bobID, body: enc, sig: bob.id.Sign(authMessage(make([]byte, 32), relay, self, requestHash(bobID, enc)))}
		}, CodeUnauthorized},
		{"other relay", func(nonce []byte, _, self peer.ID) request {
			return request{kind: reqOwner, identity: bobID, body: enc, sig: bob.id.Sign(authMessage(nonce, otherPeer, self, requestHash(bobID, enc)))}
		}, CodeUnauthorized},
		{"other requester", func(nonce []byte, relay, _ peer.ID) request {
			return request{kind: reqOwner, identity: bobID, body: enc, sig: bob.id.Sign(authMessage(nonce, relay, otherPeer, requestHash(bobID, enc)))}
		}, CodeUnauthorized},
		{"body swapped after signing", func(nonce []byte, relay, self peer.ID) request {
			other := encodeOwnerBody(ownerBody{op: opSendCode, number: "+351912000222"})
			return request{kind: reqOwner, identity: bobID, body: other, sig: bob.id.Sign(authMessage(nonce, relay, self, requestHash(bobID, enc)))}
		}, CodeUnauthorized},
		{"garbage identity", func(nonce []byte, relay, self peer.ID) request {
			return request{kind: reqOwner, identity: []byte("not an identity"), body: enc, sig: bob.id.Sign(authMessage(nonce, relay, self, requestHash([]byte("not an identity"), enc)))}
		}, CodeMalformed},
		{"hello again", func([]byte, peer.ID, peer.ID) request { return request{kind: reqHello} }, CodeMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := rawOwner(t, c, r.ID(), tt.sign)
			if err != nil {
				t.Fatalf("exchange: %v", err)
			}
			if resp.code != tt.want {
				t.Fatalf("code %v, want %v", resp.code, tt.want)
			}
		})
	}
	if _, ok := r.gw.LastMessage(n); ok {
		t.Fatal("a code was sent on a refused request")
	}
	// An account operation without a challenge is refused outright.
	err := c.roundTrip(testCtx(t), r.ID(), func(st networkStream, rd *wireReader) error {
		if err := writeRequest(st, signed(bob.id, bobID, body)(make([]byte, 32), r.ID(), c.h.ID())); err != nil {
			return err
		}
		resp, err := readResponse(rd)
		if err != nil {
			return err
		}
		if resp.code != CodeMalformed && resp.code != CodeTooLarge {
			t.Errorf("owner frame without hello: %v, want MALFORMED or TOO_LARGE", resp.code)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// An evaluation under a forged proof does not happen either.
	blinded := make([]byte, 32)
	blinded[0] = 2
	resp, err := rawOwner(t, c, r.ID(), signed(mallory.id, bobID, ownerBody{op: opEvaluate, blinded: [][]byte{blinded}}))
	if err != nil || resp.code != CodeUnauthorized || resp.eval != nil {
		t.Fatalf("forged evaluate: %+v, %v; want UNAUTHORIZED", resp, err)
	}
}

// TestNumberMovesToAnotherAccount: a number links to one account; the
// last to verify it has it.
func TestNumberMovesToAnotherAccount(t *testing.T) {
	r := startRelay(t, nil)
	c := newClient(t, r)
	a, b := newAccount(t, "old phone owner"), newAccount(t, "new phone owner")
	n := mustNumber(t, "+351912345000")
	verify(t, c, r, a, n)
	verify(t, c, r, b, n)
	st, err := c.Status(testCtx(t), r.ID(), a.id)
	if err != nil || st.Verified {
		t.Fatalf("first account's status %+v, %v; want not verified", st, err)
	}
	if r.svc.Entries() != 1 {
		t.Fatalf("entries %d, want 1", r.svc.Entries())
	}
	d := discoverer(t, c, r)
	ms, err := c.Discover(testCtx(t), r.ID(), d.id, NewDirectory(PublicKey{}), []Number{n})
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 1 || ms[0].Record.Name != "new phone owner" {
		t.Fatalf("matches %+v, want the new owner", ms)
	}
	// A changes number: its old entry goes (it was b's now anyway), the
	// new one comes.
	n2 := mustNumber(t, "+351912345001")
	verify(t, c, r, a, n2)
	n3 := mustNumber(t, "+351912345002")
	verify(t, c, r, a, n3)
	if r.svc.Entries() != 3 {
		t.Fatalf("entries %d, want 3 (b's, a's latest and the discoverer's)", r.svc.Entries())
	}
	ms, err = c.Discover(testCtx(t), r.ID(), d.id, NewDirectory(PublicKey{}), []Number{n, n2, n3})
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 2 || ms[0].Number != n || ms[1].Number != n3 {
		t.Fatalf("matches %+v, want n (b) and n3 (a)", ms)
	}
}

func TestUnenrol(t *testing.T) {
	r := startRelay(t, nil)
	c := newClient(t, r)
	a := newAccount(t, "a")
	n := mustNumber(t, "+351912345003")
	verify(t, c, r, a, n)
	// Only the account itself can unenrol.
	mallory := newAccount(t, "m")
	resp, err := rawOwner(t, c, r.ID(), signed(mallory.id, a.id.Public().Marshal(), ownerBody{op: opUnenrol}))
	if err != nil || resp.code != CodeUnauthorized {
		t.Fatalf("forged unenrol: %v, %v; want UNAUTHORIZED", resp.code, err)
	}
	st, err := c.Unenrol(testCtx(t), r.ID(), a.id)
	if err != nil || st.Verified || st.Removed != 1 {
		t.Fatalf("Unenrol: %+v, %v; want removed 1, not verified", st, err)
	}
	if r.svc.Entries() != 0 {
		t.Fatalf("entries %d, want 0", r.svc.Entries())
	}
	for k := range r.records(t) {
		if strings.HasPrefix(k, "a/") || strings.HasPrefix(k, "o/") || strings.HasPrefix(k, "p/") {
			t.Errorf("record %q left after unenrol", k)
		}
	}
	d := discoverer(t, c, r)
	ms, err := c.Discover(testCtx(t), r.ID(), d.id, NewDirectory(PublicKey{}), []Number{n})
	if err != nil || len(ms) != 0 {
		t.Fatalf("Discover after unenrol: %v, %v; want nothing", ms, err)
	}
	st, err = c.Unenrol(testCtx(t), r.ID(), a.id)
	if err != nil || st.Removed != 0 {
		t.Fatalf("second Unenrol: %+v, %v", st, err)
	}
	_, err = c.UpdateRecord(testCtx(t), r.ID(), a.id, a.record)
	wantCode(t, err, ErrNotVerified)
}

// discoverer is a verified account that can look numbers up.
func discoverer(t testing.TB, c *Client, r *testRelay) *account {
	t.Helper()
	d := newAccount(t, "discoverer")
	verify(t, c, r, d, mustNumber(t, "+49301234"+randDigits(5)))
	return d
}

func randDigits(n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = '0' + byte(randBelow(10))
	}
	return string(b)
}
