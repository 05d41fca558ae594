package report

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"

	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/protocols/report/pb"
	"github.com/kinmesh/kinmesh/protocols/wire"
)

// Native forms of the wire messages and the stored record: pb types stop
// at this file.

type reqKind uint8

const (
	reqHello reqKind = iota + 1
	reqSubmit
	reqPurge
)

// request is a decoded client frame. A submit's submission is kept as
// the bytes that were signed; it is decoded and validated separately. A
// purge has an identity and a signature only.
type request struct {
	kind       reqKind
	submission []byte
	identity   []byte
	sig        []byte
}

// decodeRequest decodes one client frame; on failure it returns the code
// to answer with.
func decodeRequest(b []byte) (request, Code) {
	var m pb.Request
	if err := proto.Unmarshal(b, &m); err != nil {
		return request{}, CodeMalformed
	}
	switch body := m.Body.(type) {
	case *pb.Request_Hello:
		return request{kind: reqHello}, CodeOK
	case *pb.Request_Submit:
		r := request{kind: reqSubmit, submission: body.Submit.GetSubmission(), identity: body.Submit.GetIdentity(), sig: body.Submit.GetSignature()}
		switch {
		case len(r.submission) > MaxSubmissionSize:
			return r, CodeTooLarge
		case len(r.submission) == 0, len(r.identity) == 0, len(r.identity) > maxIdentitySize:
			return r, CodeMalformed
		case len(r.sig) != 0 && len(r.sig) != ed25519.SignatureSize:
			return r, CodeMalformed
		}
		return r, CodeOK
	case *pb.Request_Purge:
		r := request{kind: reqPurge, identity: body.Purge.GetIdentity(), sig: body.Purge.GetSignature()}
		if len(r.identity) == 0 || len(r.identity) > maxIdentitySize || len(r.sig) != 0 && len(r.sig) != ed25519.SignatureSize {
			return r, CodeMalformed
		}
		return r, CodeOK
	}
	return request{}, CodeMalformed
}

func encodeRequest(r request) *pb.Request {
	switch r.kind {
	case reqHello:
		return &pb.Request{Body: &pb.Request_Hello{Hello: &pb.Hello{}}}
	case reqSubmit:
		return &pb.Request{Body: &pb.Request_Submit{Submit: &pb.Submit{Submission: r.submission, Identity: r.identity, Signature: r.sig}}}
	case reqPurge:
		return &pb.Request{Body: &pb.Request_Purge{Purge: &pb.Purge{Identity: r.identity, Signature: r.sig}}}
	}
	return &pb.Request{}
}

// response is a decoded relay frame.
type response struct {
	code       Code
	retryAfter time.Duration
	nonce      []byte   // challenge
	receipt    *Receipt // accepted
	purged     *int     // purge
}

func encodeResponse(r response) *pb.Response {
	m := &pb.Response{Code: pb.Code(r.code)}
	m.RetryAfterMs = wire.RetryAfterMs(r.retryAfter)
	switch {
	case r.nonce != nil:
		m.Body = &pb.Response_Challenge{Challenge: &pb.Challenge{Nonce: r.nonce}}
	case r.receipt != nil:
		m.Body = &pb.Response_Accepted{Accepted: &pb.Accepted{Id: r.receipt.ID, Duplicate: r.receipt.Duplicate}}
	case r.purged != nil:
		m.Body = &pb.Response_Purged{Purged: &pb.Purged{Items: uint32(min(max(*r.purged, 0), 1<<31))}}
	}
	return m
}

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
	case *pb.Response_Accepted:
		id := body.Accepted.GetId()
		if !validItemID(id) {
			return response{}, fmt.Errorf("item id %q: %w", id, ErrProtocol)
		}
		r.receipt = &Receipt{ID: id, Duplicate: body.Accepted.GetDuplicate()}
	case *pb.Response_Purged:
		n := int(min(body.Purged.GetItems(), 1<<31))
		r.purged = &n
	}
	return r, nil
}

// Item ids are the relay's sequence numbers: 16 lower-case hex digits.
func itemID(seq uint64) string { return fmt.Sprintf("%016x", seq) }

