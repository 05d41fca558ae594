package backup

import (
	"bytes"
	"crypto/rand"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/kinmesh/kinmesh/protocols/discovery"
	"github.com/kinmesh/kinmesh/protocols/e2ee"
)

// TestRecoverOnNewDevice: an account with a verified number stores its
// backup; a new device, knowing only the number and the secret, gets the
// code by SMS, fetches the backup and opens it.
func TestRecoverOnNewDevice(t *testing.T) {
	r := startRelay(t, nil, nil)
	old := newDevice(t, r)
	alice := newAccount(t, "alice")
	num := mustNumber(t, "+351 912 345 678")
	verify(t, old, r, alice, num)

	secret := newSecret(t)
	blob, _ := sealed(t, secret, []byte("alice's contacts"))
	st, err := old.c.Put(testCtx(t), r.ID(), alice.id, blob)
	if err != nil {
		t.Fatalf("Put: %v", err)
	}
	if !st.Verified || !st.Held || st.Size != len(blob) || !st.ExpiresAt.Equal(st.UpdatedAt.Add(DefaultTTL)) {
		t.Fatalf("status after Put %+v", st)
	}
	if st, err := old.c.Status(testCtx(t), r.ID(), alice.id); err != nil || !st.Held || st.Size != len(blob) {
		t.Fatalf("Status: %+v, %v", st, err)
	}
	if got := r.svc.Backups(); got != 1 {
		t.Fatalf("relay holds %d backups, want 1", got)
	}

	fresh := newDevice(t, r)
	f, err := recoverOn(t, fresh, r, num)
	if err != nil {
		t.Fatalf("Fetch: %v", err)
	}
	if !bytes.Equal(f.Blob, blob) || f.UpdatedAt.IsZero() {
		t.Fatalf("fetched %d bytes at %v, want the %d stored", len(f.Blob), f.UpdatedAt, len(blob))
	}
	contents, _, err := Open(f.Blob, secret)
	if err != nil || string(contents) != "alice's contacts" {
		t.Fatalf("Open: %q, %v", contents, err)
	}
	// Recovery links nothing: the number stays alice's.
	if st, err := old.disc.Status(testCtx(t), r.ID(), alice.id); err != nil || !st.Verified {
		t.Fatalf("alice's link after a recovery: %+v, %v", st, err)
	}
	// The code is spent: it can't fetch again.
	tmp, _ := e2ee.NewIdentity(rand.Reader)
	if _, _, err := fresh.c.Fetch(testCtx(t), r.ID(), tmp, r.code(t, num)); !errors.Is(err, ErrNoCode) {
		t.Fatalf("fetch with a code of another identity: %v, want ErrNoCode", err)
	}

	// Delete: gone for good.
	st, err = old.c.Delete(testCtx(t), r.ID(), alice.id)
	if err != nil || !st.Removed {
		t.Fatalf("Delete: %+v, %v", st, err)
	}
	if st, err := old.c.Delete(testCtx(t), r.ID(), alice.id); err != nil || st.Removed {
		t.Fatalf("second Delete: %+v, %v", st, err)
	}
	if _, err := recoverOn(t, fresh, r, num); !errors.Is(err, ErrNoBackup) {
		t.Fatalf("fetch after delete: %v, want ErrNoBackup", err)
	}
	if n := len(r.records(t)); n != 0 || r.svc.Backups() != 0 {
		t.Fatalf("relay keeps %d records, %d backups after delete", n, r.svc.Backups())
	}
}

func TestPutNeedsVerifiedNumber(t *testing.T) {
	r := startRelay(t, nil, nil)
	d := newDevice(t, r)
	bob := newAccount(t, "bob")
	blob, _ := sealed(t, newSecret(t), []byte("x"))
	_, err := d.c.Put(testCtx(t), r.ID(), bob.id, blob)
	wantErr(t, err, ErrNotVerified)
	// A pending code is not a verified number.
	if _, err := d.disc.RequestCode(testCtx(t), r.ID(), bob.id, mustNumber(t, "+4930123456")); err != nil {
		t.Fatal(err)
	}
	_, err = d.c.Put(testCtx(t), r.ID(), bob.id, blob)
	wantErr(t, err, ErrNotVerified)
	if st, err := d.c.Status(testCtx(t), r.ID(), bob.id); err != nil || st.Verified || st.Held {
		t.Fatalf("Status: %+v, %v", st, err)
	}
	if len(r.records(t)) != 0 {
		t.Fatal("the relay stored something for an unverified account")
	}
}

