package blobs

import (
	"github.com/prometheus/client_golang/prometheus"
)

// MetricsTracer receives the relay service's events. Implementations must
// be safe for concurrent use and fast. A nil MetricsTracer is valid and
// records nothing.
type MetricsTracer interface {
	// Request: a request was answered. op is "put", "get", "delete" or
	// "has"; bytes are the chunk bytes moved (stored or served).
	Request(op string, code Code, bytes int)
	// Stored: the relay's totals after a change (and at start).
	Stored(u Usage)
	// IPLimited: an upload was refused because the peers at its source
	// address had used their upload budget (WithIPUploadRate). It is also
	// a Request("put", CodeRateLimited, 0).
	IPLimited()
}

// tracer makes a possibly nil MetricsTracer safe to call.
type tracer struct{ t MetricsTracer }

func (t tracer) request(op string, c Code, bytes int) {
	if t.t != nil {
		t.t.Request(op, c, bytes)
	}
}

func (t tracer) stored(u Usage) {
	if t.t != nil {
		t.t.Stored(u)
	}
}

func (t tracer) ipLimited() {
	if t.t != nil {
		t.t.IPLimited()
	}
}

type promTracer struct {
	requests  *prometheus.CounterVec
	moved     *prometheus.CounterVec
	bytes     prometheus.Gauge
	blobs     prometheus.Gauge
	ipLimited prometheus.Counter
}

// NewMetricsTracer returns a MetricsTracer that exports Prometheus metrics
// named kinmesh_blobs_* on reg (never the global registry):
//
//	kinmesh_blobs_requests_total{op,result}  put, get, delete, has × result code
//	kinmesh_blobs_bytes_total{op}            chunk bytes stored (put) and served (get)
//	kinmesh_blobs_stored_bytes               chunk bytes on disk, all uploaders
//	kinmesh_blobs_stored                     blobs on disk
//	kinmesh_blobs_ip_limited_total           uploads refused: their address's upload budget was used up
func NewMetricsTracer(reg prometheus.Registerer) MetricsTracer {
	t := &promTracer{
		requests:  prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "kinmesh", Subsystem: "blobs", Name: "requests_total", Help: "Blob requests answered, by operation and result."}, []string{"op", "result"}),
		moved:     prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "kinmesh", Subsystem: "blobs", Name: "bytes_total", Help: "Chunk bytes stored (put) and served (get)."}, []string{"op"}),
		bytes:     prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "kinmesh", Subsystem: "blobs", Name: "stored_bytes", Help: "Chunk bytes this relay stores, all uploaders."}),
		blobs:     prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "kinmesh", Subsystem: "blobs", Name: "stored", Help: "Blobs this relay stores."}),
		ipLimited: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "kinmesh", Subsystem: "blobs", Name: "ip_limited_total", Help: "Uploads refused because the peers at their source address (IPv4, IPv6 /64) had used their upload budget."}),
	}
	reg.MustRegister(t.requests, t.moved, t.bytes, t.blobs, t.ipLimited)
	return t
}

func (t *promTracer) Request(op string, c Code, bytes int) {
	t.requests.WithLabelValues(op, c.String()).Inc()
	if bytes > 0 {
		t.moved.WithLabelValues(op).Add(float64(bytes))
	}
}

func (t *promTracer) Stored(u Usage) {
	t.bytes.Set(float64(u.Bytes))
	t.blobs.Set(float64(u.Blobs))
}

func (t *promTracer) IPLimited() { t.ipLimited.Inc() }
