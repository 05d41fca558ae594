package e2ee

// PQXDH session setup, as Signal's PQXDH specification (revision 3)
// describes it, with X25519, SHA-256 and ML-KEM-768:
//
//	DH1 = DH(IK_A, SPK_B)   DH2 = DH(EK_A, IK_B)   DH3 = DH(EK_A, SPK_B)
//	DH4 = DH(EK_A, OPK_B)   (only if a one-time prekey was used)
//	(CT, SS) = ML-KEM-768.Encaps(PQPK_B)
//	SK = HKDF-SHA-256(salt = 32 zero bytes,
//	                  IKM  = 32 0xFF bytes || DH1 || DH2 || DH3 [|| DH4] || SS,
//	                  info = pxInfo, 32 bytes)
//	AD = Encode(IK_A) || Encode(IK_B) || SHA-256(transcript)
//
// The transcript hash binds what the spec leaves to the application: both
// Ed25519 identity keys, every prekey (with its id) and the KEM public key,
// EK_A and CT, so neither a relay nor a network attacker can swap any of
// them without the first message failing to decrypt.

import (
	"crypto/ecdh"
	"crypto/hkdf"
	"crypto/mlkem"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"

	"google.golang.org/protobuf/proto"

	"github.com/kinmesh/kinmesh/protocols/e2ee/pb"
)

const (
	// pxInfo is PQXDH's KDF info: application, curve, hash and KEM names.
	pxInfo              = "kinmesh_CURVE25519_SHA-256_ML-KEM-768"
	pxTranscriptContext = "kinmesh/e2ee/pqxdh-transcript/v1"

	// Type bytes of Encode / EncodeKEM; distinct so a signature over one
	// kind of key can never be read as a signature over another.
	pxTypeX25519   = 0x05
	pxTypeMLKEM768 = 0x0A

	pxADSize = 2*(1+drKeySize) + sha256.Size // 98
)

// pxEncodeDH is PQXDH's Encode(PK) for X25519: type byte || 32 bytes.
func pxEncodeDH(k *ecdh.PublicKey) []byte {
	return append([]byte{pxTypeX25519}, k.Bytes()...)
}

// pxEncodeKEM is PQXDH's EncodeKEM(PK) for ML-KEM-768: type byte || 1184 bytes.
func pxEncodeKEM(k *mlkem.EncapsulationKey768) []byte {
	return append([]byte{pxTypeMLKEM768}, k.Bytes()...)
}

// pxEncapsFunc encapsulates to ek. The default ignores rand (the standard
// library always uses its own secure source); known-answer tests install a
// derandomized one that reads rand.
type pxEncapsFunc func(ek *mlkem.EncapsulationKey768, rand io.Reader) (sharedKey, ciphertext []byte, err error)

func pxEncapsulate(ek *mlkem.EncapsulationKey768, _ io.Reader) ([]byte, []byte, error) {
	ss, ct := ek.Encapsulate()
	return ss, ct, nil
}

// pxInitial is the PQXDH data of an initial message.
type pxInitial struct {
	identity  PublicIdentity
	ephemeral *ecdh.PublicKey
	spkID     PrekeyID
	pqID      PrekeyID
	opkID     PrekeyID // 0: none
	ct        []byte
}

// pxKDF is PQXDH's KDF(KM).
func pxKDF(km []byte) []byte {
	ikm := make([]byte, 0, 32+len(km))
	for range 32 {
		ikm = append(ikm, 0xFF)
	}
	ikm = append(ikm, km...)
	sk, err := hkdf.Key(sha256.New, ikm, make([]byte, sha256.Size), pxInfo, 32)
	if err != nil {
		panic("e2ee: hkdf: " + err.Error())
	}
	return sk
}

