package e2ee

// Prekeys: what an account publishes so others can start sessions with it
// while it is offline (PQXDH's "prekey bundle"), and the private store the
// account keeps. Every public prekey carries the owner's Ed25519 signature
// over its kind, id, creation time and key; parsing verifies every one.

import (
	"crypto/ecdh"
	"crypto/ed25519"
	"crypto/mlkem"
	"encoding/binary"
	"fmt"
	"io"
	"slices"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/kinmesh/kinmesh/protocols/e2ee/pb"
)

// Prekey lifetimes and caps.
const (
	// SignedPrekeyRotation is how often the owner should replace its
	// signed prekey and last-resort PQ prekey (PrekeyStore.NeedsRotation).
	SignedPrekeyRotation = 7 * 24 * time.Hour

	// PrekeyGrace is how long a replaced signed or last-resort prekey is
	// kept so initial messages made from an older bundle still work: up to
	// 15 days on a relay, plus bundles fetched just before a rotation.
	PrekeyGrace = 30 * 24 * time.Hour

	// MaxOneTimePrekeys caps the one-time prekeys of each kind (X25519,
	// ML-KEM-768) a store holds and an upload carries.
	MaxOneTimePrekeys = 200
)

const (
	prekeyVersion      = 1
	prekeyMaxRetired   = 8 // retired signed or last-resort prekeys kept at most
	maxBundleSize      = 4 << 10
	maxUploadSize      = 512 << 10
	maxPrekeyStoreSize = 1 << 20
	prekeySignContext  = "kinmesh/e2ee/prekey/v1"
)

// Prekey kinds, as on the wire and in the signed bytes.
const (
	prekeyKindSigned     = 1 // signed X25519 prekey (SPK)
	prekeyKindOneTime    = 2 // one-time X25519 prekey (OPK)
	prekeyKindLastResort = 3 // last-resort ML-KEM-768 prekey (PQSPK)
	prekeyKindPQOneTime  = 4 // one-time ML-KEM-768 prekey (PQOPK)
)

// PrekeyID names one of an account's prekeys. Ids are unique across all
// kinds of the account's prekeys and never 0.
type PrekeyID uint32

// DHPrekey is a public X25519 prekey: the signed prekey, or a one-time one.
type DHPrekey struct {
	ID        PrekeyID
	Created   time.Time
	OneTime   bool
	Key       *ecdh.PublicKey
	Signature []byte // owner's Ed25519 signature (see prekeySignedBytes)
}

// KEMPrekey is a public ML-KEM-768 prekey: the last-resort one, or a
// one-time one.
type KEMPrekey struct {
	ID         PrekeyID
	Created    time.Time
	LastResort bool
	Key        *mlkem.EncapsulationKey768
	Signature  []byte
}

func (p *DHPrekey) kind() byte {
	if p.OneTime {
		return prekeyKindOneTime
	}
	return prekeyKindSigned
}

func (p *KEMPrekey) kind() byte {
	if p.LastResort {
		return prekeyKindLastResort
	}
	return prekeyKindPQOneTime
}

// prekeySignedBytes is what the owner signs for a prekey:
// context || kind (1) || id (4, big-endian) || created (8, big-endian unix
// seconds) || Encode(key).
func prekeySignedBytes(kind byte, id PrekeyID, created time.Time, encodedKey []byte) []byte {
	b := make([]byte, 0, len(prekeySignContext)+13+len(encodedKey))
	b = append(b, prekeySignContext...)
	b = append(b, kind)
	b = binary.BigEndian.AppendUint32(b, uint32(id))
	b = binary.BigEndian.AppendUint64(b, uint64(created.Unix()))
	return append(b, encodedKey...)
}

// Verify checks p's signature by owner.
func (p *DHPrekey) Verify(owner PublicIdentity) error {
	if p.ID == 0 || p.Key == nil || len(p.Signature) != ed25519.SignatureSize {
		return fmt.Errorf("prekey: %w", ErrMalformed)
	}
	if err := owner.Verify(prekeySignedBytes(p.kind(), p.ID, p.Created, pxEncodeDH(p.Key)), p.Signature); err != nil {
		return fmt.Errorf("prekey %d: %w", p.ID, err)
	}
	return nil
}

