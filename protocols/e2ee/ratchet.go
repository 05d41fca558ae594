package e2ee

// The Double Ratchet core (Signal's Double Ratchet specification, §3): the
// KDF chains, the X25519 DH ratchet, message keys with their AEAD, and the
// bounded store of skipped message keys. It knows nothing about wire
// formats or header encryption: header.go drives it with encrypted headers
// (§4) for real sessions, and the cross-check test drives it with plaintext
// headers against an independent implementation.
//
// A drState is a value. Callers copy it, advance the copy and keep the copy
// only if the whole operation succeeded; nothing in a drState is ever
// modified in place once shared (the skipped-key store is copy-on-write).

import (
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"time"

	"golang.org/x/crypto/chacha20poly1305"
)

// Bounds of the skipped-message-key store. A key is "skipped" when a later
// message of the same chain arrives first; it is kept so the earlier
// message can still be decrypted when it arrives.
const (
	// MaxSkipPerChain is the most message keys one chain may hold in the
	// store, and the most a single message may make the receiver derive
	// ahead in its chain (more: ErrTooManySkipped, nothing changes).
	MaxSkipPerChain = 1000

	// MaxSkippedKeys is the most skipped keys a session holds. Beyond it
	// the oldest are evicted (refusing would wedge the session forever).
	MaxSkippedKeys = 5000

	// SkippedKeyMaxAge is how long a skipped key is kept: relays keep a
	// message at most 15 days, so a later arrival cannot happen.
	SkippedKeyMaxAge = 15 * 24 * time.Hour
)

// drMaxSkippedChains caps the number of chains with skipped keys, which
// bounds how many header keys a message is tried against (header.go).
const drMaxSkippedChains = 200

// Sizes of the core's values.
const (
	drKeySize    = 32 // root, chain, message and header keys; X25519 keys
	drNonceSize  = chacha20poly1305.NonceSizeX
	drTagSize    = chacha20poly1305.Overhead
	drHeaderSize = drKeySize + 4 + 4 // ratchet public key || PN || N
	drBodyMin    = drNonceSize + drTagSize
)

// KDF info strings. drRootInfo is also configured into the Python
// cross-check (testdata/xcheck), which must derive the same root chain.
const (
	drRootInfo = "kinmesh/e2ee/ratchet-root/v1"
	drInitInfo = "kinmesh/e2ee/ratchet-init/v1"
)

// drKey is a 32-byte symmetric key or X25519 public key.
type drKey = [drKeySize]byte

// drHeader is the Double Ratchet header: the sender's current ratchet
// public key, the length of its previous sending chain, and the message's
// number in the current one.
type drHeader struct {
	dh drKey
	pn uint32
	n  uint32
}

// encode returns dh || pn (4 bytes big-endian) || n (4 bytes big-endian).
func (h *drHeader) encode() (b [drHeaderSize]byte) {
	copy(b[:], h.dh[:])
	binary.BigEndian.PutUint32(b[32:], h.pn)
	binary.BigEndian.PutUint32(b[36:], h.n)
	return b
}

func drDecodeHeader(b []byte) (drHeader, error) {
	if len(b) != drHeaderSize {
		return drHeader{}, fmt.Errorf("ratchet header: %w", ErrMalformed)
	}
	var h drHeader
	copy(h.dh[:], b)
	h.pn = binary.BigEndian.Uint32(b[32:])
	h.n = binary.BigEndian.Uint32(b[36:])
	return h, nil
}