// pxAssociatedData returns AD for a PQXDH run (see the file comment). The
// transcript is context || Ed25519 IK_A || Ed25519 IK_B || Encode(SPK_B) ||
// id || EncodeKEM(PQPK_B) || id || (0x01 || Encode(OPK_B) || id | 0x00) ||
// Encode(EK_A) || CT, every id 4 bytes big-endian.
func pxAssociatedData(a, b PublicIdentity, spk *ecdh.PublicKey, spkID PrekeyID, pq *mlkem.EncapsulationKey768, pqID PrekeyID,
	opk *ecdh.PublicKey, opkID PrekeyID, ek *ecdh.PublicKey, ct []byte) []byte {
	h := sha256.New()
	h.Write([]byte(pxTranscriptContext))
	h.Write(a.Sign)
	h.Write(b.Sign)
	h.Write(pxEncodeDH(spk))
	h.Write(binary.BigEndian.AppendUint32(nil, uint32(spkID)))
	h.Write(pxEncodeKEM(pq))
	h.Write(binary.BigEndian.AppendUint32(nil, uint32(pqID)))
	if opk != nil {
		h.Write([]byte{1})
		h.Write(pxEncodeDH(opk))
		h.Write(binary.BigEndian.AppendUint32(nil, uint32(opkID)))
	} else {
		h.Write([]byte{0})
	}
	h.Write(pxEncodeDH(ek))
	h.Write(ct)
	ad := make([]byte, 0, pxADSize)
	ad = append(ad, pxEncodeDH(a.DH)...)
	ad = append(ad, pxEncodeDH(b.DH)...)
	return h.Sum(ad)
}

// pxInitiate runs PQXDH as Alice against Bob's verified bundle. It returns
// SK, AD and the initial data to send.
func pxInitiate(self *Identity, b *Bundle, rand io.Reader, encaps pxEncapsFunc) (sk, ad []byte, in pxInitial, err error) {
	ek, err := drGenerate(rand)
	if err != nil {
		return nil, nil, pxInitial{}, fmt.Errorf("pqxdh: %w", err)
	}
	dh1, err := self.ECDH(b.SignedPrekey.Key)
	if err != nil {
		return nil, nil, pxInitial{}, fmt.Errorf("pqxdh dh1: %w", err)
	}
	dh2, err2 := ek.ECDH(b.Identity.DH)
	dh3, err3 := ek.ECDH(b.SignedPrekey.Key)
	if err2 != nil || err3 != nil {
		return nil, nil, pxInitial{}, fmt.Errorf("pqxdh: %w", ErrMalformed)
	}
	km := append(append(append([]byte{}, dh1...), dh2...), dh3...)
	var opk *ecdh.PublicKey
	in = pxInitial{identity: self.Public(), ephemeral: ek.PublicKey(), spkID: b.SignedPrekey.ID, pqID: b.PQPrekey.ID}
	if o := b.OneTimePrekey; o != nil {
		dh4, err := ek.ECDH(o.Key)
		if err != nil {
			return nil, nil, pxInitial{}, fmt.Errorf("pqxdh dh4: %w", ErrMalformed)
		}
		km = append(km, dh4...)
		opk, in.opkID = o.Key, o.ID
	}
	ss, ct, err := encaps(b.PQPrekey.Key, rand)
	if err != nil {
		return nil, nil, pxInitial{}, fmt.Errorf("pqxdh encapsulate: %w", err)
	}
	in.ct = ct
	sk = pxKDF(append(km, ss...))
	ad = pxAssociatedData(in.identity, b.Identity, b.SignedPrekey.Key, in.spkID, b.PQPrekey.Key, in.pqID, opk, in.opkID, in.ephemeral, ct)
	return sk, ad, in, nil
}

// pxRespond runs PQXDH as Bob for initial data in. It returns SK, AD, the
// signed prekey (Bob's first ratchet key) and the one-time prekeys used,
// which the caller deletes once the first message has decrypted.
func pxRespond(self *Identity, store *PrekeyStore, in *pxInitial) (sk, ad []byte, spk *ecdh.PrivateKey, consumed []PrekeyID, err error) {
	if !self.Public().Equal(store.owner) {
		return nil, nil, nil, nil, fmt.Errorf("pqxdh: prekey store of another identity: %w", ErrMalformed)
	}
	sp := store.signedByID(in.spkID)
	pq := store.kemByID(in.pqID)
	if sp == nil || pq == nil {
		return nil, nil, nil, nil, fmt.Errorf("pqxdh prekey %d/%d: %w", in.spkID, in.pqID, ErrNoPrekey)
	}
	var op *prekeyDHPrivate
	if in.opkID != 0 {
		if op = store.oneTimeByID(in.opkID); op == nil {
			return nil, nil, nil, nil, fmt.Errorf("pqxdh one-time prekey %d: %w", in.opkID, ErrNoPrekey)
		}
	}
	dh1, err1 := sp.priv.ECDH(in.identity.DH)
	dh2, err2 := self.ECDH(in.ephemeral)
	dh3, err3 := sp.priv.ECDH(in.ephemeral)
	if err1 != nil || err2 != nil || err3 != nil {
		return nil, nil, nil, nil, fmt.Errorf("pqxdh: %w", ErrMalformed)
	}
	km := append(append(append([]byte{}, dh1...), dh2...), dh3...)
	var opk *ecdh.PublicKey
	if op != nil {
		dh4, err := op.priv.ECDH(in.ephemeral)
		if err != nil {
			return nil, nil, nil, nil, fmt.Errorf("pqxdh dh4: %w", ErrMalformed)
		}
		km = append(km, dh4...)
		opk = op.pub.Key
		consumed = append(consumed, op.pub.ID)
	}
	ss, err := pq.priv.Decapsulate(in.ct)
	if err != nil {
		return nil, nil, nil, nil, fmt.Errorf("pqxdh decapsulate: %w", ErrMalformed)
	}
	if !pq.pub.LastResort {
		consumed = append(consumed, pq.pub.ID)
	}
	sk = pxKDF(append(km, ss...))
	ad = pxAssociatedData(in.identity, self.Public(), sp.pub.Key, in.spkID, pq.pub.Key, in.pqID, opk, in.opkID, in.ephemeral, in.ct)
	return sk, ad, sp.priv, consumed, nil
}

