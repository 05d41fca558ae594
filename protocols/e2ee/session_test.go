package e2ee

import (
	"bytes"
	"crypto/mlkem"
	"crypto/mlkem/mlkemtest"
	"crypto/sha256"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/kinmesh/kinmesh/protocols/e2ee/pb"
)

// -update rewrites golden files under testdata/; -long runs the long
// scenarios and the full vector sets. Another test file of this package
// may register a flag first; then this one shares it.
func init() {
	if flag.Lookup("update") == nil {
		flag.Bool("update", false, "rewrite golden files under testdata/")
	}
	if flag.Lookup("long") == nil {
		flag.Bool("long", false, "run long scenario tests and full vector sets")
	}
}

func drTestFlag(name string) bool {
	f := flag.Lookup(name)
	return f != nil && f.Value.String() == "true"
}

// drTestLong reports whether to run the long variants: -long, or
// KINMESH_LONG=1 as `make test-long` sets it.
func drTestLong() bool { return drTestFlag("long") || os.Getenv("KINMESH_LONG") != "" }

// drTestRand is a deterministic random stream named by label.
func drTestRand(label string) io.Reader {
	return rand.NewChaCha8(sha256.Sum256([]byte("e2ee-session/" + label)))
}

// drTestT0 is the fixed "now" of the session tests: 2026-01-01 UTC.
var drTestT0 = time.Unix(1767225600, 0).UTC()

// drTestClock is a settable clock.
type drTestClock struct{ t time.Time }

func (c *drTestClock) now() time.Time          { return c.t }
func (c *drTestClock) advance(d time.Duration) { c.t = c.t.Add(d) }

// drTestDetKEM makes ML-KEM encapsulation read its 32 random bytes from
// the session's rand, so known-answer tests are deterministic.
func drTestDetKEM() SessionOption {
	return func(e *sessionEnv) {
		e.encaps = func(ek *mlkem.EncapsulationKey768, r io.Reader) ([]byte, []byte, error) {
			var m [32]byte
			if _, err := io.ReadFull(r, m[:]); err != nil {
				return nil, nil, err
			}
			return mlkemtest.Encapsulate768(ek, m[:])
		}
	}
}

func drTestIdentity(t testing.TB, label string) *Identity {
	t.Helper()
	id, err := NewIdentity(drTestRand("identity/" + label))
	if err != nil {
		t.Fatalf("NewIdentity(%s): %v", label, err)
	}
	return id
}

func drTestStore(t testing.TB, id *Identity, label string, n, nPQ int) *PrekeyStore {
	t.Helper()
	r := drTestRand("store/" + label)
	s, err := NewPrekeyStore(id, drTestT0, r)
	if err != nil {
		t.Fatalf("NewPrekeyStore: %v", err)
	}
	if s, err = s.GenerateOneTime(id, n, nPQ, drTestT0, r); err != nil {
		t.Fatalf("GenerateOneTime: %v", err)
	}
	return s
}

// drTestBundle builds the bundle a relay would serve from store's upload:
// the first one-time prekeys if withOPK / withPQOPK, else none / last resort.
func drTestBundle(t testing.TB, s *PrekeyStore, withOPK, withPQOPK bool) *Bundle {
	t.Helper()
	u := s.Upload()
	b := &Bundle{Identity: u.Identity, SignedPrekey: u.SignedPrekey, PQPrekey: u.LastResort}
	if withPQOPK {
		b.PQPrekey = u.PQOneTime[0]
	}
	if withOPK {
		b.OneTimePrekey = &u.OneTime[0]
	}
	raw, err := b.Marshal()
	if err != nil {
		t.Fatalf("Bundle.Marshal: %v", err)
	}
	parsed, err := ParseBundle(raw)
	if err != nil {
		t.Fatalf("ParseBundle: %v", err)
	}
	return parsed
}

