package prekeys

import (
	"crypto/ecdh"
	"crypto/ed25519"
	"crypto/mlkem"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"

	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/protocols/prekeys/pb"
	"github.com/kinmesh/kinmesh/protocols/wire"
)

// Native forms of the wire messages and stored records: pb types stop at
// this file.

// op is an owner operation.
type op uint8

const (
	opPublish = op(pb.Op_OP_PUBLISH)
	opStatus  = op(pb.Op_OP_STATUS)
	opPurge   = op(pb.Op_OP_PURGE)
)

func (o op) String() string {
	switch o {
	case opPublish:
		return "publish"
	case opStatus:
		return "status"
	case opPurge:
		return "purge"
	}
	return "auth"
}

type reqKind uint8

const (
	reqFetch reqKind = iota + 1
	reqHello
	reqOwner
)

// request is a decoded, validated client frame.
type request struct {
	kind    reqKind
	account [ed25519.PublicKeySize]byte // fetch

	op       op     // owner
	identity []byte // owner: e2ee PublicIdentity encoding
	upload   []byte // owner, publish only: e2ee PrekeyUpload encoding
	sig      []byte // owner
}

// maxIdentitySize caps an encoded e2ee PublicIdentity (e2ee refuses more).
const maxIdentitySize = 256

// decodeRequest decodes and validates one client frame; on failure it
// returns the code to answer with.
func decodeRequest(b []byte) (request, Code) {
	var m pb.Request
	if err := proto.Unmarshal(b, &m); err != nil {
		return request{}, CodeMalformed
	}
	var r request
	switch body := m.Body.(type) {
	case *pb.Request_Fetch:
		r.kind = reqFetch
		if len(body.Fetch.GetAccount()) != ed25519.PublicKeySize {
			return r, CodeMalformed
		}
		copy(r.account[:], body.Fetch.GetAccount())
	case *pb.Request_Hello:
		r.kind = reqHello
	case *pb.Request_Owner:
		r.kind = reqOwner
		o := body.Owner
		r.op, r.identity, r.upload, r.sig = op(o.GetOp()), o.GetIdentity(), o.GetUpload(), o.GetSignature()
		switch {
		case r.op != opPublish && r.op != opStatus && r.op != opPurge:
			return r, CodeMalformed
		case len(r.identity) == 0 || len(r.identity) > maxIdentitySize || len(r.sig) != ed25519.SignatureSize:
			return r, CodeMalformed
		case r.op == opPublish && len(r.upload) == 0, r.op != opPublish && len(r.upload) != 0:
			return r, CodeMalformed
		case len(r.upload) > MaxUploadSize:
			return r, CodeTooLarge
		}
	default:
		return r, CodeMalformed
	}
	return r, CodeOK
}

// encodeRequest is the inverse of decodeRequest, for the client.
func encodeRequest(r request) *pb.Request {
	switch r.kind {
	case reqFetch:
		return &pb.Request{Body: &pb.Request_Fetch{Fetch: &pb.Fetch{Account: r.account[:]}}}
	case reqHello:
		return &pb.Request{Body: &pb.Request_Hello{Hello: &pb.Hello{}}}
	case reqOwner:
		return &pb.Request{Body: &pb.Request_Owner{Owner: &pb.OwnerRequest{
			Op: pb.Op(r.op), Identity: r.identity, Upload: r.upload, Signature: r.sig,
		}}}
	}
	return &pb.Request{}
}

// response is a decoded relay frame.
type response struct {
	code       Code
	retryAfter time.Duration
	nonce      []byte  // challenge
	bundle     []byte  // fetch
	status     *Status // owner operations
}

// encodeResponse builds the wire form of r.
func encodeResponse(r response) *pb.Response {
	m := &pb.Response{Code: pb.Code(r.code)}
	m.RetryAfterMs = wire.RetryAfterMs(r.retryAfter)
	switch {
	case r.nonce != nil:
		m.Body = &pb.Response_Challenge{Challenge: &pb.Challenge{Nonce: r.nonce}}
	case r.bundle != nil:
		m.Body = &pb.Response_Bundle{Bundle: r.bundle}
	case r.status != nil:
		m.Body = &pb.Response_Status{Status: r.status.toWire()}
	}
	return m
}

// decodeResponse decodes and validates one relay frame.
func decodeResponse(b []byte) (response, error) {
	var m pb.Response
	if err := proto.Unmarshal(b, &m); err != nil {
		return response{}, fmt.Errorf("decode response: %w", ErrProtocol)
	}
	r := response{code: codeFromWire(m.GetCode()), retryAfter: wire.RetryAfter(m.GetRetryAfterMs())}
	switch body := m.Body.(type) {
	case *pb.Response_Challenge:
		if len(body.Challenge.GetNonce()) != nonceSize {
			return response{}, fmt.Errorf("challenge nonce of %d bytes: %w", len(body.Challenge.GetNonce()), ErrProtocol)
		}
		r.nonce = body.Challenge.GetNonce()
	case *pb.Response_Bundle:
		if len(body.Bundle) == 0 || len(body.Bundle) > MaxBundleSize {
			return response{}, fmt.Errorf("bundle of %d bytes: %w", len(body.Bundle), ErrProtocol)
		}
		r.bundle = body.Bundle
	case *pb.Response_Status:
		st, err := statusFromWire(body.Status)
		if err != nil {
			return response{}, err
		}
		r.status = &st
	}
	return r, nil
}