// drState is one side's Double Ratchet state, with the header keys of §4.
// In the plain (§3) use the header-key fields are derived but unused.
type drState struct {
	rk     drKey            // root key
	dhs    *ecdh.PrivateKey // our current ratchet key pair
	dhsPub drKey
	dhr    drKey // their current ratchet public key (if hasDHr)
	cks    drKey // sending chain key (if hasCKs)
	ckr    drKey // receiving chain key (if hasCKr)
	ns     uint32
	nr     uint32
	pn     uint32

	hks, hkr   drKey // current sending / receiving header keys
	nhks, nhkr drKey // next header keys

	hasDHr, hasCKs, hasCKr, hasHKs, hasHKr bool

	// The sending chain as persisted (Marshal): its key resCK at index
	// resN ≥ ns. The keys from ns up to resN are reserved: a state
	// restored after a crash starts at resN, so a message encrypted with
	// one of them may leave before the state that encrypted it is on disk
	// (reserve).
	resN  uint32
	resCK drKey

	skipped drSkipped

	// AEADs of hks and hkr, made on first use and shared by copies (they
	// are stateless); reset whenever the key changes. Not persisted.
	hksAEAD, hkrAEAD cipher.AEAD
}

// drDeriveInit derives the ratchet's initial root key and the two shared
// header keys from the PQXDH secret SK.
func drDeriveInit(sk []byte) (rk, hka, nhkb drKey) {
	out, err := hkdf.Key(sha256.New, sk, make([]byte, sha256.Size), drInitInfo, 3*drKeySize)
	if err != nil {
		panic("e2ee: hkdf: " + err.Error()) // only fails for absurd lengths
	}
	copy(rk[:], out[0:32])
	copy(hka[:], out[32:64])
	copy(nhkb[:], out[64:96])
	return rk, hka, nhkb
}

// drInitAlice initialises the initiator (§3.3, §4.3): a fresh ratchet key
// pair, a sending chain to Bob's ratchet key (his signed prekey), and the
// shared header keys.
func drInitAlice(rk, hka, nhkb drKey, bob *ecdh.PublicKey, rand io.Reader) (drState, error) {
	var s drState
	priv, err := drGenerate(rand)
	if err != nil {
		return drState{}, err
	}
	s.setDHs(priv)
	copy(s.dhr[:], bob.Bytes())
	s.hasDHr = true
	dh, err := priv.ECDH(bob)
	if err != nil {
		return drState{}, fmt.Errorf("ratchet init: %w", ErrMalformed)
	}
	s.rk, s.cks, s.nhks = drKDFRoot(&rk, dh)
	s.hasCKs = true
	s.reserve()
	s.hks, s.hasHKs = hka, true
	s.nhkr = nhkb
	return s, nil
}

// drInitBob initialises the responder: its ratchet key pair is the signed
// prekey the initiator used; the first message from Alice triggers its
// first DH ratchet step.
func drInitBob(rk, hka, nhkb drKey, spk *ecdh.PrivateKey) drState {
	var s drState
	s.rk = rk
	s.setDHs(spk)
	s.nhks = nhkb
	s.nhkr = hka
	return s
}

func (s *drState) setDHs(priv *ecdh.PrivateKey) {
	s.dhs = priv
	copy(s.dhsPub[:], priv.PublicKey().Bytes())
}

// drGenerate makes an X25519 key pair from 32 bytes of rand (not
// ecdh.GenerateKey, which ignores rand since Go 1.26: tests need
// deterministic keys).
func drGenerate(rand io.Reader) (*ecdh.PrivateKey, error) {
	var b [32]byte
	if _, err := io.ReadFull(rand, b[:]); err != nil {
		return nil, fmt.Errorf("generate ratchet key: %w", err)
	}
	return ecdh.X25519().NewPrivateKey(b[:])
}

// drKDFRoot is KDF_RK_HE: HKDF-SHA-256 with the root key as salt, the DH
// output as input key material and drRootInfo, 96 bytes split into the new
// root key, a chain key and the next header key. The first 64 bytes are
// exactly the plain KDF_RK (RFC 5869 output is a prefix of a longer one).
func drKDFRoot(rk *drKey, dhOut []byte) (newRK, ck, nhk drKey) {
	out, err := hkdf.Key(sha256.New, dhOut, rk[:], drRootInfo, 3*drKeySize)
	if err != nil {
		panic("e2ee: hkdf: " + err.Error())
	}
	copy(newRK[:], out[0:32])
	copy(ck[:], out[32:64])
	copy(nhk[:], out[64:96])
	return newRK, ck, nhk
}