// Verify checks p's signature by owner.
func (p *KEMPrekey) Verify(owner PublicIdentity) error {
	if p.ID == 0 || p.Key == nil || len(p.Signature) != ed25519.SignatureSize {
		return fmt.Errorf("pq prekey: %w", ErrMalformed)
	}
	if err := owner.Verify(prekeySignedBytes(p.kind(), p.ID, p.Created, pxEncodeKEM(p.Key)), p.Signature); err != nil {
		return fmt.Errorf("pq prekey %d: %w", p.ID, err)
	}
	return nil
}

func (p *DHPrekey) toWire() *pb.Prekey {
	return &pb.Prekey{Id: uint32(p.ID), Kind: uint32(p.kind()), CreatedUnix: p.Created.Unix(), Key: p.Key.Bytes(), Signature: p.Signature}
}

func (p *KEMPrekey) toWire() *pb.Prekey {
	return &pb.Prekey{Id: uint32(p.ID), Kind: uint32(p.kind()), CreatedUnix: p.Created.Unix(), Key: p.Key.Bytes(), Signature: p.Signature}
}

// dhPrekeyFromWire decodes an X25519 prekey of one of the given kinds; it
// does not verify the signature.
func dhPrekeyFromWire(m *pb.Prekey, kind byte) (DHPrekey, error) {
	if m == nil || m.Kind != uint32(kind) || m.Id == 0 || len(m.Signature) != ed25519.SignatureSize {
		return DHPrekey{}, fmt.Errorf("prekey: %w", ErrMalformed)
	}
	k, err := ecdh.X25519().NewPublicKey(m.Key)
	if err != nil {
		return DHPrekey{}, fmt.Errorf("prekey key: %w", ErrMalformed)
	}
	return DHPrekey{ID: PrekeyID(m.Id), Created: time.Unix(m.CreatedUnix, 0), OneTime: kind == prekeyKindOneTime, Key: k, Signature: m.Signature}, nil
}

// kemPrekeyFromWire decodes an ML-KEM prekey of kind; key may be given
// (stores omit it and pass the one recomputed from the seed).
func kemPrekeyFromWire(m *pb.Prekey, kind byte, key *mlkem.EncapsulationKey768) (KEMPrekey, error) {
	if m == nil || m.Kind != uint32(kind) || m.Id == 0 || len(m.Signature) != ed25519.SignatureSize {
		return KEMPrekey{}, fmt.Errorf("pq prekey: %w", ErrMalformed)
	}
	if key == nil {
		k, err := mlkem.NewEncapsulationKey768(m.Key)
		if err != nil {
			return KEMPrekey{}, fmt.Errorf("pq prekey key: %w", ErrMalformed)
		}
		key = k
	}
	return KEMPrekey{ID: PrekeyID(m.Id), Created: time.Unix(m.CreatedUnix, 0), LastResort: kind == prekeyKindLastResort, Key: key, Signature: m.Signature}, nil
}

// checkIdentity verifies a PublicIdentity built by hand (parsed ones are
// already verified).
func checkIdentity(p PublicIdentity) error {
	if len(p.Sign) != ed25519.PublicKeySize || p.DH == nil || len(p.Binding) != ed25519.SignatureSize {
		return fmt.Errorf("identity: %w", ErrMalformed)
	}
	if err := p.Verify(bindingMessage(p.DH), p.Binding); err != nil {
		return fmt.Errorf("identity binding: %w", err)
	}
	return nil
}

// Bundle is what a relay serves to someone who wants to start a session
// with the owner: the owner's identity, its signed prekey, one ML-KEM
// prekey (a one-time one while any are left, else the last-resort one) and
// a one-time X25519 prekey if any are left.
type Bundle struct {
	Identity      PublicIdentity
	SignedPrekey  DHPrekey
	PQPrekey      KEMPrekey
	OneTimePrekey *DHPrekey // nil when none are left
}

