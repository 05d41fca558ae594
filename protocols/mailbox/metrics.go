package mailbox

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// MetricsTracer receives the relay service's events. Implementations must
// be safe for concurrent use and fast: they are called on the hot path.
// A nil MetricsTracer is valid and records nothing.
type MetricsTracer interface {
	// Deposited: envelopes stored, with their total bytes.
	Deposited(items int, bytes int64)
	// DepositRejected: envelopes refused, by code.
	DepositRejected(code Code, items int)
	// Fetched: items returned by fetch pages, with their bytes.
	Fetched(items int, bytes int64)
	// Acked: items deleted by acks.
	Acked(items int)
	// Expired: items that reached MaxAge undelivered, with their bytes,
	// counted when the relay next touches their mailbox.
	Expired(items int, bytes int64)
	// Purged: items deleted by purges.
	Purged(items int)
	// Unreadable: stored items found unreadable (damaged on disk), which
	// the relay deletes.
	Unreadable(items int)
	// Pushed: items pushed to open sessions.
	Pushed(items int)
	// PushOverflow: a session's push queue was full; a "more" notice
	// replaced the pushes.
	PushOverflow()
	// SessionOpened and SessionClosed bracket an authenticated owner
	// session.
	SessionOpened()
	SessionClosed(d time.Duration)
	// AuthFailed: an Auth was refused.
	AuthFailed()
	// Committed: one synced store commit of ops requests and items
	// envelopes, and how long it took (group commit).
	Committed(ops, items int, d time.Duration)
}

// tracer makes a possibly nil MetricsTracer safe to call.
type tracer struct{ t MetricsTracer }

func (t tracer) deposited(items int, bytes int64) {
	if t.t != nil && items > 0 {
		t.t.Deposited(items, bytes)
	}
}

func (t tracer) rejected(code Code, items int) {
	if t.t != nil && items > 0 {
		t.t.DepositRejected(code, items)
	}
}

func (t tracer) fetched(items int, bytes int64) {
	if t.t != nil && items > 0 {
		t.t.Fetched(items, bytes)
	}
}

func (t tracer) acked(items int) {
	if t.t != nil && items > 0 {
		t.t.Acked(items)
	}
}

func (t tracer) expired(items int, bytes int64) {
	if t.t != nil && items > 0 {
		t.t.Expired(items, bytes)
	}
}

func (t tracer) purged(items int) {
	if t.t != nil && items > 0 {
		t.t.Purged(items)
	}
}

func (t tracer) unreadable(items int) {
	if t.t != nil && items > 0 {
		t.t.Unreadable(items)
	}
}

func (t tracer) pushed(items int) {
	if t.t != nil && items > 0 {
		t.t.Pushed(items)
	}
}

func (t tracer) pushOverflow() {
	if t.t != nil {
		t.t.PushOverflow()
	}
}

func (t tracer) sessionOpened() {
	if t.t != nil {
		t.t.SessionOpened()
	}
}

func (t tracer) sessionClosed(d time.Duration) {
	if t.t != nil {
		t.t.SessionClosed(d)
	}
}

func (t tracer) authFailed() {
	if t.t != nil {
		t.t.AuthFailed()
	}
}

func (t tracer) committed(ops, items int, d time.Duration) {
	if t.t != nil {
		t.t.Committed(ops, items, d)
	}
}

// promTracer is the Prometheus MetricsTracer.
type promTracer struct {
	deposits      *prometheus.CounterVec
	depositBytes  prometheus.Counter
	fetched       prometheus.Counter
	fetchedBytes  prometheus.Counter
	acked         prometheus.Counter
	expired       prometheus.Counter
	expiredBytes  prometheus.Counter
	purged        prometheus.Counter
	unreadable    prometheus.Counter
	pushed        prometheus.Counter
	pushOverflows prometheus.Counter
	sessions      prometheus.Gauge
	sessionSecs   prometheus.Histogram
	authFailures  prometheus.Counter
	commitSecs    prometheus.Histogram
	commitItems   prometheus.Histogram
}

