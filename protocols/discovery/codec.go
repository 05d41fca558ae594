package discovery

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/kinmesh/kinmesh/protocols/discovery/pb"
	"github.com/kinmesh/kinmesh/protocols/wire"
)

// Native forms of the wire messages and stored records: pb types stop at
// this file.

// op is an account operation.
type op uint8

const (
	opSendCode op = iota + 1
	opVerifyCode
	opStatus
	opUpdateRecord
	opUnenrol
	opEvaluate
)

var opNames = [...]string{"auth", "send_code", "verify_code", "status", "update_record", "unenrol", "evaluate"}

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
	reqList
)

// request is a decoded, validated client frame.
type request struct {
	kind reqKind

	since uint64 // list
	base  uint64 // list
	limit int    // list

	identity []byte // owner: e2ee PublicIdentity encoding
	body     []byte // owner: encoded OwnerBody, as signed
	sig      []byte // owner
}

// ownerBody is a decoded, validated account operation.
type ownerBody struct {
	op      op
	number  string   // send_code, not yet normalised
	code    string   // verify_code
	record  []byte   // verify_code, update_record
	blinded [][]byte // evaluate
}

// decodeRequest decodes and validates one client frame; on failure it
// returns the code to answer with.
func decodeRequest(b []byte) (request, Code) {
	var m pb.Request
	if err := proto.Unmarshal(b, &m); err != nil {
		return request{}, CodeMalformed
	}
	var r request
	switch body := m.Body.(type) {
	case *pb.Request_Hello:
		r.kind = reqHello
	case *pb.Request_List:
		r.kind = reqList
		r.since, r.base = body.List.GetSince(), body.List.GetBase()
		if body.List.GetLimit() > MaxPageEntries {
			return r, CodeMalformed
		}
		r.limit = int(body.List.GetLimit())
	case *pb.Request_Owner:
		r.kind = reqOwner
		o := body.Owner
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
	case reqList:
		return &pb.Request{Body: &pb.Request_List{List: &pb.List{Since: r.since, Limit: uint32(r.limit), Base: r.base}}}
	case reqOwner:
		return &pb.Request{Body: &pb.Request_Owner{Owner: &pb.OwnerRequest{Identity: r.identity, Body: r.body, Signature: r.sig}}}
	}
	return &pb.Request{}
}

// Field numbers the wire scans look for (pb/discovery.proto).
const (
	fieldOwnerEvaluate   = 6 // OwnerBody.evaluate
	fieldEvaluateBlinded = 1 // Evaluate.blinded
	fieldRespEvaluation  = 5 // Response.evaluation
	fieldEvalEvaluated   = 1 // Evaluation.evaluated
	fieldRespPage        = 6 // Response.page
	fieldPageEntries     = 7 // Page.entries
)

// countNested returns how many entries of the repeated field num the
// occurrences of the message field body of b hold in all, without
// decoding b: protobuf merges a message field that occurs more than once,
// so the counts add up. proto.Unmarshal allocates per entry (a slice
// header per bytes entry of 2, a whole message per empty submessage of
// 2) before a decoder can count, so decoders count on the wire first
// (wire.CountRepeated). ok is false when b is not well-formed protobuf.
func countNested(b []byte, body, num protowire.Number) (n int, ok bool) {
	ok = true
	walked := wire.EachBytes(b, body, func(m []byte) bool {
		var c int
		c, ok = wire.CountRepeated(m, num, false)
		n += c
		return ok
	})
	return n, ok && walked
}