// Verify checks the identity binding, every prekey's kind and signature.
// The caller still has to check that Identity is who it meant to reach.
func (b *Bundle) Verify() error {
	if err := checkIdentity(b.Identity); err != nil {
		return fmt.Errorf("bundle: %w", err)
	}
	if b.SignedPrekey.OneTime {
		return fmt.Errorf("bundle signed prekey kind: %w", ErrMalformed)
	}
	if err := b.SignedPrekey.Verify(b.Identity); err != nil {
		return fmt.Errorf("bundle: %w", err)
	}
	if err := b.PQPrekey.Verify(b.Identity); err != nil {
		return fmt.Errorf("bundle: %w", err)
	}
	if o := b.OneTimePrekey; o != nil {
		if !o.OneTime {
			return fmt.Errorf("bundle one-time prekey kind: %w", ErrMalformed)
		}
		if err := o.Verify(b.Identity); err != nil {
			return fmt.Errorf("bundle: %w", err)
		}
	}
	return nil
}

// Marshal encodes the bundle (a PrekeyBundle protobuf).
func (b *Bundle) Marshal() ([]byte, error) {
	if err := checkIdentity(b.Identity); err != nil {
		return nil, fmt.Errorf("marshal bundle: %w", err)
	}
	if b.SignedPrekey.Key == nil || b.PQPrekey.Key == nil {
		return nil, fmt.Errorf("marshal bundle: %w", ErrMalformed)
	}
	m := &pb.PrekeyBundle{
		Version:      prekeyVersion,
		Identity:     b.Identity.toWire(),
		SignedPrekey: b.SignedPrekey.toWire(),
		PqPrekey:     b.PQPrekey.toWire(),
	}
	if b.OneTimePrekey != nil {
		if b.OneTimePrekey.Key == nil {
			return nil, fmt.Errorf("marshal bundle: %w", ErrMalformed)
		}
		m.OneTimePrekey = b.OneTimePrekey.toWire()
	}
	return proto.MarshalOptions{Deterministic: true}.Marshal(m)
}

// ParseBundle decodes a bundle and verifies it (see Bundle.Verify).
func ParseBundle(data []byte) (*Bundle, error) {
	if len(data) > maxBundleSize {
		return nil, fmt.Errorf("bundle: %w", ErrTooLarge)
	}
	var m pb.PrekeyBundle
	if err := proto.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("bundle: %w", ErrMalformed)
	}
	if m.Version != prekeyVersion {
		return nil, fmt.Errorf("bundle version %d: %w", m.Version, ErrVersion)
	}
	if m.Identity == nil {
		return nil, fmt.Errorf("bundle identity: %w", ErrMalformed)
	}
	id, err := publicIdentityFromWire(m.Identity)
	if err != nil {
		return nil, fmt.Errorf("bundle: %w", err)
	}
	b := &Bundle{Identity: id}
	if b.SignedPrekey, err = dhPrekeyFromWire(m.SignedPrekey, prekeyKindSigned); err != nil {
		return nil, fmt.Errorf("bundle signed prekey: %w", err)
	}
	kind := byte(prekeyKindPQOneTime)
	if m.PqPrekey != nil && m.PqPrekey.Kind == prekeyKindLastResort {
		kind = prekeyKindLastResort
	}
	if b.PQPrekey, err = kemPrekeyFromWire(m.PqPrekey, kind, nil); err != nil {
		return nil, fmt.Errorf("bundle pq prekey: %w", err)
	}
	if m.OneTimePrekey != nil {
		o, err := dhPrekeyFromWire(m.OneTimePrekey, prekeyKindOneTime)
		if err != nil {
			return nil, fmt.Errorf("bundle one-time prekey: %w", err)
		}
		b.OneTimePrekey = &o
	}
	if err := b.Verify(); err != nil {
		return nil, err
	}
	return b, nil
}

// Upload is what the owner publishes to its relays: the current signed and
// last-resort prekeys, and one-time prekeys for the relay to hand out, each
// to one requester only.
type Upload struct {
	Identity     PublicIdentity
	SignedPrekey DHPrekey
	LastResort   KEMPrekey
	OneTime      []DHPrekey
	PQOneTime    []KEMPrekey
}