// NewMetricsTracer returns a MetricsTracer that exports Prometheus metrics
// named kinmesh_mailbox_* on reg (never the global registry):
//
//	kinmesh_mailbox_deposits_total{result}     envelopes by result code ("ok", "mailbox_full", …)
//	kinmesh_mailbox_deposit_bytes_total        envelope bytes stored
//	kinmesh_mailbox_fetched_total, _fetched_bytes_total
//	kinmesh_mailbox_acked_total
//	kinmesh_mailbox_expired_total, _expired_bytes_total
//	kinmesh_mailbox_purged_total
//	kinmesh_mailbox_unreadable_total           stored items found damaged, and deleted
//	kinmesh_mailbox_pushed_total, _push_overflows_total
//	kinmesh_mailbox_sessions                    open owner sessions
//	kinmesh_mailbox_session_duration_seconds    histogram
//	kinmesh_mailbox_auth_failures_total
//	kinmesh_mailbox_commit_duration_seconds     histogram of synced group commits
//	kinmesh_mailbox_commit_items                histogram of envelopes per commit
func NewMetricsTracer(reg prometheus.Registerer) MetricsTracer {
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Namespace: "kinmesh", Subsystem: "mailbox", Name: name, Help: help})
	}
	t := &promTracer{
		deposits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "kinmesh", Subsystem: "mailbox", Name: "deposits_total",
			Help: "Envelopes deposited, by result.",
		}, []string{"result"}),
		depositBytes:  counter("deposit_bytes_total", "Envelope bytes stored."),
		fetched:       counter("fetched_total", "Items returned by fetches."),
		fetchedBytes:  counter("fetched_bytes_total", "Envelope bytes returned by fetches."),
		acked:         counter("acked_total", "Items deleted by acks."),
		expired:       counter("expired_total", "Items that expired undelivered."),
		expiredBytes:  counter("expired_bytes_total", "Envelope bytes that expired undelivered."),
		purged:        counter("purged_total", "Items deleted by mailbox purges."),
		unreadable:    counter("unreadable_total", "Stored items found unreadable, and deleted."),
		pushed:        counter("pushed_total", "Items pushed to open owner sessions."),
		pushOverflows: counter("push_overflows_total", "Push queues that overflowed into a fetch notice."),
		sessions: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "kinmesh", Subsystem: "mailbox", Name: "sessions",
			Help: "Open authenticated owner sessions.",
		}),
		sessionSecs: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "kinmesh", Subsystem: "mailbox", Name: "session_duration_seconds",
			Help:    "How long owner sessions stayed open.",
			Buckets: []float64{1, 10, 60, 600, 3600, 6 * 3600, 24 * 3600},
		}),
		authFailures: counter("auth_failures_total", "Refused owner authentications."),
		commitSecs: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "kinmesh", Subsystem: "mailbox", Name: "commit_duration_seconds",
			Help:    "Duration of synced group commits.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		commitItems: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "kinmesh", Subsystem: "mailbox", Name: "commit_items",
			Help:    "Envelopes stored or deleted per group commit.",
			Buckets: prometheus.ExponentialBuckets(1, 4, 8),
		}),
	}
	reg.MustRegister(t.deposits, t.depositBytes, t.fetched, t.fetchedBytes, t.acked, t.expired,
		t.expiredBytes, t.purged, t.unreadable, t.pushed, t.pushOverflows, t.sessions, t.sessionSecs,
		t.authFailures, t.commitSecs, t.commitItems)
	return t
}

func (t *promTracer) Deposited(items int, bytes int64) {
	t.deposits.WithLabelValues(CodeOK.String()).Add(float64(items))
	t.depositBytes.Add(float64(bytes))
}

func (t *promTracer) DepositRejected(code Code, items int) {
	t.deposits.WithLabelValues(code.String()).Add(float64(items))
}

func (t *promTracer) Fetched(items int, bytes int64) {
	t.fetched.Add(float64(items))
	t.fetchedBytes.Add(float64(bytes))
}

func (t *promTracer) Acked(items int) { t.acked.Add(float64(items)) }

func (t *promTracer) Expired(items int, bytes int64) {
	t.expired.Add(float64(items))
	t.expiredBytes.Add(float64(bytes))
}

func (t *promTracer) Purged(items int)     { t.purged.Add(float64(items)) }
func (t *promTracer) Unreadable(items int) { t.unreadable.Add(float64(items)) }
func (t *promTracer) Pushed(items int)     { t.pushed.Add(float64(items)) }
func (t *promTracer) PushOverflow()        { t.pushOverflows.Inc() }
func (t *promTracer) SessionOpened()       { t.sessions.Inc() }

func (t *promTracer) SessionClosed(d time.Duration) {
	t.sessions.Dec()
	t.sessionSecs.Observe(d.Seconds())
}

func (t *promTracer) AuthFailed() { t.authFailures.Inc() }

func (t *promTracer) Committed(ops, items int, d time.Duration) {
	t.commitSecs.Observe(d.Seconds())
	t.commitItems.Observe(float64(items))
}
