package mailbox

import (
	"crypto/ed25519"
	"encoding/binary"
	"fmt"
	"strconv"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/kinmesh/kinmesh/protocols/mailbox/pb"
	"github.com/kinmesh/kinmesh/protocols/wire"
)

// Native forms of the wire messages: pb types stop at this file.

type reqKind uint8

const (
	reqDeposit reqKind = iota + 1
	reqHello
	reqAuth
	reqFetch
	reqAck
	reqPurge
	reqPing
)

// request is a decoded, validated client frame.
type request struct {
	id   uint64
	kind reqKind

	mbox      [idRawSize]byte // deposit
	envelopes [][]byte        // deposit

	pub, sig []byte // auth

	after uint64 // fetch
	limit int    // fetch

	seqs []uint64 // ack
}

// decodeRequest decodes and validates one client frame. On failure it
// returns the code to answer with and the request id, if the frame had
// one. Per-envelope size checks are left to the deposit path, which
// answers them per item.
//
// Entry counts are checked on the wire before decoding: decoding gives
// every envelope a slice header (24 bytes, for 2 bytes of frame) and
// every seq 8 bytes (for 1), so a frame within its size cap but full of
// empty entries would take many times the memory reserved for it.
func decodeRequest(b []byte) (request, Code) {
	id, envelopes, seqs, ok := scanRequest(b)
	switch {
	case !ok:
		return request{}, CodeMalformed
	case id == 0:
		return request{}, CodeMalformed
	case envelopes > MaxBatchItems:
		return request{id: id, kind: reqDeposit}, CodeBatchTooLarge
	case seqs > MaxAckSeqs:
		return request{id: id, kind: reqAck}, CodeBatchTooLarge
	}
	if mbox, envs, ok := viewDeposit(b, envelopes); ok {
		return depositRequest(id, mbox, envs)
	}
	var m pb.Request
	if err := proto.Unmarshal(b, &m); err != nil {
		return request{}, CodeMalformed
	}
	r := request{id: m.GetId()}
	if r.id == 0 {
		return r, CodeMalformed
	}
	switch body := m.Body.(type) {
	case *pb.Request_Deposit:
		return depositRequest(r.id, body.Deposit.GetMailbox(), body.Deposit.GetEnvelopes())
	case *pb.Request_Hello:
		r.kind = reqHello
	case *pb.Request_Auth:
		r.kind = reqAuth
		if len(body.Auth.GetPublicKey()) != ed25519.PublicKeySize || len(body.Auth.GetSignature()) != ed25519.SignatureSize {
			return r, CodeMalformed
		}
		r.pub, r.sig = body.Auth.GetPublicKey(), body.Auth.GetSignature()
	case *pb.Request_Fetch:
		r.kind = reqFetch
		r.after = body.Fetch.GetAfter()
		r.limit = int(min(body.Fetch.GetLimit(), MaxPageItems))
		if r.limit == 0 {
			r.limit = MaxPageItems
		}
	case *pb.Request_Ack:
		r.kind = reqAck
		n := len(body.Ack.GetSeqs())
		if n == 0 {
			return r, CodeMalformed
		}
		if n > MaxAckSeqs {
			return r, CodeBatchTooLarge
		}
		r.seqs = body.Ack.GetSeqs()
	case *pb.Request_Purge:
		r.kind = reqPurge
	case *pb.Request_Ping:
		r.kind = reqPing
	default:
		return r, CodeMalformed
	}
	return r, CodeOK
}

// depositRequest validates a Deposit's fields.
func depositRequest(id uint64, mbox []byte, envs [][]byte) (request, Code) {
	r := request{id: id, kind: reqDeposit}
	if id == 0 || len(mbox) != idRawSize {
		return r, CodeMalformed
	}
	copy(r.mbox[:], mbox)
	if len(envs) == 0 {
		return r, CodeMalformed
	}
	if len(envs) > MaxBatchItems {
		return r, CodeBatchTooLarge
	}
	total := 0
	for _, e := range envs {
		if len(e) == 0 {
			return r, CodeMalformed
		}
		total += len(e)
	}
	if total > MaxBatchBytes {
		return r, CodeBatchTooLarge
	}
	r.envelopes = envs
	return r, CodeOK
}