func validItemID(s string) bool {
	if len(s) != 16 {
		return false
	}
	for _, c := range []byte(s) {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

func marshal(m proto.Message) []byte {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		panic("report: marshal " + fmt.Sprintf("%T", m) + ": " + err.Error()) // plain messages never fail
	}
	return b
}

// checkText checks free text: UTF-8, no control characters but newlines
// and tabs, at most max bytes.
func checkText(what, s string, max int) error {
	if len(s) > max {
		return fmt.Errorf("%s of %d bytes (cap %d): %w", what, len(s), max, ErrTooLarge)
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("%s is not UTF-8: %w", what, ErrMalformed)
	}
	for _, r := range s {
		if unicode.IsControl(r) && r != '\n' && r != '\t' && r != '\r' {
			return fmt.Errorf("%s contains control characters: %w", what, ErrMalformed)
		}
	}
	return nil
}

// checkMessageID allows the printable ASCII ids the messaging engine
// makes (32 hex digits), and little else.
func checkMessageID(id string) error {
	if id == "" || len(id) > MaxMessageIDLen {
		return fmt.Errorf("disclosed message id of %d bytes: %w", len(id), ErrMalformed)
	}
	for _, c := range []byte(id) {
		if c <= ' ' || c > '~' {
			return fmt.Errorf("disclosed message id %q: %w", id, ErrMalformed)
		}
	}
	return nil
}

func accountKey(a e2ee.AccountID) ([]byte, error) {
	k, err := a.SigningKey()
	if err != nil {
		return nil, fmt.Errorf("account id %q: %w", a, ErrMalformed)
	}
	return k, nil
}

func accountFromKey(k []byte) e2ee.AccountID { return e2ee.PublicIdentity{Sign: k}.AccountID() }

// validate checks a submission against every rule the relay applies
// (except who signed it).
func (s *Submission) validate() error {
	if !s.Kind.valid() {
		return fmt.Errorf("kind %d: %w", s.Kind, ErrMalformed)
	}
	if b, err := hex.DecodeString(s.ID); err != nil || len(b) != submissionIDSize {
		return fmt.Errorf("submission id %q: want %d hex digits: %w", s.ID, 2*submissionIDSize, ErrMalformed)
	}
	if s.CreatedAt.UnixMilli() <= 0 {
		return fmt.Errorf("no creation time: %w", ErrMalformed)
	}
	if err := checkText("text", s.Text, MaxTextLen); err != nil {
		return err
	}
	if s.Kind != KindReport {
		switch {
		case s.Reported != "", s.Reason != 0, len(s.Messages) > 0:
			return fmt.Errorf("%s with a reported account, reason or messages: %w", s.Kind, ErrMalformed)
		case s.Text == "":
			return fmt.Errorf("%s without text: %w", s.Kind, ErrMalformed)
		case len(s.Diagnostics) > MaxDiagnosticsSize:
			return fmt.Errorf("diagnostics of %d bytes (cap %d): %w", len(s.Diagnostics), MaxDiagnosticsSize, ErrTooLarge)
		case len(s.Diagnostics) > 0 && !isJSONObject(s.Diagnostics):
			return fmt.Errorf("diagnostics are not a JSON object: %w", ErrMalformed)
		}
		return nil
	}
	if _, err := accountKey(s.Reported); err != nil {
		return fmt.Errorf("reported account: %w", err)
	}
	if !s.Reason.valid() {
		return fmt.Errorf("reason %d: %w", s.Reason, ErrMalformed)
	}
	if len(s.Diagnostics) > 0 {
		return fmt.Errorf("report with diagnostics: %w", ErrMalformed)
	}
	if len(s.Messages) > MaxMessages {
		return fmt.Errorf("%d disclosed messages (cap %d): %w", len(s.Messages), MaxMessages, ErrTooLarge)
	}
	seen := make(map[string]bool, len(s.Messages))
	for _, m := range s.Messages {
		if err := checkMessageID(m.ID); err != nil {
			return err
		}
		if seen[m.ID] {
			return fmt.Errorf("message %s disclosed twice: %w", m.ID, ErrMalformed)
		}
		seen[m.ID] = true
		if _, err := accountKey(m.From); err != nil {
			return fmt.Errorf("disclosed message %s: sender: %w", m.ID, err)
		}
		if m.SentAt.UnixMilli() <= 0 {
			return fmt.Errorf("disclosed message %s without a time: %w", m.ID, ErrMalformed)
		}
		if err := checkText("disclosed message text", m.Text, MaxMessageTextLen); err != nil {
			return err
		}
	}
	return nil
}

// isJSONObject reports whether b is one valid JSON object.
func isJSONObject(b []byte) bool {
	t := bytes.TrimLeft(b, " \t\r\n")
	return len(t) > 0 && t[0] == '{' && json.Valid(b)
}

// encodeSubmission validates s and returns its wire encoding: the bytes
// the reporter signs.
func encodeSubmission(s Submission) ([]byte, error) {
	if err := s.validate(); err != nil {
		return nil, err
	}
	b := marshal(submissionToWire(s))
	if len(b) > MaxSubmissionSize {
		return nil, fmt.Errorf("submission of %d bytes (cap %d): disclose fewer messages: %w", len(b), MaxSubmissionSize, ErrTooLarge)
	}
	return b, nil
}

// submissionToWire converts s as it is, valid or not.
func submissionToWire(s Submission) *pb.Submission {
	id, _ := hex.DecodeString(s.ID)
	m := &pb.Submission{
		Kind:          pb.Kind(s.Kind),
		Id:            id,
		CreatedUnixMs: s.CreatedAt.UnixMilli(),
		Reason:        pb.Reason(s.Reason),
		Text:          s.Text,
		Diagnostics:   s.Diagnostics,
	}
	if s.Reported != "" {
		m.Reported, _ = accountKey(s.Reported)
	}
	for _, dm := range s.Messages {
		from, _ := accountKey(dm.From)
		m.Messages = append(m.Messages, &pb.DisclosedMessage{Id: dm.ID, From: from, SentAtUnixMs: dm.SentAt.UnixMilli(), Text: dm.Text})
	}
	return m
}

// decodeSubmission decodes and validates the signed bytes.
func decodeSubmission(b []byte) (Submission, error) {
	if len(b) > MaxSubmissionSize {
		return Submission{}, fmt.Errorf("submission of %d bytes: %w", len(b), ErrTooLarge)
	}
	var m pb.Submission
	if err := proto.Unmarshal(b, &m); err != nil {
		return Submission{}, fmt.Errorf("submission: %w", ErrMalformed)
	}
	if m.GetKind() < 0 || m.GetKind() > 255 || m.GetReason() < 0 || m.GetReason() > 255 {
		return Submission{}, fmt.Errorf("submission kind or reason: %w", ErrMalformed)
	}
	s := Submission{
		Kind:        Kind(m.GetKind()),
		ID:          hex.EncodeToString(m.GetId()),
		CreatedAt:   time.UnixMilli(m.GetCreatedUnixMs()),
		Reason:      Reason(m.GetReason()),
		Text:        m.GetText(),
		Diagnostics: m.GetDiagnostics(),
	}
	if len(m.GetReported()) > 0 {
		if len(m.GetReported()) != ed25519.PublicKeySize {
			return Submission{}, fmt.Errorf("reported account: %w", ErrMalformed)
		}
		s.Reported = accountFromKey(m.GetReported())
	}
	if len(m.GetMessages()) > MaxMessages {
		return Submission{}, fmt.Errorf("%d disclosed messages: %w", len(m.GetMessages()), ErrTooLarge)
	}
	for _, dm := range m.GetMessages() {
		if len(dm.GetFrom()) != ed25519.PublicKeySize {
			return Submission{}, fmt.Errorf("disclosed message sender: %w", ErrMalformed)
		}
		s.Messages = append(s.Messages, DisclosedMessage{
			ID: dm.GetId(), From: accountFromKey(dm.GetFrom()), SentAt: time.UnixMilli(dm.GetSentAtUnixMs()), Text: dm.GetText(),
		})
	}
	if len(s.Diagnostics) == 0 {
		s.Diagnostics = nil
	}
	if err := s.validate(); err != nil {
		return Submission{}, err
	}
	return s, nil
}

// authContext prefixes the message a reporter signs, so the signature
// can't be used anywhere else.
const authContext = "kinmesh/report/v1/submit"

// submitHash binds the signature to the identity and the submission:
// SHA-256(uvarint(len(identity)) || identity || submission).
func submitHash(identity, submission []byte) [sha256.Size]byte {
	h := sha256.New()
	var b [binary.MaxVarintLen64]byte
	h.Write(b[:binary.PutUvarint(b[:], uint64(len(identity)))])
	h.Write(identity)
	h.Write(submission)
	var out [sha256.Size]byte
	h.Sum(out[:0])
	return out
}

// authMessage is what the reporter signs with its identity key:
//
//	"kinmesh/report/v1/submit" || 0x00 || nonce (32)
//	|| uvarint(len(relay)) || relay peer id (binary) || submitHash (32)
func authMessage(nonce []byte, relay peer.ID, hash [sha256.Size]byte) []byte {
	b := make([]byte, 0, len(authContext)+1+len(nonce)+binary.MaxVarintLen64+len(relay)+sha256.Size)
	b = append(b, authContext...)
	b = append(b, 0)
	b = append(b, nonce...)
	b = binary.AppendUvarint(b, uint64(len(relay)))
	b = append(b, relay...)
	return append(b, hash[:]...)
}

// purgeContext prefixes the message an account signs to purge its items.
const purgeContext = "kinmesh/report/v1/purge"

// purgeMessage is what an account signs to purge its items:
//
//	"kinmesh/report/v1/purge" || 0x00 || nonce (32)
//	|| uvarint(len(relay)) || relay peer id
//	|| SHA-256(uvarint(len(identity)) || identity)
func purgeMessage(nonce []byte, relay peer.ID, identity []byte) []byte {
	hash := submitHash(identity, nil)
	b := make([]byte, 0, len(purgeContext)+1+len(nonce)+binary.MaxVarintLen64+len(relay)+sha256.Size)
	b = append(b, purgeContext...)
	b = append(b, 0)
	b = append(b, nonce...)
	b = binary.AppendUvarint(b, uint64(len(relay)))
	b = append(b, relay...)
	return append(b, hash[:]...)
}

// storedItem is the relay's record of an accepted submission.
type storedItem struct {
	submission []byte
	identity   []byte
	sig        []byte
	nonce      []byte
	received   time.Time
}

func (it *storedItem) encode() []byte {
	return marshal(&pb.StoredItem{
		Submission: it.submission, Identity: it.identity, Signature: it.sig, Nonce: it.nonce,
		ReceivedUnixMs: it.received.UnixMilli(),
	})
}

func decodeStoredItem(b []byte) (*storedItem, error) {
	var m pb.StoredItem
	if err := proto.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("stored item: %w", ErrMalformed)
	}
	if len(m.GetSubmission()) == 0 || len(m.GetIdentity()) == 0 || len(m.GetSignature()) != ed25519.SignatureSize || len(m.GetNonce()) != nonceSize {
		return nil, fmt.Errorf("stored item fields: %w", ErrMalformed)
	}
	return &storedItem{
		submission: m.GetSubmission(), identity: m.GetIdentity(), sig: m.GetSignature(), nonce: m.GetNonce(),
		received: time.UnixMilli(m.GetReceivedUnixMs()),
	}, nil
}

// item turns a stored record into what the operator reads.
func (it *storedItem) item(id string) (Item, error) {
	sub, err := decodeSubmission(it.submission)
	if err != nil {
		return Item{}, err
	}
	ident, err := e2ee.ParsePublicIdentity(it.identity)
	if err != nil {
		return Item{}, fmt.Errorf("stored identity: %w", ErrMalformed)
	}
	return Item{
		ID: id, Kind: sub.Kind, Submission: sub.ID, Reporter: ident.AccountID(),
		ReceivedAt: it.received, CreatedAt: sub.CreatedAt,
		Reported: sub.Reported, Reason: sub.Reason, Text: sub.Text, Messages: sub.Messages,
		Diagnostics: sub.Diagnostics,
	}, nil
}
