package discovery

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/cloudflare/circl/oprf"
)

// Defaults of the relay's rules and limits (see the Option functions and
// docs/protocol/discovery.md#rate-limits).
const (
	// DefaultCodeTTL is how long a verification code can be submitted.
	DefaultCodeTTL = 10 * time.Minute
	// DefaultMaxAttempts wrong codes lock the account out of verification
	// for DefaultLockout.
	DefaultMaxAttempts = 5
	DefaultLockout     = time.Hour

	// DefaultSendsPerDay and DefaultSendBurst: codes one account may have
	// sent, to any numbers: three at once, then one every 4.8 hours.
	DefaultSendsPerDay = 5
	DefaultSendBurst   = 3
	// DefaultNumberSendsPerDay and DefaultNumberSendBurst: codes one
	// number may be sent, by any accounts, so nobody can flood a phone.
	DefaultNumberSendsPerDay = 5
	DefaultNumberSendBurst   = 3
	// DefaultSMSPerHour and DefaultSMSPerDay: verification texts the relay
	// sends in all, to anyone: the operator pays for each, and account
	// keys and numbers cost an attacker nothing, so this is what bounds
	// the bill (SMS pumping). A relay of 10 000 users (the directory's
	// design size) verifies them all in ten days at this rate.
	DefaultSMSPerHour = 100
	DefaultSMSPerDay  = 1000
	// DefaultGuessesPerNumberPerDay: codes that may be submitted for one
	// number, by any accounts (bursts of as many). With 6-digit codes an
	// attacker who can't read the victim's SMS gets at most this many
	// guesses a day out of a million.
	DefaultGuessesPerNumberPerDay = 10

	// DefaultEvaluationsPerDay and DefaultEvaluationBurst: numbers one
	// account may look up (OPRF evaluations): a first sync of up to 2000
	// contacts at once, then 1000 a day. Clients cache their results, so
	// later syncs only look up new numbers. The same budget holds per
	// verified number, whichever accounts verify it in turn.
	DefaultEvaluationsPerDay = 1000
	DefaultEvaluationBurst   = 2000

	// DefaultListsPerMinute and DefaultListBurst: directory pages one peer
	// may fetch.
	DefaultListsPerMinute = 60
	DefaultListBurst      = 120

	// DefaultAccountOpsPerMinute and DefaultAccountOpBurst: account
	// operations one peer may start (checked before the proof is
	// verified).
	DefaultAccountOpsPerMinute = 30
	DefaultAccountOpBurst      = 30

	// DefaultMaxEntries caps the relay's directory: as many entries as a
	// device's copy holds (MaxCopyEntries; at about 1.8 KB a record, a
	// full directory is about 730 MB, within MaxCopyBytes).
	DefaultMaxEntries = 400_000

	// DefaultTombstoneTTL is how long the directory remembers a deleted
	// entry, so that clients syncing changes learn of the deletion; a
	// client whose copy is older starts over.
	DefaultTombstoneTTL = 30 * 24 * time.Hour

	// DefaultMaxTracked bounds the keys each rate limiter tracks at once.
	DefaultMaxTracked = 1 << 16
)

// Option configures NewService.
type Option func(*config) error

type config struct {
	now    func() time.Time
	logger *slog.Logger
	tracer MetricsTracer

	codeTTL     time.Duration
	maxAttempts int
	lockout     time.Duration

	sendRate, sendBurst             float64 // per account, per second
	numberSendRate, numberSendBurst float64 // per number
	smsPerHour, smsPerDay           float64 // relay-wide
	guessRate, guessBurst           float64 // per number
	evalRate, evalBurst             float64 // per account and per verified number, elements
	listRate, listBurst             float64 // per peer
	opRate, opBurst                 float64 // per peer, before auth
	maxTracked                      int

	maxEntries      int
	tombstoneTTL    time.Duration
	requireVerified bool

	requestTimeout time.Duration // hello and list streams
	accountTimeout time.Duration // account operation streams, SMS included
	maxOps         int           // account operations processed at once

	// Tests only (export_test.go).
	recordRequest func(frame []byte) // every client frame received
	beforePage    func()             // a list: after the floor is checked, before the log is read
	key           *oprf.PrivateKey   // instead of the stored key
	evalKey       *oprf.PrivateKey   // evaluate with it, advertise key: a lying relay
}

const day = 24 * 3600.0