// TestFetchCodeRules: fetching needs the right, fresh code of the same
// identity, under the discovery service's attempt limits.
func TestFetchCodeRules(t *testing.T) {
	clk := newClock()
	r := startRelay(t, clk, nil, discovery.WithCodePolicy(10*time.Minute, 3, time.Hour))
	d := newDevice(t, r)
	alice := newAccount(t, "alice")
	num := mustNumber(t, "+351912345678")
	verify(t, d, r, alice, num)
	blob, _ := sealed(t, newSecret(t), []byte("x"))
	if _, err := d.c.Put(testCtx(t), r.ID(), alice.id, blob); err != nil {
		t.Fatal(err)
	}
	thief := newDevice(t, r)
	tmp, _ := e2ee.NewIdentity(rand.Reader)

	// No code asked for.
	_, _, err := thief.c.Fetch(testCtx(t), r.ID(), tmp, "123456")
	wantErr(t, err, ErrNoCode)
	// Not a code.
	_, _, err = thief.c.Fetch(testCtx(t), r.ID(), tmp, "12345")
	wantErr(t, err, ErrMalformed)

	if _, err := thief.disc.RequestCode(testCtx(t), r.ID(), tmp, num); err != nil {
		t.Fatal(err)
	}
	right := r.code(t, num)
	wrong := "000000"
	if wrong == right {
		wrong = "111111"
	}
	_, st, err := thief.c.Fetch(testCtx(t), r.ID(), tmp, wrong)
	wantErr(t, err, ErrWrongCode)
	if st.AttemptsLeft != 2 {
		t.Fatalf("attempts left %d, want 2", st.AttemptsLeft)
	}
	_, _, err = thief.c.Fetch(testCtx(t), r.ID(), tmp, wrong)
	wantErr(t, err, ErrWrongCode)
	_, _, err = thief.c.Fetch(testCtx(t), r.ID(), tmp, wrong)
	wantErr(t, err, ErrTooManyAttempts)
	if RetryAfter(err) < 59*time.Minute {
		t.Fatalf("retry after %v, want the hour's lockout", RetryAfter(err))
	}
	// Locked: even the right code is refused now.
	_, _, err = thief.c.Fetch(testCtx(t), r.ID(), tmp, right)
	wantErr(t, err, ErrTooManyAttempts)

	// Another identity asks again; the code expires before it is used.
	tmp2, _ := e2ee.NewIdentity(rand.Reader)
	if _, err := thief.disc.RequestCode(testCtx(t), r.ID(), tmp2, num); err != nil {
		t.Fatal(err)
	}
	clk.Advance(11 * time.Minute)
	_, _, err = thief.c.Fetch(testCtx(t), r.ID(), tmp2, r.code(t, num))
	wantErr(t, err, ErrCodeExpired)
}

// TestGuessesPerNumber: fresh throwaway identities don't buy more
// guesses: the number's daily budget holds.
func TestGuessesPerNumber(t *testing.T) {
	r := startRelay(t, nil, nil, discovery.WithGuessRate(3, 3))
	d := newDevice(t, r)
	alice := newAccount(t, "alice")
	num := mustNumber(t, "+351912345678")
	verify(t, d, r, alice, num) // one guess: the verification itself
	blob, _ := sealed(t, newSecret(t), []byte("x"))
	if _, err := d.c.Put(testCtx(t), r.ID(), alice.id, blob); err != nil {
		t.Fatal(err)
	}
	var last error
	for i := 0; i < 3; i++ {
		tmp, _ := e2ee.NewIdentity(rand.Reader)
		if _, err := d.disc.RequestCode(testCtx(t), r.ID(), tmp, num); err != nil {
			t.Fatal(err)
		}
		code := "000000"
		if code == r.code(t, num) {
			code = "111111"
		}
		_, _, last = d.c.Fetch(testCtx(t), r.ID(), tmp, code)
	}
	wantErr(t, last, ErrTooManyAttempts)
}

