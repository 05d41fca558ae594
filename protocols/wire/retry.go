package wire

import "time"

// MaxRetryAfter caps a retry-after hint both ways: a service asks for no
// longer, and a client waits no longer, whatever its peer sent. A day
// covers every daily quota.
const MaxRetryAfter = 24 * time.Hour

// RetryAfterMs is d as the retry_after_ms field every protocol's response
// carries: whole milliseconds, rounded up, at most MaxRetryAfter; 0 (none)
// for d <= 0.
func RetryAfterMs(d time.Duration) uint32 {
	if d <= 0 {
		return 0
	}
	return uint32((min(d, MaxRetryAfter) + time.Millisecond - 1) / time.Millisecond)
}

// RetryAfter is a retry_after_ms field as a duration, at most
// MaxRetryAfter. RetryAfter(RetryAfterMs(d)) is d rounded up to the
// millisecond and capped, and RetryAfterMs(RetryAfter(ms)) is ms capped,
// so a decoded response encodes back to what it was.
func RetryAfter[T uint32 | uint64](ms T) time.Duration {
	return time.Duration(min(uint64(ms), uint64(MaxRetryAfter/time.Millisecond))) * time.Millisecond
}
