package moments

import (
	"crypto/ed25519"
	"encoding/binary"
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/kinmesh/kinmesh/protocols/blobs"
	"github.com/kinmesh/kinmesh/protocols/moments/pb"
	"github.com/kinmesh/kinmesh/protocols/wire"
)

// Kind is what a frame carries.
type Kind uint8

// Frame kinds, as in pb.Kind.
const (
	KindPost      = Kind(pb.Kind_KIND_POST)
	KindReaction  = Kind(pb.Kind_KIND_REACTION)
	KindWithdraw  = Kind(pb.Kind_KIND_WITHDRAW)
	KindTombstone = Kind(pb.Kind_KIND_TOMBSTONE)
)

func (k Kind) String() string {
	switch k {
	case KindPost:
		return "post"
	case KindReaction:
		return "reaction"
	case KindWithdraw:
		return "withdraw"
	case KindTombstone:
		return "tombstone"
	}
	return fmt.Sprintf("kind-%d", uint8(k))
}

// frameVersion is a frame's first byte.
const frameVersion = 1

// blobProof is a blob deletion proof carried by a tombstone.
type blobProof struct {
	id  blobs.BlobID
	sig []byte
}

// frame is a decoded frame:
//
//	0x01 || uvarint(len(body)) || body (pb.FrameBody) || signature (64)
//
// The signature is Ed25519 over
//
//	"kinmesh/moments/frame/v1" || 0x00 || uvarint(len(topic)) || topic || every byte before it
//
// by the owner key (post, tombstone) or the epoch's audience key
// (reaction, withdraw). Binding the topic keeps a frame on the topic it
// was signed for.
type frame struct {
	kind       Kind
	item, post itemID
	created    time.Time
	wrappedKey []byte            // post
	sealed     []byte            // post, reaction
	deleteKey  ed25519.PublicKey // reaction, withdraw
	media      []blobs.BlobID    // post
	proofs     []blobProof       // tombstone
	proof      []byte            // withdraw

	signed []byte // everything the signature follows
	sig    []byte
}