// drKDFChain is KDF_CK: the message key is HMAC-SHA-256(ck, 0x01), the next
// chain key HMAC-SHA-256(ck, 0x02).
func drKDFChain(ck *drKey) (next, mk drKey) {
	return drHMACByte(ck, 0x02), drHMACByte(ck, 0x01)
}

// drHMACByte is HMAC-SHA-256 (RFC 2104) of one byte under a 32-byte key,
// on the stack: four SHA-256 blocks, no allocation.
func drHMACByte(key *drKey, b byte) drKey {
	var buf [sha256.BlockSize + sha256.Size]byte
	for i := range sha256.BlockSize {
		k := byte(0)
		if i < drKeySize {
			k = key[i]
		}
		buf[i] = k ^ 0x36
	}
	buf[sha256.BlockSize] = b
	inner := sha256.Sum256(buf[:sha256.BlockSize+1])
	for i := range sha256.BlockSize {
		buf[i] ^= 0x36 ^ 0x5c
	}
	copy(buf[sha256.BlockSize:], inner[:])
	return sha256.Sum256(buf[:])
}

// nextSendKey advances the sending chain and returns the message key and
// the header to send with it.
func (s *drState) nextSendKey() (mk drKey, h drHeader, err error) {
	if !s.hasCKs {
		return mk, h, fmt.Errorf("ratchet: no sending chain: %w", ErrMalformed)
	}
	if s.ns == math.MaxUint32 {
		return mk, h, fmt.Errorf("ratchet: sending chain exhausted: %w", ErrTooLarge)
	}
	if s.ns >= s.resN {
		s.reserve() // key ns is the persisted one: persist keys past it
	}
	h = drHeader{dh: s.dhsPub, pn: s.pn, n: s.ns}
	s.cks, mk = drKDFChain(&s.cks)
	s.ns++
	return mk, h, nil
}

// SendReserve is how many message keys of its sending chain a session
// persists past the next one it will use (Marshal writes the chain as it
// will be SendReserve messages on). A session restored after a crash
// therefore never uses a message key the lost state may have used, and a
// message encrypted within the reservation may leave before the state
// that encrypted it is on disk, as long as the state that made the
// reservation is (Session.StoresAs). The price of a crash is a gap of at
// most SendReserve message numbers, which the receiver skips.
const SendReserve = 32

// reserve moves the persisted sending chain SendReserve keys past ns
// (fewer at the end of the chain's numbering).
func (s *drState) reserve() {
	ck, n := s.cks, s.ns
	for range SendReserve {
		if n == math.MaxUint32 {
			break
		}
		ck = drHMACByte(&ck, 0x02)
		n++
	}
	s.resN, s.resCK = n, ck
}

// nextRecvKey advances the receiving chain by one and returns the key of
// message number s.nr.
func (s *drState) nextRecvKey() drKey {
	var mk drKey
	s.ckr, mk = drKDFChain(&s.ckr)
	s.nr++
	return mk
}

// skipTo derives the receiving chain's keys up to (not including) message
// until and stores them as skipped. More than MaxSkipPerChain at once is
// refused with ErrTooManySkipped.
func (s *drState) skipTo(until uint32, now int64) error {
	if !s.hasCKr || until <= s.nr {
		return nil
	}
	if until-s.nr > MaxSkipPerChain {
		return fmt.Errorf("ratchet: %d keys ahead: %w", until-s.nr, ErrTooManySkipped)
	}
	keys := make([]drSkippedKey, 0, until-s.nr)
	for s.nr < until {
		n := s.nr
		keys = append(keys, drSkippedKey{n: n, mk: s.nextRecvKey(), stored: now})
	}
	s.skipped = s.skipped.with(s.dhr, s.hkr, keys)
	return nil
}

