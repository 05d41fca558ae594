package message

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/kinmesh/kinmesh/protocols/contact"
	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/protocols/message/pb"
	"github.com/kinmesh/kinmesh/protocols/wire"
)

// Direct delivery (/kinmesh/msg/1.0.0). A stream carries one exchange or
// several, one after the other:
//
//	sender → device: Deliver{request_id, envelopes (≤ 64, ≤ 4 MiB in all), want_receipts}
//	device → sender: DeliverAck{request_id, one status per envelope, receipts}
//
// The device answers only after it has durably processed the envelopes
// (decrypted, stored), so OK means the message is on the device. A sender
// that asks for them gets the device's E2EE delivery receipts in the
// answer (inline); otherwise, or for messages from another device than
// the one on the stream, they are queued and travel as messages of their
// own. It serves a stream until the sender closes it or sends nothing
// for directStreamTimeout. The sender keeps up to maxDirectInFlight
// streams per device open between exchanges, for directIdle, and reuses
// them: a message then costs no stream set-up. A reused stream that fails
// (the device closed it meanwhile) is replaced by a fresh one, once; the
// device drops what it had already processed as a duplicate. Streams may
// cross a limited relay circuit; those are not kept.
const (
	directStreamTimeout = 30 * time.Second
	// directIdle is how long the sender keeps an unused stream: well
	// inside the device's directStreamTimeout, so the device is still
	// reading when the next exchange starts.
	directIdle   = 10 * time.Second
	maxAckFrame  = 4<<10 + maxInlineReceipts + 4<<10
	serviceName  = "kinmesh.message"
	directBufLen = 512
)

func (s *Service) handleDeliver(st network.Stream) {
	defer st.Close()
	if err := st.Scope().SetService(serviceName); err != nil {
		st.Reset()
		return
	}
	stop := context.AfterFunc(s.ctx, func() { st.Reset() })
	defer stop()
	br := bufio.NewReaderSize(st, directBufLen)
	var opener *e2ee.StreamOpener // the stream envelopes' (Deliver.stream)
	for {
		// Wait for the next frame without holding memory for it.
		_ = st.SetDeadline(time.Now().Add(directStreamTimeout))
		if _, err := br.Peek(1); err != nil {
			if !errors.Is(err, io.EOF) {
				st.Reset()
			}
			return
		}
		if !s.serveDeliver(st, br, &opener) {
			st.Reset()
			return
		}
	}
}