func idsToWire(ids []e2ee.PrekeyID) []uint32 {
	out := make([]uint32, len(ids))
	for i, id := range ids {
		out[i] = uint32(id)
	}
	return out
}

// idsFromWire checks that ids are non-zero, ascending and at most
// e2ee.MaxOneTimePrekeys.
func idsFromWire(ws []uint32) ([]e2ee.PrekeyID, error) {
	if len(ws) > e2ee.MaxOneTimePrekeys {
		return nil, fmt.Errorf("status lists %d prekeys: %w", len(ws), ErrProtocol)
	}
	out := make([]e2ee.PrekeyID, len(ws))
	for i, w := range ws {
		if w == 0 || (i > 0 && w <= ws[i-1]) {
			return nil, fmt.Errorf("status prekey ids not ascending: %w", ErrProtocol)
		}
		out[i] = e2ee.PrekeyID(w)
	}
	return out, nil
}

func unixOrZero(s int64) time.Time {
	if s == 0 {
		return time.Time{}
	}
	return time.Unix(s, 0)
}

func zeroOrUnix(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.Unix()
}

func (s *Status) toWire() *pb.Status {
	return &pb.Status{
		SignedPrekeyId:          uint32(s.SignedPrekey),
		SignedPrekeyCreatedUnix: zeroOrUnix(s.SignedPrekeyCreated),
		LastResortId:            uint32(s.LastResort),
		LastResortCreatedUnix:   zeroOrUnix(s.LastResortCreated),
		MaxOneTimeId:            uint32(s.MaxOneTimeID),
		OneTimeIds:              idsToWire(s.OneTimeIDs),
		PqOneTimeIds:            idsToWire(s.PQOneTimeIDs),
		AddedOneTime:            uint32(s.AddedOneTime),
		AddedPqOneTime:          uint32(s.AddedPQOneTime),
		ReplacedSigned:          s.ReplacedSigned,
		ReplacedLastResort:      s.ReplacedLastResort,
		Purged:                  uint32(s.Purged),
	}
}

func statusFromWire(m *pb.Status) (Status, error) {
	x, err := idsFromWire(m.GetOneTimeIds())
	if err != nil {
		return Status{}, err
	}
	q, err := idsFromWire(m.GetPqOneTimeIds())
	if err != nil {
		return Status{}, err
	}
	if m.GetAddedOneTime() > e2ee.MaxOneTimePrekeys || m.GetAddedPqOneTime() > e2ee.MaxOneTimePrekeys {
		return Status{}, fmt.Errorf("status counts: %w", ErrProtocol)
	}
	return Status{
		SignedPrekey:        e2ee.PrekeyID(m.GetSignedPrekeyId()),
		SignedPrekeyCreated: unixOrZero(m.GetSignedPrekeyCreatedUnix()),
		LastResort:          e2ee.PrekeyID(m.GetLastResortId()),
		LastResortCreated:   unixOrZero(m.GetLastResortCreatedUnix()),
		MaxOneTimeID:        e2ee.PrekeyID(m.GetMaxOneTimeId()),
		OneTimeIDs:          x,
		PQOneTimeIDs:        q,
		AddedOneTime:        int(m.GetAddedOneTime()),
		AddedPQOneTime:      int(m.GetAddedPqOneTime()),
		ReplacedSigned:      m.GetReplacedSigned(),
		ReplacedLastResort:  m.GetReplacedLastResort(),
		Purged:              int(m.GetPurged()),
	}, nil
}

// authContext prefixes the message an owner signs, so the signature can't
// be used anywhere else.
const authContext = "kinmesh/prekeys/v1/auth"

// requestHash binds the signature to the whole request:
// SHA-256(op (1) || uvarint(len(identity)) || identity || upload).
func requestHash(o op, identity, upload []byte) [sha256.Size]byte {
	h := sha256.New()
	var b [1 + binary.MaxVarintLen64]byte
	b[0] = byte(o)
	n := binary.PutUvarint(b[1:], uint64(len(identity)))
	h.Write(b[:1+n])
	h.Write(identity)
	h.Write(upload)
	var out [sha256.Size]byte
	h.Sum(out[:0])
	return out
}

// authMessage is what the owner signs with its identity key:
//
//	"kinmesh/prekeys/v1/auth" || 0x00 || nonce (32)
//	|| uvarint(len(relay)) || relay peer id (binary)
//	|| uvarint(len(owner)) || owner's connection peer id (binary)
//	|| requestHash (32)
func authMessage(nonce []byte, relay, owner peer.ID, hash [sha256.Size]byte) []byte {
	b := make([]byte, 0, len(authContext)+1+len(nonce)+2*(binary.MaxVarintLen64+40)+sha256.Size)
	b = append(b, authContext...)
	b = append(b, 0)
	b = append(b, nonce...)
	b = binary.AppendUvarint(b, uint64(len(relay)))
	b = append(b, relay...)
	b = binary.AppendUvarint(b, uint64(len(owner)))
	b = append(b, owner...)
	return append(b, hash[:]...)
}