// closeChain stores the rest of the receiving chain (up to pn, the length
// the sender reports for it) before a DH ratchet step replaces it. If that
// is more than MaxSkipPerChain keys, none are derived: the sender is
// authenticated, but deriving unbounded keys on its word is a DoS, and
// refusing would block the session forever. Those messages are lost.
func (s *drState) closeChain(pn uint32, now int64) {
	if !s.hasCKr || pn <= s.nr || pn-s.nr > MaxSkipPerChain {
		return
	}
	_ = s.skipTo(pn, now) // within the bound: cannot fail
}

// ratchetStep is the DH ratchet step (DHRatchetHE): a new receiving chain
// to their new key, a fresh key pair of ours, a new sending chain.
func (s *drState) ratchetStep(remote drKey, rand io.Reader) error {
	pub, err := ecdh.X25519().NewPublicKey(remote[:])
	if err != nil {
		return fmt.Errorf("ratchet key: %w", ErrMalformed)
	}
	dh, err := s.dhs.ECDH(pub)
	if err != nil {
		return fmt.Errorf("ratchet key: %w", ErrDecrypt)
	}
	priv, err := drGenerate(rand)
	if err != nil {
		return err
	}
	dh2, err := priv.ECDH(pub)
	if err != nil {
		return fmt.Errorf("ratchet key: %w", ErrDecrypt)
	}
	s.pn = s.ns
	s.ns = 0
	s.nr = 0
	s.hks, s.hasHKs = s.nhks, true
	s.hkr, s.hasHKr = s.nhkr, true
	s.hksAEAD, s.hkrAEAD = nil, nil
	s.dhr, s.hasDHr = remote, true
	s.rk, s.ckr, s.nhkr = drKDFRoot(&s.rk, dh)
	s.hasCKr = true
	s.setDHs(priv)
	s.rk, s.cks, s.nhks = drKDFRoot(&s.rk, dh2)
	s.hasCKs = true
	s.reserve()
	return nil
}

// drSeal appends nonce || XChaCha20-Poly1305(mk, nonce, plaintext, ad) to
// dst. The message key is fresh per message; the random nonce additionally
// keeps a key reused after a state rollback (a crash before the caller
// persisted the next state) from ever meeting the same nonce.
func drSeal(dst []byte, mk *drKey, nonce, plaintext, ad []byte) []byte {
	aead, err := chacha20poly1305.NewX(mk[:])
	if err != nil {
		panic("e2ee: xchacha20poly1305: " + err.Error()) // fixed key size
	}
	dst = append(dst, nonce...)
	return aead.Seal(dst, nonce, plaintext, ad)
}

// drOpen authenticates and decrypts a body written by drSeal.
func drOpen(mk *drKey, body, ad []byte) ([]byte, error) {
	return drOpenTo(nil, mk, body, ad)
}

// drOpenTo is drOpen appending the plaintext to dst.
func drOpenTo(dst []byte, mk *drKey, body, ad []byte) ([]byte, error) {
	if len(body) < drBodyMin {
		return nil, fmt.Errorf("ratchet body: %w", ErrMalformed)
	}
	aead, err := chacha20poly1305.NewX(mk[:])
	if err != nil {
		panic("e2ee: xchacha20poly1305: " + err.Error())
	}
	pt, err := aead.Open(dst, body[:drNonceSize], body[drNonceSize:], ad)
	if err != nil {
		return nil, fmt.Errorf("ratchet body: %w", ErrDecrypt)
	}
	return pt, nil
}

// drSkipped is the store of skipped message keys, grouped by chain (the
// sender's ratchet public key) in the order the chains were received. Keys
// are only ever added to the newest chain, in increasing message number,
// so the store is ordered oldest-first overall: eviction and expiry drop
// from the front. A drSkipped is immutable: every change returns a new one
// and never writes to a slice it shares.
type drSkipped struct {
	chains []drSkippedChain
	total  int
}

type drSkippedChain struct {
	dh   drKey          // sender's ratchet public key of the chain
	hk   drKey          // header key its messages are encrypted under
	keys []drSkippedKey // increasing n
}

type drSkippedKey struct {
	n      uint32
	mk     drKey
	stored int64 // unix seconds
}