// Verify checks the identity binding, every prekey's kind and signature,
// the caps and that ids are unique.
func (u *Upload) Verify() error {
	if err := checkIdentity(u.Identity); err != nil {
		return fmt.Errorf("upload: %w", err)
	}
	if len(u.OneTime) > MaxOneTimePrekeys || len(u.PQOneTime) > MaxOneTimePrekeys {
		return fmt.Errorf("upload: %w", ErrTooLarge)
	}
	if u.SignedPrekey.OneTime || !u.LastResort.LastResort {
		return fmt.Errorf("upload prekey kind: %w", ErrMalformed)
	}
	ids := make(map[PrekeyID]bool, 2+len(u.OneTime)+len(u.PQOneTime))
	seen := func(id PrekeyID) bool {
		dup := ids[id]
		ids[id] = true
		return dup
	}
	if err := u.SignedPrekey.Verify(u.Identity); err != nil {
		return fmt.Errorf("upload: %w", err)
	}
	if err := u.LastResort.Verify(u.Identity); err != nil {
		return fmt.Errorf("upload: %w", err)
	}
	if seen(u.SignedPrekey.ID) || seen(u.LastResort.ID) {
		return fmt.Errorf("upload: duplicate prekey id: %w", ErrMalformed)
	}
	for i := range u.OneTime {
		p := &u.OneTime[i]
		if !p.OneTime || seen(p.ID) {
			return fmt.Errorf("upload one-time prekey %d: %w", p.ID, ErrMalformed)
		}
		if err := p.Verify(u.Identity); err != nil {
			return fmt.Errorf("upload: %w", err)
		}
	}
	for i := range u.PQOneTime {
		p := &u.PQOneTime[i]
		if p.LastResort || seen(p.ID) {
			return fmt.Errorf("upload pq one-time prekey %d: %w", p.ID, ErrMalformed)
		}
		if err := p.Verify(u.Identity); err != nil {
			return fmt.Errorf("upload: %w", err)
		}
	}
	return nil
}

// Marshal encodes the upload (a PrekeyUpload protobuf).
func (u *Upload) Marshal() ([]byte, error) {
	if err := checkIdentity(u.Identity); err != nil {
		return nil, fmt.Errorf("marshal upload: %w", err)
	}
	if u.SignedPrekey.Key == nil || u.LastResort.Key == nil {
		return nil, fmt.Errorf("marshal upload: %w", ErrMalformed)
	}
	m := &pb.PrekeyUpload{
		Version:      prekeyVersion,
		Identity:     u.Identity.toWire(),
		SignedPrekey: u.SignedPrekey.toWire(),
		LastResort:   u.LastResort.toWire(),
	}
	for i := range u.OneTime {
		if u.OneTime[i].Key == nil {
			return nil, fmt.Errorf("marshal upload: %w", ErrMalformed)
		}
		m.OneTime = append(m.OneTime, u.OneTime[i].toWire())
	}
	for i := range u.PQOneTime {
		if u.PQOneTime[i].Key == nil {
			return nil, fmt.Errorf("marshal upload: %w", ErrMalformed)
		}
		m.PqOneTime = append(m.PqOneTime, u.PQOneTime[i].toWire())
	}
	return proto.MarshalOptions{Deterministic: true}.Marshal(m)
}