// drTestParties holds both sides of a session under test.
type drTestParties struct {
	alice, bob       *Identity
	store            *PrekeyStore
	aliceS, bobS     *Session
	clock            *drTestClock
	aliceOpt, bobOpt []SessionOption
}

// drTestSetup makes Alice initiate to Bob and Bob respond to Alice's first
// message ("hello"), deterministically for label.
func drTestSetup(t testing.TB, label string) *drTestParties {
	t.Helper()
	p := &drTestParties{
		alice: drTestIdentity(t, label+"/alice"),
		bob:   drTestIdentity(t, label+"/bob"),
		clock: &drTestClock{t: drTestT0},
	}
	p.store = drTestStore(t, p.bob, label, 3, 3)
	p.aliceOpt = []SessionOption{WithRand(drTestRand(label + "/alice-session")), WithClock(p.clock.now), drTestDetKEM()}
	p.bobOpt = []SessionOption{WithRand(drTestRand(label + "/bob-session")), WithClock(p.clock.now)}
	var err error
	if p.aliceS, err = Initiate(p.alice, drTestBundle(t, p.store, true, true), p.aliceOpt...); err != nil {
		t.Fatalf("Initiate: %v", err)
	}
	msg := p.send(t, true, "hello")
	s, pt, consumed, err := Respond(p.bob, p.store, msg, nil, p.bobOpt...)
	if err != nil {
		t.Fatalf("Respond: %v", err)
	}
	if string(pt) != "hello" {
		t.Fatalf("Respond plaintext: got %q, want %q", pt, "hello")
	}
	p.store = p.store.Consume(consumed...)
	p.bobS = s
	return p
}

// send encrypts text from Alice (fromAlice) or Bob and advances the sender.
func (p *drTestParties) send(t testing.TB, fromAlice bool, text string) []byte {
	t.Helper()
	s := &p.bobS
	if fromAlice {
		s = &p.aliceS
	}
	msg, next, err := (*s).Encrypt([]byte(text), nil)
	if err != nil {
		t.Fatalf("Encrypt(%q): %v", text, err)
	}
	*s = next
	return msg
}

// recv decrypts msg at Bob (toBob) or Alice, checks the text and advances.
func (p *drTestParties) recv(t testing.TB, toBob bool, msg []byte, want string) {
	t.Helper()
	s := &p.aliceS
	if toBob {
		s = &p.bobS
	}
	pt, next, err := (*s).Decrypt(msg, nil)
	if err != nil {
		t.Fatalf("Decrypt (want %q): %v", want, err)
	}
	if string(pt) != want {
		t.Fatalf("Decrypt: got %q, want %q", pt, want)
	}
	*s = next
}

// drTestRecvErr checks that decrypting msg fails with want and changes
// nothing.
func drTestRecvErr(t testing.TB, s *Session, msg, ad []byte, want error) {
	t.Helper()
	before := s.Marshal()
	pt, next, err := s.Decrypt(msg, ad)
	if !errors.Is(err, want) {
		t.Fatalf("Decrypt: got (%q, %v), want error %v", pt, err, want)
	}
	if next != nil {
		t.Errorf("Decrypt error returned a next state")
	}
	if after := s.Marshal(); !bytes.Equal(before, after) {
		t.Errorf("Decrypt error changed the state")
	}
}