func (in *pxInitial) toWire() *pb.RatchetInitial {
	return &pb.RatchetInitial{
		Identity:        in.identity.toWire(),
		EphemeralKey:    in.ephemeral.Bytes(),
		SignedPrekeyId:  uint32(in.spkID),
		PqPrekeyId:      uint32(in.pqID),
		OneTimePrekeyId: uint32(in.opkID),
		KemCiphertext:   in.ct,
	}
}

func pxInitialFromWire(m *pb.RatchetInitial) (*pxInitial, error) {
	if m.Identity == nil || m.SignedPrekeyId == 0 || m.PqPrekeyId == 0 || len(m.KemCiphertext) != mlkem.CiphertextSize768 {
		return nil, fmt.Errorf("initial message: %w", ErrMalformed)
	}
	id, err := publicIdentityFromWire(m.Identity)
	if err != nil {
		return nil, fmt.Errorf("initial message: %w", err)
	}
	ek, err := ecdh.X25519().NewPublicKey(m.EphemeralKey)
	if err != nil {
		return nil, fmt.Errorf("initial message ephemeral key: %w", ErrMalformed)
	}
	return &pxInitial{identity: id, ephemeral: ek, spkID: PrekeyID(m.SignedPrekeyId), pqID: PrekeyID(m.PqPrekeyId),
		opkID: PrekeyID(m.OneTimePrekeyId), ct: m.KemCiphertext}, nil
}

// pxMarshalInitial returns the initial message wrapping ratchet message
// msg: version || drTypeInitial || RatchetInitial.
func pxMarshalInitial(in *pxInitial, msg []byte) []byte {
	m := in.toWire()
	m.Message = msg
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		panic("e2ee: marshal initial message: " + err.Error())
	}
	return append([]byte{drVersion, drTypeInitial}, b...)
}

// pxParseInitial decodes an initial message (prefix included) into its
// PQXDH data and the ratchet message it wraps.
func pxParseInitial(b []byte) (*pxInitial, []byte, error) {
	if len(b) > maxInitialSize {
		return nil, nil, fmt.Errorf("initial message: %w", ErrTooLarge)
	}
	if len(b) < drPrefixSize {
		return nil, nil, fmt.Errorf("initial message: %w", ErrMalformed)
	}
	if b[0] != drVersion {
		return nil, nil, fmt.Errorf("initial message version %d: %w", b[0], ErrVersion)
	}
	if b[1] != drTypeInitial {
		return nil, nil, fmt.Errorf("initial message type %d: %w", b[1], ErrMalformed)
	}
	var m pb.RatchetInitial
	if err := proto.Unmarshal(b[drPrefixSize:], &m); err != nil {
		return nil, nil, fmt.Errorf("initial message: %w", ErrMalformed)
	}
	in, err := pxInitialFromWire(&m)
	if err != nil {
		return nil, nil, err
	}
	if len(m.Message) < drMessageMin || m.Message[1] != drTypeMessage {
		return nil, nil, fmt.Errorf("initial message payload: %w", ErrMalformed)
	}
	if m.Message[0] != drVersion {
		return nil, nil, fmt.Errorf("initial message payload version %d: %w", m.Message[0], ErrVersion)
	}
	return in, m.Message, nil
}
