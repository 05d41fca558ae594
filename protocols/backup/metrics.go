package backup

import (
	"github.com/prometheus/client_golang/prometheus"
)

// MetricsTracer receives the relay service's events. Implementations must
// be safe for concurrent use and fast. A nil MetricsTracer is valid and
// records nothing. No event carries a backup, a code or a number.
type MetricsTracer interface {
	// Request: a request was answered. op is "put", "status", "delete",
	// "fetch", or "auth" for a request refused before its operation
	// counted (rate limit, bad proof, malformed frame).
	Request(op string, code Code)
	// Backups: backups held (at start, after every change and sweep).
	Backups(n int)
	// Swept: backups the sweep deleted because their link was gone.
	Swept(n int)
}

// tracer makes a possibly nil MetricsTracer safe to call.
type tracer struct{ t MetricsTracer }

func (t tracer) request(op string, c Code) {
	if t.t != nil {
		t.t.Request(op, c)
	}
}

func (t tracer) backups(n int) {
	if t.t != nil {
		t.t.Backups(n)
	}
}

func (t tracer) swept(n int) {
	if t.t != nil && n > 0 {
		t.t.Swept(n)
	}
}

type promTracer struct {
	requests *prometheus.CounterVec
	backups  prometheus.Gauge
	swept    prometheus.Counter
}

// NewMetricsTracer returns a MetricsTracer that exports Prometheus metrics
// named kinmesh_backup_* on reg (never the global registry):
//
//	kinmesh_backup_requests_total{op,result}  put, status, delete, fetch, auth × result code
//	kinmesh_backup_backups                    backups held
//	kinmesh_backup_swept_total                backups deleted because their number link was gone
func NewMetricsTracer(reg prometheus.Registerer) MetricsTracer {
	opts := func(name, help string) prometheus.CounterOpts {
		return prometheus.CounterOpts{Namespace: "kinmesh", Subsystem: "backup", Name: name, Help: help}
	}
	t := &promTracer{
		requests: prometheus.NewCounterVec(opts("requests_total", "Requests answered, by operation and result."), []string{"op", "result"}),
		backups: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "kinmesh", Subsystem: "backup", Name: "backups", Help: "Account recovery backups held.",
		}),
		swept: prometheus.NewCounter(opts("swept_total", "Backups deleted because their number link was gone.")),
	}
	reg.MustRegister(t.requests, t.backups, t.swept)
	return t
}

func (t *promTracer) Request(op string, c Code) { t.requests.WithLabelValues(op, c.String()).Inc() }
func (t *promTracer) Backups(n int)             { t.backups.Set(float64(n)) }
func (t *promTracer) Swept(n int)               { t.swept.Add(float64(n)) }