func TestSessionRoundTrip(t *testing.T) {
	tests := []struct {
		name              string
		withOPK, withPQOT bool
		wantConsumed      int
	}{
		{name: "one-time X25519 and ML-KEM prekeys", withOPK: true, withPQOT: true, wantConsumed: 2},
		{name: "one-time ML-KEM prekey only", withPQOT: true, wantConsumed: 1},
		{name: "one-time X25519 prekey, last-resort ML-KEM", withOPK: true, wantConsumed: 1},
		{name: "signed and last-resort prekeys only", wantConsumed: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			alice, bob := drTestIdentity(t, "rt/alice"), drTestIdentity(t, "rt/bob")
			store := drTestStore(t, bob, "rt", 2, 2)
			a, err := Initiate(alice, drTestBundle(t, store, tt.withOPK, tt.withPQOT))
			if err != nil {
				t.Fatalf("Initiate: %v", err)
			}
			m1, a, err := a.Encrypt([]byte("one"), []byte("ad"))
			if err != nil {
				t.Fatal(err)
			}
			m2, a, err := a.Encrypt([]byte("two"), []byte("ad"))
			if err != nil {
				t.Fatal(err)
			}
			if !IsInitialMessage(m1) || !IsInitialMessage(m2) {
				t.Fatalf("IsInitialMessage before a reply: got false, want true")
			}
			if _, _, _, err := Respond(bob, store, m1, []byte("other ad")); !errors.Is(err, ErrDecrypt) {
				t.Fatalf("Respond with wrong AD: got %v, want ErrDecrypt", err)
			}
			b, pt, consumed, err := Respond(bob, store, m2, []byte("ad"))
			if err != nil || string(pt) != "two" {
				t.Fatalf("Respond: got %q, %v, want %q", pt, err, "two")
			}
			if len(consumed) != tt.wantConsumed {
				t.Errorf("consumed: got %v, want %d ids", consumed, tt.wantConsumed)
			}
			if !b.Peer().Equal(alice.Public()) || !a.Peer().Equal(bob.Public()) {
				t.Errorf("Peer: got wrong identities")
			}
			pt, b, err = b.Decrypt(m1, []byte("ad"))
			if err != nil || string(pt) != "one" {
				t.Fatalf("Decrypt of first initial message: got %q, %v, want %q", pt, err, "one")
			}
			r1, b, err := b.Encrypt([]byte("reply"), nil)
			if err != nil {
				t.Fatal(err)
			}
			if IsInitialMessage(r1) {
				t.Errorf("IsInitialMessage(responder message): got true, want false")
			}
			pt, a, err = a.Decrypt(r1, nil)
			if err != nil || string(pt) != "reply" {
				t.Fatalf("Decrypt reply: got %q, %v, want %q", pt, err, "reply")
			}
			m3, _, err := a.Encrypt([]byte("three"), nil)
			if err != nil {
				t.Fatal(err)
			}
			if IsInitialMessage(m3) {
				t.Errorf("IsInitialMessage after a reply: got true, want false")
			}
			if got, want := len(m3), drMessageMin+len("three"); got != want {
				t.Errorf("message size: got %d, want %d", got, want)
			}
			if pt, _, err = b.Decrypt(m3, nil); err != nil || string(pt) != "three" {
				t.Fatalf("Decrypt: got %q, %v, want %q", pt, err, "three")
			}
			// The consumed one-time prekeys are gone: the same initial
			// message cannot start another session.
			if tt.wantConsumed > 0 {
				if _, _, _, err := Respond(bob, store.Consume(consumed...), m2, []byte("ad")); !errors.Is(err, ErrNoPrekey) {
					t.Errorf("Respond after Consume: got %v, want ErrNoPrekey", err)
				}
			}
		})
	}
}

func TestSessionPingPong(t *testing.T) {
	p := drTestSetup(t, "pingpong")
	for i := range 50 {
		fromAlice := i%3 != 0
		text := fmt.Sprintf("message %d", i)
		p.recv(t, fromAlice, p.send(t, fromAlice, text), text)
	}
}

