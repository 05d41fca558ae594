package moments

import (
	"crypto/ed25519"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/kinmesh/kinmesh/protocols/blobs"
	"github.com/kinmesh/kinmesh/protocols/moments/pb"
	"github.com/kinmesh/kinmesh/protocols/wire"
)

// Native forms of the relay protocol's frames: pb types stop at this file
// (and at the records in store.go).

type reqKind uint8

const (
	reqRegister reqKind = iota + 1
	reqKeep
	reqBackfill
	reqPurge
)

func (k reqKind) String() string {
	switch k {
	case reqRegister:
		return "register"
	case reqKeep:
		return "keep"
	case reqBackfill:
		return "backfill"
	case reqPurge:
		return "purge"
	}
	return "unknown"
}

// request is a decoded, shape-checked client frame.
type request struct {
	kind     reqKind
	owner    ed25519.PublicKey // register, purge
	topic    string            // register, keep, backfill
	audience ed25519.PublicKey // register
	time     time.Time         // register, backfill, purge
	sig      []byte            // register, backfill, purge
	audSig   []byte            // register: the audience key's signature
	frames   [][]byte          // keep
	after    uint64            // backfill
	limit    int               // backfill

	mediaAfter *blobs.BlobID  // purge: the page starts after it
	confirmed  []blobs.BlobID // purge: media the owner deleted
}

// decodeRequest decodes and shape-checks one client frame. Entry counts
// are checked on the wire first (wire.CountRepeated): decoding gives every
// frame of a Keep a slice header (24 bytes for 2 bytes of request), so a
// request within its size cap but full of empty frames would take many
// times the memory reserved for it.
func decodeRequest(b []byte) (request, Code) {
	frames, confirmed, ok := scanRequest(b)
	switch {
	case !ok:
		return request{}, CodeMalformed
	case frames > MaxKeepFrames:
		return request{kind: reqKeep}, CodeTooLarge
	case confirmed > MaxPurgeMedia:
		return request{kind: reqPurge}, CodeTooLarge
	}
	var m pb.Request
	if err := proto.Unmarshal(b, &m); err != nil {
		return request{}, CodeMalformed
	}
	var r request
	key := func(b []byte) (ed25519.PublicKey, bool) {
		return ed25519.PublicKey(b), len(b) == ed25519.PublicKeySize
	}
	ok = false
	switch body := m.Body.(type) {
	case *pb.Request_Register:
		g := body.Register
		r.kind, r.topic, r.time, r.sig, r.audSig = reqRegister, g.GetTopic(), time.UnixMilli(g.GetTimeMs()), g.GetSignature(), g.GetAudienceSignature()
		var ok2 bool
		r.owner, ok = key(g.GetOwnerKey())
		r.audience, ok2 = key(g.GetAudienceKey())
		ok = ok && ok2 && validTopic(r.topic) && len(r.sig) == ed25519.SignatureSize
	case *pb.Request_Keep:
		k := body.Keep
		r.kind, r.topic, r.frames = reqKeep, k.GetTopic(), k.GetFrames()
		if len(r.frames) > MaxKeepFrames {
			return r, CodeTooLarge
		}
		ok = validTopic(r.topic) && len(r.frames) > 0
	case *pb.Request_Backfill:
		f := body.Backfill
		r.kind, r.topic, r.after, r.time, r.sig = reqBackfill, f.GetTopic(), f.GetAfter(), time.UnixMilli(f.GetTimeMs()), f.GetSignature()
		r.limit = int(min(f.GetLimit(), MaxPageItems))
		if r.limit == 0 {
			r.limit = MaxPageItems
		}
		ok = validTopic(r.topic) && len(r.sig) == ed25519.SignatureSize
	case *pb.Request_Purge:
		p := body.Purge
		r.kind, r.time, r.sig = reqPurge, time.UnixMilli(p.GetTimeMs()), p.GetSignature()
		r.owner, ok = key(p.GetOwnerKey())
		ok = ok && len(r.sig) == ed25519.SignatureSize
		if a := p.GetMediaAfter(); len(a) > 0 {
			id, err := blobs.BlobIDFromBytes(a)
			ok = ok && err == nil
			r.mediaAfter = &id
		}
		for _, c := range p.GetConfirmed() {
			id, err := blobs.BlobIDFromBytes(c)
			ok = ok && err == nil
			r.confirmed = append(r.confirmed, id)
		}
	}
	if !ok {
		return r, CodeMalformed
	}
	return r, CodeOK
}

