package e2ee

import (
	"fmt"

	"google.golang.org/protobuf/proto"

	"github.com/kinmesh/kinmesh/protocols/e2ee/pb"
)

// MaxBatchItems caps the inner messages of one ContentBatch envelope. It
// keeps what one envelope makes a recipient store within one transaction.
const MaxBatchItems = 64

// BatchItemOverhead bounds what MarshalBatch adds per item to the items'
// payloads (field tags and lengths); BatchItemOverhead*len(items) plus the
// payloads is an upper bound of the batch's size.
const BatchItemOverhead = 16

// BatchItem is one inner message of a batch.
type BatchItem struct {
	Type    ContentType
	Payload []byte
}

// checkBatchItem refuses item types a batch can't carry: none, a batch (no
// nesting) and presence (never stored, so never batched).
func checkBatchItem(t uint32, payload []byte) error {
	if t == 0 || t > 0xff || ContentType(t) == ContentBatch || ContentType(t) == ContentPresence || len(payload) == 0 {
		return fmt.Errorf("batch item of type %v, %d-byte payload: %w", t, len(payload), ErrMalformed)
	}
	return nil
}

// MarshalBatch encodes items as the payload of a ContentBatch envelope.
func MarshalBatch(items []BatchItem) ([]byte, error) {
	if len(items) == 0 || len(items) > MaxBatchItems {
		return nil, fmt.Errorf("marshal batch of %d items: %w", len(items), ErrMalformed)
	}
	m := &pb.EnvelopeBatch{Items: make([]*pb.EnvelopeItem, len(items))}
	for i, it := range items {
		if err := checkBatchItem(uint32(it.Type), it.Payload); err != nil {
			return nil, fmt.Errorf("marshal batch: %w", err)
		}
		m.Items[i] = &pb.EnvelopeItem{ContentType: uint32(it.Type), Payload: it.Payload}
	}
	b, err := proto.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("marshal batch: %w", ErrMalformed)
	}
	if len(b) > MaxEnvelopeBucket {
		return nil, fmt.Errorf("marshal batch of %d bytes: %w", len(b), ErrTooLarge)
	}
	return b, nil
}

// ParseBatch decodes a ContentBatch payload: at most MaxEnvelopeBucket
// bytes and MaxBatchItems items, none empty, of type 0, batch or presence.
func ParseBatch(payload []byte) ([]BatchItem, error) {
	if len(payload) > MaxEnvelopeBucket {
		return nil, fmt.Errorf("parse batch: %d bytes: %w", len(payload), ErrTooLarge)
	}
	var m pb.EnvelopeBatch
	if err := proto.Unmarshal(payload, &m); err != nil {
		return nil, fmt.Errorf("parse batch: %w", ErrMalformed)
	}
	if len(m.Items) == 0 || len(m.Items) > MaxBatchItems {
		return nil, fmt.Errorf("parse batch: %d items: %w", len(m.Items), ErrMalformed)
	}
	out := make([]BatchItem, len(m.Items))
	for i, it := range m.Items {
		if err := checkBatchItem(it.ContentType, it.Payload); err != nil {
			return nil, fmt.Errorf("parse batch: %w", err)
		}
		out[i] = BatchItem{Type: ContentType(it.ContentType), Payload: it.Payload}
	}
	return out, nil
}