// parseFrame decodes and checks a frame's shape. It verifies no signature.
func parseFrame(b []byte) (*frame, error) {
	if len(b) > MaxFrameSize {
		return nil, fmt.Errorf("frame of %d bytes: %w", len(b), ErrTooLarge)
	}
	if len(b) < 2+ed25519.SignatureSize || b[0] != frameVersion {
		return nil, fmt.Errorf("frame header: %w", ErrMalformed)
	}
	n, k := binary.Uvarint(b[1:])
	if k <= 0 || n != uint64(len(b)-1-k-ed25519.SignatureSize) {
		return nil, fmt.Errorf("frame length: %w", ErrMalformed)
	}
	split := len(b) - ed25519.SignatureSize
	// Count media and proofs on the wire first: decoding makes a message
	// of every (even empty) proof, 2 bytes each, before their number can
	// be checked.
	media, okm := wire.CountRepeated(b[1+k:split], fieldFrameMedia, false)
	proofs, okp := wire.CountRepeated(b[1+k:split], fieldFrameProofs, false)
	if !okm || !okp || media > MaxMedia || proofs > MaxMedia {
		return nil, fmt.Errorf("frame media: %w", ErrMalformed)
	}
	var m pb.FrameBody
	if err := proto.Unmarshal(b[1+k:split], &m); err != nil {
		return nil, fmt.Errorf("frame body: %w", ErrMalformed)
	}
	f := &frame{kind: Kind(m.GetKind()), signed: b[:split], sig: b[split:], created: time.UnixMilli(m.GetCreatedMs())}
	var ok1, ok2 bool
	f.item, ok1 = itemFromBytes(m.GetItem())
	f.post, ok2 = itemFromBytes(m.GetPost())
	if !ok1 || !ok2 || m.GetCreatedMs() <= 0 {
		return nil, fmt.Errorf("frame ids: %w", ErrMalformed)
	}
	f.wrappedKey, f.sealed, f.proof = m.GetWrappedKey(), m.GetSealed(), m.GetProof()
	if dk := m.GetDeleteKey(); len(dk) > 0 {
		if len(dk) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("frame delete key: %w", ErrMalformed)
		}
		f.deleteKey = ed25519.PublicKey(dk)
	}
	if len(m.GetMedia()) > MaxMedia || len(m.GetMediaProofs()) > MaxMedia {
		return nil, fmt.Errorf("frame media: %w", ErrMalformed)
	}
	for _, id := range m.GetMedia() {
		bid, err := blobs.BlobIDFromBytes(id)
		if err != nil {
			return nil, fmt.Errorf("frame media: %w", ErrMalformed)
		}
		f.media = append(f.media, bid)
	}
	for _, p := range m.GetMediaProofs() {
		bid, err := blobs.BlobIDFromBytes(p.GetId())
		if err != nil || len(p.GetSignature()) != ed25519.SignatureSize {
			return nil, fmt.Errorf("frame media proof: %w", ErrMalformed)
		}
		f.proofs = append(f.proofs, blobProof{id: bid, sig: p.GetSignature()})
	}
	none := func(bs ...[]byte) bool {
		for _, x := range bs {
			if len(x) != 0 {
				return false
			}
		}
		return true
	}
	var ok bool
	switch f.kind {
	case KindPost:
		ok = f.item == f.post && len(f.wrappedKey) > 0 && len(f.sealed) > 0 &&
			none(f.deleteKey, f.proof) && len(f.proofs) == 0
	case KindReaction:
		ok = f.item != f.post && len(f.sealed) > 0 && f.deleteKey != nil &&
			none(f.wrappedKey, f.proof) && len(f.media) == 0 && len(f.proofs) == 0
	case KindWithdraw:
		ok = f.item != f.post && f.deleteKey != nil && len(f.proof) == ed25519.SignatureSize &&
			none(f.wrappedKey, f.sealed) && len(f.media) == 0 && len(f.proofs) == 0
	case KindTombstone:
		ok = f.item == f.post && f.deleteKey == nil && none(f.wrappedKey, f.sealed, f.proof) && len(f.media) == 0
	}
	if !ok {
		return nil, fmt.Errorf("%s frame fields: %w", f.kind, ErrMalformed)
	}
	return f, nil
}

// signedBytes is what a frame's signature covers.
func signedBytes(topic string, versionAndBody []byte) []byte {
	out := make([]byte, 0, len(frameSigLabel)+1+binary.MaxVarintLen64+len(topic)+len(versionAndBody))
	out = append(out, frameSigLabel...)
	out = append(out, 0)
	out = binary.AppendUvarint(out, uint64(len(topic)))
	out = append(out, topic...)
	return append(out, versionAndBody...)
}

// verify checks the frame's signature under pub for topic.
func (f *frame) verify(topic string, pub ed25519.PublicKey) bool {
	return len(pub) == ed25519.PublicKeySize && ed25519.Verify(pub, signedBytes(topic, f.signed), f.sig)
}

// encodeFrame builds and signs a frame for topic.
func encodeFrame(topic string, f *frame, key ed25519.PrivateKey) ([]byte, error) {
	m := &pb.FrameBody{
		Kind:       pb.Kind(f.kind),
		Item:       f.item[:],
		Post:       f.post[:],
		CreatedMs:  f.created.UnixMilli(),
		WrappedKey: f.wrappedKey,
		Sealed:     f.sealed,
		DeleteKey:  f.deleteKey,
		Proof:      f.proof,
	}
	for _, id := range f.media {
		m.Media = append(m.Media, id[:])
	}
	for _, p := range f.proofs {
		m.MediaProofs = append(m.MediaProofs, &pb.BlobProof{Id: p.id[:], Signature: p.sig})
	}
	body, err := proto.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode frame: %w", err)
	}
	out := make([]byte, 0, 1+binary.MaxVarintLen64+len(body)+ed25519.SignatureSize)
	out = append(out, frameVersion)
	out = binary.AppendUvarint(out, uint64(len(body)))
	out = append(out, body...)
	out = append(out, ed25519.Sign(key, signedBytes(topic, out))...)
	if len(out) > MaxFrameSize {
		return nil, fmt.Errorf("frame of %d bytes: %w", len(out), ErrTooLarge)
	}
	return out, nil
}