// ParseUpload decodes an upload and verifies it (see Upload.Verify).
func ParseUpload(data []byte) (*Upload, error) {
	if len(data) > maxUploadSize {
		return nil, fmt.Errorf("upload: %w", ErrTooLarge)
	}
	var m pb.PrekeyUpload
	if err := proto.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("upload: %w", ErrMalformed)
	}
	if m.Version != prekeyVersion {
		return nil, fmt.Errorf("upload version %d: %w", m.Version, ErrVersion)
	}
	if m.Identity == nil {
		return nil, fmt.Errorf("upload identity: %w", ErrMalformed)
	}
	if len(m.OneTime) > MaxOneTimePrekeys || len(m.PqOneTime) > MaxOneTimePrekeys {
		return nil, fmt.Errorf("upload: %w", ErrTooLarge)
	}
	id, err := publicIdentityFromWire(m.Identity)
	if err != nil {
		return nil, fmt.Errorf("upload: %w", err)
	}
	u := &Upload{Identity: id}
	if u.SignedPrekey, err = dhPrekeyFromWire(m.SignedPrekey, prekeyKindSigned); err != nil {
		return nil, fmt.Errorf("upload signed prekey: %w", err)
	}
	if u.LastResort, err = kemPrekeyFromWire(m.LastResort, prekeyKindLastResort, nil); err != nil {
		return nil, fmt.Errorf("upload last-resort prekey: %w", err)
	}
	for _, w := range m.OneTime {
		p, err := dhPrekeyFromWire(w, prekeyKindOneTime)
		if err != nil {
			return nil, fmt.Errorf("upload one-time prekey: %w", err)
		}
		u.OneTime = append(u.OneTime, p)
	}
	for _, w := range m.PqOneTime {
		p, err := kemPrekeyFromWire(w, prekeyKindPQOneTime, nil)
		if err != nil {
			return nil, fmt.Errorf("upload pq one-time prekey: %w", err)
		}
		u.PQOneTime = append(u.PQOneTime, p)
	}
	if err := u.Verify(); err != nil {
		return nil, err
	}
	return u, nil
}

// PrekeyStore is an account's private prekeys: the current signed X25519
// prekey and last-resort ML-KEM-768 prekey, their retired predecessors
// still in their grace period, and the unused one-time prekeys of both
// kinds. A PrekeyStore is a value: methods that change it return a new
// store and leave the receiver untouched, so the caller persists the new
// one (sealed) before relying on it.
type PrekeyStore struct {
	owner      PublicIdentity
	nextID     PrekeyID
	signed     []prekeyDHPrivate // current first, then retired
	lastResort []prekeyKEMPrivate
	oneTime    []prekeyDHPrivate
	pqOneTime  []prekeyKEMPrivate
}

type prekeyDHPrivate struct {
	pub    DHPrekey
	priv   *ecdh.PrivateKey
	retire int64 // unix seconds; 0 while current
}

type prekeyKEMPrivate struct {
	pub    KEMPrekey
	priv   *mlkem.DecapsulationKey768
	retire int64
}

// NewPrekeyStore creates a store for id with a signed prekey and a
// last-resort PQ prekey created at now. Add one-time prekeys with
// GenerateOneTime.
func NewPrekeyStore(id *Identity, now time.Time, rand io.Reader) (*PrekeyStore, error) {
	s := &PrekeyStore{owner: id.Public(), nextID: 1}
	return s.Rotate(id, now, rand)
}

func (s *PrekeyStore) clone() *PrekeyStore {
	return &PrekeyStore{
		owner:      s.owner,
		nextID:     s.nextID,
		signed:     slices.Clone(s.signed),
		lastResort: slices.Clone(s.lastResort),
		oneTime:    slices.Clone(s.oneTime),
		pqOneTime:  slices.Clone(s.pqOneTime),
	}
}

// Owner returns the identity the store's prekeys are signed by.
func (s *PrekeyStore) Owner() PublicIdentity { return s.owner }

func (s *PrekeyStore) checkOwner(id *Identity) error {
	if !id.Public().Equal(s.owner) {
		return fmt.Errorf("prekey store of %s used with identity %s: %w", s.owner.AccountID(), id.AccountID(), ErrMalformed)
	}
	return nil
}

func (s *PrekeyStore) allocID() (PrekeyID, error) {
	if s.nextID == 0 {
		return 0, fmt.Errorf("prekey ids exhausted: %w", ErrTooLarge)
	}
	id := s.nextID
	s.nextID++
	return id, nil
}

func (s *PrekeyStore) newDH(id *Identity, oneTime bool, now time.Time, rand io.Reader) (prekeyDHPrivate, error) {
	pid, err := s.allocID()
	if err != nil {
		return prekeyDHPrivate{}, err
	}
	priv, err := drGenerate(rand)
	if err != nil {
		return prekeyDHPrivate{}, fmt.Errorf("generate prekey: %w", err)
	}
	p := DHPrekey{ID: pid, Created: time.Unix(now.Unix(), 0), OneTime: oneTime, Key: priv.PublicKey()}
	p.Signature = id.Sign(prekeySignedBytes(p.kind(), p.ID, p.Created, pxEncodeDH(p.Key)))
	return prekeyDHPrivate{pub: p, priv: priv}, nil
}