// serveDeliver reads one Deliver frame from br, processes it and answers
// on st. It reports whether the stream may carry another.
//
// Memory is reserved in the stream's scope as the frame's length prefix
// says, before the frame is read, and for the decoded envelopes once
// they are counted; all of it is released after the answer. A frame of
// more than maxDirectBatch envelopes is counted, not decoded: each gets
// TOO_LARGE (a frame of more than maxRefusedAnswer resets the stream, as
// its answer would not fit an ack). The envelopes over the sending peer's
// limit (directLimiter) are answered RATE_LIMITED, unopened. A frame that
// brings a stream sealer's encapsulation replaces *opener, with which the
// stream envelopes of this frame and the next ones open; one that can't
// be used resets the stream.
func (s *Service) serveDeliver(st network.Stream, br *bufio.Reader, opener **e2ee.StreamOpener) bool {
	scope := st.Scope()
	held := 0
	defer func() { scope.ReleaseMemory(held) }()
	reserve := func(n int) error {
		if err := scope.ReserveMemory(n, network.ReservationPriorityAlways); err != nil {
			return err
		}
		held += n
		return nil
	}
	b, err := readFrame(br, maxDirectFrame, reserve)
	if err != nil {
		return false
	}
	req, shape, err := decodeDeliver(b, reserve)
	switch {
	case errors.Is(err, errTooManyEnvelopes) && shape.envelopes <= maxRefusedAnswer:
		statuses := make([]pb.DeliverAck_Status, shape.envelopes)
		for i := range statuses {
			statuses[i] = pb.DeliverAck_TOO_LARGE
		}
		return wire.Write(st, &pb.DeliverAck{RequestId: shape.requestID, Statuses: statuses}, maxAckFrame) == nil
	case err != nil:
		return false
	}
	if len(req.Stream) > 0 {
		o, err := s.cfg.Account.MailboxKey.OpenStream(req.Stream)
		if err != nil {
			return false
		}
		*opener = o
	}
	statuses := make([]pb.DeliverAck_Status, len(req.Envelopes))
	from := st.Conn().RemotePeer()
	n := s.limits.in.take(from, len(req.Envelopes))
	if n < len(req.Envelopes) {
		s.log.Debug("direct delivery over the peer's limit", "peer", from, "refused", len(req.Envelopes)-n)
		for i := n; i < len(statuses); i++ {
			statuses[i] = pb.DeliverAck_RATE_LIMITED
		}
	}
	var in *inline
	if req.WantReceipts {
		in = &inline{peer: from, room: maxInlineReceipts}
	}
	if n > 0 {
		for i, err := range s.receive(req.Envelopes[:n], in, *opener) {
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
	ack := &pb.DeliverAck{RequestId: req.RequestId, Statuses: statuses}
	if in != nil {
		ack.Receipts = in.out
	}
	return wire.Write(st, ack, maxAckFrame) == nil
}

// delivery is what a device answered to a Deliver frame: which envelopes
// it took, whether it refused some as over our limit (RATE_LIMITED), and
// its delivery receipts for them.
type delivery struct {
	took     []bool
	limited  bool
	receipts []*pb.InlineReceipt
}

// deliver seals units to rec on a stream to its device dev, sends them
// and reports what the device answered. It uses a stream kept from an
// earlier exchange when there is one, and a fresh stream if that fails or
// there is none.
//
// A stream has a stream sealer (e2ee.StreamSealer): one X-Wing
// encapsulation, sent with the stream's first frame, under which every
// envelope on the stream is sealed with an AEAD alone. A sealed-sender
// envelope of its own costs an encapsulation to seal and a decapsulation
// to open, about a tenth of the online round trip each way; on a kept
// stream a message pays neither. Envelopes sealed before (units with env
// and no content) go as they are.
func (s *Service) deliver(dev peer.ID, rec contact.Signed, units []unit) (delivery, error) {
	if st, sealer := s.eng.direct.take(dev); st != nil {
		fresh := sealer == nil || sealer.To() != rec.MailboxKey.ID()
		if fresh {
			var err error
			if sealer, err = e2ee.NewStreamSealer(rec.MailboxKey); err != nil {
				st.Reset()
				return delivery{}, err
			}
		}
		if d, err := s.exchange(st, sealer, fresh, units); err == nil {
			s.eng.direct.keep(dev, st, sealer)
			return d, nil
		}
		st.Reset() // closed by the device meanwhile: once more, afresh
	}
	sealer, err := e2ee.NewStreamSealer(rec.MailboxKey)
	if err != nil {
		return delivery{}, err
	}
	ctx, cancel := context.WithTimeout(s.ctx, directStreamTimeout)
	defer cancel()
	st, err := s.cfg.Host.NewStream(network.WithAllowLimitedConn(ctx, "kinmesh message"), dev, ID)
	if err != nil {
		return delivery{}, fmt.Errorf("open stream to %s: %w", dev, err)
	}
	d, err := s.exchange(st, sealer, true, units)
	if err != nil {
		st.Reset()
		return delivery{}, err
	}
	if st.Conn().Stat().Limited {
		_ = st.Close()
	} else {
		s.eng.direct.keep(dev, st, sealer)
	}
	return d, nil
}

// exchange seals units with sealer and sends them in one Deliver frame on
// st (with sealer's encapsulation if fresh), asking for the receipts
// inline, and reads its answer.
func (s *Service) exchange(st network.Stream, sealer *e2ee.StreamSealer, fresh bool, units []unit) (delivery, error) {
	envs := make([][]byte, len(units))
	for i, u := range units {
		if u.env != nil && u.typ == 0 {
			envs[i] = u.env
			continue
		}
		env, err := sealer.Seal(e2ee.EnvelopeContent{
			Sender: s.cfg.Account.Identity.Public(), Certificate: s.record().Raw, Type: u.typ, Payload: u.payload,
		})
		if err != nil {
			return delivery{}, err
		}
		envs[i] = env
	}
	frame := &pb.Deliver{Envelopes: envs, WantReceipts: true}
	if fresh {
		frame.Stream = sealer.Enc()
	}
	ctx, cancel := context.WithTimeout(s.ctx, directStreamTimeout)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { st.Reset() })
	defer stop()
	_ = st.SetDeadline(time.Now().Add(directStreamTimeout))
	id := uint64(time.Now().UnixNano())
	frame.RequestId = id
	if err := wire.Write(st, frame, maxDirectFrame); err != nil {
		return delivery{}, err
	}
	var ack pb.DeliverAck
	if err := wire.NewReader(st).Read(&ack, maxAckFrame); err != nil {
		return delivery{}, fmt.Errorf("read delivery ack: %w", err)
	}
	if ack.RequestId != id || len(ack.Statuses) != len(envs) {
		return delivery{}, fmt.Errorf("delivery ack does not match the request: %w", e2ee.ErrMalformed)
	}
	d := delivery{took: make([]bool, len(envs)), receipts: ack.Receipts}
	for i, st := range ack.Statuses {
		d.took[i] = st == pb.DeliverAck_OK
		d.limited = d.limited || st == pb.DeliverAck_RATE_LIMITED
	}
	return d, nil
}

// streamPool keeps the direct streams between exchanges: up to
// maxDirectInFlight per device, each for directIdle.
type streamPool struct {
	mu     sync.Mutex
	idle   map[peer.ID][]pooled
	closed bool
}

type pooled struct {
	st     network.Stream
	sealer *e2ee.StreamSealer // the stream's (deliver)
	since  time.Time
}

// usable reports whether x was kept for less than directIdle.
func (x pooled) usable() bool { return time.Since(x.since) < directIdle }

// take returns a kept stream to dev and its sealer, or nil; it closes
// the ones kept too long.
func (p *streamPool) take(dev peer.ID) (network.Stream, *e2ee.StreamSealer) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for sts := p.idle[dev]; len(sts) > 0; sts = p.idle[dev] {
		last := sts[len(sts)-1]
		p.idle[dev] = sts[:len(sts)-1]
		if last.usable() {
			return last.st, last.sealer
		}
		_ = last.st.Close()
	}
	delete(p.idle, dev)
	return nil, nil
}

// keep puts st back for the next exchange with dev, or closes it. It
// also closes the streams kept too long to any device.
func (p *streamPool) keep(dev peer.ID, st network.Stream, sealer *e2ee.StreamSealer) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for d, sts := range p.idle {
		fresh := sts[:0]
		for _, x := range sts {
			if x.usable() {
				fresh = append(fresh, x)
			} else {
				_ = x.st.Close()
			}
		}
		if len(fresh) == 0 {
			delete(p.idle, d)
		} else {
			p.idle[d] = fresh
		}
	}
	if p.closed || len(p.idle[dev]) >= maxDirectInFlight {
		_ = st.Close()
		return
	}
	if p.idle == nil {
		p.idle = map[peer.ID][]pooled{}
	}
	p.idle[dev] = append(p.idle[dev], pooled{st: st, sealer: sealer, since: time.Now()})
}

// close closes every kept stream and keeps none from now on.
func (p *streamPool) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	for _, sts := range p.idle {
		for _, x := range sts {
			_ = x.st.Close()
		}
	}
	p.idle = nil
}
