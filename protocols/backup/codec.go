package backup

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"

	"github.com/kinmesh/kinmesh/protocols/backup/pb"
	"github.com/kinmesh/kinmesh/protocols/discovery"
	"github.com/kinmesh/kinmesh/protocols/wire"
)

// Native forms of the wire messages and stored records: pb types stop at
// this file (and contents.go).

// op is an owner operation.
type op uint8

const (
	opPut op = iota + 1
	opStatus
	opDelete
	opFetch
)

var opNames = [...]string{"auth", "put", "status", "delete", "fetch"}

func (o op) String() string {
	if int(o) < len(opNames) {
		return opNames[o]
	}
	return "auth"
}

type reqKind uint8

const (
	reqHello reqKind = iota + 1
	reqOwner
)

// request is a decoded, validated client frame.
type request struct {
	kind     reqKind
	identity []byte // owner: e2ee PublicIdentity encoding
	body     []byte // owner: encoded Body, as signed
	sig      []byte // owner
}

// body is a decoded, validated operation.
type body struct {
	op   op
	blob []byte // put
	code string // fetch
}

// decodeRequest decodes and validates one client frame; on failure it
// returns the code to answer with.
func decodeRequest(b []byte) (request, Code) {
	var m pb.Request
	if err := proto.Unmarshal(b, &m); err != nil {
		return request{}, CodeMalformed
	}
	var r request
	switch v := m.Body.(type) {
	case *pb.Request_Hello:
		r.kind = reqHello
	case *pb.Request_Owner:
		r.kind = reqOwner
		o := v.Owner
		r.identity, r.body, r.sig = o.GetIdentity(), o.GetBody(), o.GetSignature()
		if len(r.identity) == 0 || len(r.identity) > maxIdentitySize || len(r.sig) != ed25519.SignatureSize || len(r.body) == 0 {
			return r, CodeMalformed
		}
	default:
		return r, CodeMalformed
	}
	return r, CodeOK
}

// encodeRequest is the inverse of decodeRequest, for the client.
func encodeRequest(r request) *pb.Request {
	switch r.kind {
	case reqHello:
		return &pb.Request{Body: &pb.Request_Hello{Hello: &pb.Hello{}}}
	case reqOwner:
		return &pb.Request{Body: &pb.Request_Owner{Owner: &pb.OwnerRequest{Identity: r.identity, Body: r.body, Signature: r.sig}}}
	}
	return &pb.Request{}
}

// decodeBody decodes and validates an operation; on failure it returns
// the code to answer with.
func decodeBody(b []byte) (body, Code) {
	var m pb.Body
	if err := proto.Unmarshal(b, &m); err != nil {
		return body{}, CodeMalformed
	}
	var o body
	switch v := m.Op.(type) {
	case *pb.Body_Put:
		o.op, o.blob = opPut, v.Put.GetBlob()
		if len(o.blob) > MaxBlobSize {
			return o, CodeTooLarge
		}
		if CheckBlob(o.blob) != nil {
			return o, CodeMalformed
		}
	case *pb.Body_Status:
		o.op = opStatus
	case *pb.Body_Delete:
		o.op = opDelete
	case *pb.Body_Fetch:
		o.op, o.code = opFetch, v.Fetch.GetCode()
		if !validCode(o.code) {
			return o, CodeMalformed
		}
	default:
		return o, CodeMalformed
	}
	return o, CodeOK
}

// encodeBody is the inverse of decodeBody, for the client.
func encodeBody(o body) []byte {
	m := &pb.Body{}
	switch o.op {
	case opPut:
		m.Op = &pb.Body_Put{Put: &pb.Put{Blob: o.blob}}
	case opStatus:
		m.Op = &pb.Body_Status{Status: &pb.GetStatus{}}
	case opDelete:
		m.Op = &pb.Body_Delete{Delete: &pb.Delete{}}
	case opFetch:
		m.Op = &pb.Body_Fetch{Fetch: &pb.Fetch{Code: o.code}}
	}
	return marshal(m)
}