func (s *PrekeyStore) newKEM(id *Identity, lastResort bool, now time.Time, rand io.Reader) (prekeyKEMPrivate, error) {
	pid, err := s.allocID()
	if err != nil {
		return prekeyKEMPrivate{}, err
	}
	var seed [mlkem.SeedSize]byte
	if _, err := io.ReadFull(rand, seed[:]); err != nil {
		return prekeyKEMPrivate{}, fmt.Errorf("generate pq prekey: %w", err)
	}
	dk, err := mlkem.NewDecapsulationKey768(seed[:])
	if err != nil {
		return prekeyKEMPrivate{}, fmt.Errorf("generate pq prekey: %w", err)
	}
	p := KEMPrekey{ID: pid, Created: time.Unix(now.Unix(), 0), LastResort: lastResort, Key: dk.EncapsulationKey()}
	p.Signature = id.Sign(prekeySignedBytes(p.kind(), p.ID, p.Created, pxEncodeKEM(p.Key)))
	return prekeyKEMPrivate{pub: p, priv: dk}, nil
}

// GenerateOneTime returns the store with n more one-time X25519 prekeys
// and nPQ more one-time ML-KEM-768 prekeys, signed by id. Each kind is
// capped at MaxOneTimePrekeys (beyond: ErrTooLarge, nothing generated).
func (s *PrekeyStore) GenerateOneTime(id *Identity, n, nPQ int, now time.Time, rand io.Reader) (*PrekeyStore, error) {
	if err := s.checkOwner(id); err != nil {
		return nil, err
	}
	if n < 0 || nPQ < 0 || len(s.oneTime)+n > MaxOneTimePrekeys || len(s.pqOneTime)+nPQ > MaxOneTimePrekeys {
		return nil, fmt.Errorf("generate one-time prekeys: %w", ErrTooLarge)
	}
	next := s.clone()
	for range n {
		p, err := next.newDH(id, true, now, rand)
		if err != nil {
			return nil, err
		}
		next.oneTime = append(next.oneTime, p)
	}
	for range nPQ {
		p, err := next.newKEM(id, false, now, rand)
		if err != nil {
			return nil, err
		}
		next.pqOneTime = append(next.pqOneTime, p)
	}
	return next, nil
}

// NeedsRotation reports whether the signed prekey is SignedPrekeyRotation
// old or older at now.
func (s *PrekeyStore) NeedsRotation(now time.Time) bool {
	return len(s.signed) == 0 || !now.Before(s.signed[0].pub.Created.Add(SignedPrekeyRotation))
}

// Rotate returns the store with a new signed prekey and a new last-resort
// PQ prekey; the previous ones are retired and kept for PrekeyGrace, then
// dropped (see Prune, which Rotate also applies).
func (s *PrekeyStore) Rotate(id *Identity, now time.Time, rand io.Reader) (*PrekeyStore, error) {
	if err := s.checkOwner(id); err != nil {
		return nil, err
	}
	next := s.Prune(now).clone()
	spk, err := next.newDH(id, false, now, rand)
	if err != nil {
		return nil, err
	}
	lr, err := next.newKEM(id, true, now, rand)
	if err != nil {
		return nil, err
	}
	retire := now.Add(PrekeyGrace).Unix()
	if len(next.signed) > 0 {
		next.signed[0].retire = retire
	}
	if len(next.lastResort) > 0 {
		next.lastResort[0].retire = retire
	}
	next.signed = append([]prekeyDHPrivate{spk}, next.signed...)
	next.lastResort = append([]prekeyKEMPrivate{lr}, next.lastResort...)
	next.signed = next.signed[:min(len(next.signed), 1+prekeyMaxRetired)]
	next.lastResort = next.lastResort[:min(len(next.lastResort), 1+prekeyMaxRetired)]
	return next, nil
}

