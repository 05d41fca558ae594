package e2ee

import (
	"bytes"
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"slices"
	"time"

	"golang.org/x/crypto/chacha20poly1305"
	"google.golang.org/protobuf/proto"

	"github.com/kinmesh/kinmesh/protocols/e2ee/pb"
)

// Limits and lifetimes of group sender keys.
const (
	// MaxGroupIDSize caps a group id (opaque bytes, at least one).
	MaxGroupIDSize = 64

	// MaxSenderKeyPlaintext caps the plaintext of one group message, so
	// that every group message fits in an envelope (MaxEnvelopePayload).
	MaxSenderKeyPlaintext = 56 << 10

	// MaxSenderKeySkip is both the number of skipped message keys a
	// receiver keeps per sender key and the largest forward jump it accepts.
	MaxSenderKeySkip = 2000

	// MaxSenderKeyPrevious is how many rotated-away sender keys a receiver
	// keeps (each only for SenderKeyGrace) besides the current one.
	MaxSenderKeyPrevious = 3

	// SenderKeyGrace is how long a receiver keeps a sender key after a
	// newer one from the same sender arrives, to decrypt messages that were
	// in flight when the sender rotated.
	SenderKeyGrace = 72 * time.Hour

	// SenderKeySkippedTTL is how long a skipped message key is kept: the
	// relays' 15-day limit, after which the message can no longer arrive.
	SenderKeySkippedTTL = 15 * 24 * time.Hour

	// SenderKeyRotateAfter and SenderKeyRotateAfterMessages bound a sender
	// key's life: past either, SenderKey.NeedsRotation reports true.
	SenderKeyRotateAfter         = 7 * 24 * time.Hour
	SenderKeyRotateAfterMessages = 1 << 16
)

// Wire constants of sender keys.
const (
	// senderKeyVersion versions the distribution, the message layout and
	// the serialized states.
	senderKeyVersion = 1

	skChainKeySize = 32
	skAEADKeySize  = chacha20poly1305.KeySize
	skNonceSize    = chacha20poly1305.NonceSizeX

	// skMaxMessageSize caps an encoded group message before any work.
	skMaxMessageSize = 1 + MaxSenderKeyPlaintext + chacha20poly1305.Overhead + MaxGroupIDSize + 32 + ed25519.SignatureSize

	// skMaxStateSize caps a serialized receiving state: (1 + previous)
	// chains, each with MaxSenderKeySkip skipped keys of about 50 bytes.
	skMaxStateSize = (1+MaxSenderKeyPrevious)*(MaxSenderKeySkip*64+256) + 256

	skMaxRecordSize       = 512
	skMaxDistributionSize = 256

	// Domain-separation strings; each is used for exactly one purpose.
	skSignContext   = "kinmesh/e2ee/senderkey/signature/v1"
	skAEADKeyInfo   = "kinmesh/e2ee/senderkey/message-keys/v1"
	skADContext     = "kinmesh/e2ee/senderkey/ad/v1"
	skMessageKeyTag = 0x01 // HMAC constant deriving a message key
	skChainKeyTag   = 0x02 // HMAC constant deriving the next chain key
)

// SenderKey is a sender's own key for one group: a symmetric chain whose
// message keys encrypt the sender's group messages and an Ed25519 key that
// signs them. It is secret; persist it (Marshal) sealed.
//
// A SenderKey is immutable: Encrypt and Rotate return a new value, so a
// crash between encrypting and persisting can't make the sender reuse an
// iteration as long as it persists the returned key before sending.
type SenderKey struct {
	groupID    string
	sender     AccountID
	keyID      uint32
	generation uint64
	iteration  uint32
	chainKey   [skChainKeySize]byte
	signing    ed25519.PrivateKey
	created    int64 // unix seconds
}

// NewSenderKey creates the sender's first key for groupID, reading 68 bytes
// from rand. sender is the sending account; receivers bind it into every
// message's associated data.
func NewSenderKey(rand io.Reader, groupID string, sender AccountID, now time.Time) (*SenderKey, error) {
	if err := skCheckGroupID(groupID); err != nil {
		return nil, fmt.Errorf("new sender key: %w", err)
	}
	if _, err := ParseAccountID(string(sender)); err != nil {
		return nil, fmt.Errorf("new sender key: %w", err)
	}
	gen := uint64(1)
	if u := now.Unix(); u > 1 {
		gen = uint64(u)
	}
	return skGenerate(rand, groupID, sender, gen, now, 0, false)
}

