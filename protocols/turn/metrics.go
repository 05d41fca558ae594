package turn

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Auth results, for metrics.
const (
	AuthOK          = "ok"           // the request's MESSAGE-INTEGRITY checked out
	AuthBadPassword = "bad_password" // a well-formed username, the wrong password
	AuthExpired     = "expired"      // credentials past their expiry (and grace, for refreshes)
	AuthMalformed   = "malformed"    // not a kinmesh REST username, or another realm
)

// Allocation outcomes, for metrics.
const (
	AllocOpened       = "opened"        // an allocation (a relay port) was made
	AllocAccountQuota = "account_quota" // refused: the account holds its cap
	AllocPeerQuota    = "peer_quota"    // refused: the peer the credentials were issued to holds its cap
	AllocIPQuota      = "ip_quota"      // refused: the client's IP address (IPv6 /64) holds its cap
	AllocRelayQuota   = "relay_quota"   // refused: the relay holds its cap
	AllocFailed       = "failed"        // no relay port could be opened, or no user to count it against
)

// MetricsTracer receives the server's events. Implementations must be
// safe for concurrent use and fast (Relayed runs once per relayed
// packet). A nil MetricsTracer is valid and records nothing.
type MetricsTracer interface {
	// CredentialRequest: a credential request was answered with code.
	CredentialRequest(code Code)
	// Auth: a TURN request carrying credentials was judged (AuthOK, …).
	Auth(result string)
	// Allocation: an allocation request ended so (AllocOpened, …).
	Allocation(result string)
	// AllocationClosed: an allocation ended after lifetime.
	AllocationClosed(lifetime time.Duration)
	// Allocations and Accounts: how many allocations are open now, and
	// how many accounts hold them.
	Allocations(n, accounts int)
	// Relayed: an allocation relayed a packet of n bytes, toward the peer
	// (from the device) or from it.
	Relayed(toPeer bool, n int)
	// Dropped: a packet of n bytes was dropped because its account, peer
	// or source IP was over its bandwidth cap.
	Dropped(toPeer bool, n int)
	// PeerRefused: a permission, channel bind or packet was refused by
	// the peer policy (an address the relay does not relay to).
	PeerRefused()
	// Limits: the server's caps, once when it starts: allocations per
	// account, relayed bytes a second per account, allocations in all.
	Limits(accountAllocations int, accountBandwidth int64, maxAllocations int)
}

// tracer makes a possibly nil MetricsTracer safe to call.
type tracer struct{ t MetricsTracer }

func (t tracer) credentialRequest(c Code) {
	if t.t != nil {
		t.t.CredentialRequest(c)
	}
}

func (t tracer) auth(r string) {
	if t.t != nil {
		t.t.Auth(r)
	}
}

func (t tracer) allocation(r string) {
	if t.t != nil {
		t.t.Allocation(r)
	}
}

func (t tracer) allocationClosed(d time.Duration) {
	if t.t != nil {
		t.t.AllocationClosed(d)
	}
}

func (t tracer) allocations(n, accounts int) {
	if t.t != nil {
		t.t.Allocations(n, accounts)
	}
}

func (t tracer) relayed(toPeer bool, n int) {
	if t.t != nil {
		t.t.Relayed(toPeer, n)
	}
}

func (t tracer) dropped(toPeer bool, n int) {
	if t.t != nil {
		t.t.Dropped(toPeer, n)
	}
}

func (t tracer) peerRefused() {
	if t.t != nil {
		t.t.PeerRefused()
	}
}

func (t tracer) limits(acctAllocs int, acctBW int64, maxAllocs int) {
	if t.t != nil {
		t.t.Limits(acctAllocs, acctBW, maxAllocs)
	}
}

type promTracer struct {
	creds       *prometheus.CounterVec
	auth        *prometheus.CounterVec
	allocs      *prometheus.CounterVec
	lifetime    prometheus.Histogram
	open        prometheus.Gauge
	accounts    prometheus.Gauge
	relayedTo   prometheus.Counter
	relayedFrom prometheus.Counter
	packetsTo   prometheus.Counter
	packetsFrom prometheus.Counter
	droppedTo   prometheus.Counter
	droppedFrom prometheus.Counter
	peerRefused prometheus.Counter
	limAllocs   prometheus.Gauge
	limBW       prometheus.Gauge
	limTotal    prometheus.Gauge
}

