package message

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/kinmesh/kinmesh/protocols/message/pb"
	"github.com/kinmesh/kinmesh/protocols/wire"
)

// The device's side of a Deliver frame. The frame is read in three steps,
// each bounded before it allocates:
//
//  1. the uvarint length prefix: over maxDirectFrame, the frame is refused
//     unread; otherwise the handler reserves that many bytes and reads
//     them (readFrame);
//  2. the frame's fields are walked without decoding (scanDeliver): the
//     request id, and how many envelopes of how many bytes it holds;
//  3. only a frame of at most maxDirectBatch envelopes is decoded
//     (proto.Unmarshal copies each envelope out of the frame: the handler
//     reserves those bytes too first).
//
// Decoding before counting let 4 MiB of empty envelopes (2 bytes each on
// the wire) become 2 million slice headers, 50–100 MiB, for a frame
// refused anyway.

// maxRefusedAnswer is the most envelopes a refused frame (over
// maxDirectBatch) is answered for, one TOO_LARGE each; one with more
// resets the stream: its answer would not fit maxAckFrame.
const maxRefusedAnswer = 1024

// errTooManyEnvelopes: a Deliver frame holds more than maxDirectBatch
// envelopes; it was counted, not decoded.
var errTooManyEnvelopes = errors.New("message: more envelopes than a Deliver frame may hold")

// deliverShape is what a Deliver frame's bytes hold, read without
// decoding them.
type deliverShape struct {
	requestID uint64
	envelopes int // how many
	bytes     int // their bytes in all
	other     int // bytes of the other fields proto.Unmarshal copies (stream)
}

// scanDeliver walks the fields of an encoded Deliver without allocating.
// It accepts exactly the bytes proto.Unmarshal accepts, and counts the
// envelopes proto.Unmarshal would decode (FuzzDeliverFrame holds it to
// both): unknown fields, and known ones of another wire type, are
// skipped, and the last request_id wins.
func scanDeliver(b []byte) (deliverShape, error) {
	var f deliverShape
	for len(b) > 0 {
		// The tag as proto.Unmarshal reads it: protowire.ConsumeTag lets
		// field numbers up to 2^31-1 through, proto.Unmarshal only valid
		// ones (up to 2^29-1).
		tag, n := protowire.ConsumeVarint(b)
		if n < 0 {
			return f, fmt.Errorf("deliver frame: tag: %w", protowire.ParseError(n))
		}
		b = b[n:]
		if tag>>3 < uint64(protowire.MinValidNumber) || tag>>3 > uint64(protowire.MaxValidNumber) {
			return f, fmt.Errorf("deliver frame: field number %d out of range", tag>>3)
		}
		num, typ := protowire.Number(tag>>3), protowire.Type(tag&7)
		switch {
		case num == 1 && typ == protowire.VarintType:
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return f, fmt.Errorf("deliver frame: request id: %w", protowire.ParseError(n))
			}
			f.requestID, b = v, b[n:]
		case num == 2 && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return f, fmt.Errorf("deliver frame: envelope: %w", protowire.ParseError(n))
			}
			f.envelopes++
			f.bytes += len(v)
			b = b[n:]
		case num == 4 && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return f, fmt.Errorf("deliver frame: stream: %w", protowire.ParseError(n))
			}
			f.other += len(v)
			b = b[n:]
		case typ == protowire.EndGroupType:
			return f, fmt.Errorf("deliver frame: end of a group never started")
		default:
			n := protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return f, fmt.Errorf("deliver frame: field %d: %w", num, protowire.ParseError(n))
			}
			b = b[n:]
		}
	}
	return f, nil
}

// decodedSize is the memory proto.Unmarshal takes beside the frame's
// bytes for a Deliver of that shape: a copy of every envelope, and the
// slice of them.
func (f deliverShape) decodedSize() int { return f.bytes + f.other + 24*f.envelopes }

// decodeDeliver decodes the bytes of a Deliver frame. It counts the
// envelopes first: a frame with more than maxDirectBatch is not decoded,
// and decodeDeliver returns its shape and errTooManyEnvelopes. Otherwise
// reserve is asked for the memory decoding takes (decodedSize) before
// proto.Unmarshal runs; its error is returned as it is.
func decodeDeliver(b []byte, reserve func(int) error) (*pb.Deliver, deliverShape, error) {
	f, err := scanDeliver(b)
	if err != nil {
		return nil, f, fmt.Errorf("%w: %w", wire.ErrMalformed, err)
	}
	if f.envelopes > maxDirectBatch {
		return nil, f, errTooManyEnvelopes
	}
	if err := reserve(f.decodedSize()); err != nil {
		return nil, f, err
	}
	var req pb.Deliver
	if err := proto.Unmarshal(b, &req); err != nil {
		return nil, f, fmt.Errorf("deliver frame: %w", wire.ErrMalformed)
	}
	return &req, f, nil
}

// readFrame reads one length-prefixed frame of at most max bytes from br.
// Once the length prefix is read, and before anything is allocated for
// the frame, reserve is asked for as many bytes as it announces.
func readFrame(br *bufio.Reader, max int, reserve func(int) error) ([]byte, error) {
	n, err := binary.ReadUvarint(br)
	if err != nil {
		return nil, fmt.Errorf("read frame length: %w", err)
	}
	if n > uint64(max) {
		return nil, fmt.Errorf("frame of %d bytes (cap %d): %w", n, max, wire.ErrTooLarge)
	}
	if err := reserve(int(n)); err != nil {
		return nil, err
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(br, b); err != nil {
		return nil, fmt.Errorf("read frame: %w", err)
	}
	return b, nil
}
