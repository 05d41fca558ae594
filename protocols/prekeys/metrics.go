package prekeys

import (
	"github.com/prometheus/client_golang/prometheus"
)

// FetchResult is how the relay answered a fetch, for metrics.
type FetchResult uint8

// Fetch results.
const (
	// FetchOK: a bundle with at least one one-time prekey.
	FetchOK FetchResult = iota
	// FetchEmpty: a bundle with the last-resort keys only, because the
	// account's one-time prekeys on this relay are used up.
	FetchEmpty
	// FetchRationed: a bundle with the last-resort keys only, because the
	// account's one-time budget (WithOneTimeRate) is used up.
	FetchRationed
	// FetchLimited: refused, the requester exceeded its rate
	// (ErrRateLimited).
	FetchLimited
	// FetchNotFound: the relay holds no prekeys for the account.
	FetchNotFound
	// FetchFailed: a malformed request, or the relay's store failed.
	FetchFailed
)

var fetchResultNames = [...]string{"ok", "empty", "rationed", "limited", "not_found", "failed"}

// String returns the result's metric label.
func (r FetchResult) String() string {
	if int(r) < len(fetchResultNames) {
		return fetchResultNames[r]
	}
	return "unknown"
}

// MetricsTracer receives the relay service's events. Implementations must
// be safe for concurrent use and fast. A nil MetricsTracer is valid and
// records nothing.
type MetricsTracer interface {
	// Fetch: a fetch was answered.
	Fetch(result FetchResult)
	// HandedOut: one-time prekeys a fetch handed out (deleted for good
	// before the answer was written).
	HandedOut(oneTime, pqOneTime int)
	// OwnerOp: an owner operation was answered. op is "publish",
	// "status", "purge", or "auth" for a request refused before its
	// operation counted (rate limit, bad proof, malformed frame).
	OwnerOp(op string, code Code)
	// Added: one-time prekeys a publish stored.
	Added(oneTime, pqOneTime int)
	// Accounts: how many accounts the relay now holds prekeys for (called
	// at start and after every change).
	Accounts(n int)
}

// tracer makes a possibly nil MetricsTracer safe to call.
type tracer struct{ t MetricsTracer }

func (t tracer) fetch(r FetchResult) {
	if t.t != nil {
		t.t.Fetch(r)
	}
}

func (t tracer) handedOut(x, q int) {
	if t.t != nil && x+q > 0 {
		t.t.HandedOut(x, q)
	}
}

func (t tracer) ownerOp(op string, c Code) {
	if t.t != nil {
		t.t.OwnerOp(op, c)
	}
}

func (t tracer) added(x, q int) {
	if t.t != nil && x+q > 0 {
		t.t.Added(x, q)
	}
}

func (t tracer) accounts(n int) {
	if t.t != nil {
		t.t.Accounts(n)
	}
}

type promTracer struct {
	fetches   *prometheus.CounterVec
	handedOut *prometheus.CounterVec
	ownerOps  *prometheus.CounterVec
	added     *prometheus.CounterVec
	accounts  prometheus.Gauge
}

// NewMetricsTracer returns a MetricsTracer that exports Prometheus metrics
// named kinmesh_prekeys_* on reg (never the global registry):
//
//	kinmesh_prekeys_fetches_total{result}       ok, empty, rationed, limited, not_found, failed
//	kinmesh_prekeys_handed_out_total{kind}      one-time prekeys handed out: x25519, mlkem
//	kinmesh_prekeys_owner_ops_total{op,result}  publish, status, purge, auth × result code
//	kinmesh_prekeys_added_total{kind}           one-time prekeys stored by publishes
//	kinmesh_prekeys_accounts                    accounts with prekeys on this relay
func NewMetricsTracer(reg prometheus.Registerer) MetricsTracer {
	vec := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "kinmesh", Subsystem: "prekeys", Name: name, Help: help}, labels)
	}
	t := &promTracer{
		fetches:   vec("fetches_total", "Bundle fetches answered, by result.", "result"),
		handedOut: vec("handed_out_total", "One-time prekeys handed out, by kind.", "kind"),
		ownerOps:  vec("owner_ops_total", "Owner operations answered, by operation and result.", "op", "result"),
		added:     vec("added_total", "One-time prekeys stored by publishes, by kind.", "kind"),
		accounts: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "kinmesh", Subsystem: "prekeys", Name: "accounts",
			Help: "Accounts whose prekeys this relay holds.",
		}),
	}
	reg.MustRegister(t.fetches, t.handedOut, t.ownerOps, t.added, t.accounts)
	return t
}

func (t *promTracer) Fetch(r FetchResult) { t.fetches.WithLabelValues(r.String()).Inc() }

func (t *promTracer) HandedOut(x, q int) {
	t.handedOut.WithLabelValues("x25519").Add(float64(x))
	t.handedOut.WithLabelValues("mlkem").Add(float64(q))
}

func (t *promTracer) OwnerOp(op string, c Code) { t.ownerOps.WithLabelValues(op, c.String()).Inc() }

func (t *promTracer) Added(x, q int) {
	t.added.WithLabelValues("x25519").Add(float64(x))
	t.added.WithLabelValues("mlkem").Add(float64(q))
}

func (t *promTracer) Accounts(n int) { t.accounts.Set(float64(n)) }
