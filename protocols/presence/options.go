package presence

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/kinmesh/kinmesh/protocols/e2ee"
)

// Defaults (see the Option functions).
const (
	// DefaultInterval is how often an online device beacons each contact
	// it can reach.
	DefaultInterval = 3 * time.Minute
	// DefaultOnlineWindow is how long after its latest beacon a contact
	// still counts as online: two beacons may be lost.
	DefaultOnlineWindow = 7 * time.Minute
	// DefaultFreshness is how far a beacon's time may be from the
	// receiver's clock: transit plus clock skew. Older (or later) beacons
	// are dropped, so a captured beacon can't be replayed later.
	DefaultFreshness = 5 * time.Minute
	// DefaultCheckEvery is how often the service looks for contacts that
	// are due a beacon (new contacts, retries); it sends nothing when none
	// is due.
	DefaultCheckEvery = 10 * time.Second
	// DefaultBeaconsPerMinute and DefaultBeaconBurst: beacons one peer
	// may send us.
	DefaultBeaconsPerMinute = 12
	DefaultBeaconBurst      = 6
)

// Option configures New.
type Option func(*config) error

type config struct {
	now      func() time.Time
	logger   *slog.Logger
	tracer   MetricsTracer
	share    Share
	onChange func(e2ee.AccountID)

	interval     time.Duration
	onlineWindow time.Duration
	freshness    time.Duration
	checkEvery   time.Duration
	maxBackoff   time.Duration

	rate, burst  float64 // inbound, per peer, per second
	maxTracked   int
	maxInbound   int // streams handled at once
	parallel     int // beacons sent at once
	dialTimeout  time.Duration
	timeout      time.Duration // one exchange once the stream is open
	closeTimeout time.Duration // offline beacons at Close
	skipFirst    bool          // tests: no round when the loop starts
}

func defaultConfig() config {
	return config{
		now:          time.Now,
		interval:     DefaultInterval,
		onlineWindow: DefaultOnlineWindow,
		freshness:    DefaultFreshness,
		checkEvery:   DefaultCheckEvery,
		maxBackoff:   time.Hour,
		rate:         DefaultBeaconsPerMinute / 60.0,
		burst:        DefaultBeaconBurst,
		maxTracked:   4096,
		maxInbound:   16,
		parallel:     8,
		dialTimeout:  5 * time.Second,
		timeout:      10 * time.Second,
		closeTimeout: 3 * time.Second,
	}
}

// WithClock sets the clock of beacon times, freshness and last seen.
func WithClock(now func() time.Time) Option {
	return func(c *config) error {
		if now == nil {
			return errors.New("presence: nil clock")
		}
		c.now = now
		return nil
	}
}

// WithLogger sets the logger (default slog.Default()). Contacts' ids are
// logged at debug level only.
func WithLogger(l *slog.Logger) Option {
	return func(c *config) error {
		if l == nil {
			return errors.New("presence: nil logger")
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

// WithShare sets the setting the service starts with (default
// ShareContacts); SetShare changes it.
func WithShare(s Share) Option {
	return func(c *config) error {
		if s != ShareContacts && s != ShareNobody {
			return fmt.Errorf("presence: share %d: %w", s, ErrInvalidSetting)
		}
		c.share = s
		return nil
	}
}

// WithOnChange sets a function called (from the service's goroutines,
// quickly) whenever what Lookup returns for a contact may have changed.
func WithOnChange(f func(e2ee.AccountID)) Option {
	return func(c *config) error {
		c.onChange = f
		return nil
	}
}

// WithTiming sets the beacon interval, the online window (longer than the
// interval) and the freshness window.
func WithTiming(interval, onlineWindow, freshness time.Duration) Option {
	return func(c *config) error {
		if interval <= 0 || onlineWindow <= interval || freshness <= 0 {
			return fmt.Errorf("presence: timing %v/%v/%v: want positive, online window longer than interval", interval, onlineWindow, freshness)
		}
		c.interval, c.onlineWindow, c.freshness = interval, onlineWindow, freshness
		return nil
	}
}

// WithCheckEvery sets how often the service looks for contacts due a
// beacon.
func WithCheckEvery(d time.Duration) Option {
	return func(c *config) error {
		if d <= 0 {
			return errors.New("presence: check interval must be positive")
		}
		c.checkEvery = d
		return nil
	}
}

// WithRate sets how many beacons one peer may send us per minute, and how
// many at once. Beyond it streams are reset unread.
func WithRate(perMinute, burst int) Option {
	return func(c *config) error {
		if perMinute <= 0 || burst <= 0 {
			return fmt.Errorf("presence: rate %d, burst %d: want both at least 1", perMinute, burst)
		}
		c.rate, c.burst = float64(perMinute)/60, float64(burst)
		return nil
	}
}

// WithTimeouts sets how long reaching a contact's device may take, and
// one exchange once the stream is open.
func WithTimeouts(dial, exchange time.Duration) Option {
	return func(c *config) error {
		if dial <= 0 || exchange <= 0 {
			return errors.New("presence: timeouts must be positive")
		}
		c.dialTimeout, c.timeout = dial, exchange
		return nil
	}
}
