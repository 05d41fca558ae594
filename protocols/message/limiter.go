package message

import (
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/kinmesh/kinmesh/protocols/netkit"
)

// Defaults of the per-peer limit on direct deliveries (Config.DirectRate,
// Config.DirectBurst), and how many peers it tracks.
//
// Each envelope a peer hands us directly costs an X-Wing decapsulation
// (about 0.2 ms of CPU) and, readable or not, a seen marker kept 16 days;
// without a limit any connected peer could make us pay that at line rate.
// Real traffic stays far below: a lane has at most maxDirectInFlight
// frames of maxDirectBatch envelopes (256) in flight, and a burst or
// backlog goes in batch envelopes of up to 64 messages each; the
// throughput benchmark's 9,000 messages went in about 500 envelopes, and
// the 10,000-message burst test's in 4,730 over a minute
// (docs/protocol/message.md).
const (
	DefaultDirectRate  = 1000 // envelopes a second, per peer
	DefaultDirectBurst = 4096 // envelopes at once, per peer
	maxDirectPeers     = 1024
)

// directLimiter holds one token bucket of envelopes per peer that
// delivers to us directly (a netkit.Limiter). Buckets start full and
// refill continuously at rate tokens a second up to burst. The table is
// bounded: when it is full, a new peer takes the place of the peer used
// least recently, so a flood of made-up peer ids can't lock real peers
// out. A peer pushed out starts over with a full bucket; cycling through
// more ids than the table holds buys that, which any per-peer limit over
// free ids allows.
type directLimiter struct {
	lim *netkit.Limiter[peer.ID]

	// admitted and refused count envelopes, for the debug log and tests.
	admitted, refused atomic.Int64
}

func newDirectLimiter(now func() time.Time, rate float64, burst, max int) *directLimiter {
	return &directLimiter{lim: netkit.NewLimiter[peer.ID](now, rate, float64(burst), max)}
}

// take lets through the first of n envelopes from p that p's bucket
// allows, consuming a token each, and returns how many.
func (l *directLimiter) take(p peer.ID, n int) int {
	got := l.lim.TakeUpTo(p, n)
	l.admitted.Add(int64(got))
	l.refused.Add(int64(n - got))
	return got
}

// directLimits is the direct protocol's rate limiting, both ways.
type directLimits struct {
	// in limits the envelopes each peer hands us.
	in *directLimiter
	// out holds the devices that answered us RATE_LIMITED lately: a lane
	// hands such a device nothing until its rest ends, and leaves the
	// envelopes to the recipient's relays meanwhile. The answer carries no
	// retry-after, so the rest is ours: directRestMin, doubling with each
	// RATE_LIMITED answer to directRestMax, forgotten once a device takes
	// a whole round.
	out rests
}

const (
	directRestMin = 500 * time.Millisecond
	directRestMax = time.Minute
)