func skGenerate(rand io.Reader, groupID string, sender AccountID, gen uint64, now time.Time, avoidID uint32, avoid bool) (*SenderKey, error) {
	var buf [4 + skChainKeySize + ed25519.SeedSize]byte
	k := &SenderKey{groupID: groupID, sender: sender, generation: gen, created: now.Unix()}
	for {
		if _, err := io.ReadFull(rand, buf[:]); err != nil {
			return nil, fmt.Errorf("sender key: read random: %w", err)
		}
		k.keyID = binary.BigEndian.Uint32(buf[:4])
		if !avoid || k.keyID != avoidID {
			break
		}
	}
	copy(k.chainKey[:], buf[4:4+skChainKeySize])
	k.signing = ed25519.NewKeyFromSeed(buf[4+skChainKeySize:])
	return k, nil
}

// Rotate returns a fresh sender key for the same group and sender: a new
// key id, chain and signing key, and a larger generation. Rotate whenever a
// member leaves or is removed, and when NeedsRotation says so; then send the
// new key's Distribution to the remaining members only. Messages under the
// new key are unreadable to anyone who did not receive it.
func (k *SenderKey) Rotate(rand io.Reader, now time.Time) (*SenderKey, error) {
	gen := k.generation + 1
	if u := now.Unix(); u > 0 && uint64(u) > gen {
		gen = uint64(u)
	}
	if gen < k.generation { // wrapped: impossible in practice
		return nil, fmt.Errorf("rotate sender key: %w", ErrSenderKeyExhausted)
	}
	return skGenerate(rand, k.groupID, k.sender, gen, now, k.keyID, true)
}

// NeedsRotation reports whether the key is older than SenderKeyRotateAfter
// or has encrypted SenderKeyRotateAfterMessages messages.
func (k *SenderKey) NeedsRotation(now time.Time) bool {
	return now.Unix()-k.created >= int64(SenderKeyRotateAfter/time.Second) ||
		k.iteration >= SenderKeyRotateAfterMessages
}

// GroupID returns the group the key encrypts for.
func (k *SenderKey) GroupID() string { return k.groupID }

// Sender returns the sending account.
func (k *SenderKey) Sender() AccountID { return k.sender }

// KeyID returns the key's id, carried in every message.
func (k *SenderKey) KeyID() uint32 { return k.keyID }

// Generation returns the key's generation: it grows with every rotation
// (and is at least the creation time in Unix seconds), so receivers can
// tell which of a sender's keys is current whatever order they arrive in.
func (k *SenderKey) Generation() uint64 { return k.generation }

// Iteration returns the iteration the next message will use.
func (k *SenderKey) Iteration() uint32 { return k.iteration }

// Distribution returns what a member needs to decrypt the sender's messages
// from the current iteration on. Send it to each member over the pairwise
// session (never in the clear): it contains the chain key.
func (k *SenderKey) Distribution() SenderKeyDistribution {
	return SenderKeyDistribution{
		GroupID:    k.groupID,
		KeyID:      k.keyID,
		Generation: k.generation,
		Iteration:  k.iteration,
		ChainKey:   k.chainKey,
		SigningKey: k.signing.Public().(ed25519.PublicKey),
	}
}

