package report

import (
	"github.com/prometheus/client_golang/prometheus"
)

// MetricsTracer receives the relay service's events. Implementations must
// be safe for concurrent use and fast. A nil MetricsTracer is valid and
// records nothing.
type MetricsTracer interface {
	// Submission: a submission was answered. kind is 0 when the request
	// was refused before its submission could be read (rate limit, bad
	// signature, malformed frame).
	Submission(kind Kind, code Code)
	// Queue: how many items a queue holds now (called at start and after
	// every change).
	Queue(q Queue, items int)
	// Done: the operator marked an item of q done (it was deleted).
	Done(q Queue)
	// Purged: an account being deleted purged its items.
	Purged(items int)
}

// tracer makes a possibly nil MetricsTracer safe to call.
type tracer struct{ t MetricsTracer }

func (t tracer) submission(k Kind, c Code) {
	if t.t != nil {
		t.t.Submission(k, c)
	}
}

func (t tracer) queue(q Queue, n int) {
	if t.t != nil {
		t.t.Queue(q, n)
	}
}

func (t tracer) done(q Queue) {
	if t.t != nil {
		t.t.Done(q)
	}
}

func (t tracer) purged(n int) {
	if t.t != nil {
		t.t.Purged(n)
	}
}

type promTracer struct {
	submissions *prometheus.CounterVec
	queue       *prometheus.GaugeVec
	done        *prometheus.CounterVec
	purged      prometheus.Counter
}

// NewMetricsTracer returns a MetricsTracer that exports Prometheus metrics
// named kinmesh_report_* on reg (never the global registry):
//
//	kinmesh_report_submissions_total{kind,result}  kind: report, feedback, support, unknown × result code
//	kinmesh_report_queue_items{queue}              items held: reports, feedback
//	kinmesh_report_done_total{queue}               items the operator marked done
//	kinmesh_report_purged_total                    items deleted by their reporters' account deletion
func NewMetricsTracer(reg prometheus.Registerer) MetricsTracer {
	t := &promTracer{
		submissions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "kinmesh", Subsystem: "report", Name: "submissions_total",
			Help: "Reports, feedback and support requests answered, by kind and result.",
		}, []string{"kind", "result"}),
		queue: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "kinmesh", Subsystem: "report", Name: "queue_items",
			Help: "Items waiting in the operator's queues.",
		}, []string{"queue"}),
		done: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "kinmesh", Subsystem: "report", Name: "done_total",
			Help: "Items the operator marked done (deleted).",
		}, []string{"queue"}),
		purged: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "kinmesh", Subsystem: "report", Name: "purged_total",
			Help: "Items deleted because their reporter deleted its account.",
		}),
	}
	reg.MustRegister(t.submissions, t.queue, t.done, t.purged)
	return t
}

func (t *promTracer) Submission(k Kind, c Code) {
	kind := "unknown"
	if k.valid() {
		kind = k.String()
	}
	t.submissions.WithLabelValues(kind, c.String()).Inc()
}

func (t *promTracer) Queue(q Queue, n int) { t.queue.WithLabelValues(q.String()).Set(float64(n)) }

func (t *promTracer) Done(q Queue) { t.done.WithLabelValues(q.String()).Inc() }

func (t *promTracer) Purged(n int) { t.purged.Add(float64(n)) }