func defaultConfig() config {
	return config{
		now:             time.Now,
		codeTTL:         DefaultCodeTTL,
		maxAttempts:     DefaultMaxAttempts,
		lockout:         DefaultLockout,
		sendRate:        DefaultSendsPerDay / day,
		sendBurst:       DefaultSendBurst,
		numberSendRate:  DefaultNumberSendsPerDay / day,
		numberSendBurst: DefaultNumberSendBurst,
		smsPerHour:      DefaultSMSPerHour,
		smsPerDay:       DefaultSMSPerDay,
		guessRate:       DefaultGuessesPerNumberPerDay / day,
		guessBurst:      DefaultGuessesPerNumberPerDay,
		evalRate:        DefaultEvaluationsPerDay / day,
		evalBurst:       DefaultEvaluationBurst,
		listRate:        DefaultListsPerMinute / 60.0,
		listBurst:       DefaultListBurst,
		opRate:          DefaultAccountOpsPerMinute / 60.0,
		opBurst:         DefaultAccountOpBurst,
		maxTracked:      DefaultMaxTracked,
		maxEntries:      DefaultMaxEntries,
		tombstoneTTL:    DefaultTombstoneTTL,
		requireVerified: true,
		requestTimeout:  10 * time.Second,
		accountTimeout:  30 * time.Second,
		maxOps:          4,
	}
}

// WithClock sets the clock of code expiry, lockouts, the directory's
// deletion records and the rate limiters. The store should share it.
func WithClock(now func() time.Time) Option {
	return func(c *config) error {
		if now == nil {
			return errors.New("discovery: nil clock")
		}
		c.now = now
		return nil
	}
}