// feedKeys verify the frames of one topic.
type feedKeys struct {
	owner    ed25519.PublicKey // posts and tombstones
	audience ed25519.PublicKey // reactions and withdrawals
}

// checkFrame parses raw and verifies it for topic: the signature its kind
// requires (ErrSignature), the withdrawal's proof, and that its time lies
// within [now - maxAge, now + MaxClockSkew] (ErrStale).
func checkFrame(raw []byte, topic string, k feedKeys, now time.Time, maxAge time.Duration) (*frame, error) {
	f, err := parseFrame(raw)
	if err != nil {
		return nil, err
	}
	pub := k.audience
	if f.kind == KindPost || f.kind == KindTombstone {
		pub = k.owner
	}
	if !f.verify(topic, pub) {
		return nil, fmt.Errorf("%s frame: %w", f.kind, ErrSignature)
	}
	if f.kind == KindWithdraw && !ed25519.Verify(f.deleteKey, withdrawMessage(f.post, f.item), f.proof) {
		return nil, fmt.Errorf("withdrawal proof: %w", ErrSignature)
	}
	if f.created.Before(now.Add(-maxAge)) || f.created.After(now.Add(MaxClockSkew)) {
		return nil, fmt.Errorf("%s frame from %v: %w", f.kind, f.created.UTC(), ErrStale)
	}
	return f, nil
}

// postKey is what a post's wrapped key holds.
type postKey struct {
	post itemID
	key  [32]byte
}

func (p postKey) encode() []byte {
	b, _ := proto.Marshal(&pb.PostKey{Post: p.post[:], Key: p.key[:]})
	return b
}

func decodePostKey(b []byte) (postKey, error) {
	var m pb.PostKey
	if err := proto.Unmarshal(b, &m); err != nil || len(m.GetKey()) != 32 {
		return postKey{}, fmt.Errorf("post key: %w", ErrMalformed)
	}
	p, ok := itemFromBytes(m.GetPost())
	if !ok {
		return postKey{}, fmt.Errorf("post key: %w", ErrMalformed)
	}
	out := postKey{post: p}
	copy(out.key[:], m.GetKey())
	return out, nil
}

// keyDistribution is the control ControlKey.
type keyDistribution struct {
	senderKey []byte // e2ee SenderKeyDistribution
	epoch     uint64
	secret    [32]byte
	owner     ed25519.PublicKey
	legacy    bool // the epoch's topic is derived from the secret (version 1)
}

// A key distribution's version is its epoch's topic version: 1 (legacy,
// topic from the secret) or 2 (topic from the audience key, TopicOf). A
// device that knows only version 1 refuses a version 2 key, rather than
// follow a topic the author doesn't use.
func (d keyDistribution) encode() []byte {
	v := uint32(topicVersionAudience)
	if d.legacy {
		v = topicVersionLegacy
	}
	b, _ := proto.Marshal(&pb.KeyDistribution{
		Version: v, SenderKey: d.senderKey, EpochSecret: d.secret[:], Epoch: d.epoch, OwnerKey: d.owner,
	})
	return b
}

func decodeDistribution(b []byte) (keyDistribution, error) {
	var m pb.KeyDistribution
	if err := proto.Unmarshal(b, &m); err != nil {
		return keyDistribution{}, fmt.Errorf("key distribution: %w", ErrMalformed)
	}
	v := m.GetVersion()
	if (v != topicVersionLegacy && v != topicVersionAudience) || len(m.GetSenderKey()) == 0 || len(m.GetEpochSecret()) != 32 ||
		len(m.GetOwnerKey()) != ed25519.PublicKeySize || m.GetEpoch() == 0 {
		return keyDistribution{}, fmt.Errorf("key distribution: %w", ErrMalformed)
	}
	d := keyDistribution{senderKey: m.GetSenderKey(), epoch: m.GetEpoch(), owner: ed25519.PublicKey(m.GetOwnerKey()), legacy: v == topicVersionLegacy}
	copy(d.secret[:], m.GetEpochSecret())
	return d, nil
}
