package blobs

import (
	"crypto/ed25519"
	"crypto/sha256"
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/kinmesh/kinmesh/protocols/blobs/pb"
	"github.com/kinmesh/kinmesh/protocols/wire"
)

// Native forms of the wire messages and stored records: pb types stop at
// this file.

type reqKind uint8

const (
	reqPut reqKind = iota + 1
	reqGet
	reqDelete
	reqHas
)

func (k reqKind) String() string {
	switch k {
	case reqPut:
		return "put"
	case reqGet:
		return "get"
	case reqDelete:
		return "delete"
	case reqHas:
		return "has"
	}
	return "unknown"
}

// request is a decoded, validated first frame.
type request struct {
	kind      reqKind
	id        BlobID              // put, get, delete
	hashes    [][sha256.Size]byte // put
	deleteKey ed25519.PublicKey   // put
	from      uint32              // get
	sig       []byte              // delete
	ids       []BlobID            // has
}

// decodeRequest decodes and validates a first frame; on failure it returns
// the code to answer with.
func decodeRequest(b []byte) (request, Code) {
	var m pb.Request
	if err := proto.Unmarshal(b, &m); err != nil {
		return request{}, CodeMalformed
	}
	var r request
	id := func(b []byte) bool {
		if len(b) != len(r.id) {
			return false
		}
		copy(r.id[:], b)
		return true
	}
	switch body := m.Body.(type) {
	case *pb.Request_Put:
		r.kind = reqPut
		p := body.Put
		if !id(p.GetId()) || len(p.GetDeleteKey()) != ed25519.PublicKeySize || len(p.GetChunkHashes()) == 0 {
			return r, CodeMalformed
		}
		if len(p.GetChunkHashes()) > MaxChunks {
			return r, CodeTooLarge
		}
		hs, ok := hashesFromWire(p.GetChunkHashes())
		if !ok || ComputeID(hs) != r.id {
			return r, CodeMalformed
		}
		r.hashes, r.deleteKey = hs, ed25519.PublicKey(p.GetDeleteKey())
	case *pb.Request_Get:
		r.kind = reqGet
		if !id(body.Get.GetId()) || body.Get.GetFrom() >= MaxChunks {
			return r, CodeMalformed
		}
		r.from = body.Get.GetFrom()
	case *pb.Request_Delete:
		r.kind = reqDelete
		if !id(body.Delete.GetId()) || len(body.Delete.GetSignature()) != ed25519.SignatureSize {
			return r, CodeMalformed
		}
		r.sig = body.Delete.GetSignature()
	case *pb.Request_Has:
		r.kind = reqHas
		ids := body.Has.GetIds()
		if len(ids) == 0 || len(ids) > MaxHasIDs {
			return r, CodeMalformed
		}
		r.ids = make([]BlobID, len(ids))
		for i, b := range ids {
			if len(b) != len(BlobID{}) {
				return r, CodeMalformed
			}
			copy(r.ids[i][:], b)
		}
	default:
		return r, CodeMalformed
	}
	return r, CodeOK
}

func hashesFromWire(ws [][]byte) ([][sha256.Size]byte, bool) {
	out := make([][sha256.Size]byte, len(ws))
	for i, w := range ws {
		if len(w) != sha256.Size {
			return nil, false
		}
		copy(out[i][:], w)
	}
	return out, true
}

func hashesToWire(hs [][sha256.Size]byte) [][]byte {
	out := make([][]byte, len(hs))
	for i := range hs {
		out[i] = hs[i][:]
	}
	return out
}

// encodeRequest is the inverse of decodeRequest, for the client.
func encodeRequest(r request) *pb.Request {
	switch r.kind {
	case reqPut:
		return &pb.Request{Body: &pb.Request_Put{Put: &pb.Put{Id: r.id[:], ChunkHashes: hashesToWire(r.hashes), DeleteKey: r.deleteKey}}}
	case reqGet:
		return &pb.Request{Body: &pb.Request_Get{Get: &pb.Get{Id: r.id[:], From: r.from}}}
	case reqDelete:
		return &pb.Request{Body: &pb.Request_Delete{Delete: &pb.Delete{Id: r.id[:], Signature: r.sig}}}
	case reqHas:
		ids := make([][]byte, len(r.ids))
		for i := range r.ids {
			ids[i] = r.ids[i][:]
		}
		return &pb.Request{Body: &pb.Request_Has{Has: &pb.Has{Ids: ids}}}
	}
	return &pb.Request{}
}

