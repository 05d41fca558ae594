package message

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/protocols/message/pb"
	"github.com/kinmesh/kinmesh/protocols/wire"
)

// Direct delivery (/kinmesh/msg/1.0.0). One stream per batch:
//
//	sender → device: Deliver{request_id, envelopes (≤ 64, ≤ 4 MiB in all)}
//	device → sender: DeliverAck{request_id, one status per envelope}
//
// The device answers only after it has durably processed the envelopes
// (decrypted, stored, receipt queued), so OK means the message is on the
// device. Streams may cross a limited relay circuit.
const (
	directStreamTimeout = 30 * time.Second
	maxAckFrame         = 4 << 10
	serviceName         = "kinmesh.message"
)

func (s *Service) handleDeliver(st network.Stream) {
	defer st.Close()
	if err := st.Scope().SetService(serviceName); err != nil {
		st.Reset()
		return
	}
	if err := st.Scope().ReserveMemory(maxDirectFrame, network.ReservationPriorityAlways); err != nil {
		st.Reset()
		return
	}
	defer st.Scope().ReleaseMemory(maxDirectFrame)
	_ = st.SetDeadline(time.Now().Add(directStreamTimeout))
	stop := context.AfterFunc(s.ctx, func() { st.Reset() })
	defer stop()

	var req pb.Deliver
	if err := wire.NewReader(st).Read(&req, maxDirectFrame); err != nil {
		st.Reset()
		return
	}
	statuses := make([]pb.DeliverAck_Status, len(req.Envelopes))
	if len(req.Envelopes) > maxDirectBatch {
		for i := range statuses {
			statuses[i] = pb.DeliverAck_TOO_LARGE
		}
	} else {
		for i, err := range s.receive(req.Envelopes) {
			switch {
			case err == nil:
				statuses[i] = pb.DeliverAck_OK
			case errors.Is(err, errTransient), errors.Is(err, errLater):
				statuses[i] = pb.DeliverAck_INTERNAL
			default:
				statuses[i] = pb.DeliverAck_MALFORMED
			}
		}
	}
	_ = wire.Write(st, &pb.DeliverAck{RequestId: req.RequestId, Statuses: statuses}, maxAckFrame)
}

// deliver sends envelopes to a device and reports which it took.
func (s *Service) deliver(dev peer.ID, envs [][]byte) ([]bool, error) {
	ctx, cancel := context.WithTimeout(s.ctx, directStreamTimeout)
	defer cancel()
	st, err := s.cfg.Host.NewStream(network.WithAllowLimitedConn(ctx, "kinmesh message"), dev, ID)
	if err != nil {
		return nil, fmt.Errorf("open stream to %s: %w", dev, err)
	}
	defer st.Close()
	stop := context.AfterFunc(ctx, func() { st.Reset() })
	defer stop()
	_ = st.SetDeadline(time.Now().Add(directStreamTimeout))
	id := uint64(time.Now().UnixNano())
	if err := wire.Write(st, &pb.Deliver{RequestId: id, Envelopes: envs}, maxDirectFrame); err != nil {
		st.Reset()
		return nil, err
	}
	var ack pb.DeliverAck
	if err := wire.NewReader(st).Read(&ack, maxAckFrame); err != nil {
		st.Reset()
		return nil, fmt.Errorf("read delivery ack: %w", err)
	}
	if ack.RequestId != id || len(ack.Statuses) != len(envs) {
		return nil, fmt.Errorf("delivery ack does not match the request: %w", e2ee.ErrMalformed)
	}
	ok := make([]bool, len(envs))
	for i, st := range ack.Statuses {
		ok[i] = st == pb.DeliverAck_OK
	}
	return ok, nil
}
