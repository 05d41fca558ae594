package e2ee

// Pairwise sessions: PQXDH setup plus the header-encrypted Double Ratchet,
// behind the small API the message layer uses.
//
// A Session is a value. Encrypt and Decrypt never change the session they
// are called on; they return the next one. The caller persists the next
// session (with the plaintext, for Decrypt) before acting on the result:
//
//	pt, next, err := s.Decrypt(msg, ad)  // s is unchanged, whatever happens
//	store(next, pt)                       // atomically, sealed
//	ack(msg)                              // only now let the relay delete it
//
// A crash before store leaves the old state, which decrypts msg again; after
// store, msg decrypts no more (ErrReplay or ErrDecrypt) and changes nothing.
// For Encrypt, persist next before sending the message, unless
// next.StoresAs(s) and s is already on disk: then next persists as s does,
// and s has reserved the message's key (SendReserve).

import (
	"bytes"
	"crypto/ecdh"
	"crypto/ed25519"
	"crypto/mlkem"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/kinmesh/kinmesh/protocols/e2ee/pb"
)

// MaxPlaintextSize caps the plaintext of one session message. Larger
// content (media) is encrypted separately and referenced by key.
const MaxPlaintextSize = 256 << 10

const (
	sessionVersion   = 1
	drMaxMessageSize = drMessageMin + MaxPlaintextSize
	maxInitialSize   = drMaxMessageSize + 2<<10
	maxSessionSize   = 1 << 20
)

// SessionOption sets where a session gets randomness and time. Neither is
// part of the persisted state: pass the options again to UnmarshalSession.
type SessionOption func(*sessionEnv)

type sessionEnv struct {
	rand   io.Reader
	now    func() time.Time
	encaps pxEncapsFunc
}

// WithRand makes the session read randomness (ratchet keys, nonces, the
// PQXDH ephemeral key) from r instead of crypto/rand. Tests use it for
// deterministic output; anything else should keep the default. If the
// session is used from several goroutines at once, r must allow that.
func WithRand(r io.Reader) SessionOption { return func(e *sessionEnv) { e.rand = r } }

// WithClock makes the session read the time from now instead of time.Now.
// Time only stamps skipped message keys, which expire after
// SkippedKeyMaxAge.
func WithClock(now func() time.Time) SessionOption { return func(e *sessionEnv) { e.now = now } }

func newSessionEnv(opts []SessionOption) sessionEnv {
	e := sessionEnv{rand: rand.Reader, now: time.Now, encaps: pxEncapsulate}
	for _, o := range opts {
		o(&e)
	}
	return e
}

// Session is one side of a pairwise end-to-end encrypted session.
type Session struct {
	c       *sessionConst // shared by all states of the session
	pending *pxInitial    // initiator's PQXDH data, until the first reply
	st      drState
	// stored names what Marshal would write: a state made by changing
	// it gets a new number (nextStored), one whose change Marshal doesn't
	// show (an Encrypt within the reservation) keeps its origin's.
	stored uint64
}

// storedSeq numbers the persisted forms of sessions (Session.stored).
var storedSeq atomic.Uint64

func nextStored() uint64 { return storedSeq.Add(1) }

// StoresAs reports whether s persists as o does: s is o, or came from it
// by Encrypts within the sending chain o has reserved (SendReserve), so
// Marshal writes the same state for both. A message s encrypted may then
// leave once o's state is on disk: a crash can't make its message key be
// used again.
func (s *Session) StoresAs(o *Session) bool {
	return s == o || (o != nil && s.c == o.c && s.stored == o.stored)
}

// sessionConst is the part of a session that never changes, kept apart so
// that each step copies (and allocates) only what does.
type sessionConst struct {
	local, remote PublicIdentity
	ad            []byte // PQXDH associated data
	hdrAD         []byte // drHeaderAD(ad)
	baseKey       drKey  // EK_A of the PQXDH run
	initiator     bool
	env           sessionEnv
}

// Initiate starts a session with the owner of b, a bundle fetched from one
// of its relays (Initiate verifies it again; the caller checks that
// b.Identity is the contact it means). Until the first reply decrypts,
// every message the session encrypts is an initial message carrying the
// PQXDH data, so whichever arrives first sets the session up.
func Initiate(self *Identity, b *Bundle, opts ...SessionOption) (*Session, error) {
	env := newSessionEnv(opts)
	if err := b.Verify(); err != nil {
		return nil, fmt.Errorf("initiate: %w", err)
	}
	sk, ad, in, err := pxInitiate(self, b, env.rand, env.encaps)
	if err != nil {
		return nil, fmt.Errorf("initiate: %w", err)
	}
	rk, hka, nhkb := drDeriveInit(sk)
	st, err := drInitAlice(rk, hka, nhkb, b.SignedPrekey.Key, env.rand)
	if err != nil {
		return nil, fmt.Errorf("initiate: %w", err)
	}
	c := &sessionConst{local: self.Public(), remote: b.Identity, ad: ad, hdrAD: drHeaderAD(ad), initiator: true, env: env}
	copy(c.baseKey[:], in.ephemeral.Bytes())
	return &Session{c: c, pending: &in, st: st, stored: nextStored()}, nil
}