// decodeOwnerBody decodes and validates an operation; on failure it
// returns the code to answer with. The blinded elements are counted
// before the body is decoded.
func decodeOwnerBody(b []byte) (ownerBody, Code) {
	switch n, ok := countNested(b, fieldOwnerEvaluate, fieldEvaluateBlinded); {
	case !ok:
		return ownerBody{}, CodeMalformed
	case n > MaxBatch:
		return ownerBody{}, CodeTooLarge
	}
	var m pb.OwnerBody
	if err := proto.Unmarshal(b, &m); err != nil {
		return ownerBody{}, CodeMalformed
	}
	var o ownerBody
	switch body := m.Op.(type) {
	case *pb.OwnerBody_SendCode:
		o.op, o.number = opSendCode, body.SendCode.GetNumber()
		if len(o.number) == 0 || len(o.number) > maxNumberLen {
			return o, CodeInvalidNumber
		}
	case *pb.OwnerBody_VerifyCode:
		o.op, o.code, o.record = opVerifyCode, body.VerifyCode.GetCode(), body.VerifyCode.GetRecord()
		if !validCode(o.code) || len(o.record) == 0 {
			return o, CodeMalformed
		}
		if len(o.record) > maxRecordSize {
			return o, CodeTooLarge
		}
	case *pb.OwnerBody_Status:
		o.op = opStatus
	case *pb.OwnerBody_UpdateRecord:
		o.op, o.record = opUpdateRecord, body.UpdateRecord.GetRecord()
		if len(o.record) == 0 {
			return o, CodeMalformed
		}
		if len(o.record) > maxRecordSize {
			return o, CodeTooLarge
		}
	case *pb.OwnerBody_Unenrol:
		o.op = opUnenrol
	case *pb.OwnerBody_Evaluate:
		o.op, o.blinded = opEvaluate, body.Evaluate.GetBlinded()
		if len(o.blinded) == 0 {
			return o, CodeMalformed
		}
		if len(o.blinded) > MaxBatch {
			return o, CodeTooLarge
		}
		for _, e := range o.blinded {
			if len(e) != elementSize {
				return o, CodeMalformed
			}
		}
	default:
		return o, CodeMalformed
	}
	return o, CodeOK
}