// response is a decoded relay frame (every frame but chunks).
type response struct {
	code       Code
	retryAfter time.Duration
	hashes     [][sha256.Size]byte // get
	present    []bool              // has
	usage      *Usage              // put
}

func encodeResponse(r response) *pb.Response {
	m := &pb.Response{Code: pb.Code(r.code), Present: r.present}
	m.RetryAfterMs = uint64(wire.RetryAfterMs(r.retryAfter))
	if r.hashes != nil {
		m.ChunkHashes = hashesToWire(r.hashes)
	}
	if r.usage != nil {
		m.Usage = &pb.Usage{Bytes: r.usage.Bytes, Blobs: r.usage.Blobs}
	}
	return m
}

func decodeResponse(b []byte) (response, error) {
	var m pb.Response
	if err := proto.Unmarshal(b, &m); err != nil {
		return response{}, fmt.Errorf("decode response: %w", ErrProtocol)
	}
	r := response{code: codeFromWire(m.GetCode()), present: m.GetPresent()}
	r.retryAfter = wire.RetryAfter(m.GetRetryAfterMs())
	if len(m.GetChunkHashes()) > 0 {
		if len(m.GetChunkHashes()) > MaxChunks {
			return response{}, fmt.Errorf("%d chunk hashes: %w", len(m.GetChunkHashes()), ErrProtocol)
		}
		hs, ok := hashesFromWire(m.GetChunkHashes())
		if !ok {
			return response{}, fmt.Errorf("chunk hash size: %w", ErrProtocol)
		}
		r.hashes = hs
	}
	if len(r.present) > MaxHasIDs {
		return response{}, fmt.Errorf("%d answers: %w", len(r.present), ErrProtocol)
	}
	if u := m.GetUsage(); u != nil {
		r.usage = &Usage{Bytes: u.GetBytes(), Blobs: u.GetBlobs()}
	}
	return r, nil
}

func encodeChunk(i int, data []byte) *pb.Chunk { return &pb.Chunk{Index: uint32(i), Data: data} }

// decodeChunk decodes a chunk frame and checks it is chunk want.
func decodeChunk(b []byte, want int) ([]byte, Code) {
	var c pb.Chunk
	if err := proto.Unmarshal(b, &c); err != nil {
		return nil, CodeMalformed
	}
	if int(c.GetIndex()) != want || len(c.GetData()) != ChunkSize {
		return nil, CodeMalformed
	}
	return c.GetData(), CodeOK
}

// meta is the relay's record of one blob.
type meta struct {
	complete  bool
	hashes    [][sha256.Size]byte
	deleteKey ed25519.PublicKey
	uploader  string // Opaque(uploader peer id)
	created   time.Time
}

func (m meta) size() uint64 { return uint64(len(m.hashes)) * ChunkSize }

func (m meta) encode() []byte {
	b, err := proto.Marshal(&pb.Meta{
		Complete:    m.complete,
		ChunkHashes: hashesToWire(m.hashes),
		DeleteKey:   m.deleteKey,
		Uploader:    m.uploader,
		CreatedUnix: m.created.Unix(),
	})
	if err != nil {
		panic("blobs: marshal meta: " + err.Error())
	}
	return b
}

func decodeMeta(b []byte) (meta, error) {
	var pm pb.Meta
	if err := proto.Unmarshal(b, &pm); err != nil {
		return meta{}, fmt.Errorf("blob record: %w", ErrMalformed)
	}
	hs, ok := hashesFromWire(pm.GetChunkHashes())
	if !ok || len(hs) == 0 || len(hs) > MaxChunks || len(pm.GetDeleteKey()) != ed25519.PublicKeySize {
		return meta{}, fmt.Errorf("blob record: %w", ErrMalformed)
	}
	return meta{
		complete:  pm.GetComplete(),
		hashes:    hs,
		deleteKey: ed25519.PublicKey(pm.GetDeleteKey()),
		uploader:  pm.GetUploader(),
		created:   time.Unix(pm.GetCreatedUnix(), 0),
	}, nil
}

func encodeUsage(u Usage) []byte {
	b, err := proto.Marshal(&pb.Usage{Bytes: u.Bytes, Blobs: u.Blobs})
	if err != nil {
		panic("blobs: marshal usage: " + err.Error())
	}
	return b
}

func decodeUsage(b []byte) (Usage, error) {
	var pu pb.Usage
	if err := proto.Unmarshal(b, &pu); err != nil {
		return Usage{}, fmt.Errorf("usage record: %w", ErrMalformed)
	}
	return Usage{Bytes: pu.GetBytes(), Blobs: pu.GetBlobs()}, nil
}