// Encrypt encrypts plaintext as the next group message and returns the
// message and the advanced key. Persist next before sending msg, and use
// only next afterwards: reusing k would reuse a message key.
func (k *SenderKey) Encrypt(plaintext []byte) (msg []byte, next *SenderKey, err error) {
	if len(plaintext) > MaxSenderKeyPlaintext {
		return nil, nil, fmt.Errorf("sender-key encrypt: %d bytes: %w", len(plaintext), ErrTooLarge)
	}
	if k.iteration == math.MaxUint32 {
		return nil, nil, fmt.Errorf("sender-key encrypt: %w", ErrSenderKeyExhausted)
	}
	mk, nextCK := skChainStep(&k.chainKey)
	ct, err := skSeal(&mk, skAD(k.groupID, k.sender, k.keyID, k.iteration), plaintext)
	if err != nil {
		return nil, nil, fmt.Errorf("sender-key encrypt: %w", err)
	}
	body, err := proto.Marshal(&pb.SenderKeyMessageBody{
		GroupId:    []byte(k.groupID),
		KeyId:      k.keyID,
		Iteration:  k.iteration,
		Ciphertext: ct,
	})
	if err != nil {
		return nil, nil, fmt.Errorf("sender-key encrypt: marshal: %w", err)
	}
	msg = make([]byte, 0, 1+len(body)+ed25519.SignatureSize)
	msg = append(msg, senderKeyVersion)
	msg = append(msg, body...)
	msg = append(msg, ed25519.Sign(k.signing, skSignedBytes(msg))...)

	n := *k
	n.chainKey = nextCK
	n.iteration++
	return msg, &n, nil
}

// Marshal serializes the sender's key (secret), versioned.
func (k *SenderKey) Marshal() []byte {
	b, err := proto.Marshal(&pb.SenderKeyRecord{
		Version:     senderKeyVersion,
		GroupId:     []byte(k.groupID),
		Sender:      string(k.sender),
		KeyId:       k.keyID,
		Generation:  k.generation,
		Iteration:   k.iteration,
		ChainKey:    k.chainKey[:],
		SigningSeed: k.signing.Seed(),
		CreatedUnix: k.created,
	})
	if err != nil {
		panic("e2ee: marshal sender key: " + err.Error()) // plain fields never fail
	}
	return b
}

// UnmarshalSenderKey restores a key written by SenderKey.Marshal.
func UnmarshalSenderKey(b []byte) (*SenderKey, error) {
	if len(b) > skMaxRecordSize {
		return nil, fmt.Errorf("sender key: %w", ErrTooLarge)
	}
	var m pb.SenderKeyRecord
	if err := proto.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("sender key: %w", ErrMalformed)
	}
	if m.Version != senderKeyVersion {
		return nil, fmt.Errorf("sender key version %d: %w", m.Version, ErrVersion)
	}
	if err := skCheckGroupID(string(m.GroupId)); err != nil {
		return nil, fmt.Errorf("sender key: %w", err)
	}
	sender, err := ParseAccountID(m.Sender)
	if err != nil {
		return nil, fmt.Errorf("sender key: %w", err)
	}
	if len(m.ChainKey) != skChainKeySize || len(m.SigningSeed) != ed25519.SeedSize {
		return nil, fmt.Errorf("sender key: key sizes: %w", ErrMalformed)
	}
	k := &SenderKey{
		groupID:    string(m.GroupId),
		sender:     sender,
		keyID:      m.KeyId,
		generation: m.Generation,
		iteration:  m.Iteration,
		signing:    ed25519.NewKeyFromSeed(m.SigningSeed),
		created:    m.CreatedUnix,
	}
	copy(k.chainKey[:], m.ChainKey)
	return k, nil
}

// SenderKeyDistribution is the receiving half of a sender key, which the
// sender sends to every member over their pairwise sessions. It is secret
// (ChainKey) and authenticated only by the pairwise session it arrives on:
// the receiver must take the sender's identity from that session.
type SenderKeyDistribution struct {
	GroupID    string
	KeyID      uint32
	Generation uint64
	Iteration  uint32               // the iteration ChainKey derives
	ChainKey   [skChainKeySize]byte // secret
	SigningKey ed25519.PublicKey    // verifies the sender's messages
}

// Marshal encodes the distribution for the pairwise session, versioned.
func (d SenderKeyDistribution) Marshal() []byte {
	b, err := proto.Marshal(&pb.SenderKeyDistribution{
		Version:    senderKeyVersion,
		GroupId:    []byte(d.GroupID),
		KeyId:      d.KeyID,
		Generation: d.Generation,
		Iteration:  d.Iteration,
		ChainKey:   d.ChainKey[:],
		SigningKey: d.SigningKey,
	})
	if err != nil {
		panic("e2ee: marshal sender key distribution: " + err.Error())
	}
	return b
}

