package mailbox

import (
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// Option configures NewService.
type Option func(*config) error

type config struct {
	now    func() time.Time
	maxAge time.Duration
	logger *slog.Logger
	tracer MetricsTracer

	maxItems int
	maxBytes int64

	ratePerMin      int
	rateBytesPerMin int64
	maxDepositors   int
	purgesPerMin    int
	srcRate         float64 // envelope bytes a second, per source address
	srcBurst        float64
	regTTL          time.Duration
	regRate         float64 // new registrations a second, per source address
	regBurst        float64

	pushItems int
	pushBytes int

	streamTimeout  time.Duration // unauthenticated streams: idle, and challenge lifetime
	sessionTimeout time.Duration // authenticated sessions: idle
	writeTimeout   time.Duration
	maxInflight    int
	groupCost      int // estimated transaction bytes of one group commit
}

func defaultConfig() config {
	return config{
		now:             time.Now,
		maxAge:          MaxAge,
		maxItems:        DefaultMaxItems,
		maxBytes:        DefaultMaxBytes,
		ratePerMin:      DefaultDepositsPerMinute,
		rateBytesPerMin: DefaultDepositBytesPerMinute,
		maxDepositors:   1 << 16,
		purgesPerMin:    DefaultPurgesPerMinute,
		srcRate:         DefaultSourceDepositBytesPerHour / 3600.0,
		srcBurst:        DefaultSourceDepositBurst,
		regTTL:          DefaultRegistrationTTL,
		regRate:         DefaultSourceRegistrationsPerHour / 3600.0,
		regBurst:        DefaultSourceRegistrationBurst,
		pushItems:       256,
		pushBytes:       1 << 20,
		streamTimeout:   30 * time.Second,
		sessionTimeout:  3 * time.Minute,
		writeTimeout:    30 * time.Second,
		maxInflight:     4,
		groupCost:       groupMaxCost,
	}
}

// WithClock sets the clock that stamps deposits and decides expiry on
// every read. Inject the same clock into the store (storage.WithClock) so
// its TTL and sweep agree.
func WithClock(now func() time.Time) Option {
	return func(c *config) error {
		if now == nil {
			return errors.New("mailbox: nil clock")
		}
		c.now = now
		return nil
	}
}

// WithMaxAge lowers how long envelopes are kept, for tests. It can't
// exceed MaxAge: the 15-day limit is a promise to users.
func WithMaxAge(d time.Duration) Option {
	return func(c *config) error {
		if d <= 0 || d > MaxAge {
			return fmt.Errorf("mailbox: max age %v outside (0, %v]", d, MaxAge)
		}
		c.maxAge = d
		return nil
	}
}

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option {
	return func(c *config) error {
		if l == nil {
			return errors.New("mailbox: nil logger")
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

// WithMailboxQuota sets how many envelopes (items) and envelope bytes one
// mailbox may hold.
func WithMailboxQuota(items int, bytes int64) Option {
	return func(c *config) error {
		if items <= 0 || bytes < MaxEnvelopeSize {
			return fmt.Errorf("mailbox: quota of %d items and %d bytes: want at least 1 item and %d bytes", items, bytes, MaxEnvelopeSize)
		}
		c.maxItems, c.maxBytes = items, bytes
		return nil
	}
}

// WithDepositorRate sets how many envelopes and envelope bytes one
// depositor (the depositing connection's peer id) may deposit per minute.
// Each is a token bucket that holds one minute's worth, so a burst of that
// size passes at once.
func WithDepositorRate(itemsPerMinute int, bytesPerMinute int64) Option {
	return func(c *config) error {
		if itemsPerMinute <= 0 || bytesPerMinute < MaxEnvelopeSize {
			return fmt.Errorf("mailbox: depositor rate of %d items and %d bytes per minute: want at least 1 item and %d bytes", itemsPerMinute, bytesPerMinute, MaxEnvelopeSize)
		}
		c.ratePerMin, c.rateBytesPerMin = itemsPerMinute, bytesPerMinute
		return nil
	}
}

// WithSourceDepositRate sets how many envelope bytes all the depositors
// connecting from one address (netkit.SourceKey: an IPv4 address, an
// IPv6 /64; relayed circuits count as one) may deposit together: burst
// at once, then bytesPerHour an hour (defaults
// DefaultSourceDepositBytesPerHour, DefaultSourceDepositBurst). Envelopes
// beyond it are refused as rate limited, with a retry time. Addresses are
// tracked as depositors are (WithMaxDepositors).
func WithSourceDepositRate(bytesPerHour, burst uint64) Option {
	return func(c *config) error {
		if bytesPerHour == 0 || burst < MaxEnvelopeSize {
			return fmt.Errorf("mailbox: source deposit rate of %d bytes an hour, burst %d: want a rate and a burst of at least %d bytes", bytesPerHour, burst, MaxEnvelopeSize)
		}
		c.srcRate, c.srcBurst = float64(bytesPerHour)/3600, float64(burst)
		return nil
	}
}

// WithRegistrationTTL sets how long a mailbox stays registered after its
// owner's last authentication (default DefaultRegistrationTTL). Deposits
// to a mailbox that isn't registered are refused (ErrUnknownMailbox). It
// can't be shorter than MaxAge plus a day: an owner offline for longer
// than the mail it could still fetch would find its mailbox gone.
func WithRegistrationTTL(d time.Duration) Option {
	return func(c *config) error {
		if d < MaxAge+24*time.Hour {
			return fmt.Errorf("mailbox: registration period %v: want at least %v", d, MaxAge+24*time.Hour)
		}
		c.regTTL = d
		return nil
	}
}

// WithSourceRegistrationRate sets how many mailboxes the owners
// connecting from one address (netkit.SourceKey) may newly register:
// burst at once, then perHour an hour (defaults
// DefaultSourceRegistrationsPerHour, DefaultSourceRegistrationBurst).
// Authenticating as the owner of a mailbox that is registered already
// costs nothing; beyond the budget, Auth is refused as rate limited.
func WithSourceRegistrationRate(perHour, burst uint64) Option {
	return func(c *config) error {
		if perHour == 0 || burst == 0 {
			return fmt.Errorf("mailbox: source registration rate of %d an hour, burst %d: want both at least 1", perHour, burst)
		}
		c.regRate, c.regBurst = float64(perHour)/3600, float64(burst)
		return nil
	}
}

// WithMaxDepositors bounds how many depositors' rate buckets the relay
// tracks at once. Idle ones (a full minute without deposits) are forgotten;
// when the table is full, a new depositor takes the place of the one that
// deposited least recently (which starts over with full buckets if it
// comes back).
func WithMaxDepositors(n int) Option {
	return func(c *config) error {
		if n <= 0 {
			return fmt.Errorf("mailbox: max depositors %d: want at least 1", n)
		}
		c.maxDepositors = n
		return nil
	}
}

// WithPurgeRate sets how many purges one peer may request per minute (a
// token bucket that holds one minute's worth). A purge over the budget is
// refused with ErrRateLimited and a retry time.
func WithPurgeRate(perMinute int) Option {
	return func(c *config) error {
		if perMinute <= 0 {
			return fmt.Errorf("mailbox: purge rate %d per minute: want at least 1", perMinute)
		}
		c.purgesPerMin = perMinute
		return nil
	}
}

// WithPushQueue bounds the items and envelope bytes queued for push on one
// owner session. When full, the relay stops pushing and sends a "more:
// fetch" notice instead.
func WithPushQueue(items, bytes int) Option {
	return func(c *config) error {
		if items <= 0 || bytes < MaxEnvelopeSize {
			return fmt.Errorf("mailbox: push queue of %d items and %d bytes: want at least 1 item and %d bytes", items, bytes, MaxEnvelopeSize)
		}
		c.pushItems, c.pushBytes = items, bytes
		return nil
	}
}

// WithTimeouts sets how long an unauthenticated stream may stay idle (and
// how long a challenge stays valid), how long an owner session may stay
// idle, and how long one write may take.
func WithTimeouts(stream, session, write time.Duration) Option {
	return func(c *config) error {
		if stream <= 0 || session <= 0 || write <= 0 {
			return errors.New("mailbox: timeouts must be positive")
		}
		c.streamTimeout, c.sessionTimeout, c.writeTimeout = stream, session, write
		return nil
	}
}

// ClientOption configures NewClient.
type ClientOption func(*clientConfig) error

type clientConfig struct {
	dialTimeout time.Duration
	keepAlive   time.Duration
	window      int
	pushBuffer  int
	logger      *slog.Logger
}

func defaultClientConfig() clientConfig {
	return clientConfig{
		dialTimeout: 10 * time.Second,
		keepAlive:   time.Minute,
		window:      4,
		pushBuffer:  64,
	}
}

// WithDialTimeout bounds connecting to a relay and opening a stream.
func WithDialTimeout(d time.Duration) ClientOption {
	return func(c *clientConfig) error {
		if d <= 0 {
			return errors.New("mailbox: dial timeout must be positive")
		}
		c.dialTimeout = d
		return nil
	}
}

// WithKeepAlive sets how often an idle session pings the relay. The relay
// ends sessions idle for longer than its session timeout (3 minutes by
// default), and the client gives up on a relay silent for 2.5 times this.
func WithKeepAlive(d time.Duration) ClientOption {
	return func(c *clientConfig) error {
		if d <= 0 {
			return errors.New("mailbox: keepalive must be positive")
		}
		c.keepAlive = d
		return nil
	}
}

// WithWindow sets how many deposit requests Deposit sends before it waits
// for the first answer (pipelining).
func WithWindow(n int) ClientOption {
	return func(c *clientConfig) error {
		if n <= 0 {
			return errors.New("mailbox: window must be positive")
		}
		c.window = n
		return nil
	}
}

// WithPushBuffer sets how many pushes a session holds for the caller
// before it drops them and reports Push.Missed instead.
func WithPushBuffer(n int) ClientOption {
	return func(c *clientConfig) error {
		if n <= 0 {
			return errors.New("mailbox: push buffer must be positive")
		}
		c.pushBuffer = n
		return nil
	}
}

// WithClientLogger sets the client's logger (default slog.Default()).
func WithClientLogger(l *slog.Logger) ClientOption {
	return func(c *clientConfig) error {
		if l == nil {
			return errors.New("mailbox: nil logger")
		}
		c.logger = l
		return nil
	}
}
