package moments

import (
	"math"
	"sync"
	"time"
)

// limiter holds one token bucket per key (a requester's peer id, or a
// target account's opaque key). Buckets start full and refill
// continuously at rate tokens per second up to burst. The map is bounded:
// when it is full, keys whose buckets have refilled (they behave exactly
// like a new key) are forgotten; if none has, the new key is refused
// until one has. Refusing rather than evicting a busy key means a flood
// of new keys can't reset anyone's bucket: for the per-account limiter
// that is what keeps one-time prekeys from being drained.
type limiter struct {
	now   func() time.Time
	rate  float64 // tokens per second
	burst float64
	max   int

	mu       sync.Mutex
	buckets  map[string]*bucket
	lastTrim time.Time
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newLimiter(now func() time.Time, rate, burst float64, max int) *limiter {
	return &limiter{now: now, rate: rate, burst: burst, max: max, buckets: make(map[string]*bucket)}
}

// take consumes one token of key's bucket. If there is none it returns
// false and how long until there is.
func (l *limiter) take(key string) (ok bool, wait time.Duration) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b, found := l.buckets[key]
	if !found {
		if len(l.buckets) >= l.max {
			l.trim(now)
		}
		if len(l.buckets) >= l.max {
			return false, time.Second
		}
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[key] = b
	}
	if el := now.Sub(b.last); el > 0 {
		b.tokens = min(l.burst, b.tokens+el.Seconds()*l.rate)
		b.last = now
	}
	if b.tokens < 1 {
		wait = time.Duration(math.Ceil((1 - b.tokens) / l.rate * float64(time.Second)))
		return false, max(wait, time.Millisecond)
	}
	b.tokens--
	return true, 0
}

// trim forgets keys whose buckets have refilled, scanning at most once a
// second so a full map of busy keys costs nothing per request. Called
// with mu held.
func (l *limiter) trim(now time.Time) {
	if now.Sub(l.lastTrim) < time.Second && !now.Before(l.lastTrim) {
		return
	}
	l.lastTrim = now
	full := time.Duration(l.burst / l.rate * float64(time.Second))
	for k, b := range l.buckets {
		if now.Sub(b.last) >= full {
			delete(l.buckets, k)
		}
	}
}