// Field numbers scanRequest and viewDeposit look for (pb/mailbox.proto).
const (
	fieldRequestID      = 1 // Request.id
	fieldRequestDeposit = 2 // Request.deposit, the first of the body's fields
	fieldRequestAck     = 6 // Request.ack
	fieldRequestLast    = 8 // Request.ping, the last of the body's fields
	fieldMailbox        = 1 // Deposit.mailbox
	fieldEnvelopes      = 2 // Deposit.envelopes
	fieldSeqs           = 1 // Ack.seqs
)

// viewDeposit reads a deposit frame without copying its envelopes: they
// alias b, whose bytes stay reserved until the deposit is answered (see
// conn.readRequests) and which nothing keeps beyond that (push queues
// take copies, Service.notify). n is the envelope count scanRequest
// found. It takes only a frame whose body occurs once and is a Deposit,
// and whose known fields all have their declared wire types; for any
// other it reports false and the caller decodes with proto.Unmarshal, so
// both paths mean the same by construction (FuzzDecodeRequest compares
// them).
func viewDeposit(b []byte, n int) (mbox []byte, envs [][]byte, ok bool) {
	var body []byte
	bodies, plain := 0, true
	wellFormed := wire.EachField(b, func(num protowire.Number, typ protowire.Type, v []byte) bool {
		switch {
		case num == fieldRequestID:
			plain = typ == protowire.VarintType
		case num >= fieldRequestDeposit && num <= fieldRequestLast:
			bodies++
			body = v
			plain = num == fieldRequestDeposit && typ == protowire.BytesType
		}
		return plain
	})
	if !wellFormed || !plain || bodies != 1 {
		return nil, nil, false
	}
	envs = make([][]byte, 0, n)
	wellFormed = wire.EachField(body, func(num protowire.Number, typ protowire.Type, v []byte) bool {
		switch num {
		case fieldMailbox:
			mbox = v
		case fieldEnvelopes:
			envs = append(envs, v[:len(v):len(v)])
		default:
			return true
		}
		plain = typ == protowire.BytesType
		return plain
	})
	return mbox, envs, wellFormed && plain
}

// scanRequest walks a Request frame without decoding it and returns its
// id and how many envelopes and seqs it holds in all: protobuf merges a
// body that appears more than once, so the counts add up over every
// occurrence. ok is false when the frame is not well-formed protobuf.
func scanRequest(b []byte) (id uint64, envelopes, seqs int, ok bool) {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return 0, 0, 0, false
		}
		b = b[n:]
		switch {
		case num == fieldRequestID && typ == protowire.VarintType:
			id, n = protowire.ConsumeVarint(b)
		case (num == fieldRequestDeposit || num == fieldRequestAck) && typ == protowire.BytesType:
			var body []byte
			body, n = protowire.ConsumeBytes(b)
			if n < 0 {
				return 0, 0, 0, false
			}
			var c int
			if num == fieldRequestDeposit {
				c, ok = wire.CountRepeated(body, fieldEnvelopes, false)
				envelopes += c
			} else {
				c, ok = wire.CountRepeated(body, fieldSeqs, true)
				seqs += c
			}
			if !ok {
				return 0, 0, 0, false
			}
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return 0, 0, 0, false
		}
		b = b[n:]
	}
	return id, envelopes, seqs, true
}

// encodeRequest is the inverse of decodeRequest, for the client.
func encodeRequest(r request) *pb.Request {
	m := &pb.Request{Id: r.id}
	switch r.kind {
	case reqDeposit:
		m.Body = &pb.Request_Deposit{Deposit: &pb.Deposit{Mailbox: r.mbox[:], Envelopes: r.envelopes}}
	case reqHello:
		m.Body = &pb.Request_Hello{Hello: &pb.Hello{}}
	case reqAuth:
		m.Body = &pb.Request_Auth{Auth: &pb.Auth{PublicKey: r.pub, Signature: r.sig}}
	case reqFetch:
		m.Body = &pb.Request_Fetch{Fetch: &pb.Fetch{After: r.after, Limit: uint32(r.limit)}}
	case reqAck:
		m.Body = &pb.Request_Ack{Ack: &pb.Ack{Seqs: r.seqs}}
	case reqPurge:
		m.Body = &pb.Request_Purge{Purge: &pb.Purge{}}
	case reqPing:
		m.Body = &pb.Request_Ping{Ping: &pb.Ping{}}
	}
	return m
}