// TestSessionID: a session keeps its ID through every step and a
// marshal round trip; the two ends of a run, and another run, differ.
func TestSessionID(t *testing.T) {
	p := drTestSetup(t, "id")
	a, b := p.aliceS.ID(), p.bobS.ID()
	if a == b {
		t.Fatal("initiator and responder of one run have the same ID")
	}
	for i := range 6 {
		fromAlice := i%2 == 0
		text := fmt.Sprintf("message %d", i)
		p.recv(t, fromAlice, p.send(t, fromAlice, text), text)
		if p.aliceS.ID() != a || p.bobS.ID() != b {
			t.Fatalf("after message %d the IDs changed", i)
		}
	}
	back, err := UnmarshalSession(p.aliceS.Marshal(), p.aliceOpt...)
	if err != nil {
		t.Fatal(err)
	}
	if back.ID() != a {
		t.Fatal("the ID changed through Marshal and UnmarshalSession")
	}
	other := drTestSetup(t, "id, another run")
	if other.aliceS.ID() == a || other.bobS.ID() == b {
		t.Fatal("another run has the same ID")
	}
}

func TestSessionNewSession(t *testing.T) {
	p := drTestSetup(t, "newsession")
	// Alice (not having received a reply) starts over with a new session.
	a2, err := Initiate(p.alice, drTestBundle(t, p.store, false, false))
	if err != nil {
		t.Fatal(err)
	}
	m, _, err := a2.Encrypt([]byte("again"), nil)
	if err != nil {
		t.Fatal(err)
	}
	drTestRecvErr(t, p.bobS, m, nil, ErrNewSession)
	drTestRecvErr(t, p.aliceS, m, nil, ErrNewSession)
	b2, pt, _, err := Respond(p.bob, p.store, m, nil)
	if err != nil || string(pt) != "again" {
		t.Fatalf("Respond: got %q, %v", pt, err)
	}
	_ = b2
}

func TestSessionRespondErrors(t *testing.T) {
	p := drTestSetup(t, "respond-errors")
	a, err := Initiate(p.alice, drTestBundle(t, drTestStore(t, p.bob, "respond-errors", 3, 3), true, true))
	if err != nil {
		t.Fatal(err)
	}
	good, _, err := a.Encrypt([]byte("x"), nil)
	if err != nil {
		t.Fatal(err)
	}
	normal := p.send(t, false, "normal")
	other := drTestIdentity(t, "respond-errors/carol")
	tests := []struct {
		name  string
		self  *Identity
		store *PrekeyStore
		msg   []byte
		want  error
	}{
		{name: "consumed one-time prekeys", self: p.bob, store: p.store, msg: good, want: ErrNoPrekey},
		{name: "store of another identity", self: other, store: p.store, msg: good, want: ErrMalformed},
		{name: "not an initial message", self: p.bob, store: p.store, msg: normal, want: ErrMalformed},
		{name: "empty", self: p.bob, store: p.store, msg: nil, want: ErrMalformed},
		{name: "wrong version", self: p.bob, store: p.store, msg: append([]byte{9}, good[1:]...), want: ErrVersion},
		{name: "too large", self: p.bob, store: p.store, msg: make([]byte, maxInitialSize+1), want: ErrTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, _, _, err := Respond(tt.self, tt.store, tt.msg, nil); !errors.Is(err, tt.want) {
				t.Errorf("Respond: got %v, want %v", err, tt.want)
			}
		})
	}
}

func TestSessionBadMessagesChangeNothing(t *testing.T) {
	p := drTestSetup(t, "bad")
	p.recv(t, false, p.send(t, false, "warm up"), "warm up")
	msg := p.send(t, true, "payload")
	flip := func(i int) []byte {
		b := bytes.Clone(msg)
		b[i] ^= 0x40
		return b
	}
	tests := []struct {
		name string
		msg  []byte
		ad   []byte
		want error
	}{
		{name: "empty", msg: nil, want: ErrMalformed},
		{name: "one byte", msg: msg[:1], want: ErrMalformed},
		{name: "truncated header", msg: msg[:50], want: ErrMalformed},
		{name: "truncated body", msg: msg[:drMessageMin-1], want: ErrMalformed},
		{name: "cut tag", msg: msg[:len(msg)-1], want: ErrDecrypt},
		{name: "version", msg: flip(0), want: ErrVersion},
		{name: "unknown type", msg: flip(1), want: ErrMalformed},
		{name: "header nonce", msg: flip(5), want: ErrDecrypt},
		{name: "encrypted header", msg: flip(40), want: ErrDecrypt},
		{name: "header tag", msg: flip(81), want: ErrDecrypt},
		{name: "body nonce", msg: flip(90), want: ErrDecrypt},
		{name: "body", msg: flip(110), want: ErrDecrypt},
		{name: "wrong associated data", msg: msg, ad: []byte("x"), want: ErrDecrypt},
		{name: "too large", msg: append(bytes.Clone(msg), make([]byte, drMaxMessageSize)...), want: ErrTooLarge},
		{name: "garbage of the right length", msg: append([]byte{drVersion, drTypeMessage}, make([]byte, len(msg)-2)...), want: ErrDecrypt},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			drTestRecvErr(t, p.bobS, tt.msg, tt.ad, tt.want)
		})
	}
	p.recv(t, true, msg, "payload")
}