// ParseSenderKeyDistribution decodes and validates a distribution.
func ParseSenderKeyDistribution(b []byte) (SenderKeyDistribution, error) {
	if len(b) > skMaxDistributionSize {
		return SenderKeyDistribution{}, fmt.Errorf("sender key distribution: %w", ErrTooLarge)
	}
	var m pb.SenderKeyDistribution
	if err := proto.Unmarshal(b, &m); err != nil {
		return SenderKeyDistribution{}, fmt.Errorf("sender key distribution: %w", ErrMalformed)
	}
	if m.Version != senderKeyVersion {
		return SenderKeyDistribution{}, fmt.Errorf("sender key distribution version %d: %w", m.Version, ErrVersion)
	}
	d := SenderKeyDistribution{
		GroupID:    string(m.GroupId),
		KeyID:      m.KeyId,
		Generation: m.Generation,
		Iteration:  m.Iteration,
		SigningKey: ed25519.PublicKey(m.SigningKey),
	}
	if len(m.ChainKey) != skChainKeySize {
		return SenderKeyDistribution{}, fmt.Errorf("sender key distribution: chain key: %w", ErrMalformed)
	}
	copy(d.ChainKey[:], m.ChainKey)
	if err := d.validate(); err != nil {
		return SenderKeyDistribution{}, err
	}
	return d, nil
}

func (d SenderKeyDistribution) validate() error {
	if err := skCheckGroupID(d.GroupID); err != nil {
		return fmt.Errorf("sender key distribution: %w", err)
	}
	if len(d.SigningKey) != ed25519.PublicKeySize {
		return fmt.Errorf("sender key distribution: signing key: %w", ErrMalformed)
	}
	if d.Iteration == math.MaxUint32 {
		return fmt.Errorf("sender key distribution: %w", ErrSenderKeyExhausted)
	}
	return nil
}

// SenderKeyMessage is the cleartext header of a group message, as
// ParseSenderKeyMessage reads it. Nothing in it is authenticated until
// SenderKeyState.Decrypt succeeds; use it only to find the state to decrypt
// with.
type SenderKeyMessage struct {
	GroupID   string
	KeyID     uint32
	Iteration uint32
}

// skParsed is a decoded but not yet verified group message.
type skParsed struct {
	SenderKeyMessage
	ciphertext []byte
	signed     []byte // version byte || body: the bytes the signature covers
	sig        []byte
}

// ParseSenderKeyMessage decodes a group message's header without verifying
// it, so the caller can pick the SenderKeyState for (group, sender).
func ParseSenderKeyMessage(b []byte) (SenderKeyMessage, error) {
	p, err := skParse(b)
	if err != nil {
		return SenderKeyMessage{}, err
	}
	return p.SenderKeyMessage, nil
}

func skParse(b []byte) (skParsed, error) {
	if len(b) > skMaxMessageSize {
		return skParsed{}, fmt.Errorf("sender-key message: %d bytes: %w", len(b), ErrTooLarge)
	}
	if len(b) < 1+ed25519.SignatureSize {
		return skParsed{}, fmt.Errorf("sender-key message: short: %w", ErrMalformed)
	}
	if b[0] != senderKeyVersion {
		return skParsed{}, fmt.Errorf("sender-key message version %d: %w", b[0], ErrVersion)
	}
	split := len(b) - ed25519.SignatureSize
	var m pb.SenderKeyMessageBody
	if err := proto.Unmarshal(b[1:split], &m); err != nil {
		return skParsed{}, fmt.Errorf("sender-key message: %w", ErrMalformed)
	}
	if err := skCheckGroupID(string(m.GroupId)); err != nil {
		return skParsed{}, fmt.Errorf("sender-key message: %w", err)
	}
	if len(m.Ciphertext) < chacha20poly1305.Overhead || m.Iteration == math.MaxUint32 {
		return skParsed{}, fmt.Errorf("sender-key message: %w", ErrMalformed)
	}
	return skParsed{
		SenderKeyMessage: SenderKeyMessage{GroupID: string(m.GroupId), KeyID: m.KeyId, Iteration: m.Iteration},
		ciphertext:       m.Ciphertext,
		signed:           b[:split],
		sig:              b[split:],
	}, nil
}