type respKind uint8

const (
	respError respKind = iota + 1
	respDeposit
	respChallenge
	respAuth
	respFetch
	respAck
	respPurge
	respPong
	respPush
	respMore
)

// response is a decoded, validated relay frame.
type response struct {
	id   uint64
	kind respKind

	code       Code          // error
	codes      []Code        // deposit, ack
	retryAfter time.Duration // error, deposit

	nonce     []byte // challenge
	relay     []byte // challenge
	relayTime time.Time

	items   []Item // fetch, push
	more    bool   // fetch
	deleted uint64 // purge
	after   uint64 // more
}

// decodeResponse decodes and validates one relay frame: what a client
// reads from a relay it does not trust to be well-behaved.
func decodeResponse(b []byte) (response, error) {
	var m pb.Response
	if err := proto.Unmarshal(b, &m); err != nil {
		return response{}, fmt.Errorf("decode response: %w", ErrProtocol)
	}
	r := response{id: m.GetId()}
	bad := func(what string) (response, error) {
		return response{}, fmt.Errorf("response %d: %s: %w", r.id, what, ErrProtocol)
	}
	switch body := m.Body.(type) {
	case *pb.Response_Error:
		r.kind = respError
		r.code = codeFromWire(body.Error.GetCode())
		r.retryAfter = wire.RetryAfter(body.Error.GetRetryAfterMs())
		if r.code == CodeOK {
			return bad("error with code ok")
		}
	case *pb.Response_Deposit:
		r.kind = respDeposit
		if len(body.Deposit.GetCodes()) > MaxBatchItems {
			return bad("too many codes")
		}
		r.codes = codesFromWire(body.Deposit.GetCodes())
		r.retryAfter = wire.RetryAfter(body.Deposit.GetRetryAfterMs())
	case *pb.Response_Challenge:
		r.kind = respChallenge
		c := body.Challenge
		if len(c.GetNonce()) != nonceSize || len(c.GetRelay()) == 0 || len(c.GetRelay()) > 128 {
			return bad("malformed challenge")
		}
		r.nonce, r.relay = c.GetNonce(), c.GetRelay()
		r.relayTime = time.UnixMilli(c.GetTimeUnixMs())
	case *pb.Response_Auth:
		r.kind = respAuth
	case *pb.Response_Fetch:
		r.kind = respFetch
		items, err := itemsFromWire(body.Fetch.GetItems())
		if err != nil {
			return bad(err.Error())
		}
		r.items, r.more = items, body.Fetch.GetMore()
	case *pb.Response_Ack:
		r.kind = respAck
		if len(body.Ack.GetCodes()) > MaxAckSeqs {
			return bad("too many codes")
		}
		r.codes = codesFromWire(body.Ack.GetCodes())
	case *pb.Response_Purge:
		r.kind = respPurge
		r.deleted = body.Purge.GetDeleted()
	case *pb.Response_Pong:
		r.kind = respPong
	case *pb.Response_Push:
		r.kind = respPush
		items, err := itemsFromWire(body.Push.GetItems())
		if err != nil || len(items) == 0 {
			return bad("malformed push")
		}
		r.items = items
	case *pb.Response_More:
		r.kind = respMore
		r.after = body.More.GetAfter()
	default:
		return bad("no body")
	}
	// Pushes answer no request; errors may refuse no particular one.
	if r.kind != respError && (r.kind == respPush || r.kind == respMore) != (r.id == 0) {
		return bad("request id")
	}
	return r, nil
}

func codesFromWire(cs []pb.Code) []Code {
	out := make([]Code, len(cs))
	for i, c := range cs {
		out[i] = codeFromWire(c)
	}
	return out
}

