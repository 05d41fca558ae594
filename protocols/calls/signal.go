package calls

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"

	"github.com/kinmesh/kinmesh/protocols/wire"
)

// sigConn is a signalling stream: frames in both directions, writes
// serialized and bounded by writeTimeout, reads capped at maxFrame and
// rate-limited (maxFramesPerSecond, burst maxFrameBurst).
type sigConn struct {
	st network.Stream
	rd *wire.Reader

	wmu sync.Mutex

	tokens float64
	last   time.Time
}

const (
	maxFramesPerSecond = 50
	maxFrameBurst      = 200
)

func newSigConn(st network.Stream) *sigConn {
	return &sigConn{st: st, rd: wire.NewReader(st), tokens: maxFrameBurst, last: time.Now()}
}

// errFlood means the peer sent frames faster than maxFramesPerSecond.
var errFlood = errors.New("calls: signalling frame flood")

// read reads one frame. An I/O error (the stream ended) is returned as
// is; a frame that fails validation as ErrMalformed or ErrTooLarge, after
// which reading may go on.
func (s *sigConn) read(limit int) (frame, error) {
	b, err := s.rd.ReadBytes(limit)
	if err != nil {
		if errors.Is(err, wire.ErrTooLarge) {
			return frame{}, fmt.Errorf("%w: %w", ErrTooLarge, err) // the stream is out of sync: end it
		}
		return frame{}, err
	}
	now := time.Now()
	s.tokens = min(maxFrameBurst, s.tokens+now.Sub(s.last).Seconds()*maxFramesPerSecond)
	s.last = now
	if s.tokens < 1 {
		return frame{}, errFlood
	}
	s.tokens--
	return decodeFrame(b)
}

// write sends one frame.
func (s *sigConn) write(f frame) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	_ = s.st.SetWriteDeadline(time.Now().Add(writeTimeout))
	if err := wire.Write(s.st, encodeFrame(f), maxFrame); err != nil {
		return fmt.Errorf("calls: send %s: %w", f.kind, err)
	}
	return nil
}

// close ends the stream gracefully (what was written is delivered).
func (s *sigConn) close() { _ = s.st.Close() }

// reset aborts the stream.
func (s *sigConn) reset() { _ = s.st.Reset() }
