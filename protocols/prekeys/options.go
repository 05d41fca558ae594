package prekeys

import (
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// Defaults of the relay's limits (see the Option functions).
const (
	// DefaultFetchesPerMinute and DefaultFetchBurst: fetches one requester
	// (peer id) may make. A device fetches a bundle only to start a
	// session, so this is generous for people and tight for scrapers.
	DefaultFetchesPerMinute = 60
	DefaultFetchBurst       = 30

	// DefaultOneTimePerHour and DefaultOneTimeBurst: fetches per target
	// account that may take one-time prekeys. Beyond them the relay still
	// serves bundles, with the last-resort keys only, so nobody can drain
	// an account's one-time prekeys faster than this.
	DefaultOneTimePerHour = 30
	DefaultOneTimeBurst   = 20

	// DefaultOwnerOpsPerMinute and DefaultOwnerBurst: owner operations
	// (publish, status, purge) one peer may make.
	DefaultOwnerOpsPerMinute = 6
	DefaultOwnerBurst        = 12

	// DefaultMaxAccounts caps the accounts whose prekeys one relay holds
	// (about 300 KB each at the one-time caps).
	DefaultMaxAccounts = 100_000

	// DefaultMaxTracked bounds the requesters and the accounts whose rate
	// buckets the relay tracks at once.
	DefaultMaxTracked = 1 << 16
)

// Option configures NewService.
type Option func(*config) error

type config struct {
	now    func() time.Time
	logger *slog.Logger
	tracer MetricsTracer

	fetchRate, fetchBurst     float64 // per second
	oneTimeRate, oneTimeBurst float64
	ownerRate, ownerBurst     float64
	maxTracked                int
	maxAccounts               int

	fetchTimeout time.Duration // whole fetch stream
	ownerTimeout time.Duration // whole owner stream
	maxOwnerOps  int           // owner operations processed at once
}

func defaultConfig() config {
	return config{
		now:          time.Now,
		fetchRate:    DefaultFetchesPerMinute / 60.0,
		fetchBurst:   DefaultFetchBurst,
		oneTimeRate:  DefaultOneTimePerHour / 3600.0,
		oneTimeBurst: DefaultOneTimeBurst,
		ownerRate:    DefaultOwnerOpsPerMinute / 60.0,
		ownerBurst:   DefaultOwnerBurst,
		maxTracked:   DefaultMaxTracked,
		maxAccounts:  DefaultMaxAccounts,
		fetchTimeout: 10 * time.Second,
		ownerTimeout: 30 * time.Second,
		maxOwnerOps:  2,
	}
}

// WithClock sets the clock of the rate limiters.
func WithClock(now func() time.Time) Option {
	return func(c *config) error {
		if now == nil {
			return errors.New("prekeys: nil clock")
		}
		c.now = now
		return nil
	}
}

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option {
	return func(c *config) error {
		if l == nil {
			return errors.New("prekeys: nil logger")
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

func rate(what string, n, burst int) error {
	if n <= 0 || burst <= 0 {
		return fmt.Errorf("prekeys: %s rate %d, burst %d: want both at least 1", what, n, burst)
	}
	return nil
}

// WithFetchRate sets how many fetches one requester (the connection's
// peer id) may make per minute, and how many at once (the token bucket's
// size). Beyond it fetches fail with ErrRateLimited.
func WithFetchRate(perMinute, burst int) Option {
	return func(c *config) error {
		if err := rate("fetch", perMinute, burst); err != nil {
			return err
		}
		c.fetchRate, c.fetchBurst = float64(perMinute)/60, float64(burst)
		return nil
	}
}

// WithOneTimeRate sets how many fetches per hour, per target account, may
// take one-time prekeys, and how many at once. Beyond it the relay serves
// bundles with the last-resort prekeys only (no one-time X25519 prekey,
// the last-resort ML-KEM prekey), which keeps the account reachable while
// nobody can drain its one-time prekeys.
func WithOneTimeRate(perHour, burst int) Option {
	return func(c *config) error {
		if err := rate("one-time", perHour, burst); err != nil {
			return err
		}
		c.oneTimeRate, c.oneTimeBurst = float64(perHour)/3600, float64(burst)
		return nil
	}
}

// WithOwnerRate sets how many owner operations (publish, status, purge)
// one peer may make per minute, and how many at once. It is checked
// before the relay spends any work on the request.
func WithOwnerRate(perMinute, burst int) Option {
	return func(c *config) error {
		if err := rate("owner", perMinute, burst); err != nil {
			return err
		}
		c.ownerRate, c.ownerBurst = float64(perMinute)/60, float64(burst)
		return nil
	}
}

// WithMaxTracked bounds how many requesters and owners the rate limiters
// track at once, each; the per-account one-time limiter tracks at least
// as many accounts as WithMaxAccounts allows. When a limiter is full, a
// new key takes the place of the one used least recently (which starts
// over with a full bucket if it comes back).
func WithMaxTracked(n int) Option {
	return func(c *config) error {
		if n <= 0 {
			return fmt.Errorf("prekeys: max tracked %d: want at least 1", n)
		}
		c.maxTracked = n
		return nil
	}
}

// WithMaxAccounts caps how many accounts the relay keeps prekeys for; a
// publish for a new account beyond it fails with ErrQuota.
func WithMaxAccounts(n int) Option {
	return func(c *config) error {
		if n <= 0 {
			return fmt.Errorf("prekeys: max accounts %d: want at least 1", n)
		}
		c.maxAccounts = n
		return nil
	}
}

// WithTimeouts sets how long a fetch stream and an owner stream (which
// carries uploads of up to MaxUploadSize) may take as a whole.
func WithTimeouts(fetch, owner time.Duration) Option {
	return func(c *config) error {
		if fetch <= 0 || owner <= 0 {
			return errors.New("prekeys: timeouts must be positive")
		}
		c.fetchTimeout, c.ownerTimeout = fetch, owner
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
			return errors.New("prekeys: dial timeout must be positive")
		}
		c.dialTimeout = d
		return nil
	}
}

// WithRequestTimeout bounds one request once the stream is open: writing
// it and reading the relay's answer.
func WithRequestTimeout(d time.Duration) ClientOption {
	return func(c *clientConfig) error {
		if d <= 0 {
			return errors.New("prekeys: request timeout must be positive")
		}
		c.requestTimeout = d
		return nil
	}
}

// WithClientLogger sets the client's logger (default slog.Default()).
func WithClientLogger(l *slog.Logger) ClientOption {
	return func(c *clientConfig) error {
		if l == nil {
			return errors.New("prekeys: nil logger")
		}
		c.logger = l
		return nil
	}
}