// Stored records.

func marshal(m proto.Message) []byte {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		panic("prekeys: marshal " + fmt.Sprintf("%T", m) + ": " + err.Error()) // plain messages never fail
	}
	return b
}

// storedAccount is the relay's record of an account.
type storedAccount struct {
	identity     e2ee.PublicIdentity
	signed       e2ee.DHPrekey
	lastResort   e2ee.KEMPrekey
	identityWire []byte
}

func (a *storedAccount) encode() []byte {
	return marshal(&pb.StoredAccount{
		Identity:     a.identityWire,
		SignedPrekey: storedFromDH(a.signed),
		LastResort:   storedFromKEM(a.lastResort),
	})
}

// decodeStoredAccount decodes and verifies an account record (the
// identity's binding signature; the prekeys were verified when
// published and are sealed in the store since).
func decodeStoredAccount(b []byte) (*storedAccount, error) {
	var m pb.StoredAccount
	if err := proto.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("stored account: %w", ErrMalformed)
	}
	id, err := e2ee.ParsePublicIdentity(m.GetIdentity())
	if err != nil {
		return nil, fmt.Errorf("stored account identity: %w: %w", ErrMalformed, err)
	}
	a := &storedAccount{identity: id, identityWire: m.GetIdentity()}
	if a.signed, err = dhFromStored(m.GetSignedPrekey(), false); err != nil {
		return nil, err
	}
	if a.lastResort, err = kemFromStored(m.GetLastResort(), true); err != nil {
		return nil, err
	}
	return a, nil
}

// counters is the relay's per-account bookkeeping.
type counters struct {
	maxID        e2ee.PrekeyID // highest one-time id ever accepted
	oneTime, pqs int           // one-time prekeys held
}

func (c counters) encode() []byte {
	return marshal(&pb.StoredCounters{MaxOneTimeId: uint32(c.maxID), OneTime: uint32(c.oneTime), PqOneTime: uint32(c.pqs)})
}

func decodeCounters(b []byte) (counters, error) {
	var m pb.StoredCounters
	if err := proto.Unmarshal(b, &m); err != nil {
		return counters{}, fmt.Errorf("stored counters: %w", ErrMalformed)
	}
	if m.GetOneTime() > e2ee.MaxOneTimePrekeys || m.GetPqOneTime() > e2ee.MaxOneTimePrekeys {
		return counters{}, fmt.Errorf("stored counters: %w", ErrMalformed)
	}
	return counters{maxID: e2ee.PrekeyID(m.GetMaxOneTimeId()), oneTime: int(m.GetOneTime()), pqs: int(m.GetPqOneTime())}, nil
}

func storedFromDH(p e2ee.DHPrekey) *pb.StoredPrekey {
	return &pb.StoredPrekey{Id: uint32(p.ID), CreatedUnix: p.Created.Unix(), Key: p.Key.Bytes(), Signature: p.Signature}
}

func storedFromKEM(p e2ee.KEMPrekey) *pb.StoredPrekey {
	return &pb.StoredPrekey{Id: uint32(p.ID), CreatedUnix: p.Created.Unix(), Key: p.Key.Bytes(), Signature: p.Signature}
}

func dhFromStored(m *pb.StoredPrekey, oneTime bool) (e2ee.DHPrekey, error) {
	if m == nil || m.Id == 0 || len(m.Signature) != ed25519.SignatureSize {
		return e2ee.DHPrekey{}, fmt.Errorf("stored prekey: %w", ErrMalformed)
	}
	k, err := ecdh.X25519().NewPublicKey(m.Key)
	if err != nil {
		return e2ee.DHPrekey{}, fmt.Errorf("stored prekey key: %w", ErrMalformed)
	}
	return e2ee.DHPrekey{ID: e2ee.PrekeyID(m.Id), Created: time.Unix(m.CreatedUnix, 0), OneTime: oneTime, Key: k, Signature: m.Signature}, nil
}

func kemFromStored(m *pb.StoredPrekey, lastResort bool) (e2ee.KEMPrekey, error) {
	if m == nil || m.Id == 0 || len(m.Signature) != ed25519.SignatureSize {
		return e2ee.KEMPrekey{}, fmt.Errorf("stored pq prekey: %w", ErrMalformed)
	}
	k, err := mlkem.NewEncapsulationKey768(m.Key)
	if err != nil {
		return e2ee.KEMPrekey{}, fmt.Errorf("stored pq prekey key: %w", ErrMalformed)
	}
	return e2ee.KEMPrekey{ID: e2ee.PrekeyID(m.Id), Created: time.Unix(m.CreatedUnix, 0), LastResort: lastResort, Key: k, Signature: m.Signature}, nil
}

func decodeStoredPrekey(b []byte) (*pb.StoredPrekey, error) {
	var m pb.StoredPrekey
	if err := proto.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("stored prekey: %w", ErrMalformed)
	}
	return &m, nil
}