// Respond accepts an initial message: it runs PQXDH with self's prekeys in
// store (which it does not change) and decrypts the message. It returns
// the session, the plaintext and the one-time prekeys used: persist the
// session, the plaintext and store.Consume(consumed) together. A message
// that does not decrypt consumes nothing.
func Respond(self *Identity, store *PrekeyStore, msg, ad []byte, opts ...SessionOption) (s *Session, plaintext []byte, consumed []PrekeyID, err error) {
	env := newSessionEnv(opts)
	in, inner, err := pxParseInitial(msg)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("respond: %w", err)
	}
	sk, sad, spk, consumed, err := pxRespond(self, store, in)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("respond: %w", err)
	}
	rk, hka, nhkb := drDeriveInit(sk)
	c := &sessionConst{local: self.Public(), remote: in.identity, ad: sad, hdrAD: drHeaderAD(sad), env: env}
	copy(c.baseKey[:], in.ephemeral.Bytes())
	s = &Session{c: c, st: drInitBob(rk, hka, nhkb, spk), stored: nextStored()}
	pt, next, err := s.open(inner, ad)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("respond: %w", err)
	}
	return next, pt, consumed, nil
}

// IsInitialMessage reports whether msg is an initial message (one that can
// start a session through Respond) rather than a plain ratchet message.
func IsInitialMessage(msg []byte) bool {
	return len(msg) >= drPrefixSize && msg[0] == drVersion && msg[1] == drTypeInitial
}

// Peer returns the identity at the other end of the session.
func (s *Session) Peer() PublicIdentity { return s.c.remote }

// ID names the session among its owner's sessions with the peer: it is
// derived from the PQXDH run that started it (its base key, and which side
// we took), so every state Encrypt and Decrypt return, and the session
// Marshal and UnmarshalSession round-trip, has the same ID, and another
// run gives another. It is not secret.
func (s *Session) ID() [16]byte {
	h := sha256.New()
	h.Write([]byte("kinmesh session id"))
	h.Write(s.c.baseKey[:])
	if s.c.initiator {
		h.Write([]byte{1})
	} else {
		h.Write([]byte{0})
	}
	var id [16]byte
	copy(id[:], h.Sum(nil))
	return id
}

// Encrypt encrypts plaintext, authenticating ad (which the receiver must
// pass to Decrypt) too. It returns the message and the next session; s is
// unchanged. Persist next before sending the message.
func (s *Session) Encrypt(plaintext, ad []byte) (msg []byte, next *Session, err error) {
	if len(plaintext) > MaxPlaintextSize {
		return nil, nil, fmt.Errorf("encrypt: %w", ErrTooLarge)
	}
	n := *s
	n.st.skipped = n.st.skipped.expire(s.c.env.now().Add(-SkippedKeyMaxAge).Unix())
	out, err := n.st.encryptHE(plaintext, s.c.ad, s.c.hdrAD, ad, s.c.env.rand)
	if err != nil {
		return nil, nil, fmt.Errorf("encrypt: %w", err)
	}
	if n.st.resN != s.st.resN || n.st.skipped.total != s.st.skipped.total {
		n.stored = nextStored()
	}
	if n.pending != nil {
		out = pxMarshalInitial(n.pending, out)
	}
	return out, &n, nil
}

// Decrypt authenticates and decrypts msg with associated data ad. It
// returns the plaintext and the next session; s is unchanged, and on error
// next is nil. An initial message of another session yields ErrNewSession.
func (s *Session) Decrypt(msg, ad []byte) (plaintext []byte, next *Session, err error) {
	if len(msg) > maxInitialSize {
		return nil, nil, fmt.Errorf("decrypt: %w", ErrTooLarge)
	}
	if len(msg) < drPrefixSize {
		return nil, nil, fmt.Errorf("decrypt: %w", ErrMalformed)
	}
	if msg[0] != drVersion {
		return nil, nil, fmt.Errorf("decrypt: version %d: %w", msg[0], ErrVersion)
	}
	inner := msg
	switch msg[1] {
	case drTypeMessage:
		if len(msg) > drMaxMessageSize {
			return nil, nil, fmt.Errorf("decrypt: %w", ErrTooLarge)
		}
	case drTypeInitial:
		in, m, err := pxParseInitial(msg)
		if err != nil {
			return nil, nil, fmt.Errorf("decrypt: %w", err)
		}
		if s.c.initiator || !bytes.Equal(in.ephemeral.Bytes(), s.c.baseKey[:]) || !in.identity.Equal(s.c.remote) {
			return nil, nil, fmt.Errorf("decrypt: %w", ErrNewSession)
		}
		inner = m
	default:
		return nil, nil, fmt.Errorf("decrypt: message type %d: %w", msg[1], ErrMalformed)
	}
	return s.open(inner, ad)
}

