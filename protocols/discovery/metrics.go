package discovery

import (
	"github.com/prometheus/client_golang/prometheus"
)

// MetricsTracer receives the relay service's events. Implementations must
// be safe for concurrent use and fast. A nil MetricsTracer is valid and
// records nothing. No event carries a number, a code or an OPRF value.
type MetricsTracer interface {
	// Request: a request was answered. op is "send_code", "verify_code",
	// "status", "update_record", "unenrol", "evaluate", "list",
	// "redeem_code" (RedeemCode, for account recovery), or "auth" for an
	// account operation refused before its operation counted (rate
	// limit, bad proof, malformed frame).
	Request(op string, code Code)
	// SMS: the gateway took a message (ok) or failed.
	SMS(ok bool)
	// Evaluated: elements an evaluation answered.
	Evaluated(n int)
	// Entries: live directory entries (at start and after every change).
	Entries(n int)
}

// tracer makes a possibly nil MetricsTracer safe to call.
type tracer struct{ t MetricsTracer }

func (t tracer) request(op string, c Code) {
	if t.t != nil {
		t.t.Request(op, c)
	}
}

func (t tracer) sms(ok bool) {
	if t.t != nil {
		t.t.SMS(ok)
	}
}

func (t tracer) evaluated(n int) {
	if t.t != nil && n > 0 {
		t.t.Evaluated(n)
	}
}

func (t tracer) entries(n int) {
	if t.t != nil {
		t.t.Entries(n)
	}
}

type promTracer struct {
	requests  *prometheus.CounterVec
	sms       *prometheus.CounterVec
	evaluated prometheus.Counter
	entries   prometheus.Gauge
}

// NewMetricsTracer returns a MetricsTracer that exports Prometheus metrics
// named kinmesh_discovery_* on reg (never the global registry):
//
//	kinmesh_discovery_requests_total{op,result}  send_code, verify_code, status, update_record, unenrol, evaluate, list, redeem_code, auth × result code
//	kinmesh_discovery_sms_total{result}          ok, failed
//	kinmesh_discovery_evaluated_total            OPRF evaluations (numbers looked up)
//	kinmesh_discovery_entries                    live directory entries (verified numbers)
func NewMetricsTracer(reg prometheus.Registerer) MetricsTracer {
	opts := func(name, help string) prometheus.CounterOpts {
		return prometheus.CounterOpts{Namespace: "kinmesh", Subsystem: "discovery", Name: name, Help: help}
	}
	t := &promTracer{
		requests:  prometheus.NewCounterVec(opts("requests_total", "Requests answered, by operation and result."), []string{"op", "result"}),
		sms:       prometheus.NewCounterVec(opts("sms_total", "Verification SMS handed to the gateway, by result."), []string{"result"}),
		evaluated: prometheus.NewCounter(opts("evaluated_total", "OPRF evaluations (numbers looked up).")),
		entries: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "kinmesh", Subsystem: "discovery", Name: "entries",
			Help: "Live directory entries (verified numbers).",
		}),
	}
	reg.MustRegister(t.requests, t.sms, t.evaluated, t.entries)
	return t
}

func (t *promTracer) Request(op string, c Code) { t.requests.WithLabelValues(op, c.String()).Inc() }

func (t *promTracer) SMS(ok bool) {
	r := "ok"
	if !ok {
		r = "failed"
	}
	t.sms.WithLabelValues(r).Inc()
}

func (t *promTracer) Evaluated(n int) { t.evaluated.Add(float64(n)) }
func (t *promTracer) Entries(n int)   { t.entries.Set(float64(n)) }
