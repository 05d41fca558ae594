package discovery

import (
	"container/list"
	"math"
	"sync"
	"time"
)

// limiter holds one token bucket per key (a peer id, an account's opaque
// key, or a number's directory id). Buckets start full and refill
// continuously at rate tokens per second up to burst. The table is
// bounded: when it is full, a new key takes the place of the key used
// least recently. Refusing new keys instead would let anyone who can make
// up keys (account keys and peer ids are free) fill the table and lock
// every newcomer out until the table's buckets refill — hours for the
// daily budgets. Evicting hands the evicted key a full bucket again, so
// callers create entries only for requests that pass their other checks
// (allow), which makes pushing a busy key out as costly as what those
// checks guard: for the SMS budgets, a table's worth of texts from the
// relay-wide budget.
type limiter struct {
	now   func() time.Time
	rate  float64 // tokens per second
	burst float64
	max   int

	mu      sync.Mutex
	buckets map[string]*list.Element // of *bucket
	lru     list.List                // front: used most recently
}

type bucket struct {
	key    string
	tokens float64
	last   time.Time
}

func newLimiter(now func() time.Time, rate, burst float64, max int) *limiter {
	return &limiter{now: now, rate: rate, burst: burst, max: max, buckets: make(map[string]*list.Element)}
}

// take consumes one token of key's bucket; see takeN.
func (l *limiter) take(key string) (ok bool, wait time.Duration) { return l.takeN(key, 1) }

// never is takeN's wait for more tokens than the bucket holds.
const never = time.Duration(math.MaxInt64)

// takeN consumes n tokens of key's bucket, creating it (full) if the key
// is new. If there are fewer it takes none and returns false and how long
// until there are n (never if n exceeds the burst).
func (l *limiter) takeN(key string, n int) (ok bool, wait time.Duration) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.bucket(key, now)
	if ok, wait := l.enough(b.tokens, n); !ok {
		return false, wait
	}
	b.tokens -= float64(n)
	return true, 0
}

// allow reports whether key's bucket holds n tokens now, and if not how
// long until it does, without taking any or making room for a new key.
func (l *limiter) allow(key string, n int) (ok bool, wait time.Duration) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.enough(l.tokens(key, now), n)
}

// refund gives n tokens back to key's bucket (not beyond the burst): what
// a request took and did not use after all.
func (l *limiter) refund(key string, n int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if el, ok := l.buckets[key]; ok {
		b := el.Value.(*bucket)
		b.tokens = min(l.burst, b.tokens+float64(n))
	}
}

// left returns how many whole tokens key's bucket holds now.
func (l *limiter) left(key string) int {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	return int(l.tokens(key, now))
}

// enough reports whether tokens cover n, else how long until they do.
func (l *limiter) enough(tokens float64, n int) (bool, time.Duration) {
	need := float64(n)
	if tokens >= need {
		return true, 0
	}
	if need > l.burst {
		return false, never
	}
	wait := time.Duration(math.Ceil((need - tokens) / l.rate * float64(time.Second)))
	return false, max(wait, time.Millisecond)
}

// tokens returns what key's bucket holds at now, without changing it.
// Called with mu held.
func (l *limiter) tokens(key string, now time.Time) float64 {
	el, ok := l.buckets[key]
	if !ok {
		return l.burst
	}
	b := el.Value.(*bucket)
	return min(l.burst, b.tokens+max(now.Sub(b.last), 0).Seconds()*l.rate)
}

// bucket returns key's bucket refilled to now and marks it used, creating
// it if need be — in place of the least recently used key if the table is
// full. Called with mu held.
func (l *limiter) bucket(key string, now time.Time) *bucket {
	el, found := l.buckets[key]
	if !found {
		if len(l.buckets) >= l.max {
			if old := l.lru.Back(); old != nil {
				delete(l.buckets, old.Value.(*bucket).key)
				l.lru.Remove(old)
			}
		}
		el = l.lru.PushFront(&bucket{key: key, tokens: l.burst, last: now})
		l.buckets[key] = el
		return el.Value.(*bucket)
	}
	l.lru.MoveToFront(el)
	b := el.Value.(*bucket)
	if d := now.Sub(b.last); d > 0 {
		b.tokens = min(l.burst, b.tokens+d.Seconds()*l.rate)
		b.last = now
	}
	return b
}

// tracked returns how many keys the table holds.
func (l *limiter) tracked() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.buckets)
}