// TestForgedRequests: proofs by the wrong key, over the wrong nonce, for
// another relay or another body are refused and change nothing.
func TestForgedRequests(t *testing.T) {
	r := startRelay(t, nil, nil)
	other := startRelay(t, nil, nil)
	d := newDevice(t, r, other)
	alice, mallory := newAccount(t, "alice"), newAccount(t, "mallory")
	verify(t, d, r, alice, mustNumber(t, "+351912345678"))
	good, _ := sealed(t, newSecret(t), []byte("alice's"))
	if _, err := d.c.Put(testCtx(t), r.ID(), alice.id, good); err != nil {
		t.Fatal(err)
	}
	evil, _ := sealed(t, newSecret(t), []byte("mallory's"))
	aliceID := alice.id.Public().Marshal()
	put := body{op: opPut, blob: evil}
	enc := encodeBody(put)
	tests := []struct {
		name string
		sign func([]byte, peer.ID, peer.ID) request
		want Code
	}{
		{"signed by another key", func(n []byte, rl, self peer.ID) request {
			return signed(mallory.id, aliceID, put)(n, rl, self)
		}, CodeUnauthorized},
		{"over another nonce", func(n []byte, rl, self peer.ID) request {
			return request{kind: reqOwner, identity: aliceID, body: enc, sig: alice.id.Sign(authMessage(make([]byte, nonceSize), rl, self, requestHash(aliceID, enc)))}
		}, CodeUnauthorized},
		{"for another relay", func(n []byte, rl, self peer.ID) request {
			return request{kind: reqOwner, identity: aliceID, body: enc, sig: alice.id.Sign(authMessage(n, other.ID(), self, requestHash(aliceID, enc)))}
		}, CodeUnauthorized},
		{"for another body", func(n []byte, rl, self peer.ID) request {
			del := encodeBody(body{op: opDelete})
			return request{kind: reqOwner, identity: aliceID, body: enc, sig: alice.id.Sign(authMessage(n, rl, self, requestHash(aliceID, del)))}
		}, CodeUnauthorized},
		{"garbage identity", func(n []byte, rl, self peer.ID) request {
			return signed(alice.id, []byte("not an identity"), put)(n, rl, self)
		}, CodeMalformed},
		{"not a backup", func(n []byte, rl, self peer.ID) request {
			return signed(alice.id, aliceID, body{op: opPut, blob: []byte("plaintext contacts")})(n, rl, self)
		}, CodeMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := rawOwner(t, d, r.ID(), tt.sign)
			if err != nil {
				t.Fatal(err)
			}
			if res.code != tt.want {
				t.Fatalf("got %v, want %v", res.code, tt.want)
			}
		})
	}
	f, err := recoverOn(t, d, r, mustNumber(t, "+351912345678"))
	if err != nil || !bytes.Equal(f.Blob, good) {
		t.Fatalf("alice's backup after the forgeries: %v", err)
	}
}

// TestOtherAccounts: another account stores its backup under its own
// number only; it can neither overwrite nor read another's.
func TestOtherAccounts(t *testing.T) {
	r := startRelay(t, nil, nil)
	d := newDevice(t, r)
	alice, bob := newAccount(t, "alice"), newAccount(t, "bob")
	an, bn := mustNumber(t, "+351912345678"), mustNumber(t, "+351913000111")
	verify(t, d, r, alice, an)
	verify(t, d, r, bob, bn)
	ab, _ := sealed(t, newSecret(t), []byte("alice"))
	bb, _ := sealed(t, newSecret(t), []byte("bob"))
	if _, err := d.c.Put(testCtx(t), r.ID(), alice.id, ab); err != nil {
		t.Fatal(err)
	}
	if _, err := d.c.Put(testCtx(t), r.ID(), bob.id, bb); err != nil {
		t.Fatal(err)
	}
	if st, err := d.c.Delete(testCtx(t), r.ID(), bob.id); err != nil || !st.Removed {
		t.Fatalf("bob deletes his: %+v, %v", st, err)
	}
	if _, err := d.c.Put(testCtx(t), r.ID(), bob.id, bb); err != nil {
		t.Fatal(err)
	}
	for num, want := range map[discovery.Number][]byte{an: ab, bn: bb} {
		f, err := recoverOn(t, d, r, num)
		if err != nil || !bytes.Equal(f.Blob, want) {
			t.Fatalf("fetch %s: %v or another backup", num.Masked(), err)
		}
	}
	if got := r.svc.Backups(); got != 2 {
		t.Fatalf("%d backups, want 2", got)
	}
}