// Prune returns the store without retired prekeys whose grace period
// ended before now.
func (s *PrekeyStore) Prune(now time.Time) *PrekeyStore {
	t := now.Unix()
	next := s.clone()
	next.signed = slices.DeleteFunc(next.signed, func(p prekeyDHPrivate) bool { return p.retire != 0 && p.retire < t })
	next.lastResort = slices.DeleteFunc(next.lastResort, func(p prekeyKEMPrivate) bool { return p.retire != 0 && p.retire < t })
	return next
}

// Consume returns the store without the given one-time prekeys: call it
// with the ids Respond reports, and persist the result together with the
// new session. Ids of other kinds or unknown ids are ignored.
func (s *PrekeyStore) Consume(ids ...PrekeyID) *PrekeyStore {
	next := s.clone()
	next.oneTime = slices.DeleteFunc(next.oneTime, func(p prekeyDHPrivate) bool { return slices.Contains(ids, p.pub.ID) })
	next.pqOneTime = slices.DeleteFunc(next.pqOneTime, func(p prekeyKEMPrivate) bool { return slices.Contains(ids, p.pub.ID) })
	return next
}

// Counts returns how many one-time X25519 and ML-KEM prekeys are unused.
func (s *PrekeyStore) Counts() (oneTime, pqOneTime int) { return len(s.oneTime), len(s.pqOneTime) }

// Upload returns the public prekeys to publish: the current signed and
// last-resort prekeys and every unused one-time prekey. Relays must hand a
// one-time prekey to one requester only, remember the ids they handed out
// and ignore them when they are uploaded again; an account with several
// relays gives each a disjoint share of the one-time prekeys.
func (s *PrekeyStore) Upload() *Upload {
	u := &Upload{Identity: s.owner, SignedPrekey: s.signed[0].pub, LastResort: s.lastResort[0].pub}
	for _, p := range s.oneTime {
		u.OneTime = append(u.OneTime, p.pub)
	}
	for _, p := range s.pqOneTime {
		u.PQOneTime = append(u.PQOneTime, p.pub)
	}
	return u
}

// signedByID returns the signed prekey (current or in grace) with id.
func (s *PrekeyStore) signedByID(id PrekeyID) *prekeyDHPrivate {
	for i := range s.signed {
		if s.signed[i].pub.ID == id {
			return &s.signed[i]
		}
	}
	return nil
}

// kemByID returns the ML-KEM prekey with id, last-resort or one-time.
func (s *PrekeyStore) kemByID(id PrekeyID) *prekeyKEMPrivate {
	for i := range s.lastResort {
		if s.lastResort[i].pub.ID == id {
			return &s.lastResort[i]
		}
	}
	for i := range s.pqOneTime {
		if s.pqOneTime[i].pub.ID == id {
			return &s.pqOneTime[i]
		}
	}
	return nil
}

func (s *PrekeyStore) oneTimeByID(id PrekeyID) *prekeyDHPrivate {
	for i := range s.oneTime {
		if s.oneTime[i].pub.ID == id {
			return &s.oneTime[i]
		}
	}
	return nil
}

// Marshal serializes the store, for the caller to persist sealed.
func (s *PrekeyStore) Marshal() []byte {
	m := &pb.PrekeyStore{Version: prekeyVersion, Owner: s.owner.toWire(), NextId: uint32(s.nextID)}
	dh := func(ps []prekeyDHPrivate) (out []*pb.PrekeyPrivate) {
		for i := range ps {
			out = append(out, &pb.PrekeyPrivate{Public: ps[i].pub.toWire(), Secret: ps[i].priv.Bytes(), RetireUnix: ps[i].retire})
		}
		return out
	}
	kem := func(ps []prekeyKEMPrivate) (out []*pb.PrekeyPrivate) {
		for i := range ps {
			w := ps[i].pub.toWire()
			w.Key = nil // recomputed from the seed
			out = append(out, &pb.PrekeyPrivate{Public: w, Secret: ps[i].priv.Bytes(), RetireUnix: ps[i].retire})
		}
		return out
	}
	m.Signed = dh(s.signed)
	m.LastResort = kem(s.lastResort)
	m.OneTime = dh(s.oneTime)
	m.PqOneTime = kem(s.pqOneTime)
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		panic("e2ee: marshal prekey store: " + err.Error())
	}
	return b
}