func TestSessionEncryptLimits(t *testing.T) {
	p := drTestSetup(t, "limits")
	before := p.aliceS.Marshal()
	if _, next, err := p.aliceS.Encrypt(make([]byte, MaxPlaintextSize+1), nil); !errors.Is(err, ErrTooLarge) || next != nil {
		t.Errorf("Encrypt oversized: got %v, want ErrTooLarge and no state", err)
	}
	if !bytes.Equal(before, p.aliceS.Marshal()) {
		t.Errorf("failed Encrypt changed the state")
	}
	msg, _, err := p.aliceS.Encrypt(make([]byte, MaxPlaintextSize), nil)
	if err != nil {
		t.Fatalf("Encrypt of MaxPlaintextSize: %v", err)
	}
	if _, _, err := p.bobS.Decrypt(msg, nil); err != nil {
		t.Errorf("Decrypt of MaxPlaintextSize: %v", err)
	}
	// Encrypt does not change the session it is called on.
	m1, _, _ := p.aliceS.Encrypt([]byte("a"), nil)
	m2, _, _ := p.aliceS.Encrypt([]byte("b"), nil)
	if pt, _, err := p.bobS.Decrypt(m1, nil); err != nil || string(pt) != "a" {
		t.Errorf("Decrypt m1: %q %v", pt, err)
	}
	if pt, _, err := p.bobS.Decrypt(m2, nil); err != nil || string(pt) != "b" {
		t.Errorf("Decrypt m2 (same message key, fresh nonces): %q %v", pt, err)
	}
}