// encodeOwnerBody is the inverse of decodeOwnerBody, for the client.
func encodeOwnerBody(o ownerBody) []byte {
	m := &pb.OwnerBody{}
	switch o.op {
	case opSendCode:
		m.Op = &pb.OwnerBody_SendCode{SendCode: &pb.SendCode{Number: o.number}}
	case opVerifyCode:
		m.Op = &pb.OwnerBody_VerifyCode{VerifyCode: &pb.VerifyCode{Code: o.code, Record: o.record}}
	case opStatus:
		m.Op = &pb.OwnerBody_Status{Status: &pb.GetStatus{}}
	case opUpdateRecord:
		m.Op = &pb.OwnerBody_UpdateRecord{UpdateRecord: &pb.UpdateRecord{Record: o.record}}
	case opUnenrol:
		m.Op = &pb.OwnerBody_Unenrol{Unenrol: &pb.Unenrol{}}
	case opEvaluate:
		m.Op = &pb.OwnerBody_Evaluate{Evaluate: &pb.Evaluate{Blinded: o.blinded}}
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

// Listing is where a client stands in listing a relay's directory, as a
// List request tells the relay. The zero Listing asks for the whole
// directory, to a client that holds nothing of it.
type Listing struct {
	// Since is the cursor: the Next of the last page applied (0: none).
	Since uint64
	// Base is the Version of the listing's first page, the one listed
	// from Since 0 (or the page that said to start over): deletions up
	// to there were made before the listing began, so the relay need not
	// remember them for it. 0 means unknown: the relay then asks a
	// listing that goes on from below its floor to start over, even a
	// listing that began after every deletion it forgot.
	Base uint64
}

// Page is one page of a relay's directory: the changes after the cursor
// the client passed, oldest first.
type Page struct {
	// PublicKey is the relay's OPRF public key: the entries derive from
	// the matching private key.
	PublicKey PublicKey
	// Version is the sequence number of the directory's latest change
	// (at least Next). The Version of a listing's first page is its
	// Listing.Base.
	Version uint64
	// Next is the cursor to pass for the following page (and, once More
	// is false, for the next sync).
	Next uint64
	// More says there are changes after Next.
	More bool
	// StartOver says the listing passed may miss a deletion the relay has
	// forgotten (or is unknown to it): drop every entry held for this
	// relay and list again from 0. The page is the first of that
	// listing, from 0.
	StartOver bool
	// Total is how many live entries the directory holds.
	Total int
	// Entries are the changes, by ascending Seq.
	Entries []Entry
}

// Entry is one change of the directory: an entry added or replaced, or
// (Box nil) deleted.
type Entry struct {
	Seq uint64
	ID  EntryID
	// Box is the sealed contact record (see Output.Open); nil for a
	// deletion.
	Box []byte
}

// Deleted reports whether the change deletes the entry.
func (e Entry) Deleted() bool { return len(e.Box) == 0 }

// evaluation is the wire form of an OPRF evaluation.
type evaluation struct {
	elements [][]byte
	proof    []byte
}

// response is a decoded relay frame.
type response struct {
	code       Code
	retryAfter time.Duration
	nonce      []byte // challenge
	status     *Status
	eval       *evaluation
	page       *Page
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

// encodeResponse builds the wire form of r.
func encodeResponse(r response) *pb.Response {
	m := &pb.Response{Code: pb.Code(r.code), RetryAfterMs: wire.RetryAfterMs(r.retryAfter)}
	switch {
	case r.nonce != nil:
		m.Body = &pb.Response_Challenge{Challenge: &pb.Challenge{Nonce: r.nonce}}
	case r.status != nil:
		s := r.status
		m.Body = &pb.Response_Status{Status: &pb.PhoneStatus{
			Verified:        s.Verified,
			VerifiedAtUnix:  zeroOrUnix(s.VerifiedAt),
			Pending:         s.Pending,
			CodeExpiresUnix: zeroOrUnix(s.CodeExpires),
			AttemptsLeft:    uint32(max(s.AttemptsLeft, 0)),
			LockedUntilUnix: zeroOrUnix(s.LockedUntil),
			EvaluationsLeft: uint32(max(s.EvaluationsLeft, 0)),
			PublicKey:       s.PublicKey.raw,
			Removed:         uint32(max(s.Removed, 0)),
		}}
	case r.eval != nil:
		m.Body = &pb.Response_Evaluation{Evaluation: &pb.Evaluation{Evaluated: r.eval.elements, Proof: r.eval.proof}}
	case r.page != nil:
		p := r.page
		w := &pb.Page{PublicKey: p.PublicKey.raw, Version: p.Version, Next: p.Next, More: p.More, StartOver: p.StartOver, EntriesTotal: uint64(max(p.Total, 0))}
		for _, e := range p.Entries {
			w.Entries = append(w.Entries, &pb.Entry{Seq: e.Seq, Id: e.ID[:], Box: e.Box})
		}
		m.Body = &pb.Response_Page{Page: w}
	}
	return m
}

// decodeResponse decodes and validates one relay frame: what a client
// reads from a relay it does not trust to be well-behaved. A page's
// entries and an evaluation's elements are counted before the frame is
// decoded.
func decodeResponse(b []byte) (response, error) {
	entries, okp := countNested(b, fieldRespPage, fieldPageEntries)
	elements, oke := countNested(b, fieldRespEvaluation, fieldEvalEvaluated)
	switch {
	case !okp || !oke:
		return response{}, fmt.Errorf("decode response: %w", ErrProtocol)
	case entries > MaxPageEntries:
		return response{}, fmt.Errorf("page of %d entries (at most %d): %w", entries, MaxPageEntries, ErrProtocol)
	case elements > MaxBatch:
		return response{}, fmt.Errorf("evaluation of %d elements (at most %d): %w", elements, MaxBatch, ErrProtocol)
	}
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
	case *pb.Response_Status:
		s := body.Status
		st := &Status{
			Verified:        s.GetVerified(),
			VerifiedAt:      unixOrZero(s.GetVerifiedAtUnix()),
			Pending:         s.GetPending(),
			CodeExpires:     unixOrZero(s.GetCodeExpiresUnix()),
			AttemptsLeft:    int(min(s.GetAttemptsLeft(), 1<<20)),
			LockedUntil:     unixOrZero(s.GetLockedUntilUnix()),
			EvaluationsLeft: int(min(s.GetEvaluationsLeft(), 1<<30)),
			Removed:         int(min(s.GetRemoved(), 1<<20)),
		}
		if len(s.GetPublicKey()) > 0 {
			pk, err := ParsePublicKey(s.GetPublicKey())
			if err != nil {
				return response{}, fmt.Errorf("status: %w: %w", ErrProtocol, err)
			}
			st.PublicKey = pk
		}
		r.status = st
	case *pb.Response_Evaluation:
		e := body.Evaluation
		if len(e.GetEvaluated()) == 0 || len(e.GetEvaluated()) > MaxBatch || len(e.GetProof()) != proofSize {
			return response{}, fmt.Errorf("evaluation of %d elements, proof of %d bytes: %w", len(e.GetEvaluated()), len(e.GetProof()), ErrProtocol)
		}
		for _, el := range e.GetEvaluated() {
			if len(el) != elementSize {
				return response{}, fmt.Errorf("evaluated element of %d bytes: %w", len(el), ErrProtocol)
			}
		}
		r.eval = &evaluation{elements: e.GetEvaluated(), proof: e.GetProof()}
	case *pb.Response_Page:
		p, err := pageFromWire(body.Page)
		if err != nil {
			return response{}, err
		}
		r.page = p
	}
	return r, nil
}

func pageFromWire(w *pb.Page) (*Page, error) {
	if len(w.GetEntries()) > MaxPageEntries {
		return nil, fmt.Errorf("page of %d entries: %w", len(w.GetEntries()), ErrProtocol)
	}
	pk, err := ParsePublicKey(w.GetPublicKey())
	if err != nil {
		return nil, fmt.Errorf("page: %w: %w", ErrProtocol, err)
	}
	p := &Page{
		PublicKey: pk, Version: w.GetVersion(), Next: w.GetNext(), More: w.GetMore(), StartOver: w.GetStartOver(),
		Total: int(min(w.GetEntriesTotal(), 1<<40)),
	}
	prev := uint64(0)
	for _, e := range w.GetEntries() {
		if len(e.GetId()) != IDSize || len(e.GetBox()) > maxBoxSize || e.GetSeq() <= prev || e.GetSeq() > p.Next {
			return nil, fmt.Errorf("page entry: %w", ErrProtocol)
		}
		prev = e.GetSeq()
		var en Entry
		en.Seq = e.GetSeq()
		copy(en.ID[:], e.GetId())
		if len(e.GetBox()) > 0 {
			en.Box = e.GetBox()
		}
		p.Entries = append(p.Entries, en)
	}
	if p.Next > p.Version {
		return nil, fmt.Errorf("page cursor %d beyond version %d: %w", p.Next, p.Version, ErrProtocol)
	}
	return p, nil
}

// authContext prefixes the message an account signs, so the signature
// can't be used anywhere else.
const authContext = "kinmesh/discovery/v1/auth"

// requestHash binds the signature to the whole request:
// SHA-256(uvarint(len(identity)) || identity || body).
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

// authMessage is what the account signs with its identity key:
//
//	"kinmesh/discovery/v1/auth" || 0x00 || nonce (32)
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
		panic("discovery: marshal " + fmt.Sprintf("%T", m) + ": " + err.Error()) // plain messages never fail
	}
	return b
}