// UnmarshalPrekeyStore restores a store written by Marshal.
func UnmarshalPrekeyStore(b []byte) (*PrekeyStore, error) {
	if len(b) > maxPrekeyStoreSize {
		return nil, fmt.Errorf("prekey store: %w", ErrTooLarge)
	}
	var m pb.PrekeyStore
	if err := proto.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("prekey store: %w", ErrMalformed)
	}
	if m.Version != prekeyVersion {
		return nil, fmt.Errorf("prekey store version %d: %w", m.Version, ErrVersion)
	}
	if m.Owner == nil || len(m.Signed) == 0 || len(m.LastResort) == 0 ||
		len(m.Signed) > 1+prekeyMaxRetired || len(m.LastResort) > 1+prekeyMaxRetired ||
		len(m.OneTime) > MaxOneTimePrekeys || len(m.PqOneTime) > MaxOneTimePrekeys {
		return nil, fmt.Errorf("prekey store: %w", ErrMalformed)
	}
	owner, err := publicIdentityFromWire(m.Owner)
	if err != nil {
		return nil, fmt.Errorf("prekey store: %w", err)
	}
	s := &PrekeyStore{owner: owner, nextID: PrekeyID(m.NextId)}
	ids := map[PrekeyID]bool{}
	dh := func(ws []*pb.PrekeyPrivate, kind byte) ([]prekeyDHPrivate, error) {
		var out []prekeyDHPrivate
		for _, w := range ws {
			if w == nil {
				return nil, fmt.Errorf("prekey store: %w", ErrMalformed)
			}
			p, err := dhPrekeyFromWire(w.Public, kind)
			if err != nil {
				return nil, fmt.Errorf("prekey store: %w", err)
			}
			priv, err := ecdh.X25519().NewPrivateKey(w.Secret)
			if err != nil || !priv.PublicKey().Equal(p.Key) || ids[p.ID] {
				return nil, fmt.Errorf("prekey store key %d: %w", p.ID, ErrMalformed)
			}
			ids[p.ID] = true
			out = append(out, prekeyDHPrivate{pub: p, priv: priv, retire: w.RetireUnix})
		}
		return out, nil
	}
	kem := func(ws []*pb.PrekeyPrivate, kind byte) ([]prekeyKEMPrivate, error) {
		var out []prekeyKEMPrivate
		for _, w := range ws {
			if w == nil || w.Public == nil {
				return nil, fmt.Errorf("prekey store: %w", ErrMalformed)
			}
			dk, err := mlkem.NewDecapsulationKey768(w.Secret)
			if err != nil {
				return nil, fmt.Errorf("prekey store pq key: %w", ErrMalformed)
			}
			p, err := kemPrekeyFromWire(w.Public, kind, dk.EncapsulationKey())
			if err != nil || ids[p.ID] {
				return nil, fmt.Errorf("prekey store pq key: %w", ErrMalformed)
			}
			ids[p.ID] = true
			out = append(out, prekeyKEMPrivate{pub: p, priv: dk, retire: w.RetireUnix})
		}
		return out, nil
	}
	if s.signed, err = dh(m.Signed, prekeyKindSigned); err != nil {
		return nil, err
	}
	if s.lastResort, err = kem(m.LastResort, prekeyKindLastResort); err != nil {
		return nil, err
	}
	if s.oneTime, err = dh(m.OneTime, prekeyKindOneTime); err != nil {
		return nil, err
	}
	if s.pqOneTime, err = kem(m.PqOneTime, prekeyKindPQOneTime); err != nil {
		return nil, err
	}
	if s.signed[0].retire != 0 || s.lastResort[0].retire != 0 {
		return nil, fmt.Errorf("prekey store: no current prekey: %w", ErrMalformed)
	}
	for id := range ids {
		if s.nextID != 0 && id >= s.nextID {
			return nil, fmt.Errorf("prekey store ids: %w", ErrMalformed)
		}
	}
	return s, nil
}