// WithLogger sets the logger (default slog.Default()). The service never
// logs phone numbers, codes or OPRF values.
func WithLogger(l *slog.Logger) Option {
	return func(c *config) error {
		if l == nil {
			return errors.New("discovery: nil logger")
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

// WithCodePolicy sets how long a code can be submitted, how many wrong
// codes an account may submit, and how long it is then locked out of
// verification (requesting and submitting codes).
func WithCodePolicy(ttl time.Duration, maxAttempts int, lockout time.Duration) Option {
	return func(c *config) error {
		if ttl <= 0 || maxAttempts <= 0 || lockout <= 0 {
			return errors.New("discovery: code TTL, attempts and lockout must be positive")
		}
		c.codeTTL, c.maxAttempts, c.lockout = ttl, maxAttempts, lockout
		return nil
	}
}

func rate(what string, n, burst int) error {
	if n <= 0 || burst <= 0 {
		return fmt.Errorf("discovery: %s rate %d, burst %d: want both at least 1", what, n, burst)
	}
	return nil
}

// WithSendRate sets how many codes one account may have sent per day, and
// how many at once.
func WithSendRate(perDay, burst int) Option {
	return func(c *config) error {
		if err := rate("send", perDay, burst); err != nil {
			return err
		}
		c.sendRate, c.sendBurst = float64(perDay)/day, float64(burst)
		return nil
	}
}

// WithNumberSendRate sets how many codes one number may be sent per day,
// by any accounts, and how many at once.
func WithNumberSendRate(perDay, burst int) Option {
	return func(c *config) error {
		if err := rate("number send", perDay, burst); err != nil {
			return err
		}
		c.numberSendRate, c.numberSendBurst = float64(perDay)/day, float64(burst)
		return nil
	}
}

// WithSMSBudget sets how many verification texts the relay sends in all,
// to any numbers for any accounts, per hour and per day (each a token
// bucket of that size refilling over the hour or the day). Beyond it
// every code request is refused with ErrRateLimited and the time until
// the budget has room again.
func WithSMSBudget(perHour, perDay int) Option {
	return func(c *config) error {
		if perHour <= 0 || perDay <= 0 {
			return fmt.Errorf("discovery: SMS budget %d an hour, %d a day: want both at least 1", perHour, perDay)
		}
		c.smsPerHour, c.smsPerDay = float64(perHour), float64(perDay)
		return nil
	}
}

// WithGuessRate sets how many codes may be submitted per day for one
// number, by any accounts, and how many at once. Beyond it submissions
// fail with ErrTooManyAttempts and the pending code is void.
func WithGuessRate(perDay, burst int) Option {
	return func(c *config) error {
		if err := rate("guess", perDay, burst); err != nil {
			return err
		}
		c.guessRate, c.guessBurst = float64(perDay)/day, float64(burst)
		return nil
	}
}

// WithEvaluationRate sets how many numbers one account may look up per
// day, and how many at once (the largest first sync). The same budget
// applies to each verified number, shared by every account that verifies
// it, so moving a number to fresh accounts buys no lookups.
func WithEvaluationRate(perDay, burst int) Option {
	return func(c *config) error {
		if err := rate("evaluation", perDay, burst); err != nil {
			return err
		}
		c.evalRate, c.evalBurst = float64(perDay)/day, float64(burst)
		return nil
	}
}

// WithListRate sets how many directory pages one peer may fetch per
// minute, and how many at once.
func WithListRate(perMinute, burst int) Option {
	return func(c *config) error {
		if err := rate("list", perMinute, burst); err != nil {
			return err
		}
		c.listRate, c.listBurst = float64(perMinute)/60, float64(burst)
		return nil
	}
}

// WithAccountOpRate sets how many account operations one peer may start
// per minute, and how many at once. It is checked before the relay
// spends any work on the request.
func WithAccountOpRate(perMinute, burst int) Option {
	return func(c *config) error {
		if err := rate("account op", perMinute, burst); err != nil {
			return err
		}
		c.opRate, c.opBurst = float64(perMinute)/60, float64(burst)
		return nil
	}
}

// WithMaxEntries caps the directory; enrolling a new number beyond it
// fails with ErrQuota.
func WithMaxEntries(n int) Option {
	return func(c *config) error {
		if n <= 0 {
			return fmt.Errorf("discovery: max entries %d: want at least 1", n)
		}
		c.maxEntries = n
		return nil
	}
}

// WithTombstoneTTL sets how long the directory remembers deletions.
func WithTombstoneTTL(d time.Duration) Option {
	return func(c *config) error {
		if d <= 0 {
			return errors.New("discovery: tombstone TTL must be positive")
		}
		c.tombstoneTTL = d
		return nil
	}
}

// WithMaxTracked bounds how many keys each rate limiter tracks at once.
// When a limiter is full, a new key takes the place of the one used least
// recently (which starts over with a full budget if it comes back).
func WithMaxTracked(n int) Option {
	return func(c *config) error {
		if n <= 0 {
			return fmt.Errorf("discovery: max tracked %d: want at least 1", n)
		}
		c.maxTracked = n
		return nil
	}
}

// WithRequireVerified sets whether looking numbers up needs a verified
// number on this relay (default true). Requiring it makes every account
// that queries cost a phone number that received an SMS, which is what
// keeps enumerating the number space expensive; turn it off only on a
// relay whose users are all known (a family's own relay).
func WithRequireVerified(require bool) Option {
	return func(c *config) error {
		c.requireVerified = require
		return nil
	}
}

// WithTimeouts sets how long a hello or list stream, and an account
// operation stream (which may wait for the SMS gateway), may take as a
// whole.
func WithTimeouts(request, account time.Duration) Option {
	return func(c *config) error {
		if request <= 0 || account <= 0 {
			return errors.New("discovery: timeouts must be positive")
		}
		c.requestTimeout, c.accountTimeout = request, account
		return nil
	}
}

// ClientOption configures NewClient.
type ClientOption func(*clientConfig) error

type clientConfig struct {
	dialTimeout    time.Duration
	requestTimeout time.Duration
	syncTimeout    time.Duration
	logger         *slog.Logger

	syncPages   int // MaxSyncPages; tests shrink it (export_test.go)
	pageEntries int // entries Sync asks of a page: MaxPageEntries; tests shrink it
}

func defaultClientConfig() clientConfig {
	return clientConfig{dialTimeout: 10 * time.Second, requestTimeout: 40 * time.Second, syncTimeout: DefaultSyncTimeout, syncPages: MaxSyncPages, pageEntries: MaxPageEntries}
}

// WithDialTimeout bounds connecting to a relay and opening a stream.
func WithDialTimeout(d time.Duration) ClientOption {
	return func(c *clientConfig) error {
		if d <= 0 {
			return errors.New("discovery: dial timeout must be positive")
		}
		c.dialTimeout = d
		return nil
	}
}

// WithRequestTimeout bounds one request once the stream is open: writing
// it and reading the relay's answer (which, for a code request, waits for
// the relay's SMS gateway).
func WithRequestTimeout(d time.Duration) ClientOption {
	return func(c *clientConfig) error {
		if d <= 0 {
			return errors.New("discovery: request timeout must be positive")
		}
		c.requestTimeout = d
		return nil
	}
}

// WithSyncTimeout bounds one directory sync as a whole (Sync, and the
// sync Discover starts with; default DefaultSyncTimeout), over all its
// pages; each page is bounded by the dial and request timeouts besides.
// A sync cut short keeps the pages it applied, so the next one goes on
// where it stopped.
func WithSyncTimeout(d time.Duration) ClientOption {
	return func(c *clientConfig) error {
		if d <= 0 {
			return errors.New("discovery: sync timeout must be positive")
		}
		c.syncTimeout = d
		return nil
	}
}

// WithClientLogger sets the client's logger (default slog.Default()).
func WithClientLogger(l *slog.Logger) ClientOption {
	return func(c *clientConfig) error {
		if l == nil {
			return errors.New("discovery: nil logger")
		}
		c.logger = l
		return nil
	}
}