// lookup returns the key of message n of chain dh, if stored.
func (k drSkipped) lookup(dh drKey, n uint32) (drKey, bool) {
	ci := k.chain(dh)
	if ci < 0 {
		return drKey{}, false
	}
	ki := k.chains[ci].find(n)
	if ki < 0 {
		return drKey{}, false
	}
	return k.chains[ci].keys[ki].mk, true
}

func (k drSkipped) chain(dh drKey) int {
	for i := range k.chains {
		if k.chains[i].dh == dh {
			return i
		}
	}
	return -1
}

func (c *drSkippedChain) find(n uint32) int {
	lo, hi := 0, len(c.keys)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		switch {
		case c.keys[m].n == n:
			return m
		case c.keys[m].n < n:
			lo = m + 1
		default:
			hi = m
		}
	}
	return -1
}

// without returns the store minus message n of chain dh.
func (k drSkipped) without(dh drKey, n uint32) drSkipped {
	ci := k.chain(dh)
	if ci < 0 {
		return k
	}
	ki := k.chains[ci].find(n)
	if ki < 0 {
		return k
	}
	old := k.chains[ci].keys
	keys := make([]drSkippedKey, 0, len(old)-1)
	keys = append(append(keys, old[:ki]...), old[ki+1:]...)
	chains := make([]drSkippedChain, 0, len(k.chains))
	chains = append(chains, k.chains[:ci]...)
	if len(keys) > 0 {
		chains = append(chains, drSkippedChain{dh: dh, hk: k.chains[ci].hk, keys: keys})
	}
	chains = append(chains, k.chains[ci+1:]...)
	return drSkipped{chains: chains, total: k.total - 1}
}

// with returns the store plus keys (increasing n, all newer than any
// stored) for chain dh, then applies the caps: MaxSkipPerChain per chain,
// drMaxSkippedChains chains, MaxSkippedKeys overall, oldest evicted first.
func (k drSkipped) with(dh, hk drKey, keys []drSkippedKey) drSkipped {
	if len(keys) == 0 {
		return k
	}
	chains := make([]drSkippedChain, len(k.chains), len(k.chains)+1)
	copy(chains, k.chains)
	ci := k.chain(dh)
	if ci < 0 {
		chains = append(chains, drSkippedChain{dh: dh, hk: hk})
		ci = len(chains) - 1
	}
	old := chains[ci].keys
	merged := make([]drSkippedKey, 0, len(old)+len(keys))
	merged = append(append(merged, old...), keys...)
	if len(merged) > MaxSkipPerChain {
		merged = merged[len(merged)-MaxSkipPerChain:]
	}
	total := k.total - len(old) + len(merged)
	chains[ci].keys = merged
	out := drSkipped{chains: chains, total: total}
	for len(out.chains) > drMaxSkippedChains {
		out.total -= len(out.chains[0].keys)
		out.chains = out.chains[1:]
	}
	if out.total > MaxSkippedKeys {
		out = out.dropOldest(out.total - MaxSkippedKeys)
	}
	return out
}

// dropOldest returns the store without its n oldest keys.
func (k drSkipped) dropOldest(n int) drSkipped {
	chains := k.chains
	total := k.total
	for n > 0 && len(chains) > 0 {
		c := chains[0]
		if len(c.keys) <= n {
			n -= len(c.keys)
			total -= len(c.keys)
			chains = chains[1:]
			continue
		}
		rest := make([]drSkippedChain, len(chains))
		copy(rest, chains)
		rest[0].keys = c.keys[n:]
		total -= n
		chains = rest
		n = 0
	}
	return drSkipped{chains: chains, total: total}
}

// expire returns the store without keys stored before cutoff. Keys are
// stored in time order (given a clock that does not run backwards), so
// only the front is examined.
func (k drSkipped) expire(cutoff int64) drSkipped {
	n := 0
	for _, c := range k.chains {
		i := 0
		for i < len(c.keys) && c.keys[i].stored < cutoff {
			i++
		}
		n += i
		if i < len(c.keys) {
			break
		}
	}
	if n == 0 {
		return k
	}
	return k.dropOldest(n)
}