// Field numbers the wire scans look for (pb/moments.proto).
const (
	fieldRequestKeep  = 2 // Request.keep
	fieldKeepFrames   = 2 // Keep.frames
	fieldRequestPurge = 4 // Request.purge
	fieldPurgeConfirm = 5 // Purge.confirmed
	fieldRespCodes    = 3 // Response.codes
	fieldRespItems    = 4 // Response.items
	fieldRespMedia    = 6 // Response.media
	fieldFrameMedia   = 8 // FrameBody.media
	fieldFrameProofs  = 9 // FrameBody.media_proofs
	maxResponseMedia  = 1 << 15
)

// scanRequest counts the frames and confirmed media ids of a Request
// without decoding it, over every Keep and Purge body it holds (protobuf
// merges repeated bodies). ok is false when b is not well-formed
// protobuf.
func scanRequest(b []byte) (frames, confirmed int, ok bool) {
	ok = true
	count := func(body, num protowire.Number, total *int) bool {
		return wire.EachBytes(b, body, func(m []byte) bool {
			var n int
			n, ok = wire.CountRepeated(m, num, false)
			*total += n
			return ok
		}) && ok
	}
	ok = count(fieldRequestKeep, fieldKeepFrames, &frames) && count(fieldRequestPurge, fieldPurgeConfirm, &confirmed)
	return frames, confirmed, ok
}

func encodeRequest(r request) *pb.Request {
	switch r.kind {
	case reqRegister:
		return &pb.Request{Body: &pb.Request_Register{Register: &pb.Register{
			OwnerKey: r.owner, Topic: r.topic, AudienceKey: r.audience, TimeMs: r.time.UnixMilli(), Signature: r.sig, AudienceSignature: r.audSig,
		}}}
	case reqKeep:
		return &pb.Request{Body: &pb.Request_Keep{Keep: &pb.Keep{Topic: r.topic, Frames: r.frames}}}
	case reqBackfill:
		return &pb.Request{Body: &pb.Request_Backfill{Backfill: &pb.Backfill{
			Topic: r.topic, After: r.after, Limit: uint32(r.limit), TimeMs: r.time.UnixMilli(), Signature: r.sig,
		}}}
	case reqPurge:
		p := &pb.Purge{OwnerKey: r.owner, TimeMs: r.time.UnixMilli(), Signature: r.sig}
		if r.mediaAfter != nil {
			p.MediaAfter = r.mediaAfter[:]
		}
		for _, id := range r.confirmed {
			p.Confirmed = append(p.Confirmed, id[:])
		}
		return &pb.Request{Body: &pb.Request_Purge{Purge: p}}
	}
	return &pb.Request{}
}

// keptItem is one frame a relay keeps, with its place in the feed.
type keptItem struct {
	seq   uint64
	frame []byte
}

type response struct {
	code       Code
	retryAfter time.Duration
	codes      []Code         // keep
	items      []keptItem     // backfill
	more       bool           // backfill, purge
	media      []blobs.BlobID // purge: a page
	deleted    int            // purge
}

func encodeResponse(r response) *pb.Response {
	m := &pb.Response{Code: pb.Code(r.code), More: r.more, Deleted: uint32(r.deleted)}
	m.RetryAfterMs = uint64(wire.RetryAfterMs(r.retryAfter))
	for _, c := range r.codes {
		m.Codes = append(m.Codes, pb.Code(c))
	}
	for _, it := range r.items {
		m.Items = append(m.Items, &pb.Item{Seq: it.seq, Frame: it.frame})
	}
	for _, id := range r.media {
		m.Media = append(m.Media, id[:])
	}
	return m
}