// NewMetricsTracer returns a MetricsTracer that exports Prometheus metrics
// named kinmesh_turn_* on reg (never the global registry):
//
//	kinmesh_turn_credentials_total{result}          credential requests: ok, unauthorized, malformed, too_large, rate_limited, unavailable
//	kinmesh_turn_auth_total{result}                 TURN requests with credentials: ok, bad_password, expired, malformed
//	kinmesh_turn_allocation_requests_total{result}  opened, account_quota, peer_quota, ip_quota, relay_quota, failed
//	kinmesh_turn_allocations                        allocations open now
//	kinmesh_turn_accounts                           accounts holding allocations now
//	kinmesh_turn_allocation_seconds                 how long allocations lived
//	kinmesh_turn_relayed_bytes_total{direction}     relayed payload bytes: to_peer, from_peer
//	kinmesh_turn_relayed_packets_total{direction}   relayed packets
//	kinmesh_turn_dropped_bytes_total{direction}     bytes dropped over an account's, peer's or IP's bandwidth cap
//	kinmesh_turn_peer_refused_total                 permissions, channel binds and packets refused by the peer policy
//	kinmesh_turn_account_allocations_limit          allocations an account may hold
//	kinmesh_turn_account_bandwidth_limit_bytes      relayed bytes a second an account may use
//	kinmesh_turn_allocations_limit                  allocations the relay holds at most
func NewMetricsTracer(reg prometheus.Registerer) MetricsTracer {
	opts := func(name, help string) prometheus.CounterOpts {
		return prometheus.CounterOpts{Namespace: "kinmesh", Subsystem: "turn", Name: name, Help: help}
	}
	relayed := prometheus.NewCounterVec(opts("relayed_bytes_total", "Payload bytes relayed by TURN allocations, by direction."), []string{"direction"})
	packets := prometheus.NewCounterVec(opts("relayed_packets_total", "Packets relayed by TURN allocations, by direction."), []string{"direction"})
	dropped := prometheus.NewCounterVec(opts("dropped_bytes_total", "Bytes dropped because their account, peer or source IP was over its bandwidth cap, by direction."), []string{"direction"})
	t := &promTracer{
		creds:  prometheus.NewCounterVec(opts("credentials_total", "TURN credential requests answered, by result."), []string{"result"}),
		auth:   prometheus.NewCounterVec(opts("auth_total", "TURN requests carrying credentials, by verdict."), []string{"result"}),
		allocs: prometheus.NewCounterVec(opts("allocation_requests_total", "TURN allocation requests that passed authentication, by outcome."), []string{"result"}),
		lifetime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "kinmesh", Subsystem: "turn", Name: "allocation_seconds",
			Help:    "How long TURN allocations lived.",
			Buckets: []float64{1, 10, 60, 300, 900, 1800, 3600, 4 * 3600},
		}),
		open: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "kinmesh", Subsystem: "turn", Name: "allocations", Help: "TURN allocations open now.",
		}),
		accounts: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "kinmesh", Subsystem: "turn", Name: "accounts", Help: "Accounts holding TURN allocations now.",
		}),
		relayedTo: relayed.WithLabelValues("to_peer"), relayedFrom: relayed.WithLabelValues("from_peer"),
		packetsTo: packets.WithLabelValues("to_peer"), packetsFrom: packets.WithLabelValues("from_peer"),
		droppedTo: dropped.WithLabelValues("to_peer"), droppedFrom: dropped.WithLabelValues("from_peer"),
		peerRefused: prometheus.NewCounter(opts("peer_refused_total", "TURN permissions, channel binds and packets refused because the peer address is not relayed to.")),
		limAllocs: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "kinmesh", Subsystem: "turn", Name: "account_allocations_limit", Help: "TURN allocations one account may hold at once.",
		}),
		limBW: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "kinmesh", Subsystem: "turn", Name: "account_bandwidth_limit_bytes", Help: "Bytes a second one account may relay over all its TURN allocations.",
		}),
		limTotal: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "kinmesh", Subsystem: "turn", Name: "allocations_limit", Help: "TURN allocations the relay holds at most.",
		}),
	}
	reg.MustRegister(t.creds, t.auth, t.allocs, t.lifetime, t.open, t.accounts, relayed, packets, dropped, t.peerRefused, t.limAllocs, t.limBW, t.limTotal)
	return t
}

func (t *promTracer) CredentialRequest(c Code) { t.creds.WithLabelValues(c.String()).Inc() }
func (t *promTracer) Auth(r string)            { t.auth.WithLabelValues(r).Inc() }
func (t *promTracer) Allocation(r string)      { t.allocs.WithLabelValues(r).Inc() }
func (t *promTracer) AllocationClosed(d time.Duration) {
	t.lifetime.Observe(d.Seconds())
}

func (t *promTracer) Allocations(n, accounts int) {
	t.open.Set(float64(n))
	t.accounts.Set(float64(accounts))
}

func (t *promTracer) Relayed(toPeer bool, n int) {
	if toPeer {
		t.relayedTo.Add(float64(n))
		t.packetsTo.Inc()
		return
	}
	t.relayedFrom.Add(float64(n))
	t.packetsFrom.Inc()
}

func (t *promTracer) Dropped(toPeer bool, n int) {
	if toPeer {
		t.droppedTo.Add(float64(n))
		return
	}
	t.droppedFrom.Add(float64(n))
}

func (t *promTracer) PeerRefused() { t.peerRefused.Inc() }

func (t *promTracer) Limits(acctAllocs int, acctBW int64, maxAllocs int) {
	t.limAllocs.Set(float64(acctAllocs))
	t.limBW.Set(float64(acctBW))
	t.limTotal.Set(float64(maxAllocs))
}
