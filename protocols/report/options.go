package report

import (
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// Defaults of the relay's limits (see the Option functions).
const (
	// DefaultRetention is how long the relay keeps an item its operator
	// has not marked done: long enough for a volunteer operator to get to
	// it, short enough that reports don't pile up forever.
	DefaultRetention = 30 * 24 * time.Hour

	// DefaultReportsPerDay and DefaultFeedbackPerDay: submissions one
	// account may make per UTC day on one relay (feedback and support
	// requests count together).
	DefaultReportsPerDay  = 20
	DefaultFeedbackPerDay = 10

	// DefaultMaxItems and DefaultMaxBytes cap the relay's report queue.
	DefaultMaxItems = 10_000
	DefaultMaxBytes = 256 << 20

	// DefaultFeedbackMaxItems and DefaultFeedbackMaxBytes cap its
	// feedback queue (feedback and support requests), apart from the
	// report queue, so feedback can't crowd out reports.
	DefaultFeedbackMaxItems = 2_000
	DefaultFeedbackMaxBytes = 64 << 20

	// DefaultUrgentReserve is the percentage of the report queue (items
	// and bytes) kept for urgent reports (Reason.Urgent: child safety,
	// self-harm, violence): other reports may fill the rest only.
	DefaultUrgentReserve = 20

	// DefaultPeerShare and DefaultIPShare are the percentages of each
	// queue (items and bytes) that the submissions of one peer, and of
	// one IP address (one IPv6 /64), may hold at once. Identities and
	// peer ids are free, so the connection's peer and address are what
	// bound one source.
	DefaultPeerShare = 2
	DefaultIPShare   = 10

	// DefaultRequestsPerMinute and DefaultRequestBurst: submissions one
	// peer may start.
	DefaultRequestsPerMinute = 10
	DefaultRequestBurst      = 10

	// DefaultIPRequestsPerMinute and DefaultIPRequestBurst: submissions
	// all peers connecting from one IP address (one IPv6 /64) may start
	// together.
	DefaultIPRequestsPerMinute = 30
	DefaultIPRequestBurst      = 30

	// DefaultMaxTracked bounds the peers whose rate buckets the relay
	// tracks at once.
	DefaultMaxTracked = 1 << 16
)

// Option configures NewService.
type Option func(*config) error

type config struct {
	now    func() time.Time
	logger *slog.Logger
	tracer MetricsTracer

	retention                     time.Duration
	reportsPerDay, feedbackPerDay int
	caps                          [queues]queueCap
	urgentReserve                 int     // percent of the report queue
	peerShare, ipShare            int     // percent of each queue
	rate, burst                   float64 // per second, per peer
	ipRate, ipBurst               float64 // per second, per source IP
	maxTracked                    int
	timeout                       time.Duration // whole stream
	maxVerify                     int           // submissions verified and stored at once
}

func defaultConfig() config {
	return config{
		now:            time.Now,
		retention:      DefaultRetention,
		reportsPerDay:  DefaultReportsPerDay,
		feedbackPerDay: DefaultFeedbackPerDay,
		caps: [queues]queueCap{
			QueueReports:  {DefaultMaxItems, DefaultMaxBytes},
			QueueFeedback: {DefaultFeedbackMaxItems, DefaultFeedbackMaxBytes},
		},
		urgentReserve: DefaultUrgentReserve,
		peerShare:     DefaultPeerShare,
		ipShare:       DefaultIPShare,
		rate:          DefaultRequestsPerMinute / 60.0,
		burst:         DefaultRequestBurst,
		ipRate:        DefaultIPRequestsPerMinute / 60.0,
		ipBurst:       DefaultIPRequestBurst,
		maxTracked:    DefaultMaxTracked,
		timeout:       30 * time.Second,
		maxVerify:     4,
	}
}

// WithClock sets the clock: received times, UTC days of the quotas, the
// rate limiter. The store's own clock (storage.WithClock) governs
// retention; give both the same.
func WithClock(now func() time.Time) Option {
	return func(c *config) error {
		if now == nil {
			return errors.New("report: nil clock")
		}
		c.now = now
		return nil
	}
}

// WithLogger sets the logger (default slog.Default()). Submissions'
// content is never logged.
func WithLogger(l *slog.Logger) Option {
	return func(c *config) error {
		if l == nil {
			return errors.New("report: nil logger")
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

// WithRetention sets how long an item stays in its queue unless the
// operator marks it done first.
func WithRetention(d time.Duration) Option {
	return func(c *config) error {
		if d < time.Hour {
			return fmt.Errorf("report: retention %v: want at least 1h", d)
		}
		c.retention = d
		return nil
	}
}

// WithDailyQuota sets how many reports, and how many feedback and support
// requests together, one account may submit per UTC day. Beyond them
// submissions fail with ErrQuota.
func WithDailyQuota(reports, feedback int) Option {
	return func(c *config) error {
		if reports <= 0 || feedback <= 0 {
			return fmt.Errorf("report: daily quota %d reports, %d feedback: want both at least 1", reports, feedback)
		}
		c.reportsPerDay, c.feedbackPerDay = reports, feedback
		return nil
	}
}

// WithQueueLimits caps how many items and how many bytes of reports the
// relay holds in its report queue (defaults DefaultMaxItems,
// DefaultMaxBytes). Beyond them submissions fail with ErrQueueFull until
// the operator marks items done or they expire; reports that are not
// urgent fail once they would reach into the urgent reserve
// (WithUrgentReserve).
func WithQueueLimits(items int, bytes int64) Option {
	return func(c *config) error {
		if items <= 0 || bytes < MaxSubmissionSize {
			return fmt.Errorf("report: queue limits %d items, %d bytes: want at least 1 item and %d bytes", items, bytes, MaxSubmissionSize)
		}
		c.caps[QueueReports] = queueCap{items, bytes}
		return nil
	}
}

// WithFeedbackLimits caps how many items and how many bytes of feedback
// and support requests the relay holds in its feedback queue (defaults
// DefaultFeedbackMaxItems, DefaultFeedbackMaxBytes), apart from the report
// queue. Beyond them submissions fail with ErrQueueFull.
func WithFeedbackLimits(items int, bytes int64) Option {
	return func(c *config) error {
		if items <= 0 || bytes < MaxSubmissionSize {
			return fmt.Errorf("report: feedback limits %d items, %d bytes: want at least 1 item and %d bytes", items, bytes, MaxSubmissionSize)
		}
		c.caps[QueueFeedback] = queueCap{items, bytes}
		return nil
	}
}

// WithUrgentReserve sets the percentage of the report queue, items and
// bytes, that only urgent reports (Reason.Urgent) may fill (default
// DefaultUrgentReserve; 0 for none): when the queue is nearly full, a
// report of a child in danger still gets in.
func WithUrgentReserve(percent int) Option {
	return func(c *config) error {
		if percent < 0 || percent > 90 {
			return fmt.Errorf("report: urgent reserve %d%%: want 0 to 90", percent)
		}
		c.urgentReserve = percent
		return nil
	}
}

// WithSourceShares sets the percentages of each queue, items and bytes,
// that what one peer and what one IP address (one IPv6 /64) submitted may
// hold at once (defaults DefaultPeerShare, DefaultIPShare). A source
// always has room for one item. Beyond its share a source's submissions
// fail with ErrQueueFull until the operator marks its items done or they
// expire. Each item keeps short keyed hashes of its source (shareTags), so
// the shares hold across restarts.
func WithSourceShares(peerPercent, ipPercent int) Option {
	return func(c *config) error {
		if peerPercent < 1 || peerPercent > 100 || ipPercent < 1 || ipPercent > 100 {
			return fmt.Errorf("report: source shares %d%% per peer, %d%% per IP: want 1 to 100", peerPercent, ipPercent)
		}
		c.peerShare, c.ipShare = peerPercent, ipPercent
		return nil
	}
}

// WithRequestRate sets how many submissions one peer may start per minute
// and how many at once (the token bucket's size). Beyond it requests fail
// with ErrRateLimited before the relay does any work.
func WithRequestRate(perMinute, burst int) Option {
	return func(c *config) error {
		if perMinute <= 0 || burst <= 0 {
			return fmt.Errorf("report: request rate %d, burst %d: want both at least 1", perMinute, burst)
		}
		c.rate, c.burst = float64(perMinute)/60, float64(burst)
		return nil
	}
}

// WithIPRequestRate sets how many submissions all peers connecting from
// one IP address (one IPv6 /64) may start per minute together, and how
// many at once (defaults DefaultIPRequestsPerMinute,
// DefaultIPRequestBurst). Beyond it requests fail with ErrRateLimited.
func WithIPRequestRate(perMinute, burst int) Option {
	return func(c *config) error {
		if perMinute <= 0 || burst <= 0 {
			return fmt.Errorf("report: IP request rate %d, burst %d: want both at least 1", perMinute, burst)
		}
		c.ipRate, c.ipBurst = float64(perMinute)/60, float64(burst)
		return nil
	}
}

// WithMaxTracked bounds how many peers the rate limiter tracks at once.
func WithMaxTracked(n int) Option {
	return func(c *config) error {
		if n <= 0 {
			return fmt.Errorf("report: max tracked %d: want at least 1", n)
		}
		c.maxTracked = n
		return nil
	}
}

// WithTimeout sets how long a whole stream may take.
func WithTimeout(d time.Duration) Option {
	return func(c *config) error {
		if d <= 0 {
			return errors.New("report: timeout must be positive")
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
	logger         *slog.Logger
}

func defaultClientConfig() clientConfig {
	return clientConfig{dialTimeout: 10 * time.Second, requestTimeout: 30 * time.Second}
}

// WithDialTimeout bounds connecting to a relay and opening a stream.
func WithDialTimeout(d time.Duration) ClientOption {
	return func(c *clientConfig) error {
		if d <= 0 {
			return errors.New("report: dial timeout must be positive")
		}
		c.dialTimeout = d
		return nil
	}
}

// WithRequestTimeout bounds one submission once the stream is open.
func WithRequestTimeout(d time.Duration) ClientOption {
	return func(c *clientConfig) error {
		if d <= 0 {
			return errors.New("report: request timeout must be positive")
		}
		c.requestTimeout = d
		return nil
	}
}

// WithClientLogger sets the client's logger (default slog.Default()).
func WithClientLogger(l *slog.Logger) ClientOption {
	return func(c *clientConfig) error {
		if l == nil {
			return errors.New("report: nil logger")
		}
		c.logger = l
		return nil
	}
}