// Stored records.

type storedLink struct {
	output     Output
	verifiedAt time.Time
}

func (l storedLink) encode() []byte {
	return marshal(&pb.StoredLink{Output: l.output[:], VerifiedAtUnix: l.verifiedAt.Unix()})
}

func decodeStoredLink(b []byte) (storedLink, error) {
	var m pb.StoredLink
	if err := proto.Unmarshal(b, &m); err != nil || len(m.GetOutput()) != OutputSize {
		return storedLink{}, fmt.Errorf("stored link: %w", ErrMalformed)
	}
	var l storedLink
	copy(l.output[:], m.GetOutput())
	l.verifiedAt = time.Unix(m.GetVerifiedAtUnix(), 0)
	return l, nil
}

type storedPending struct {
	output   Output
	code     string
	expires  time.Time
	attempts int
}

func (p storedPending) encode() []byte {
	return marshal(&pb.StoredPending{Output: p.output[:], Code: p.code, ExpiresUnix: p.expires.Unix(), Attempts: uint32(p.attempts)})
}

func decodeStoredPending(b []byte) (storedPending, error) {
	var m pb.StoredPending
	if err := proto.Unmarshal(b, &m); err != nil || len(m.GetOutput()) != OutputSize || !validCode(m.GetCode()) || m.GetAttempts() > 1<<16 {
		return storedPending{}, fmt.Errorf("stored pending verification: %w", ErrMalformed)
	}
	var p storedPending
	copy(p.output[:], m.GetOutput())
	p.code, p.expires, p.attempts = m.GetCode(), time.Unix(m.GetExpiresUnix(), 0), int(m.GetAttempts())
	return p, nil
}

