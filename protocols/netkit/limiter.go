package netkit

import (
	"container/list"
	"math"
	"slices"
	"sync"
	"time"
)

// Never is the wait a Limiter gives for more tokens than a bucket holds.
const Never = time.Duration(math.MaxInt64)

// Limiter holds one token bucket per key (a peer id, an account's opaque
// key, a source address). Buckets start full and refill continuously at
// rate tokens per second up to burst. The table is bounded: when it is
// full, a new key takes the place of the key used least recently.
//
// Refusing new keys instead would let anyone who can make up keys (peer
// ids and account keys are free) fill the table and lock every newcomer
// out until the table's buckets refill. The price of evicting is that
// the evicted key gets a full bucket again: someone who cycles through
// more keys than the table holds gets fresh buckets. That is inherent to
// per-key limits over free keys; a relay-wide limit (a Limiter of one
// key, or a quota) is what bounds the total, and callers should create
// entries only for requests that passed their cheaper checks (Allow
// looks without creating one).
type Limiter[K comparable] struct {
	now   func() time.Time
	rate  float64 // tokens per second
	burst float64
	max   int

	mu      sync.Mutex
	buckets map[K]*list.Element // of *bucket[K]
	lru     list.List           // front: used most recently
	changes uint64              // bumped by every take and refund (Budgets saves on a change)
}

type bucket[K comparable] struct {
	key    K
	tokens float64
	last   time.Time
}

// NewLimiter returns a limiter of rate tokens a second up to burst per
// key, tracking at most max keys (at least one) and reading the time
// from now.
func NewLimiter[K comparable](now func() time.Time, rate, burst float64, max int) *Limiter[K] {
	return &Limiter[K]{now: now, rate: rate, burst: burst, max: max, buckets: make(map[K]*list.Element)}
}

// Take consumes one token of key's bucket; see TakeN.
func (l *Limiter[K]) Take(key K) (ok bool, wait time.Duration) { return l.TakeN(key, 1) }

// TakeN consumes n tokens of key's bucket, creating it (full) if the key
// is new. If there are fewer it takes none and returns false and how long
// until there are n (Never if n exceeds the burst).
func (l *Limiter[K]) TakeN(key K, n int) (ok bool, wait time.Duration) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.bucket(key, now)
	if ok, wait := l.enough(b.tokens, n); !ok {
		return false, wait
	}
	b.tokens -= float64(n)
	l.changes++
	return true, 0
}

// TakeUpTo consumes as many whole tokens of key's bucket as it holds, up
// to n, creating it (full) if the key is new, and returns how many.
func (l *Limiter[K]) TakeUpTo(key K, n int) int {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.bucket(key, now)
	got := min(n, int(b.tokens))
	b.tokens -= float64(got)
	l.changes++
	return got
}

// Allow reports whether key's bucket holds n tokens now, and if not how
// long until it does, without taking any or making room for a new key.
func (l *Limiter[K]) Allow(key K, n int) (ok bool, wait time.Duration) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.enough(l.tokens(key, now), n)
}

// Refund gives n tokens back to key's bucket (not beyond the burst): what
// a request took and did not use after all.
func (l *Limiter[K]) Refund(key K, n int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if el, ok := l.buckets[key]; ok {
		b := el.Value.(*bucket[K])
		b.tokens = min(l.burst, b.tokens+float64(n))
		l.changes++
	}
}

// Left returns how many whole tokens key's bucket holds now.
func (l *Limiter[K]) Left(key K) int {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	return int(l.tokens(key, now))
}

// Len returns how many keys the table holds.
func (l *Limiter[K]) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.buckets)
}

// enough reports whether tokens cover n, else how long until they do.
func (l *Limiter[K]) enough(tokens float64, n int) (bool, time.Duration) {
	need := float64(n)
	if tokens >= need {
		return true, 0
	}
	if need > l.burst {
		return false, Never
	}
	wait := time.Duration(math.Ceil((need - tokens) / l.rate * float64(time.Second)))
	return false, max(wait, time.Millisecond)
}

// tokens returns what key's bucket holds at now, without changing it.
// Called with mu held.
func (l *Limiter[K]) tokens(key K, now time.Time) float64 {
	el, ok := l.buckets[key]
	if !ok {
		return l.burst
	}
	b := el.Value.(*bucket[K])
	return min(l.burst, b.tokens+max(now.Sub(b.last), 0).Seconds()*l.rate)
}

// bucket returns key's bucket refilled to now and marks it used, creating
// it if need be — in place of the least recently used key if the table is
// full. Called with mu held.
func (l *Limiter[K]) bucket(key K, now time.Time) *bucket[K] {
	el, found := l.buckets[key]
	if !found {
		for len(l.buckets) >= max(l.max, 1) {
			old := l.lru.Back()
			delete(l.buckets, old.Value.(*bucket[K]).key)
			l.lru.Remove(old)
		}
		el = l.lru.PushFront(&bucket[K]{key: key, tokens: l.burst, last: now})
		l.buckets[key] = el
		return el.Value.(*bucket[K])
	}
	l.lru.MoveToFront(el)
	b := el.Value.(*bucket[K])
	if d := now.Sub(b.last); d > 0 {
		b.tokens = min(l.burst, b.tokens+d.Seconds()*l.rate)
		b.last = now
	}
	return b
}

// Bucket is one key's bucket as a Limiter exports it: the tokens it held
// at Last, when it was last used or refilled.
type Bucket[K comparable] struct {
	Key    K
	Tokens float64
	Last   time.Time
}

// Export returns up to n of the buckets that are not full now, most
// recently used first, and the limiter's change count (it moves with
// every take and refund). A full bucket is the same as none.
func (l *Limiter[K]) Export(n int) ([]Bucket[K], uint64) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []Bucket[K]
	for el := l.lru.Front(); el != nil && len(out) < n; el = el.Next() {
		b := el.Value.(*bucket[K])
		if l.tokens(b.key, now) < l.burst {
			out = append(out, Bucket[K]{Key: b.key, Tokens: b.tokens, Last: b.last})
		}
	}
	return out, l.changes
}

// Import puts buckets, in Export's order (most recently used first), into
// the table for the keys it doesn't hold yet. Tokens are held to
// [0, burst], and a Last in the future (the clock stepped back since) is
// taken as now: each bucket refills from Last on as it would have.
func (l *Limiter[K]) Import(buckets []Bucket[K]) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, in := range slices.Backward(buckets) {
		if _, ok := l.buckets[in.Key]; ok {
			continue
		}
		b := l.bucket(in.Key, now) // a fresh one, evicting if the table is full
		b.tokens = 0
		if !math.IsNaN(in.Tokens) {
			b.tokens = min(max(in.Tokens, 0), l.burst)
		}
		b.last = in.Last
		if b.last.After(now) {
			b.last = now
		}
	}
}