// SenderKeyState is a member's receiving state for one sender in one group:
// the sender's current key and up to MaxSenderKeyPrevious rotated-away keys
// still in their grace window, each with its chain position and skipped
// message keys. Keep one per (group, sender); it holds each of the sender's
// key ids, so it is the per-(group, sender, key id) state of the design.
//
// A SenderKeyState is immutable: Apply, Decrypt and Prune return a new
// state and leave the receiver's untouched, on success and on error. Persist
// the returned state (Marshal) before acting on the plaintext.
type SenderKeyState struct {
	groupID string
	sender  AccountID
	chains  []*skChain // newest generation first; never mutated once built
}

// skChain is one sender key as a receiver holds it. Once a chain belongs to
// a published state, neither it nor its skipped map is modified again.
type skChain struct {
	keyID      uint32
	generation uint64
	signingKey ed25519.PublicKey
	chainKey   [skChainKeySize]byte
	iteration  uint32 // the iteration chainKey derives next
	retire     int64  // unix seconds; 0 while this is the current key
	skipped    map[uint32]skSkipped
}

type skSkipped struct {
	key    [skChainKeySize]byte
	stored int64 // unix seconds
}

// NewSenderKeyState starts a receiving state from the first distribution of
// sender for a group. sender must be the account the pairwise session that
// delivered d authenticated.
func NewSenderKeyState(d SenderKeyDistribution, sender AccountID, now time.Time) (*SenderKeyState, error) {
	if err := d.validate(); err != nil {
		return nil, err
	}
	if _, err := ParseAccountID(string(sender)); err != nil {
		return nil, fmt.Errorf("new sender key state: %w", err)
	}
	s := &SenderKeyState{groupID: d.GroupID, sender: sender}
	return s.Apply(d, now)
}

// GroupID returns the group of the state.
func (s *SenderKeyState) GroupID() string { return s.groupID }

// Sender returns the account whose messages the state decrypts. A message
// that decrypts with this state was sent by this account; compare it with
// an envelope's claimed sender (EnvelopeContent.CheckSender).
func (s *SenderKeyState) Sender() AccountID { return s.sender }

// KeyIDs returns the key ids the state holds, newest generation first.
func (s *SenderKeyState) KeyIDs() []uint32 {
	ids := make([]uint32, len(s.chains))
	for i, c := range s.chains {
		ids[i] = c.keyID
	}
	return ids
}

// Apply adds a distribution from the same sender for the same group (after
// a rotation) and returns the new state. d must have arrived over the
// pairwise session with s.Sender(). The key with the highest
// generation becomes current; every other key is kept for SenderKeyGrace
// from now, at most MaxSenderKeyPrevious of them. A distribution for a key
// id the state already holds with the same signing key changes nothing.
func (s *SenderKeyState) Apply(d SenderKeyDistribution, now time.Time) (*SenderKeyState, error) {
	if err := d.validate(); err != nil {
		return nil, err
	}
	if d.GroupID != s.groupID {
		return nil, fmt.Errorf("apply sender key distribution: group mismatch: %w", ErrMalformed)
	}
	for _, c := range s.chains {
		if c.keyID != d.KeyID {
			continue
		}
		if !bytes.Equal(c.signingKey, d.SigningKey) || c.generation != d.Generation {
			return nil, fmt.Errorf("apply sender key distribution: conflicting key %d: %w", d.KeyID, ErrMalformed)
		}
		return s, nil
	}
	nc := &skChain{
		keyID:      d.KeyID,
		generation: d.Generation,
		signingKey: bytes.Clone(d.SigningKey),
		chainKey:   d.ChainKey,
		iteration:  d.Iteration,
	}
	chains := make([]*skChain, 0, len(s.chains)+1)
	chains = append(chains, nc)
	chains = append(chains, s.chains...)
	// Newest generation first; on a tie the later arrival wins.
	slices.SortStableFunc(chains, func(a, b *skChain) int {
		switch {
		case a.generation > b.generation:
			return -1
		case a.generation < b.generation:
			return 1
		}
		return 0
	})
	retire := now.Add(SenderKeyGrace).Unix()
	for i, c := range chains {
		want := int64(0)
		if i > 0 {
			want = retire
			if c.retire != 0 && c.retire < retire {
				want = c.retire
			}
		}
		if c.retire != want {
			cc := *c
			cc.retire = want
			chains[i] = &cc
		}
	}
	n := &SenderKeyState{groupID: s.groupID, sender: s.sender, chains: chains}
	return n.pruned(now), nil
}

