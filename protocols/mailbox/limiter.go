package mailbox

import (
	"math"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// limiter holds one pair of token buckets (envelopes, bytes) per depositor
// peer id. Each bucket holds one minute's worth and refills continuously.
// The map is bounded: depositors idle for a minute (full buckets) are
// forgotten, and when every tracked depositor is busy a new one is
// refused.
type limiter struct {
	now      func() time.Time
	items    float64 // per minute, and bucket size
	bytes    float64
	max      int
	mu       sync.Mutex
	buckets  map[peer.ID]*tokens
	lastTrim time.Time
}

type tokens struct {
	items, bytes float64
	last         time.Time
}

func newLimiter(now func() time.Time, itemsPerMin int, bytesPerMin int64, max int) *limiter {
	return &limiter{
		now:     now,
		items:   float64(itemsPerMin),
		bytes:   float64(bytesPerMin),
		max:     max,
		buckets: make(map[peer.ID]*tokens),
	}
}

// take lets through the longest prefix of sizes that p's buckets allow,
// consuming their tokens, and returns its length. If not all pass, wait
// says when the first refused one would.
func (l *limiter) take(p peer.ID, sizes []int) (n int, wait time.Duration) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	t, ok := l.buckets[p]
	if !ok {
		if len(l.buckets) >= l.max {
			l.trim(now)
		}
		if len(l.buckets) >= l.max {
			return 0, time.Minute
		}
		t = &tokens{items: l.items, bytes: l.bytes, last: now}
		l.buckets[p] = t
	}
	l.refill(t, now)
	for _, sz := range sizes {
		if t.items < 1 || t.bytes < float64(sz) {
			needItems := max(0, 1-t.items) / l.items
			needBytes := max(0, float64(sz)-t.bytes) / l.bytes
			wait = time.Duration(math.Ceil(max(needItems, needBytes) * float64(time.Minute)))
			return n, max(wait, time.Millisecond)
		}
		t.items--
		t.bytes -= float64(sz)
		n++
	}
	return n, 0
}

func (l *limiter) refill(t *tokens, now time.Time) {
	el := now.Sub(t.last)
	if el <= 0 {
		return
	}
	f := el.Minutes()
	t.items = min(l.items, t.items+f*l.items)
	t.bytes = min(l.bytes, t.bytes+f*l.bytes)
	t.last = now
}

// trim forgets depositors whose buckets have refilled completely: they
// behave exactly like a new depositor. Called with mu held.
func (l *limiter) trim(now time.Time) {
	for p, t := range l.buckets {
		if now.Sub(t.last) >= time.Minute {
			delete(l.buckets, p)
		}
	}
	l.lastTrim = now
}

// sweep trims at most once a minute (the janitor calls it).
func (l *limiter) sweep() {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.lastTrim) >= time.Minute || now.Before(l.lastTrim) {
		l.trim(now)
	}
}