// TestLinkGoneBackupGone: a backup can't be fetched once its number is
// unlinked or moves to another account, and the sweep deletes it.
func TestLinkGoneBackupGone(t *testing.T) {
	r := startRelay(t, nil, nil)
	d := newDevice(t, r)
	alice, carol := newAccount(t, "alice"), newAccount(t, "carol")
	num := mustNumber(t, "+351912345678")
	verify(t, d, r, alice, num)
	blob, _ := sealed(t, newSecret(t), []byte("alice"))
	if _, err := d.c.Put(testCtx(t), r.ID(), alice.id, blob); err != nil {
		t.Fatal(err)
	}
	// The number goes to carol (a recycled number): alice's backup is no
	// one's to fetch.
	verify(t, d, r, carol, num)
	if _, err := recoverOn(t, d, r, num); !errors.Is(err, ErrNoBackup) {
		t.Fatalf("fetch after the number moved: %v, want ErrNoBackup", err)
	}
	if len(r.records(t)) != 0 || r.svc.Backups() != 0 {
		t.Fatalf("the relay keeps %d records, %d backups", len(r.records(t)), r.svc.Backups())
	}
	if st, err := d.c.Status(testCtx(t), r.ID(), alice.id); err != nil || st.Held || st.Verified {
		t.Fatalf("alice's status: %+v, %v", st, err)
	}

	// Carol stores hers, then unlinks the number: the sweep removes it.
	if _, err := d.c.Put(testCtx(t), r.ID(), carol.id, blob); err != nil {
		t.Fatal(err)
	}
	if _, err := d.disc.Unenrol(testCtx(t), r.ID(), carol.id); err != nil {
		t.Fatal(err)
	}
	n, err := r.svc.Sweep(testCtx(t))
	if err != nil || n != 1 {
		t.Fatalf("Sweep: %d, %v; want 1 deleted", n, err)
	}
	if len(r.records(t)) != 0 || r.svc.Backups() != 0 {
		t.Fatalf("after the sweep the relay keeps %d records, %d backups", len(r.records(t)), r.svc.Backups())
	}
	if n, err := r.svc.Sweep(testCtx(t)); err != nil || n != 0 {
		t.Fatalf("second Sweep: %d, %v", n, err)
	}
}

// TestNumberChange: an account that verifies another number has its
// backup under the new one only.
func TestNumberChange(t *testing.T) {
	r := startRelay(t, nil, nil)
	d := newDevice(t, r)
	alice := newAccount(t, "alice")
	n1, n2 := mustNumber(t, "+351912345678"), mustNumber(t, "+351919999999")
	verify(t, d, r, alice, n1)
	blob, _ := sealed(t, newSecret(t), []byte("alice"))
	if _, err := d.c.Put(testCtx(t), r.ID(), alice.id, blob); err != nil {
		t.Fatal(err)
	}
	verify(t, d, r, alice, n2)
	if _, err := d.c.Put(testCtx(t), r.ID(), alice.id, blob); err != nil {
		t.Fatal(err)
	}
	if got := len(r.records(t)); got != 2 {
		t.Fatalf("%d records, want 2 (one backup, its index)", got)
	}
	if _, err := recoverOn(t, d, r, n1); !errors.Is(err, ErrNoBackup) {
		t.Fatalf("fetch under the old number: %v, want ErrNoBackup", err)
	}
	if _, err := recoverOn(t, d, r, n2); err != nil {
		t.Fatalf("fetch under the new number: %v", err)
	}
}

func TestQuotaAndRates(t *testing.T) {
	r := startRelay(t, nil, []Option{WithMaxBackups(1), WithPutRate(2, 2)})
	d := newDevice(t, r)
	alice, bob := newAccount(t, "alice"), newAccount(t, "bob")
	verify(t, d, r, alice, mustNumber(t, "+351912345678"))
	verify(t, d, r, bob, mustNumber(t, "+351913000111"))
	blob, _ := sealed(t, newSecret(t), []byte("x"))
	for i := 0; i < 2; i++ {
		if _, err := d.c.Put(testCtx(t), r.ID(), alice.id, blob); err != nil {
			t.Fatalf("put %d: %v", i, err)
		}
	}
	_, err := d.c.Put(testCtx(t), r.ID(), alice.id, blob)
	wantErr(t, err, ErrRateLimited)
	if RetryAfter(err) <= 0 {
		t.Fatal("no retry-after with the rate limit")
	}
	_, err = d.c.Put(testCtx(t), r.ID(), bob.id, blob)
	wantErr(t, err, ErrQuota)
}

func TestOpRateLimit(t *testing.T) {
	r := startRelay(t, nil, []Option{WithOpRate(2, 2)})
	d := newDevice(t, r)
	alice := newAccount(t, "alice")
	for i := 0; i < 2; i++ {
		if _, err := d.c.Status(testCtx(t), r.ID(), alice.id); err != nil {
			t.Fatal(err)
		}
	}
	_, err := d.c.Status(testCtx(t), r.ID(), alice.id)
	wantErr(t, err, ErrRateLimited)
}

