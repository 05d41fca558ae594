package moments

import (
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// Defaults of the relay's limits (see the Option functions).
const (
	// DefaultMaxFeeds caps the feeds one relay keeps.
	DefaultMaxFeeds = 100_000
	// DefaultFeedMaxItems and DefaultFeedMaxBytes cap one feed's kept
	// frames (moments, likes, comments) and their bytes; media are blobs,
	// counted by protocols/blobs.
	DefaultFeedMaxItems = 50_000
	DefaultFeedMaxBytes = 64 << 20
	// DefaultReactionsPerMoment caps the likes and comments kept per
	// moment (a flood of likes stops there).
	DefaultReactionsPerMoment = 2_000
	// DefaultRequestsPerMinute and DefaultRequestBurst: relay requests one
	// peer may make.
	DefaultRequestsPerMinute = 600
	DefaultRequestBurst      = 300
	// DefaultTopicFramesPerMinute and DefaultTopicBurst: frames one topic
	// may carry through a relay or device; beyond them frames are ignored
	// (not forwarded, not kept).
	DefaultTopicFramesPerMinute = 600
	DefaultTopicBurst           = 300
	// DefaultMaxEpochs caps the topics one feed keeps; registering another
	// drops the oldest with its frames.
	DefaultMaxEpochs = 64
	// DefaultMaxTracked bounds the peers and topics the rate limiters
	// track at once.
	DefaultMaxTracked = 1 << 16

	// MaxKeepFrames caps the frames of one Keep request.
	MaxKeepFrames = 64
	// MaxPageItems caps a backfill page; a page also stops at 1 MiB.
	MaxPageItems = 256
	// MaxPurgeMedia caps the media ids of one Purge answer (a page; the
	// client asks for the next) and those one Purge confirms.
	MaxPurgeMedia = 1 << 14
	// RequestMaxSkew is how far a signed request's time may be from the
	// relay's clock.
	RequestMaxSkew = 10 * time.Minute

	maxPageBytes     = 1 << 20
	maxRequestFrame  = MaxKeepFrames*(MaxFrameSize+8) + 4<<10
	maxResponseFrame = maxPageBytes + MaxFrameSize + 64<<10
)

// Option configures NewService.
type Option func(*config) error

type config struct {
	now    func() time.Time
	logger *slog.Logger
	tracer MetricsTracer

	maxFeeds          int
	feedItems         uint64
	feedBytes         uint64
	reactionsPerPost  int
	reqRate, reqBurst float64
	topicRate, topicB float64
	maxEpochs         int
	maxTracked        int
	timeout           time.Duration
	janitor           time.Duration
}

func defaultConfig() config {
	return config{
		now:              time.Now,
		maxFeeds:         DefaultMaxFeeds,
		feedItems:        DefaultFeedMaxItems,
		feedBytes:        DefaultFeedMaxBytes,
		reactionsPerPost: DefaultReactionsPerMoment,
		reqRate:          DefaultRequestsPerMinute / 60.0,
		reqBurst:         DefaultRequestBurst,
		topicRate:        DefaultTopicFramesPerMinute / 60.0,
		topicB:           DefaultTopicBurst,
		maxEpochs:        DefaultMaxEpochs,
		maxTracked:       DefaultMaxTracked,
		timeout:          30 * time.Second,
		janitor:          10 * time.Minute,
	}
}

// WithClock sets the clock of freshness checks, rate limiters and records.
func WithClock(now func() time.Time) Option {
	return func(c *config) error {
		if now == nil {
			return errors.New("moments: nil clock")
		}
		c.now = now
		return nil
	}
}

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option {
	return func(c *config) error {
		if l == nil {
			return errors.New("moments: nil logger")
		}
		c.logger = l
		return nil
	}
}

// WithMetricsTracer sets the tracer that receives the service's events
// (default none). NewMetricsTracer makes a Prometheus one.
func WithMetricsTracer(t MetricsTracer) Option {
	return func(c *config) error {
		c.tracer = t
		return nil
	}
}

// WithFeedQuota sets how many feeds the relay keeps, and how many frames
// and frame bytes each may hold. Beyond them Register and Keep fail with
// ErrQuota.
func WithFeedQuota(feeds int, items, bytes uint64) Option {
	return func(c *config) error {
		if feeds <= 0 || items == 0 || bytes < MaxFrameSize {
			return fmt.Errorf("moments: feed quota %d feeds, %d items, %d bytes: want at least 1, 1 and %d", feeds, items, bytes, MaxFrameSize)
		}
		c.maxFeeds, c.feedItems, c.feedBytes = feeds, items, bytes
		return nil
	}
}

// WithReactionsPerMoment caps the likes and comments kept per moment.
func WithReactionsPerMoment(n int) Option {
	return func(c *config) error {
		if n <= 0 {
			return fmt.Errorf("moments: reactions per moment %d: want at least 1", n)
		}
		c.reactionsPerPost = n
		return nil
	}
}

func rate(what string, n, burst int) error {
	if n <= 0 || burst <= 0 {
		return fmt.Errorf("moments: %s rate %d, burst %d: want both at least 1", what, n, burst)
	}
	return nil
}

// WithRequestRate sets how many relay requests one peer may make per
// minute, and how many at once.
func WithRequestRate(perMinute, burst int) Option {
	return func(c *config) error {
		if err := rate("request", perMinute, burst); err != nil {
			return err
		}
		c.reqRate, c.reqBurst = float64(perMinute)/60, float64(burst)
		return nil
	}
}

// WithTopicRate sets how many frames one topic may carry through the
// relay per minute, and how many at once; beyond them gossiped frames are
// ignored and kept ones refused with ErrRateLimited.
func WithTopicRate(perMinute, burst int) Option {
	return func(c *config) error {
		if err := rate("topic", perMinute, burst); err != nil {
			return err
		}
		c.topicRate, c.topicB = float64(perMinute)/60, float64(burst)
		return nil
	}
}

// WithMaxEpochs caps the topics one feed keeps.
func WithMaxEpochs(n int) Option {
	return func(c *config) error {
		if n <= 0 {
			return fmt.Errorf("moments: max epochs %d: want at least 1", n)
		}
		c.maxEpochs = n
		return nil
	}
}

// WithTimeout bounds one request stream as a whole (default 30 s).
func WithTimeout(d time.Duration) Option {
	return func(c *config) error {
		if d <= 0 {
			return errors.New("moments: timeout must be positive")
		}
		c.timeout = d
		return nil
	}
}

// ClientOption configures NewClient.
type ClientOption func(*clientConfig) error

type clientConfig struct {
	dialTimeout    time.Duration
	requestTimeout time.Duration
	now            func() time.Time
	logger         *slog.Logger
}

func defaultClientConfig() clientConfig {
	return clientConfig{dialTimeout: 10 * time.Second, requestTimeout: 30 * time.Second, now: time.Now}
}

// WithDialTimeout bounds connecting to a relay and opening a stream.
func WithDialTimeout(d time.Duration) ClientOption {
	return func(c *clientConfig) error {
		if d <= 0 {
			return errors.New("moments: dial timeout must be positive")
		}
		c.dialTimeout = d
		return nil
	}
}

// WithRequestTimeout bounds one request once the stream is open.
func WithRequestTimeout(d time.Duration) ClientOption {
	return func(c *clientConfig) error {
		if d <= 0 {
			return errors.New("moments: request timeout must be positive")
		}
		c.requestTimeout = d
		return nil
	}
}

// WithClientClock sets the clock that stamps signed requests.
func WithClientClock(now func() time.Time) ClientOption {
	return func(c *clientConfig) error {
		if now == nil {
			return errors.New("moments: nil clock")
		}
		c.now = now
		return nil
	}
}

// WithClientLogger sets the client's logger (default slog.Default()).
func WithClientLogger(l *slog.Logger) ClientOption {
	return func(c *clientConfig) error {
		if l == nil {
			return errors.New("moments: nil logger")
		}
		c.logger = l
		return nil
	}
}
