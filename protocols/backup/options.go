package backup

import (
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// Defaults of the relay's rules and limits (see the Option functions and
// docs/protocol/recovery.md#rate-limits-and-quotas).
const (
	// DefaultTTL is how long a relay keeps a backup that is not
	// refreshed. Devices refresh theirs at least daily, so only a backup
	// whose account has had no device online for half a year expires.
	DefaultTTL = 180 * 24 * time.Hour

	// DefaultMaxBackups caps the backups one relay holds (at most 1 MiB
	// each, 4 KiB to 64 KiB for most families).
	DefaultMaxBackups = 100_000

	// DefaultPutsPerDay and DefaultPutBurst: uploads one account may make.
	// Devices upload when something changed (checked every few minutes)
	// and once a day.
	DefaultPutsPerDay = 48
	DefaultPutBurst   = 12

	// DefaultOpsPerMinute and DefaultOpBurst: operations one peer may
	// start (checked before the proof is verified).
	DefaultOpsPerMinute = 20
	DefaultOpBurst      = 20

	// DefaultSweepInterval is how often the relay deletes backups whose
	// number is no longer linked to the account that uploaded them
	// (unlinked, moved to another account, account deleted). Such a
	// backup can't be fetched from the moment its link goes: every fetch
	// checks the link.
	DefaultSweepInterval = time.Hour

	// DefaultMaxTracked bounds the keys each rate limiter tracks at once.
	DefaultMaxTracked = 1 << 16
)

// Option configures NewService.
type Option func(*config) error

type config struct {
	now    func() time.Time
	logger *slog.Logger
	tracer MetricsTracer

	ttl           time.Duration
	maxBackups    int
	putRate       float64 // per account, per second
	putBurst      float64
	opRate        float64 // per peer, per second
	opBurst       float64
	maxTracked    int
	sweepInterval time.Duration

	helloTimeout time.Duration // until the signed request is in
	opTimeout    time.Duration // the whole stream
	maxOps       int           // operations processed at once

	// Tests only (export_test.go).
	recordRequest func(frame []byte) // every client frame received
}

const day = 24 * 3600.0

func defaultConfig() config {
	return config{
		now:           time.Now,
		ttl:           DefaultTTL,
		maxBackups:    DefaultMaxBackups,
		putRate:       DefaultPutsPerDay / day,
		putBurst:      DefaultPutBurst,
		opRate:        DefaultOpsPerMinute / 60.0,
		opBurst:       DefaultOpBurst,
		maxTracked:    DefaultMaxTracked,
		sweepInterval: DefaultSweepInterval,
		helloTimeout:  10 * time.Second,
		opTimeout:     60 * time.Second,
		maxOps:        4,
	}
}

// WithClock sets the clock of backup times, expiry and the rate limiters.
// The store should share it.
func WithClock(now func() time.Time) Option {
	return func(c *config) error {
		if now == nil {
			return errors.New("backup: nil clock")
		}
		c.now = now
		return nil
	}
}

// WithLogger sets the logger (default slog.Default()). The service never
// logs backups, codes, numbers or OPRF values.
func WithLogger(l *slog.Logger) Option {
	return func(c *config) error {
		if l == nil {
			return errors.New("backup: nil logger")
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

// WithTTL sets how long a backup is kept without a refresh.
func WithTTL(d time.Duration) Option {
	return func(c *config) error {
		if d <= 0 {
			return errors.New("backup: TTL must be positive")
		}
		c.ttl = d
		return nil
	}
}

// WithMaxBackups caps the backups the relay holds; a new account's upload
// beyond it fails with ErrQuota.
func WithMaxBackups(n int) Option {
	return func(c *config) error {
		if n <= 0 {
			return fmt.Errorf("backup: max backups %d: want at least 1", n)
		}
		c.maxBackups = n
		return nil
	}
}

func rate(what string, n, burst int) error {
	if n <= 0 || burst <= 0 {
		return fmt.Errorf("backup: %s rate %d, burst %d: want both at least 1", what, n, burst)
	}
	return nil
}

// WithPutRate sets how many uploads one account may make per day, and how
// many at once.
func WithPutRate(perDay, burst int) Option {
	return func(c *config) error {
		if err := rate("put", perDay, burst); err != nil {
			return err
		}
		c.putRate, c.putBurst = float64(perDay)/day, float64(burst)
		return nil
	}
}

// WithOpRate sets how many operations one peer may start per minute, and
// how many at once. It is checked before the relay spends any work on
// the request.
func WithOpRate(perMinute, burst int) Option {
	return func(c *config) error {
		if err := rate("op", perMinute, burst); err != nil {
			return err
		}
		c.opRate, c.opBurst = float64(perMinute)/60, float64(burst)
		return nil
	}
}

// WithMaxTracked bounds how many keys each rate limiter tracks at once.
func WithMaxTracked(n int) Option {
	return func(c *config) error {
		if n <= 0 {
			return fmt.Errorf("backup: max tracked %d: want at least 1", n)
		}
		c.maxTracked = n
		return nil
	}
}

// WithSweepInterval sets how often the relay deletes backups whose number
// link is gone.
func WithSweepInterval(d time.Duration) Option {
	return func(c *config) error {
		if d <= 0 {
			return errors.New("backup: sweep interval must be positive")
		}
		c.sweepInterval = d
		return nil
	}
}

// WithTimeouts sets how long a stream may take until its signed request
// is in (hello), and as a whole (op; a 1 MiB upload on a slow link).
func WithTimeouts(hello, op time.Duration) Option {
	return func(c *config) error {
		if hello <= 0 || op <= 0 {
			return errors.New("backup: timeouts must be positive")
		}
		c.helloTimeout, c.opTimeout = hello, op
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
	return clientConfig{dialTimeout: 10 * time.Second, requestTimeout: 60 * time.Second}
}

// WithDialTimeout bounds connecting to a relay and opening a stream.
func WithDialTimeout(d time.Duration) ClientOption {
	return func(c *clientConfig) error {
		if d <= 0 {
			return errors.New("backup: dial timeout must be positive")
		}
		c.dialTimeout = d
		return nil
	}
}

// WithRequestTimeout bounds one request once the stream is open.
func WithRequestTimeout(d time.Duration) ClientOption {
	return func(c *clientConfig) error {
		if d <= 0 {
			return errors.New("backup: request timeout must be positive")
		}
		c.requestTimeout = d
		return nil
	}
}

// WithClientLogger sets the client's logger (default slog.Default()).
func WithClientLogger(l *slog.Logger) ClientOption {
	return func(c *clientConfig) error {
		if l == nil {
			return errors.New("backup: nil logger")
		}
		c.logger = l
		return nil
	}
}