func TestExpiry(t *testing.T) {
	clk := newClock()
	r := startRelay(t, clk, []Option{WithTTL(48 * time.Hour)})
	d := newDevice(t, r)
	alice := newAccount(t, "alice")
	num := mustNumber(t, "+351912345678")
	verify(t, d, r, alice, num)
	blob, _ := sealed(t, newSecret(t), []byte("x"))
	if _, err := d.c.Put(testCtx(t), r.ID(), alice.id, blob); err != nil {
		t.Fatal(err)
	}
	clk.Advance(47 * time.Hour)
	if _, err := d.c.Put(testCtx(t), r.ID(), alice.id, blob); err != nil { // a refresh renews it
		t.Fatal(err)
	}
	clk.Advance(47 * time.Hour)
	if _, err := recoverOn(t, d, r, num); err != nil {
		t.Fatalf("fetch within the renewed TTL: %v", err)
	}
	clk.Advance(2 * time.Hour)
	if _, err := recoverOn(t, d, r, num); !errors.Is(err, ErrNoBackup) {
		t.Fatalf("fetch after the TTL: %v, want ErrNoBackup", err)
	}
	if st, err := d.c.Status(testCtx(t), r.ID(), alice.id); err != nil || st.Held {
		t.Fatalf("status after the TTL: %+v, %v", st, err)
	}
}

func TestRestartKeepsBackups(t *testing.T) {
	r := startRelay(t, nil, nil)
	d := newDevice(t, r)
	alice := newAccount(t, "alice")
	num := mustNumber(t, "+351912345678")
	verify(t, d, r, alice, num)
	blob, _ := sealed(t, newSecret(t), []byte("x"))
	if _, err := d.c.Put(testCtx(t), r.ID(), alice.id, blob); err != nil {
		t.Fatal(err)
	}
	r.Stop()
	r.Start()
	if r.svc.Backups() != 1 {
		t.Fatalf("%d backups after a restart, want 1", r.svc.Backups())
	}
	if f, err := recoverOn(t, d, r, num); err != nil || !bytes.Equal(f.Blob, blob) {
		t.Fatalf("fetch after a restart: %v", err)
	}
}

// TestRelaySeesNoPlaintext: nothing the relay receives or stores holds the
// number, the secret or the contents.
func TestRelaySeesNoPlaintext(t *testing.T) {
	var mu sync.Mutex
	var frames [][]byte
	rec := withRequestRecorder(func(b []byte) {
		mu.Lock()
		frames = append(frames, bytes.Clone(b))
		mu.Unlock()
	})
	r := startRelay(t, nil, []Option{rec})
	d := newDevice(t, r)
	alice := newAccount(t, "alice")
	num := mustNumber(t, "+351912345678")
	verify(t, d, r, alice, num)
	secret := newSecret(t)
	contents := []byte("contacts: Grandma Ada, Uncle Bob")
	blob, k := sealed(t, secret, contents)
	if _, err := d.c.Put(testCtx(t), r.ID(), alice.id, blob); err != nil {
		t.Fatal(err)
	}
	if _, err := recoverOn(t, d, r, num); err != nil {
		t.Fatal(err)
	}
	needles := [][]byte{
		[]byte("Grandma Ada"), []byte("+351912345678"), []byte("912345678"),
		[]byte(secret.String()), secret.b[:], k.key[:],
	}
	mu.Lock()
	defer mu.Unlock()
	if len(frames) == 0 {
		t.Fatal("the recorder saw nothing")
	}
	for _, nd := range needles {
		for _, f := range frames {
			if bytes.Contains(f, nd) {
				t.Errorf("a frame the relay received holds %q", nd)
			}
		}
		if contains(r.records(t), nd) {
			t.Errorf("the relay's records hold %q", nd)
		}
	}
	for k := range r.records(t) {
		if !strings.HasPrefix(k, "a/") && !strings.HasPrefix(k, "b/") {
			t.Errorf("unexpected record %q", k)
		}
	}
}

func TestCloseTwiceAndRefuseAfter(t *testing.T) {
	r := startRelay(t, nil, nil)
	d := newDevice(t, r)
	r.Stop() // closes twice
	if _, err := d.c.Status(testCtx(t), r.ID(), newAccount(t, "x").id); err == nil {
		t.Fatal("a closed service answered")
	}
}
