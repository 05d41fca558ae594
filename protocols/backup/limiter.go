package backup

import (
	"math"
	"sync"
	"time"
)

// limiter holds one token bucket per key (a peer id or an account's
// opaque key); the same as protocols/discovery's. Buckets start full and refill
// continuously at rate tokens per second up to burst. The map is bounded:
// when it is full, keys whose buckets have refilled (they behave exactly
// like a new key) are forgotten; if none has, the new key is refused
// until one has. Refusing rather than evicting a busy key means a flood of
// new keys can't reset anyone's bucket.
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

// take consumes one token of key's bucket; see takeN.
func (l *limiter) take(key string) (ok bool, wait time.Duration) { return l.takeN(key, 1) }

// never is takeN's wait for more tokens than the bucket holds.
const never = time.Duration(math.MaxInt64)

// takeN consumes n tokens of key's bucket. If there are fewer it takes
// none and returns false and how long until there are n (never if n
// exceeds the burst).
func (l *limiter) takeN(key string, n int) (ok bool, wait time.Duration) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.bucket(key, now)
	if b == nil {
		return false, time.Second
	}
	need := float64(n)
	if b.tokens < need {
		if need > l.burst {
			return false, never
		}
		wait = time.Duration(math.Ceil((need - b.tokens) / l.rate * float64(time.Second)))
		return false, max(wait, time.Millisecond)
	}
	b.tokens -= need
	return true, 0
}

// bucket returns key's bucket refilled to now, creating it if there is
// room; nil if there is none. Called with mu held.
func (l *limiter) bucket(key string, now time.Time) *bucket {
	b, found := l.buckets[key]
	if !found {
		if len(l.buckets) >= l.max {
			l.trim(now)
		}
		if len(l.buckets) >= l.max {
			return nil
		}
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[key] = b
	}
	if el := now.Sub(b.last); el > 0 {
		b.tokens = min(l.burst, b.tokens+el.Seconds()*l.rate)
		b.last = now
	}
	return b
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