func codesToWire(cs []Code) []pb.Code {
	out := make([]pb.Code, len(cs))
	for i, c := range cs {
		out[i] = c.wire()
	}
	return out
}

func itemsFromWire(in []*pb.Item) ([]Item, error) {
	if len(in) > MaxPageItems {
		return nil, fmt.Errorf("%d items", len(in))
	}
	out := make([]Item, len(in))
	var last uint64
	for i, it := range in {
		if it.GetSeq() <= last {
			return nil, fmt.Errorf("items out of order")
		}
		if len(it.GetEnvelope()) == 0 || len(it.GetEnvelope()) > MaxEnvelopeSize {
			return nil, fmt.Errorf("item %d: envelope of %d bytes", it.GetSeq(), len(it.GetEnvelope()))
		}
		last = it.GetSeq()
		out[i] = Item{Seq: it.GetSeq(), Deposited: time.UnixMilli(it.GetDepositedUnixMs()), Envelope: it.GetEnvelope()}
	}
	return out, nil
}

func itemToWire(it storedItem) *pb.Item {
	return &pb.Item{Seq: it.seq, DepositedUnixMs: it.deposited / int64(time.Millisecond), Envelope: it.envelope}
}

// storedItem is an item as the relay holds it.
type storedItem struct {
	seq       uint64
	deposited int64 // Unix nanoseconds, the service clock
	envelope  []byte
}

// Stored values: be64(deposit time, Unix ns) || envelope. The store seals
// them (and binds them to their key).
const valueHeader = 8

// valueHead is the header of the values deposited at deposited: the
// store seals it and the envelope behind it without joining them
// (storage.Batch.PutTTLGroupedAfter).
func valueHead(deposited int64) []byte {
	return binary.BigEndian.AppendUint64(make([]byte, 0, valueHeader), uint64(deposited))
}

func decodeValue(v []byte) (deposited int64, env []byte, ok bool) {
	if len(v) <= valueHeader || len(v) > valueHeader+MaxEnvelopeSize {
		return 0, nil, false
	}
	return int64(binary.BigEndian.Uint64(v)), v[valueHeader:], true
}

// Store keys, under the "mailbox" namespace: P = Opaque(raw mailbox id),
// 32 characters that reveal nothing.
//
//	P "/" %016x seq   an item (List over P "/" returns seq order)
//	P ".m"            the mailbox's Meta
//
// itemGroup is the storage group of a mailbox's items (PutTTLGrouped):
// they expire in seq order, as they were deposited.
func itemGroup(prefix string) string { return prefix + "/" }

func itemKey(prefix string, seq uint64) string {
	b := make([]byte, 0, len(prefix)+17)
	b = append(b, prefix...)
	b = append(b, '/')
	return string(appendSeqHex(b, seq))
}

func appendSeqHex(b []byte, seq uint64) []byte {
	const digits = "0123456789abcdef"
	for shift := 60; shift >= 0; shift -= 4 {
		b = append(b, digits[(seq>>uint(shift))&0xf])
	}
	return b
}

// metaKey is the key of a mailbox's record, alone in its storage group
// (metaGroup), whose index entries go each time it is written.
func metaKey(prefix string) string { return metaGroup(prefix) + "m" }

func metaGroup(prefix string) string { return prefix + "." }

func seqFromKey(key string) (uint64, bool) {
	if len(key) < 17 || key[len(key)-17] != '/' {
		return 0, false
	}
	s, err := strconv.ParseUint(key[len(key)-16:], 16, 64)
	return s, err == nil
}

// meta is a mailbox's record: the next seq and the quota usage, as
// buckets of deposit time (so expiry needs no per-item bookkeeping).
type meta struct {
	next       uint64
	expires    int64 // Unix seconds
	registered int64 // Unix seconds: the owner's registration lasts until then (0: none)
	buckets    []bucket
}

type bucket struct {
	start, end int64 // Unix seconds, [start, end)
	count      uint32
	bytes      uint64
}

const maxBuckets = 1024