// validCode reports whether s is CodeDigits ASCII digits.
func validCode(s string) bool {
	if len(s) != CodeDigits {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// response is a decoded relay frame.
type response struct {
	code       Code
	retryAfter time.Duration
	nonce      []byte // challenge
	status     *Status
	fetched    *Fetched
}

func encodeResponse(r response) *pb.Response {
	m := &pb.Response{Code: pb.Code(r.code), RetryAfterMs: wire.RetryAfterMs(r.retryAfter)}
	switch {
	case r.nonce != nil:
		m.Body = &pb.Response_Challenge{Challenge: &pb.Challenge{Nonce: r.nonce}}
	case r.status != nil:
		s := r.status
		m.Body = &pb.Response_Status{Status: &pb.Status{
			Verified: s.Verified, Held: s.Held, UpdatedUnix: unix(s.UpdatedAt), Size: uint32(max(s.Size, 0)),
			ExpiresUnix: unix(s.ExpiresAt), Removed: s.Removed, AttemptsLeft: uint32(max(s.AttemptsLeft, 0)),
		}}
	case r.fetched != nil:
		m.Body = &pb.Response_Backup{Backup: &pb.Backup{Blob: r.fetched.Blob, UpdatedUnix: unix(r.fetched.UpdatedAt)}}
	}
	return m
}

// decodeResponse decodes and validates one relay frame, for the client.
func decodeResponse(b []byte) (response, error) {
	var m pb.Response
	if err := proto.Unmarshal(b, &m); err != nil {
		return response{}, fmt.Errorf("decode response: %w", ErrProtocol)
	}
	r := response{code: codeFromWire(m.GetCode()), retryAfter: wire.RetryAfter(m.GetRetryAfterMs())}
	switch v := m.Body.(type) {
	case *pb.Response_Challenge:
		if len(v.Challenge.GetNonce()) != nonceSize {
			return response{}, fmt.Errorf("challenge nonce of %d bytes: %w", len(v.Challenge.GetNonce()), ErrProtocol)
		}
		r.nonce = v.Challenge.GetNonce()
	case *pb.Response_Status:
		s := v.Status
		r.status = &Status{
			Verified: s.GetVerified(), Held: s.GetHeld(), UpdatedAt: fromUnix(s.GetUpdatedUnix()), Size: int(s.GetSize()),
			ExpiresAt: fromUnix(s.GetExpiresUnix()), Removed: s.GetRemoved(), AttemptsLeft: int(s.GetAttemptsLeft()),
		}
	case *pb.Response_Backup:
		if err := CheckBlob(v.Backup.GetBlob()); err != nil {
			return response{}, fmt.Errorf("fetched backup: %w: %w", ErrProtocol, err)
		}
		r.fetched = &Fetched{Blob: v.Backup.GetBlob(), UpdatedAt: fromUnix(v.Backup.GetUpdatedUnix())}
	}
	return r, nil
}

// requestHash is SHA-256(uvarint(len(identity)) || identity || body).
func requestHash(identity, body []byte) [sha256.Size]byte {
	h := sha256.New()
	var b [binary.MaxVarintLen64]byte
	h.Write(b[:binary.PutUvarint(b[:], uint64(len(identity)))])
	h.Write(identity)
	h.Write(body)
	var out [sha256.Size]byte
	h.Sum(out[:0])
	return out
}

const authContext = "kinmesh/backup/v1/auth"

// authMessage is what the requester signs with its identity key:
//
//	"kinmesh/backup/v1/auth" || 0x00 || nonce (32)
//	|| uvarint(len(relay)) || relay peer id (binary)
//	|| uvarint(len(peer)) || the requester's connection peer id (binary)
//	|| requestHash (32)
func authMessage(nonce []byte, relay, requester peer.ID, hash [sha256.Size]byte) []byte {
	b := make([]byte, 0, len(authContext)+1+len(nonce)+2*(binary.MaxVarintLen64+40)+sha256.Size)
	b = append(b, authContext...)
	b = append(b, 0)
	b = append(b, nonce...)
	b = binary.AppendUvarint(b, uint64(len(relay)))
	b = append(b, relay...)
	b = binary.AppendUvarint(b, uint64(len(requester)))
	b = append(b, requester...)
	return append(b, hash[:]...)
}

func marshal(m proto.Message) []byte {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		panic("backup: marshal " + fmt.Sprintf("%T", m) + ": " + err.Error()) // plain messages never fail
	}
	return b
}

// Stored records.

type storedBackup struct {
	owner   string // the account's key in this namespace
	account string // discovery's Link.Account
	blob    []byte
	updated time.Time
}

func (s storedBackup) encode() []byte {
	return marshal(&pb.StoredBackup{Owner: s.owner, Account: s.account, Blob: s.blob, UpdatedUnix: unix(s.updated)})
}

func decodeStoredBackup(b []byte) (storedBackup, error) {
	var m pb.StoredBackup
	if err := proto.Unmarshal(b, &m); err != nil || m.GetOwner() == "" || len(m.GetBlob()) == 0 {
		return storedBackup{}, fmt.Errorf("stored backup: %w", ErrMalformed)
	}
	return storedBackup{owner: m.GetOwner(), account: m.GetAccount(), blob: m.GetBlob(), updated: fromUnix(m.GetUpdatedUnix())}, nil
}

type storedIndex struct {
	output  discovery.Output
	account string
	updated time.Time
	size    int
}

func (s storedIndex) encode() []byte {
	return marshal(&pb.StoredIndex{Output: s.output[:], Account: s.account, UpdatedUnix: unix(s.updated), Size: uint32(max(s.size, 0))})
}

func decodeStoredIndex(b []byte) (storedIndex, error) {
	var m pb.StoredIndex
	if err := proto.Unmarshal(b, &m); err != nil || len(m.GetOutput()) != discovery.OutputSize {
		return storedIndex{}, fmt.Errorf("stored index: %w", ErrMalformed)
	}
	s := storedIndex{account: m.GetAccount(), updated: fromUnix(m.GetUpdatedUnix()), size: int(m.GetSize())}
	copy(s.output[:], m.GetOutput())
	return s, nil
}
