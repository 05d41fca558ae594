package calls

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Refusal reasons of incoming invites, for metrics.
const (
	RefusedRateLimited = "rate_limited" // too many invites from the caller's peer or account
	RefusedUnknown     = "unknown"      // not a contact, or a device its record doesn't list
	RefusedBlocked     = "blocked"      // a blocked contact: never rings
	RefusedBusy        = "busy"         // in another call
	RefusedTooMany     = "too_many"     // ringing or live-call caps reached
	RefusedMalformed   = "malformed"    // a first frame that is no invite or resume
)

// MetricsTracer receives the service's events. Implementations must be
// safe for concurrent use and fast. A nil MetricsTracer is valid and
// records nothing.
type MetricsTracer interface {
	// CallStarted: a call began (dir "in": it rang here).
	CallStarted(dir Direction)
	// CallEnded: a call ended in state with reason; connected is how long
	// it was connected (0: never), path "direct", "relay" or "".
	CallEnded(dir Direction, state State, reason string, connected time.Duration, path string)
	// Setup: a call connected, setup after its offer.
	Setup(setup time.Duration, path string)
	// InviteRefused: an incoming invite was refused before ringing.
	InviteRefused(why string)
	// FrameRejected: a frame failed validation (its kind, or "unknown").
	FrameRejected(kind string)
	// Restart: an ICE restart was started.
	Restart()
}

type tracer struct{ t MetricsTracer }

func (t tracer) callStarted(d Direction) {
	if t.t != nil {
		t.t.CallStarted(d)
	}
}

func (t tracer) callEnded(d Direction, s State, reason string, connected time.Duration, path string) {
	if t.t != nil {
		t.t.CallEnded(d, s, reason, connected, path)
	}
}

func (t tracer) setup(d time.Duration, path string) {
	if t.t != nil {
		t.t.Setup(d, path)
	}
}

func (t tracer) inviteRefused(why string) {
	if t.t != nil {
		t.t.InviteRefused(why)
	}
}

func (t tracer) frameRejected(k string) {
	if t.t != nil {
		t.t.FrameRejected(k)
	}
}

func (t tracer) restart() {
	if t.t != nil {
		t.t.Restart()
	}
}

type promTracer struct {
	started  *prometheus.CounterVec
	ended    *prometheus.CounterVec
	duration *prometheus.HistogramVec
	setup    *prometheus.HistogramVec
	refused  *prometheus.CounterVec
	rejected *prometheus.CounterVec
	restarts prometheus.Counter
}

// NewMetricsTracer returns a MetricsTracer that exports Prometheus metrics
// named kinmesh_calls_* on reg (never the global registry). They hold no
// account ids and no quality statistics: those stay on the device unless
// the user consents to sharing them.
//
//	kinmesh_calls_started_total{direction}              in, out
//	kinmesh_calls_ended_total{direction,state,reason}
//	kinmesh_calls_connected_seconds{path}               how long calls stayed connected
//	kinmesh_calls_setup_seconds{path}                   offer to connected
//	kinmesh_calls_invites_refused_total{reason}         rate_limited, unknown, blocked, busy, too_many, malformed
//	kinmesh_calls_frames_rejected_total{kind}           signalling frames that failed validation
//	kinmesh_calls_ice_restarts_total
func NewMetricsTracer(reg prometheus.Registerer) MetricsTracer {
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "kinmesh", Subsystem: "calls", Name: name, Help: help}, labels)
	}
	t := &promTracer{
		started: counter("started_total", "Calls started, by direction.", "direction"),
		ended:   counter("ended_total", "Calls ended, by direction, final state and reason.", "direction", "state", "reason"),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "kinmesh", Subsystem: "calls", Name: "connected_seconds",
			Help: "How long calls stayed connected, by path.", Buckets: []float64{5, 30, 60, 300, 900, 1800, 3600, 7200},
		}, []string{"path"}),
		setup: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "kinmesh", Subsystem: "calls", Name: "setup_seconds",
			Help: "From a call's offer to connected, by path.", Buckets: []float64{0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10},
		}, []string{"path"}),
		refused:  counter("invites_refused_total", "Incoming invites refused before ringing, by reason.", "reason"),
		rejected: counter("frames_rejected_total", "Signalling frames that failed validation, by kind.", "kind"),
		restarts: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "kinmesh", Subsystem: "calls", Name: "ice_restarts_total", Help: "ICE restarts started."}),
	}
	reg.MustRegister(t.started, t.ended, t.duration, t.setup, t.refused, t.rejected, t.restarts)
	return t
}

func (t *promTracer) CallStarted(d Direction) { t.started.WithLabelValues(string(d)).Inc() }

func (t *promTracer) CallEnded(d Direction, s State, reason string, connected time.Duration, path string) {
	t.ended.WithLabelValues(string(d), string(s), reason).Inc()
	if connected > 0 {
		t.duration.WithLabelValues(path).Observe(connected.Seconds())
	}
}

func (t *promTracer) Setup(d time.Duration, path string) {
	t.setup.WithLabelValues(path).Observe(d.Seconds())
}

func (t *promTracer) InviteRefused(why string) { t.refused.WithLabelValues(why).Inc() }
func (t *promTracer) FrameRejected(k string)   { t.rejected.WithLabelValues(k).Inc() }
func (t *promTracer) Restart()                 { t.restarts.Inc() }