// open decrypts the ratchet message msg on a copy of s.
func (s *Session) open(msg, ad []byte) ([]byte, *Session, error) {
	n := *s
	pt, err := n.st.decryptHE(msg, s.c.ad, s.c.hdrAD, ad, s.c.env.now(), s.c.env.rand)
	if err != nil {
		return nil, nil, fmt.Errorf("decrypt: %w", err)
	}
	n.pending = nil // the peer has the session: stop sending PQXDH data
	n.stored = nextStored()
	return pt, &n, nil
}

// Marshal serializes the complete session state (a RatchetSession
// protobuf), for the caller to persist sealed.
func (s *Session) Marshal() []byte {
	st := &s.st
	opt := func(b drKey, ok bool) []byte {
		if !ok {
			return nil
		}
		return bytes.Clone(b[:])
	}
	r := &pb.RatchetState{
		RootKey:           bytes.Clone(st.rk[:]),
		SendRatchetKey:    st.dhs.Bytes(),
		RecvRatchetKey:    opt(st.dhr, st.hasDHr),
		SendChainKey:      opt(st.resCK, st.hasCKs),
		RecvChainKey:      opt(st.ckr, st.hasCKr),
		SendN:             st.resN,
		RecvN:             st.nr,
		PrevN:             st.pn,
		SendHeaderKey:     opt(st.hks, st.hasHKs),
		RecvHeaderKey:     opt(st.hkr, st.hasHKr),
		NextSendHeaderKey: bytes.Clone(st.nhks[:]),
		NextRecvHeaderKey: bytes.Clone(st.nhkr[:]),
	}
	for _, c := range st.skipped.chains {
		wc := &pb.RatchetSkippedChain{RatchetKey: bytes.Clone(c.dh[:]), HeaderKey: bytes.Clone(c.hk[:])}
		for _, k := range c.keys {
			wc.Keys = append(wc.Keys, &pb.RatchetSkippedKey{N: k.n, MessageKey: bytes.Clone(k.mk[:]), StoredUnix: k.stored})
		}
		r.Skipped = append(r.Skipped, wc)
	}
	m := &pb.RatchetSession{
		Version:        sessionVersion,
		Local:          s.c.local.toWire(),
		Remote:         s.c.remote.toWire(),
		AssociatedData: s.c.ad,
		BaseKey:        bytes.Clone(s.c.baseKey[:]),
		Initiator:      s.c.initiator,
		Ratchet:        r,
	}
	if s.pending != nil {
		m.Pending = s.pending.toWire()
		m.Pending.Identity = nil // it is Local
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		panic("e2ee: marshal session: " + err.Error())
	}
	return b
}

// UnmarshalSession restores a session written by Marshal. opts are as for
// Initiate; they are not part of the persisted state.
func UnmarshalSession(b []byte, opts ...SessionOption) (*Session, error) {
	if len(b) > maxSessionSize {
		return nil, fmt.Errorf("session: %w", ErrTooLarge)
	}
	var m pb.RatchetSession
	if err := proto.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("session: %w", ErrMalformed)
	}
	if m.Version != sessionVersion {
		return nil, fmt.Errorf("session version %d: %w", m.Version, ErrVersion)
	}
	bad := fmt.Errorf("session: %w", ErrMalformed)
	local, err1 := storedIdentity(m.Local)
	remote, err2 := storedIdentity(m.Remote)
	if err1 != nil || err2 != nil || len(m.AssociatedData) != pxADSize || len(m.BaseKey) != drKeySize || m.Ratchet == nil {
		return nil, bad
	}
	c := &sessionConst{local: local, remote: remote, ad: bytes.Clone(m.AssociatedData), initiator: m.Initiator, env: newSessionEnv(opts)}
	c.hdrAD = drHeaderAD(c.ad)
	copy(c.baseKey[:], m.BaseKey)
	s := &Session{c: c, stored: nextStored()}
	if m.Pending != nil {
		p := m.Pending
		ek, err := ecdh.X25519().NewPublicKey(p.EphemeralKey)
		if err != nil || !m.Initiator || !bytes.Equal(p.EphemeralKey, m.BaseKey) || p.SignedPrekeyId == 0 || p.PqPrekeyId == 0 ||
			len(p.KemCiphertext) != mlkem.CiphertextSize768 || p.Identity != nil || len(p.Message) != 0 {
			return nil, bad
		}
		s.pending = &pxInitial{identity: local, ephemeral: ek, spkID: PrekeyID(p.SignedPrekeyId), pqID: PrekeyID(p.PqPrekeyId),
			opkID: PrekeyID(p.OneTimePrekeyId), ct: bytes.Clone(p.KemCiphertext)}
	}
	if s.st, err1 = drStateFromWire(m.Ratchet); err1 != nil {
		return nil, err1
	}
	return s, nil
}