// decodeResponse decodes and checks a relay's answer: what a client reads
// from a relay it does not trust to be well-behaved. Entry counts are
// checked on the wire first, as in decodeRequest: a page of empty items
// would otherwise become a message per 2 bytes.
func decodeResponse(b []byte) (response, error) {
	for _, c := range []struct {
		num     protowire.Number
		varints bool
		max     int
	}{
		{fieldRespCodes, true, MaxKeepFrames},
		{fieldRespItems, false, MaxPageItems},
		{fieldRespMedia, false, maxResponseMedia},
	} {
		n, ok := wire.CountRepeated(b, c.num, c.varints)
		if !ok {
			return response{}, fmt.Errorf("decode response: %w", ErrProtocol)
		}
		if n > c.max {
			return response{}, fmt.Errorf("response of %d entries of field %d (at most %d): %w", n, c.num, c.max, ErrProtocol)
		}
	}
	var m pb.Response
	if err := proto.Unmarshal(b, &m); err != nil {
		return response{}, fmt.Errorf("decode response: %w", ErrProtocol)
	}
	r := response{code: codeFromWire(m.GetCode()), more: m.GetMore(), deleted: int(m.GetDeleted())}
	r.retryAfter = wire.RetryAfter(m.GetRetryAfterMs())
	if len(m.GetCodes()) > MaxKeepFrames || len(m.GetItems()) > MaxPageItems {
		return response{}, fmt.Errorf("response too long: %w", ErrProtocol)
	}
	for _, c := range m.GetCodes() {
		r.codes = append(r.codes, codeFromWire(c))
	}
	for _, it := range m.GetItems() {
		if len(it.GetFrame()) == 0 || len(it.GetFrame()) > MaxFrameSize {
			return response{}, fmt.Errorf("item of %d bytes: %w", len(it.GetFrame()), ErrProtocol)
		}
		r.items = append(r.items, keptItem{seq: it.GetSeq(), frame: it.GetFrame()})
	}
	for _, id := range m.GetMedia() {
		bid, err := blobs.BlobIDFromBytes(id)
		if err != nil {
			return response{}, fmt.Errorf("media id: %w", ErrProtocol)
		}
		r.media = append(r.media, bid)
	}
	return r, nil
}

// appendField appends a length-prefixed field.
func appendField(b []byte, f []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(f)))
	return append(b, f...)
}

// registerMessage is what the owner key and the topic's audience key
// each sign to register a topic:
//
//	"kinmesh/moments/register/v1" || 0x00 || f(relay) || owner (32) || f(topic) || audience (32) || i64be(time ms)
//
// where f(x) is uvarint(len(x)) || x.
func registerMessage(relay peer.ID, owner ed25519.PublicKey, topic string, audience ed25519.PublicKey, t time.Time) []byte {
	m := append([]byte(registerLabel), 0)
	m = appendField(m, []byte(relay))
	m = append(m, owner...)
	m = appendField(m, []byte(topic))
	m = append(m, audience...)
	return binary.BigEndian.AppendUint64(m, uint64(t.UnixMilli()))
}

// backfillMessage is what the audience key signs to read a topic:
//
//	"kinmesh/moments/backfill/v1" || 0x00 || f(relay) || f(requester) || f(topic) || u64be(after) || i64be(time ms)
func backfillMessage(relay, requester peer.ID, topic string, after uint64, t time.Time) []byte {
	m := append([]byte(backfillLabel), 0)
	m = appendField(m, []byte(relay))
	m = appendField(m, []byte(requester))
	m = appendField(m, []byte(topic))
	m = binary.BigEndian.AppendUint64(m, after)
	return binary.BigEndian.AppendUint64(m, uint64(t.UnixMilli()))
}

// purgeMessage is what the owner key signs to purge its feed:
//
//	"kinmesh/moments/purge/v1" || 0x00 || f(relay) || f(requester) || owner (32) || i64be(time ms)
func purgeMessage(relay, requester peer.ID, owner ed25519.PublicKey, t time.Time) []byte {
	m := append([]byte(purgeLabel), 0)
	m = appendField(m, []byte(relay))
	m = appendField(m, []byte(requester))
	m = append(m, owner...)
	return binary.BigEndian.AppendUint64(m, uint64(t.UnixMilli()))
}
