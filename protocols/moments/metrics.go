package moments

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Reasons a moments message is dropped by gossipsub (MetricsTracer.Dropped).
const (
	// DropOutboundQueue: a peer's outbound queue was full; the peer gets
	// the frame from the relays (Keep makes every relay republish it,
	// backfill fetches it).
	DropOutboundQueue = "outbound_queue"
	// DropValidationQueue: our validation queue was full.
	DropValidationQueue = "validation_queue"
	// DropValidationThrottled: too many validations were running.
	DropValidationThrottled = "validation_throttled"
	// DropSubscriberSlow: our own subscriber fell behind.
	DropSubscriberSlow = "subscriber_slow"
)

// MetricsTracer receives moments' events, on relays and devices.
// Implementations must be safe for concurrent use and fast: Dropped and
// Validated are called from gossipsub's event loop. A nil MetricsTracer is
// valid and records nothing.
type MetricsTracer interface {
	// Dropped: gossipsub dropped a moments message (see the Drop*
	// reasons). Every drop also triggers the repair path, so none is
	// silent: inbound drops schedule a backfill, outbound drops are
	// covered by the relays' copies.
	Dropped(reason string)
	// Validated: a frame on a topic was judged: result "accept", "reject"
	// (its sender loses score) or "ignore"; reason names the check that
	// failed ("ok" on accept).
	Validated(result, reason string)
	// Request: a relay request was answered; op is "register", "keep",
	// "backfill" or "purge".
	Request(op string, code Code)
	// Kept: what the relay keeps now: feeds, frames and frame bytes.
	Kept(feeds int, items, bytes uint64)
}

type tracer struct{ t MetricsTracer }

func (t tracer) dropped(reason string) {
	if t.t != nil {
		t.t.Dropped(reason)
	}
}

func (t tracer) validated(result, reason string) {
	if t.t != nil {
		t.t.Validated(result, reason)
	}
}

func (t tracer) request(op string, c Code) {
	if t.t != nil {
		t.t.Request(op, c)
	}
}

func (t tracer) kept(feeds int, items, bytes uint64) {
	if t.t != nil {
		t.t.Kept(feeds, items, bytes)
	}
}

type promTracer struct {
	dropped   *prometheus.CounterVec
	validated *prometheus.CounterVec
	requests  *prometheus.CounterVec
	feeds     prometheus.Gauge
	items     prometheus.Gauge
	bytes     prometheus.Gauge
}

// NewMetricsTracer returns a MetricsTracer that exports Prometheus metrics
// named kinmesh_moments_* on reg (never the global registry):
//
//	kinmesh_moments_dropped_total{reason}          outbound_queue, validation_queue, validation_throttled, subscriber_slow
//	kinmesh_moments_validated_total{result,reason} accept/reject/ignore × the failed check
//	kinmesh_moments_requests_total{op,result}      register, keep, backfill, purge × result code
//	kinmesh_moments_feeds                          feeds the relay keeps
//	kinmesh_moments_items                          frames the relay keeps
//	kinmesh_moments_bytes                          frame bytes the relay keeps
func NewMetricsTracer(reg prometheus.Registerer) MetricsTracer {
	vec := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "kinmesh", Subsystem: "moments", Name: name, Help: help}, labels)
	}
	gauge := func(name, help string) prometheus.Gauge {
		return prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "kinmesh", Subsystem: "moments", Name: name, Help: help})
	}
	t := &promTracer{
		dropped:   vec("dropped_total", "Moments messages gossipsub dropped, by reason (each one repaired through the relays).", "reason"),
		validated: vec("validated_total", "Frames judged by the topic validators, by result and reason.", "result", "reason"),
		requests:  vec("requests_total", "Relay requests answered, by operation and result.", "op", "result"),
		feeds:     gauge("feeds", "Feeds this relay keeps."),
		items:     gauge("items", "Frames this relay keeps."),
		bytes:     gauge("bytes", "Frame bytes this relay keeps."),
	}
	reg.MustRegister(t.dropped, t.validated, t.requests, t.feeds, t.items, t.bytes)
	return t
}

func (t *promTracer) Dropped(reason string) { t.dropped.WithLabelValues(reason).Inc() }
func (t *promTracer) Validated(result, reason string) {
	t.validated.WithLabelValues(result, reason).Inc()
}
func (t *promTracer) Request(op string, c Code) { t.requests.WithLabelValues(op, c.String()).Inc() }

func (t *promTracer) Kept(feeds int, items, bytes uint64) {
	t.feeds.Set(float64(feeds))
	t.items.Set(float64(items))
	t.bytes.Set(float64(bytes))
}
