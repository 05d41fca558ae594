package message

import (
	"context"
	"errors"
	"fmt"

	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/protocols/message/pb"
)

// Controls are other features' payloads riding the engine's pairwise
// sessions: end-to-end encrypted, delivered directly or through the
// recipient's relays like any message, in order per recipient, but never
// shown as messages and never receipted. A feature sends with SendControl
// and receives through Config.OnControl, called once per control as soon
// as it is received (written, not yet synced: docs/protocol/message.md),
// in arrival order.

// Control limits.
const (
	MaxControlKind    = 64
	MaxControlPayload = 40 << 10
)

// ErrBadControl means a control's kind or payload is out of range.
var ErrBadControl = errors.New("message: control kind must be 1-64 bytes and payload at most 40 KiB")

// SendControl queues payload of kind to each recipient.
func (s *Service) SendControl(ctx context.Context, to []e2ee.AccountID, kind string, payload []byte) error {
	if kind == "" || len(kind) > MaxControlKind || len(payload) > MaxControlPayload {
		return ErrBadControl
	}
	for _, id := range to {
		if _, ok := s.cfg.Contacts.Contact(id); !ok {
			return fmt.Errorf("%w: %s", ErrUnknownContact, id)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.begin()
	for _, id := range to {
		if s.cfg.Contacts.Blocked(id) {
			continue
		}
		c := &pb.Content{Body: &pb.Content_Control{Control: &pb.Control{Kind: kind, Payload: payload}}}
		if err := t.queuePairwise(id, "", c); err != nil {
			return err
		}
	}
	return t.commit()
}

// applyControl hands a control to the feature once its transaction is
// written (tx.after).
func (t *tx) applyControl(from e2ee.AccountID, c *pb.Control) []Event {
	if t.s.cfg.OnControl == nil || c.GetKind() == "" || len(c.GetKind()) > MaxControlKind || len(c.GetPayload()) > MaxControlPayload {
		return nil
	}
	kind, payload := c.Kind, c.Payload
	t.after = append(t.after, func() { t.s.cfg.OnControl(from, kind, payload) })
	return nil
}