// storedIdentity decodes an identity from this package's own (sealed)
// state without verifying its binding again: it was verified when it first
// arrived, and checking two signatures per message load would dominate.
func storedIdentity(m *pb.PublicIdentity) (PublicIdentity, error) {
	if m == nil || m.Version != identityVersion || len(m.SignKey) != ed25519.PublicKeySize || len(m.Binding) != ed25519.SignatureSize {
		return PublicIdentity{}, ErrMalformed
	}
	dh, err := ecdh.X25519().NewPublicKey(m.DhKey)
	if err != nil {
		return PublicIdentity{}, ErrMalformed
	}
	return PublicIdentity{Sign: bytes.Clone(m.SignKey), DH: dh, Binding: bytes.Clone(m.Binding)}, nil
}

func drStateFromWire(r *pb.RatchetState) (drState, error) {
	bad := fmt.Errorf("session ratchet: %w", ErrMalformed)
	var st drState
	key := func(dst *drKey, b []byte, optional bool) (bool, bool) {
		if len(b) == 0 && optional {
			return false, true
		}
		if len(b) != drKeySize {
			return false, false
		}
		copy(dst[:], b)
		return true, true
	}
	var ok [9]bool
	_, ok[0] = key(&st.rk, r.RootKey, false)
	st.hasDHr, ok[1] = key(&st.dhr, r.RecvRatchetKey, true)
	st.hasCKs, ok[2] = key(&st.cks, r.SendChainKey, true)
	st.hasCKr, ok[3] = key(&st.ckr, r.RecvChainKey, true)
	st.hasHKs, ok[4] = key(&st.hks, r.SendHeaderKey, true)
	st.hasHKr, ok[5] = key(&st.hkr, r.RecvHeaderKey, true)
	_, ok[6] = key(&st.nhks, r.NextSendHeaderKey, false)
	_, ok[7] = key(&st.nhkr, r.NextRecvHeaderKey, false)
	priv, err := ecdh.X25519().NewPrivateKey(r.SendRatchetKey)
	ok[8] = err == nil
	for _, o := range ok {
		if !o {
			return drState{}, bad
		}
	}
	if !st.hasCKs || !st.hasHKs || (st.hasCKr && !st.hasDHr) || st.hasHKr != st.hasCKr {
		return drState{}, bad
	}
	st.setDHs(priv)
	st.ns, st.nr, st.pn = r.SendN, r.RecvN, r.PrevN
	st.resN, st.resCK = st.ns, st.cks // used up: the next Encrypt reserves
	if len(r.Skipped) > drMaxSkippedChains {
		return drState{}, bad
	}
	for _, wc := range r.Skipped {
		var c drSkippedChain
		if wc == nil || len(wc.Keys) == 0 || len(wc.Keys) > MaxSkipPerChain || len(wc.RatchetKey) != drKeySize || len(wc.HeaderKey) != drKeySize {
			return drState{}, bad
		}
		copy(c.dh[:], wc.RatchetKey)
		copy(c.hk[:], wc.HeaderKey)
		if st.skipped.chain(c.dh) >= 0 {
			return drState{}, bad
		}
		c.keys = make([]drSkippedKey, 0, len(wc.Keys))
		for i, wk := range wc.Keys {
			if wk == nil || len(wk.MessageKey) != drKeySize || (i > 0 && wk.N <= wc.Keys[i-1].N) {
				return drState{}, bad
			}
			k := drSkippedKey{n: wk.N, stored: wk.StoredUnix}
			copy(k.mk[:], wk.MessageKey)
			c.keys = append(c.keys, k)
		}
		st.skipped.chains = append(st.skipped.chains, c)
		st.skipped.total += len(c.keys)
		if st.skipped.total > MaxSkippedKeys {
			return drState{}, bad
		}
	}
	return st, nil
}