func encodeLock(until time.Time) []byte {
	return marshal(&pb.StoredLock{UntilUnix: until.Unix()})
}

func decodeLock(b []byte) (time.Time, error) {
	var m pb.StoredLock
	if err := proto.Unmarshal(b, &m); err != nil {
		return time.Time{}, fmt.Errorf("stored lock: %w", ErrMalformed)
	}
	return time.Unix(m.GetUntilUnix(), 0), nil
}

func encodeOwner(account string) []byte { return marshal(&pb.StoredOwner{Account: account}) }

func decodeOwner(b []byte) (string, error) {
	var m pb.StoredOwner
	if err := proto.Unmarshal(b, &m); err != nil || m.GetAccount() == "" {
		return "", fmt.Errorf("stored owner: %w", ErrMalformed)
	}
	return m.GetAccount(), nil
}

type storedEntry struct {
	id      EntryID
	box     []byte // nil: deleted
	deleted time.Time
}

func (e storedEntry) encode() []byte {
	return marshal(&pb.StoredEntry{Id: e.id[:], Box: e.box, DeletedUnix: zeroOrUnix(e.deleted)})
}

func decodeStoredEntry(b []byte) (storedEntry, error) {
	var m pb.StoredEntry
	if err := proto.Unmarshal(b, &m); err != nil || len(m.GetId()) != IDSize || len(m.GetBox()) > maxBoxSize {
		return storedEntry{}, fmt.Errorf("stored entry: %w", ErrMalformed)
	}
	var e storedEntry
	copy(e.id[:], m.GetId())
	if len(m.GetBox()) > 0 {
		e.box = m.GetBox()
	}
	e.deleted = unixOrZero(m.GetDeletedUnix())
	return e, nil
}

type meta struct {
	lastSeq, floor uint64
	entries        int
}

func (m meta) encode() []byte {
	return marshal(&pb.StoredMeta{LastSeq: m.lastSeq, Floor: m.floor, Entries: uint64(m.entries)})
}

func decodeMeta(b []byte) (meta, error) {
	var m pb.StoredMeta
	if err := proto.Unmarshal(b, &m); err != nil || m.GetFloor() > m.GetLastSeq() || m.GetEntries() > 1<<40 {
		return meta{}, fmt.Errorf("stored directory meta: %w", ErrMalformed)
	}
	return meta{lastSeq: m.GetLastSeq(), floor: m.GetFloor(), entries: int(m.GetEntries())}, nil
}