// Prune returns the state without keys past their grace window and
// skipped message keys older than SenderKeySkippedTTL (Decrypt and Apply do
// this too). Call it now and then for groups that have gone quiet, so old
// keys don't outlive their use.
func (s *SenderKeyState) Prune(now time.Time) *SenderKeyState { return s.pruned(now) }

func (s *SenderKeyState) pruned(now time.Time) *SenderKeyState {
	t := now.Unix()
	ttl := int64(SenderKeySkippedTTL / time.Second)
	var chains []*skChain
	changed := false
	for i, c := range s.chains {
		if i > 0 && c.retire != 0 && c.retire <= t || len(chains) > MaxSenderKeyPrevious {
			changed = true
			continue
		}
		if expired := skExpired(c.skipped, t, ttl); expired > 0 {
			cc := *c
			cc.skipped = make(map[uint32]skSkipped, len(c.skipped)-expired)
			for it, sk := range c.skipped {
				if sk.stored+ttl > t {
					cc.skipped[it] = sk
				}
			}
			c = &cc
			changed = true
		}
		chains = append(chains, c)
	}
	if !changed {
		return s
	}
	return &SenderKeyState{groupID: s.groupID, sender: s.sender, chains: chains}
}

func skExpired(m map[uint32]skSkipped, now, ttl int64) int {
	n := 0
	for _, sk := range m {
		if sk.stored+ttl <= now {
			n++
		}
	}
	return n
}

// Decrypt verifies and decrypts a group message from the state's sender and
// returns the plaintext and the next state. It checks, in order: size, the
// version byte, the header, that the state holds the key id, the Ed25519
// signature, the iteration (replays and jumps beyond MaxSenderKeySkip are
// refused) and finally the AEAD. On any error the receiver's state is
// unchanged and must be kept; on success persist next and drop s.
func (s *SenderKeyState) Decrypt(msg []byte, now time.Time) (plaintext []byte, next *SenderKeyState, err error) {
	p, err := skParse(msg)
	if err != nil {
		return nil, nil, err
	}
	if p.GroupID != s.groupID {
		return nil, nil, fmt.Errorf("sender-key decrypt: message for another group: %w", ErrSenderKeyUnknown)
	}
	t := now.Unix()
	idx := -1
	for i, c := range s.chains {
		if c.keyID == p.KeyID && (i == 0 || c.retire == 0 || c.retire > t) {
			idx = i
			break
		}
	}
	if idx < 0 {
		return nil, nil, fmt.Errorf("sender-key decrypt: key id %d: %w", p.KeyID, ErrSenderKeyUnknown)
	}
	c := s.chains[idx]
	if !ed25519.Verify(c.signingKey, skSignedBytes(p.signed), p.sig) {
		return nil, nil, fmt.Errorf("sender-key decrypt: %w", ErrSignature)
	}

	ttl := int64(SenderKeySkippedTTL / time.Second)
	nc := *c
	var mk [skChainKeySize]byte
	switch {
	case p.Iteration < c.iteration:
		sk, ok := c.skipped[p.Iteration]
		if !ok || sk.stored+ttl <= t {
			return nil, nil, fmt.Errorf("sender-key decrypt: iteration %d: %w", p.Iteration, ErrSenderKeyReplay)
		}
		mk = sk.key
		nc.skipped = skCloneWithout(c.skipped, p.Iteration)
	default:
		gap := uint64(p.Iteration) - uint64(c.iteration)
		if gap > MaxSenderKeySkip {
			return nil, nil, fmt.Errorf("sender-key decrypt: %d messages ahead: %w", gap, ErrSenderKeySkipLimit)
		}
		ck := c.chainKey
		if gap > 0 { // copy on write: c.skipped may be shared with s
			nc.skipped = make(map[uint32]skSkipped, len(c.skipped)+int(gap))
			for it, sk := range c.skipped {
				nc.skipped[it] = sk
			}
			for it := c.iteration; it < p.Iteration; it++ {
				var k [skChainKeySize]byte
				k, ck = skChainStep(&ck)
				nc.skipped[it] = skSkipped{key: k, stored: t}
			}
			skEvict(nc.skipped)
		}
		mk, ck = skChainStep(&ck)
		nc.chainKey = ck
		nc.iteration = p.Iteration + 1
	}

	plaintext, err = skOpen(&mk, skAD(s.groupID, s.sender, p.KeyID, p.Iteration), p.ciphertext)
	if err != nil {
		return nil, nil, fmt.Errorf("sender-key decrypt: %w", err)
	}
	chains := slices.Clone(s.chains)
	chains[idx] = &nc
	n := &SenderKeyState{groupID: s.groupID, sender: s.sender, chains: chains}
	return plaintext, n.pruned(now), nil
}

