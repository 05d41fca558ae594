package mailbox

import (
	"container/list"
	"math"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// limiter holds one pair of token buckets (envelopes, bytes) per depositor
// peer id. Each bucket holds one minute's worth and refills continuously.
// The table is bounded: depositors idle for a minute (full buckets) are
// forgotten by sweep, and when the table is full a new depositor takes the
// place of the one that deposited least recently. Refusing new depositors
// instead would let anyone making up peer ids (they are free) fill the
// table and lock every newcomer out; the price is that a depositor pushed
// out starts over with full buckets, which cycling through more peer ids
// than the table holds buys anyway. (netkit.Limiter is the one-bucket
// form of the same; this one keeps two buckets per key in step.)
type limiter struct {
	now      func() time.Time
	items    float64 // per minute, and bucket size
	bytes    float64
	max      int
	mu       sync.Mutex
	buckets  map[peer.ID]*list.Element // of *tokens
	lru      list.List                 // front: used most recently
	lastTrim time.Time
}

type tokens struct {
	p            peer.ID
	items, bytes float64
	last         time.Time
}

func newLimiter(now func() time.Time, itemsPerMin int, bytesPerMin int64, max int) *limiter {
	return &limiter{
		now:     now,
		items:   float64(itemsPerMin),
		bytes:   float64(bytesPerMin),
		max:     max,
		buckets: make(map[peer.ID]*list.Element),
	}
}

// take lets through the longest prefix of sizes that p's buckets allow,
// consuming their tokens, and returns its length. If not all pass, wait
// says when the first refused one would.
func (l *limiter) take(p peer.ID, sizes []int) (n int, wait time.Duration) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	t := l.tokens(p, now)
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

// tokens returns p's buckets refilled to now and marks them used,
// creating them (full) if need be — in place of the depositor used least
// recently if the table is full. Called with mu held.
func (l *limiter) tokens(p peer.ID, now time.Time) *tokens {
	if el, ok := l.buckets[p]; ok {
		l.lru.MoveToFront(el)
		t := el.Value.(*tokens)
		l.refill(t, now)
		return t
	}
	for len(l.buckets) >= max(l.max, 1) {
		old := l.lru.Back()
		delete(l.buckets, old.Value.(*tokens).p)
		l.lru.Remove(old)
	}
	el := l.lru.PushFront(&tokens{p: p, items: l.items, bytes: l.bytes, last: now})
	l.buckets[p] = el
	return el.Value.(*tokens)
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
	for p, el := range l.buckets {
		if now.Sub(el.Value.(*tokens).last) >= time.Minute {
			delete(l.buckets, p)
			l.lru.Remove(el)
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

// len returns how many depositors the table holds.
func (l *limiter) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.buckets)
}