func TestUnmarshalSessionMalformed(t *testing.T) {
	p := drTestSetup(t, "unmarshal")
	good := p.aliceS.Marshal()
	back, err := UnmarshalSession(good)
	if err != nil || !bytes.Equal(back.Marshal(), good) {
		t.Fatalf("round trip: %v", err)
	}
	mutate := func(f func(m *pb.RatchetSession)) []byte {
		var m pb.RatchetSession
		if err := proto.Unmarshal(good, &m); err != nil {
			t.Fatal(err)
		}
		f(&m)
		b, _ := proto.Marshal(&m)
		return b
	}
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"garbage", []byte{0xff}, ErrMalformed},
		{"too large", make([]byte, maxSessionSize+1), ErrTooLarge},
		{"version 2", mutate(func(m *pb.RatchetSession) { m.Version = 2 }), ErrVersion},
		{"no ratchet", mutate(func(m *pb.RatchetSession) { m.Ratchet = nil }), ErrMalformed},
		{"short AD", mutate(func(m *pb.RatchetSession) { m.AssociatedData = m.AssociatedData[:10] }), ErrMalformed},
		{"no remote", mutate(func(m *pb.RatchetSession) { m.Remote = nil }), ErrMalformed},
		{"short root key", mutate(func(m *pb.RatchetSession) { m.Ratchet.RootKey = m.Ratchet.RootKey[:31] }), ErrMalformed},
		{"no sending chain", mutate(func(m *pb.RatchetSession) { m.Ratchet.SendChainKey = nil }), ErrMalformed},
		{"bad ratchet key", mutate(func(m *pb.RatchetSession) { m.Ratchet.SendRatchetKey = []byte{1} }), ErrMalformed},
		{"pending of a responder", mutate(func(m *pb.RatchetSession) { m.Initiator = false }), ErrMalformed},
		{"pending with another base key", mutate(func(m *pb.RatchetSession) { m.BaseKey = bytes.Repeat([]byte{1}, 32) }), ErrMalformed},
		{"receiving chain without key", mutate(func(m *pb.RatchetSession) {
			m.Ratchet.RecvChainKey = bytes.Repeat([]byte{1}, 32)
			m.Ratchet.RecvRatchetKey = nil
		}), ErrMalformed},
		{"skipped keys out of order", mutate(func(m *pb.RatchetSession) {
			m.Ratchet.Skipped = []*pb.RatchetSkippedChain{{RatchetKey: make([]byte, 32), HeaderKey: make([]byte, 32),
				Keys: []*pb.RatchetSkippedKey{{N: 2, MessageKey: make([]byte, 32)}, {N: 1, MessageKey: make([]byte, 32)}}}}
		}), ErrMalformed},
		{"empty skipped chain", mutate(func(m *pb.RatchetSession) {
			m.Ratchet.Skipped = []*pb.RatchetSkippedChain{{RatchetKey: make([]byte, 32), HeaderKey: make([]byte, 32)}}
		}), ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := UnmarshalSession(tt.in); !errors.Is(err, tt.want) {
				t.Errorf("UnmarshalSession: got %v, want %v", err, tt.want)
			}
		})
	}
}

func FuzzUnmarshalSession(f *testing.F) {
	p := drTestSetup(f, "fuzz-unmarshal")
	f.Add(p.aliceS.Marshal())
	m := p.send(f, true, "x")
	p.recv(f, true, p.send(f, true, "y"), "y")
	f.Add(p.bobS.Marshal())
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := UnmarshalSession(b, WithRand(drTestRand("fuzz")))
		if err != nil {
			if !drTestTyped(err) {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		again, err := UnmarshalSession(s.Marshal())
		if err != nil || !bytes.Equal(again.Marshal(), s.Marshal()) {
			t.Fatalf("round trip: %v", err)
		}
		// A restored state of any shape must handle messages safely.
		if _, _, err := s.Decrypt(m, nil); err != nil && !drTestTyped(err) {
			t.Fatalf("Decrypt: untyped error %v", err)
		}
		if _, _, err := s.Encrypt([]byte("z"), nil); err != nil && !drTestTyped(err) {
			t.Fatalf("Encrypt: untyped error %v", err)
		}
	})
}

// TestSessionConcurrentUse: a Session is an immutable value, so several
// goroutines may decrypt and encrypt with the same one at once (run with
// -race).
func TestSessionConcurrentUse(t *testing.T) {
	p := drTestSetup(t, "concurrent")
	bob, err := UnmarshalSession(p.bobS.Marshal()) // default crypto/rand: safe for concurrent use
	if err != nil {
		t.Fatal(err)
	}
	msgs := [][]byte{p.send(t, true, "m0"), p.send(t, true, "m1"), p.send(t, true, "m2")}
	done := make(chan error)
	for g := range 8 {
		go func() {
			m := msgs[g%len(msgs)]
			pt, next, err := bob.Decrypt(m, nil)
			if err == nil && string(pt) != fmt.Sprint("m", g%len(msgs)) {
				err = fmt.Errorf("got %q", pt)
			}
			if err == nil {
				_, _, err = next.Encrypt([]byte("reply"), nil)
			}
			done <- err
		}()
	}
	for range 8 {
		if err := <-done; err != nil {
			t.Error(err)
		}
	}
}