func (m *meta) clone() *meta {
	c := *m
	c.buckets = append([]bucket(nil), m.buckets...)
	return &c
}

func encodeMeta(m *meta) []byte {
	p := &pb.Meta{NextSeq: m.next, ExpiresUnix: m.expires, RegisteredUntilUnix: m.registered, Buckets: make([]*pb.Bucket, len(m.buckets))}
	for i, b := range m.buckets {
		p.Buckets[i] = &pb.Bucket{Start: b.start, End: b.end, Count: b.count, Bytes: b.bytes}
	}
	out, _ := proto.Marshal(p)
	return out
}

func decodeMeta(b []byte) (*meta, error) {
	var p pb.Meta
	if err := proto.Unmarshal(b, &p); err != nil {
		return nil, fmt.Errorf("decode mailbox record: %w", err)
	}
	if p.GetNextSeq() == 0 || len(p.GetBuckets()) > maxBuckets {
		return nil, fmt.Errorf("mailbox record: next seq %d, %d buckets", p.GetNextSeq(), len(p.GetBuckets()))
	}
	m := &meta{next: p.GetNextSeq(), expires: p.GetExpiresUnix(), registered: p.GetRegisteredUntilUnix(), buckets: make([]bucket, len(p.GetBuckets()))}
	for i, pb := range p.GetBuckets() {
		if pb.GetEnd() <= pb.GetStart() {
			return nil, fmt.Errorf("mailbox record: bucket [%d, %d)", pb.GetStart(), pb.GetEnd())
		}
		m.buckets[i] = bucket{start: pb.GetStart(), end: pb.GetEnd(), count: pb.GetCount(), bytes: pb.GetBytes()}
	}
	return m, nil
}

// prune drops the buckets whose every item has expired at now (Unix
// seconds) and returns what they still counted: items that expired
// undelivered.
func (m *meta) prune(now int64, maxAge int64) (items int, bytes int64) {
	kept := m.buckets[:0]
	for _, b := range m.buckets {
		if b.end+maxAge <= now {
			items += int(b.count)
			bytes += int64(b.bytes)
			continue
		}
		if b.count > 0 {
			kept = append(kept, b)
		}
	}
	clear(m.buckets[len(kept):])
	m.buckets = kept
	return items, bytes
}

func (m *meta) usage() (items int, bytes int64) {
	for _, b := range m.buckets {
		items += int(b.count)
		bytes += int64(b.bytes)
	}
	return items, bytes
}

// add counts an envelope of size bytes deposited at t (Unix seconds) in
// the bucket holding t, or a new one of width seconds.
func (m *meta) add(t int64, size int, width int64) {
	for i := len(m.buckets) - 1; i >= 0; i-- {
		if b := &m.buckets[i]; b.start <= t && t < b.end {
			b.count++
			b.bytes += uint64(size)
			return
		}
	}
	start := t - t%width
	if t < 0 && t%width != 0 {
		start -= width
	}
	nb := bucket{start: start, end: start + width, count: 1, bytes: uint64(size)}
	i := len(m.buckets)
	for i > 0 && m.buckets[i-1].start > start {
		i--
	}
	m.buckets = append(m.buckets, bucket{})
	copy(m.buckets[i+1:], m.buckets[i:])
	m.buckets[i] = nb
	if len(m.buckets) > maxBuckets {
		// Merge the two oldest, so the record stays small whatever the
		// clock does; usage only ever errs on the high side.
		a, b := m.buckets[0], m.buckets[1]
		m.buckets[1] = bucket{start: min(a.start, b.start), end: max(a.end, b.end), count: a.count + b.count, bytes: a.bytes + b.bytes}
		m.buckets = m.buckets[1:]
	}
}

// remove uncounts an acked envelope deposited at t.
func (m *meta) remove(t int64, size int) {
	for i := len(m.buckets) - 1; i >= 0; i-- {
		if b := &m.buckets[i]; b.start <= t && t < b.end {
			if b.count > 0 {
				b.count--
			}
			b.bytes -= min(b.bytes, uint64(size))
			return
		}
	}
}