// skCloneWithout returns a copy of m without key k (nil if empty).
func skCloneWithout(m map[uint32]skSkipped, k uint32) map[uint32]skSkipped {
	if len(m) <= 1 {
		return nil
	}
	out := make(map[uint32]skSkipped, len(m)-1)
	for it, sk := range m {
		if it != k {
			out[it] = sk
		}
	}
	return out
}

// skEvict drops the oldest (lowest-iteration) skipped keys beyond the cap.
func skEvict(m map[uint32]skSkipped) {
	if len(m) <= MaxSenderKeySkip {
		return
	}
	its := make([]uint32, 0, len(m))
	for it := range m {
		its = append(its, it)
	}
	slices.Sort(its)
	for _, it := range its[:len(its)-MaxSenderKeySkip] {
		delete(m, it)
	}
}

// Marshal serializes the receiving state, versioned and deterministic.
func (s *SenderKeyState) Marshal() []byte {
	m := &pb.SenderKeyState{
		Version: senderKeyVersion,
		GroupId: []byte(s.groupID),
		Sender:  string(s.sender),
	}
	for _, c := range s.chains {
		pc := &pb.SenderKeyChain{
			KeyId:      c.keyID,
			Generation: c.generation,
			SigningKey: c.signingKey,
			ChainKey:   c.chainKey[:],
			Iteration:  c.iteration,
			RetireUnix: c.retire,
		}
		its := make([]uint32, 0, len(c.skipped))
		for it := range c.skipped {
			its = append(its, it)
		}
		slices.Sort(its)
		for _, it := range its {
			sk := c.skipped[it]
			pc.Skipped = append(pc.Skipped, &pb.SenderKeySkipped{Iteration: it, MessageKey: sk.key[:], StoredUnix: sk.stored})
		}
		m.Keys = append(m.Keys, pc)
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		panic("e2ee: marshal sender key state: " + err.Error())
	}
	return b
}

// UnmarshalSenderKeyState restores a state written by SenderKeyState.Marshal.
func UnmarshalSenderKeyState(b []byte) (*SenderKeyState, error) {
	if len(b) > skMaxStateSize {
		return nil, fmt.Errorf("sender key state: %w", ErrTooLarge)
	}
	var m pb.SenderKeyState
	if err := proto.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("sender key state: %w", ErrMalformed)
	}
	if m.Version != senderKeyVersion {
		return nil, fmt.Errorf("sender key state version %d: %w", m.Version, ErrVersion)
	}
	if err := skCheckGroupID(string(m.GroupId)); err != nil {
		return nil, fmt.Errorf("sender key state: %w", err)
	}
	sender, err := ParseAccountID(m.Sender)
	if err != nil {
		return nil, fmt.Errorf("sender key state: %w", err)
	}
	if len(m.Keys) == 0 || len(m.Keys) > 1+MaxSenderKeyPrevious {
		return nil, fmt.Errorf("sender key state: %d keys: %w", len(m.Keys), ErrMalformed)
	}
	s := &SenderKeyState{groupID: string(m.GroupId), sender: sender}
	seen := make(map[uint32]bool, len(m.Keys))
	for i, pc := range m.Keys {
		if len(pc.SigningKey) != ed25519.PublicKeySize || len(pc.ChainKey) != skChainKeySize ||
			len(pc.Skipped) > MaxSenderKeySkip || seen[pc.KeyId] ||
			(i > 0 && pc.Generation > m.Keys[i-1].Generation) {
			return nil, fmt.Errorf("sender key state: key %d: %w", i, ErrMalformed)
		}
		seen[pc.KeyId] = true
		c := &skChain{
			keyID:      pc.KeyId,
			generation: pc.Generation,
			signingKey: bytes.Clone(pc.SigningKey),
			iteration:  pc.Iteration,
			retire:     pc.RetireUnix,
		}
		copy(c.chainKey[:], pc.ChainKey)
		if len(pc.Skipped) > 0 {
			c.skipped = make(map[uint32]skSkipped, len(pc.Skipped))
		}
		for _, sk := range pc.Skipped {
			if len(sk.MessageKey) != skChainKeySize || sk.Iteration >= pc.Iteration {
				return nil, fmt.Errorf("sender key state: skipped key: %w", ErrMalformed)
			}
			if _, dup := c.skipped[sk.Iteration]; dup {
				return nil, fmt.Errorf("sender key state: duplicate skipped key: %w", ErrMalformed)
			}
			var k skSkipped
			copy(k.key[:], sk.MessageKey)
			k.stored = sk.StoredUnix
			c.skipped[sk.Iteration] = k
		}
		s.chains = append(s.chains, c)
	}
	return s, nil
}

