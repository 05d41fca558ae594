package message

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
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
// delivers to us directly. Buckets start full and refill continuously at
// rate tokens a second up to burst. The map is bounded: when it is full,
// peers whose buckets have refilled (they behave exactly like a new peer)
// are forgotten; if none has, a new peer gets nothing until one has, so a
// flood of new peer ids can't reset anyone's bucket. Such a peer's
// envelopes still arrive through its relays.
type directLimiter struct {
	now   func() time.Time
	rate  float64
	burst float64
	max   int

	mu       sync.Mutex
	buckets  map[peer.ID]*envBucket
	lastTrim time.Time

	// admitted and refused count envelopes, for the debug log and tests.
	admitted, refused atomic.Int64
}

type envBucket struct {
	tokens float64
	last   time.Time
}

func newDirectLimiter(now func() time.Time, rate float64, burst, max int) *directLimiter {
	return &directLimiter{now: now, rate: rate, burst: float64(burst), max: max, buckets: map[peer.ID]*envBucket{}}
}

// take lets through the first of n envelopes from p that p's bucket
// allows, consuming a token each, and returns how many.
func (l *directLimiter) take(p peer.ID, n int) int {
	got := l.takeLocked(p, n)
	l.admitted.Add(int64(got))
	l.refused.Add(int64(n - got))
	return got
}

func (l *directLimiter) takeLocked(p peer.ID, n int) int {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.buckets[p]
	if !ok {
		if len(l.buckets) >= l.max {
			l.trim(now)
		}
		if len(l.buckets) >= l.max {
			return 0
		}
		b = &envBucket{tokens: l.burst, last: now}
		l.buckets[p] = b
	}
	if el := now.Sub(b.last); el > 0 {
		b.tokens = min(l.burst, b.tokens+el.Seconds()*l.rate)
		b.last = now
	}
	got := min(n, int(b.tokens))
	b.tokens -= float64(got)
	return got
}

// trim forgets peers whose buckets have refilled, scanning at most once a
// second so a full map of busy peers costs nothing per frame. Called with
// mu held.
func (l *directLimiter) trim(now time.Time) {
	if now.Sub(l.lastTrim) < time.Second && !now.Before(l.lastTrim) {
		return
	}
	l.lastTrim = now
	full := time.Duration(l.burst / l.rate * float64(time.Second))
	for p, b := range l.buckets {
		if now.Sub(b.last) >= full {
			delete(l.buckets, p)
		}
	}
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
