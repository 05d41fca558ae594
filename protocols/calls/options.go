package calls

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/pion/transport/v5"
	"github.com/pion/webrtc/v4"

	"github.com/kinmesh/kinmesh/storage"
)

// Limits bound what other devices can make this one do. Zero fields take
// the defaults listed.
type Limits struct {
	// MaxLive caps live calls (any state but ended) at once (default 4).
	// Beyond it new calls fail with ErrTooManyCalls and invites are
	// refused.
	MaxLive int
	// MaxRinging caps incoming calls ringing at once (default 3): a ring
	// flood can't bury a call the user wants.
	MaxRinging int
	// InvitesPerMinute and InviteBurst: invites one caller (by peer and,
	// separately, by account) may send (defaults 10 a minute, 5 at once).
	InvitesPerMinute, InviteBurst int
	// RingTimeout is how long an incoming call rings before it is missed
	// (default 60s).
	RingTimeout time.Duration
	// MaxHistory caps the ended calls kept (default 1000; oldest go first).
	MaxHistory int
}

func (l *Limits) defaults() error {
	set := func(p *int, def int) {
		if *p == 0 {
			*p = def
		}
	}
	set(&l.MaxLive, 4)
	set(&l.MaxRinging, 3)
	set(&l.InvitesPerMinute, 10)
	set(&l.InviteBurst, 5)
	set(&l.MaxHistory, 1000)
	if l.RingTimeout == 0 {
		l.RingTimeout = 60 * time.Second
	}
	if l.MaxLive < 1 || l.MaxRinging < 1 || l.InvitesPerMinute < 1 || l.InviteBurst < 1 || l.MaxHistory < 1 || l.RingTimeout < time.Second {
		return fmt.Errorf("calls: limits %+v: want every one positive (ring timeout at least 1s)", *l)
	}
	return nil
}

// ICEServers returns the STUN and TURN servers, with credentials, a call
// may use. It is called once per call (and again for an ICE restart).
type ICEServers func(ctx context.Context) ([]webrtc.ICEServer, error)

// Option configures NewService.
type Option func(*config) error

type config struct {
	ice        ICEServers
	forceRelay func() bool
	history    *storage.Namespace
	onEvent    func(Info)
	limits     Limits
	now        func() time.Time
	logger     *slog.Logger
	tracer     MetricsTracer
	loopback   bool
	maxTracked int
	net        transport.Net // tests: the sockets pion uses (nil: the OS's); export_test.go
	// afterInvite, in tests, runs in dial once the invite is written,
	// before the stream is handed to the call's loop (export_test.go).
	afterInvite func()
}

func defaultConfig() config {
	return config{now: time.Now, maxTracked: 1 << 12, forceRelay: func() bool { return false }}
}

// WithICEServers sets where calls get their STUN/TURN servers (default:
// none, so host candidates only: calls then connect only where the two
// devices can reach each other's addresses).
func WithICEServers(f ICEServers) Option {
	return func(c *config) error {
		c.ice = f
		return nil
	}
}

// WithForceRelay sets the device-wide relay-only setting, read when each
// call starts (default off). Relay-only calls gather TURN relay candidates
// only (ICETransportPolicyRelay): the other party sees the relay's
// address, never this device's. Options.ForceRelay asks it per call.
func WithForceRelay(on func() bool) Option {
	return func(c *config) error {
		if on == nil {
			return errors.New("calls: nil force-relay setting")
		}
		c.forceRelay = on
		return nil
	}
}

// WithHistory keeps calls (with their statistics) in ns, so they stay
// readable across restarts (default: in memory only). Keys name no
// account.
func WithHistory(ns *storage.Namespace) Option {
	return func(c *config) error {
		c.history = ns
		return nil
	}
}

// WithEvents sets a function that gets a call's Info every time its state
// changes (default none). It must not block.
func WithEvents(f func(Info)) Option {
	return func(c *config) error {
		c.onEvent = f
		return nil
	}
}

// WithLimits sets the service's limits (see Limits for the defaults).
func WithLimits(l Limits) Option {
	return func(c *config) error {
		if err := l.defaults(); err != nil {
			return err
		}
		c.limits = l
		return nil
	}
}

// WithClock sets the clock calls are timed by.
func WithClock(now func() time.Time) Option {
	return func(c *config) error {
		if now == nil {
			return errors.New("calls: nil clock")
		}
		c.now = now
		return nil
	}
}

// WithLogger sets the logger (default slog.Default()); pion's logs go to
// it at debug level.
func WithLogger(l *slog.Logger) Option {
	return func(c *config) error {
		if l == nil {
			return errors.New("calls: nil logger")
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

// WithLoopbackCandidates offers host candidates on loopback too (default
// off). For tests and networks on one machine only: a real device has
// nothing to gain from them.
func WithLoopbackCandidates(on bool) Option {
	return func(c *config) error {
		c.loopback = on
		return nil
	}
}
