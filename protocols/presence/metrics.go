package presence

import (
	"github.com/prometheus/client_golang/prometheus"
)

// MetricsTracer receives the service's events. Implementations must be
// safe for concurrent use and fast. A nil MetricsTracer is valid and
// records nothing.
type MetricsTracer interface {
	// Sent: a beacon went out. result is "ok" or "unreachable".
	Sent(result string)
	// Received: a beacon came in. result is "accepted" or the reason it
	// was dropped (see Stats.Dropped).
	Received(result string)
}

// tracer makes a possibly nil MetricsTracer safe to call.
type tracer struct{ t MetricsTracer }

func (t tracer) sent(r string) {
	if t.t != nil {
		t.t.Sent(r)
	}
}

func (t tracer) received(r string) {
	if t.t != nil {
		t.t.Received(r)
	}
}

type promTracer struct {
	sent, received *prometheus.CounterVec
}

// NewMetricsTracer returns a MetricsTracer that exports Prometheus metrics
// named kinmesh_presence_* on reg (never the global registry):
//
//	kinmesh_presence_sent_total{result}      ok, unreachable
//	kinmesh_presence_received_total{result}  accepted, blocked, not_contact, not_sharing, stale, replay, invalid, rate_limited
func NewMetricsTracer(reg prometheus.Registerer) MetricsTracer {
	t := &promTracer{
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "kinmesh", Subsystem: "presence", Name: "sent_total",
			Help: "Presence beacons sent, by result.",
		}, []string{"result"}),
		received: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "kinmesh", Subsystem: "presence", Name: "received_total",
			Help: "Presence beacons received, by result.",
		}, []string{"result"}),
	}
	reg.MustRegister(t.sent, t.received)
	return t
}

func (t *promTracer) Sent(r string)     { t.sent.WithLabelValues(r).Inc() }
func (t *promTracer) Received(r string) { t.received.WithLabelValues(r).Inc() }
