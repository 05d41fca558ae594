package bootstrap

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/kinmesh/kinmesh/protocols/netkit"
)

// Health is the JSON served on GET /healthz.
type Health struct {
	PeerID string   `json:"peer_id"`
	Addrs  []string `json:"addrs"` // full multiaddrs ending in /p2p/<peer_id>
	Counts Counts   `json:"counts"`
	// UptimeSeconds since Start.
	UptimeSeconds int64  `json:"uptime_s"`
	Version       string `json:"version"`
}

// Counts are the relay's live counters.
type Counts struct {
	Peers        int   `json:"peers"`        // connected peers
	Reservations int64 `json:"reservations"` // active circuit-relay reservations
	Circuits     int64 `json:"circuits"`     // open relayed connections
	Relays       int   `json:"relays"`       // fellow relays connected
}

// Health returns the relay's health summary.
func (r *Relay) Health() Health {
	relays := 0
	for _, s := range r.keeper.State() {
		if s.Connected {
			relays++
		}
	}
	return Health{
		PeerID: r.host.ID().String(),
		Addrs:  r.Addrs(),
		Counts: Counts{
			Peers:        len(r.host.Network().Peers()),
			Reservations: r.metrics.reservations.Load(),
			Circuits:     r.metrics.circuits.Load(),
			Relays:       relays,
		},
		UptimeSeconds: int64(time.Since(r.start).Seconds()),
		Version:       netkit.Version,
	}
}

// Handler returns the ops endpoint: GET /healthz and GET /metrics, and
// the operator's report and feedback queues (report.go, loopback only).
func (r *Relay) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(r.Health())
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(r.cfg.Registry, promhttp.HandlerOpts{}))
	r.reportRoutes(mux)
	return mux
}

// HTTPAddr returns the address the ops endpoint listens on (useful with
// port 0), or "" when it is off.
func (r *Relay) HTTPAddr() string {
	if r.httpLn == nil {
		return ""
	}
	return r.httpLn.Addr().String()
}

// listenHTTP binds the ops endpoint's port. Start does it first, so a port
// in use fails the start before anything else happens.
func (r *Relay) listenHTTP() error {
	ln, err := net.Listen("tcp", r.cfg.HTTP)
	if err != nil {
		return fmt.Errorf("ops endpoint on %s: %w (is the port in use? pick another with --http)", r.cfg.HTTP, err)
	}
	r.httpLn = ln
	return nil
}

// serveHTTP serves the ops endpoint on the listener listenHTTP bound.
func (r *Relay) serveHTTP() error {
	ln := r.httpLn
	r.httpSrv = &http.Server{
		Handler:           r.Handler(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		MaxHeaderBytes:    8 << 10,
	}
	r.wg.Go(func() {
		if err := r.httpSrv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			r.log.Error("ops endpoint stopped", "err", err)
		}
	})
	return nil
}
