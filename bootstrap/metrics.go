package bootstrap

import (
	"sync/atomic"
	"time"

	pbv2 "github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/pb"
	relayv2 "github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/relay"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/kinmesh/kinmesh/protocols/mailbox"
	"github.com/kinmesh/kinmesh/storage"
)

// metrics are the relay's own counters, served on /metrics next to
// libp2p's (which register on the same registry).
type metrics struct {
	reservations atomic.Int64 // active circuit-relay reservations
	circuits     atomic.Int64 // open relayed connections
}

func newMetrics(reg *prometheus.Registry) *metrics {
	m := &metrics{}
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "kinmesh", Subsystem: "relay", Name: "reservations",
			Help: "Active circuit-relay reservations.",
		}, func() float64 { return float64(m.reservations.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "kinmesh", Subsystem: "relay", Name: "circuits",
			Help: "Open relayed connections.",
		}, func() float64 { return float64(m.circuits.Load()) }),
	)
	return m
}

// watchDisk exports the free space of the store's file system and
// whether it is below the relay's floor (min_free_disk: no new mail or
// media is taken then).
func (m *metrics) watchDisk(reg prometheus.Registerer, st *storage.Store) {
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "kinmesh", Subsystem: "store", Name: "free_bytes",
			Help: "Bytes available on the file system of the relay's data directory.",
		}, func() float64 {
			free, err := st.FreeSpace()
			if err != nil {
				return -1
			}
			return float64(free)
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "kinmesh", Subsystem: "store", Name: "low_on_space",
			Help: "1 while free space is below min_free_disk: new mail and media are refused as relay full.",
		}, func() float64 {
			if st.LowOnSpace() {
				return 1
			}
			return 0
		}),
	)
}

// watchDHT exports the bytes of DHT records the relay holds (dht_max_bytes
// bounds them).
func (m *metrics) watchDHT(reg prometheus.Registerer, st *capStore) {
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "kinmesh", Subsystem: "dht", Name: "record_bytes",
		Help: "Bytes of DHT records (contact records) the relay holds; new ones are refused at dht_max_bytes.",
	}, func() float64 { return float64(st.Bytes()) }))
}

// mailboxTracer exports the mailbox service's metrics (kinmesh_mailbox_*)
// on the relay's registry.
func (m *metrics) mailboxTracer(reg prometheus.Registerer) mailbox.MetricsTracer {
	return mailbox.NewMetricsTracer(reg)
}

// relayTracer feeds libp2p's relay metrics and our own counts.
func (m *metrics) relayTracer(reg prometheus.Registerer) relayv2.MetricsTracer {
	return &relayTracer{MetricsTracer: relayv2.NewMetricsTracer(relayv2.WithRegisterer(reg)), m: m}
}

type relayTracer struct {
	relayv2.MetricsTracer
	m *metrics
}

func (t *relayTracer) ReservationAllowed(isRenewal bool) {
	if !isRenewal {
		t.m.reservations.Add(1)
	}
	t.MetricsTracer.ReservationAllowed(isRenewal)
}

func (t *relayTracer) ReservationClosed(cnt int) {
	t.m.reservations.Add(-int64(cnt))
	t.MetricsTracer.ReservationClosed(cnt)
}

func (t *relayTracer) ConnectionOpened() {
	t.m.circuits.Add(1)
	t.MetricsTracer.ConnectionOpened()
}

func (t *relayTracer) ConnectionClosed(d time.Duration) {
	t.m.circuits.Add(-1)
	t.MetricsTracer.ConnectionClosed(d)
}

func (t *relayTracer) ConnectionRequestHandled(s pbv2.Status) {
	t.MetricsTracer.ConnectionRequestHandled(s)
}