// skChainStep derives the message key of chain key ck and the next chain
// key: HMAC-SHA-256(ck, 0x01) and HMAC-SHA-256(ck, 0x02).
func skChainStep(ck *[skChainKeySize]byte) (mk, next [skChainKeySize]byte) {
	h := hmac.New(sha256.New, ck[:])
	h.Write([]byte{skMessageKeyTag})
	h.Sum(mk[:0])
	h.Reset()
	h.Write([]byte{skChainKeyTag})
	h.Sum(next[:0])
	return mk, next
}

// skMessageKeys expands a message key into the XChaCha20-Poly1305 key and
// nonce: HKDF-SHA-256(secret mk, no salt, info skAEADKeyInfo), 56 bytes.
func skMessageKeys(mk *[skChainKeySize]byte) (key, nonce []byte) {
	okm, err := hkdf.Key(sha256.New, mk[:], nil, skAEADKeyInfo, skAEADKeySize+skNonceSize)
	if err != nil {
		panic("e2ee: hkdf: " + err.Error()) // only fails for absurd lengths
	}
	return okm[:skAEADKeySize], okm[skAEADKeySize:]
}

func skSeal(mk *[skChainKeySize]byte, ad, plaintext []byte) ([]byte, error) {
	key, nonce := skMessageKeys(mk)
	aead, err := chacha20poly1305.NewX(key)
	if err != nil {
		return nil, err
	}
	return aead.Seal(nil, nonce, plaintext, ad), nil
}

func skOpen(mk *[skChainKeySize]byte, ad, ciphertext []byte) ([]byte, error) {
	key, nonce := skMessageKeys(mk)
	aead, err := chacha20poly1305.NewX(key)
	if err != nil {
		return nil, ErrDecrypt
	}
	pt, err := aead.Open(nil, nonce, ciphertext, ad)
	if err != nil {
		return nil, ErrDecrypt
	}
	return pt, nil
}

// skAD is a group message's associated data:
//
//	skADContext || version || len(group) || group || len(sender) || sender ||
//	key id (4 bytes, big endian) || iteration (4 bytes, big endian)
//
// with one-byte lengths.
func skAD(groupID string, sender AccountID, keyID, iteration uint32) []byte {
	ad := make([]byte, 0, len(skADContext)+1+1+len(groupID)+1+len(sender)+8)
	ad = append(ad, skADContext...)
	ad = append(ad, senderKeyVersion, byte(len(groupID)))
	ad = append(ad, groupID...)
	ad = append(ad, byte(len(sender)))
	ad = append(ad, sender...)
	ad = binary.BigEndian.AppendUint32(ad, keyID)
	ad = binary.BigEndian.AppendUint32(ad, iteration)
	return ad
}

// skSignedBytes is what a message's signature covers: skSignContext ||
// version byte || body.
func skSignedBytes(versionAndBody []byte) []byte {
	out := make([]byte, 0, len(skSignContext)+len(versionAndBody))
	out = append(out, skSignContext...)
	return append(out, versionAndBody...)
}

func skCheckGroupID(id string) error {
	if len(id) == 0 || len(id) > MaxGroupIDSize {
		return fmt.Errorf("group id of %d bytes: %w", len(id), ErrMalformed)
	}
	return nil
}
