package node

import (
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	bhost "github.com/libp2p/go-libp2p/p2p/host/basic"
	"github.com/libp2p/go-libp2p/p2p/protocol/holepunch"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/fx"
)

// PeerList is what GET /v1/node/peers shows: the peers this node is
// connected to right now and how, so an app (or the NAT testbed) can tell
// a direct connection from one through a relay circuit.
type PeerList struct {
	// HolePunching is true once the DCUtR hole-punching handler is
	// registered: the node knows at least one public address of its own
	// (its NAT's outside address, as a relay observed it).
	HolePunching bool `json:"hole_punching"`
	// ObservedAddrs are this node's addresses as other peers (its relays)
	// see them: behind a NAT, the router's outside address and port.
	ObservedAddrs []string `json:"observed_addrs"`
	// Peers are the connected peers, in peer id order.
	Peers []PeerInfo `json:"peers"`
}

// PeerInfo is one connected peer.
type PeerInfo struct {
	PeerID string `json:"peer_id"`
	// Path is "direct" if at least one connection to the peer is direct,
	// else "relay" (only relay circuits).
	Path  string     `json:"path"`
	Conns []ConnInfo `json:"conns"`
	// HolePunch is the latest DCUtR hole punch with this peer, if any.
	HolePunch *HolePunch `json:"hole_punch,omitempty"`
}

// ConnInfo is one connection to a peer.
type ConnInfo struct {
	// Addr is the peer's end of the connection; a relayed connection's
	// ends in /p2p-circuit.
	Addr string `json:"addr"`
	// Direction is "inbound" or "outbound".
	Direction string `json:"direction"`
	// Relayed is true for a connection through a relay circuit.
	Relayed bool `json:"relayed"`
	// Limited is true while the relay's circuit limits (duration, bytes)
	// apply: only signalling-sized traffic may use it.
	Limited bool `json:"limited"`
	// Opened is when the connection was established.
	Opened time.Time `json:"opened"`
}

// HolePunch is the state of DCUtR hole punching with one peer. Both sides
// report their own view: the side that received the relayed connection
// starts the hole punch and retries it (go-libp2p v0.51: 3 attempts).
type HolePunch struct {
	// Result of the latest attempt: "running", "direct" (a hole was
	// punched, or the peer was dialed directly) or "failed".
	Result string `json:"result"`
	// Attempts counts the attempts made recently (the count restarts after
	// 5 quiet minutes).
	Attempts int `json:"attempts"`
	// Error is the last attempt's error, if it failed.
	Error string `json:"error,omitempty"`
	// Updated is when the state last changed.
	Updated time.Time `json:"updated"`
}

// Hole punch results.
const (
	HolePunchRunning = "running"
	HolePunchDirect  = "direct"
	HolePunchFailed  = "failed"
)

// Peers returns the peers this node is connected to and how (direct or
// relayed), with the latest hole punch result of each.
func (n *Node) Peers() PeerList {
	out := PeerList{ObservedAddrs: []string{}, Peers: []PeerInfo{}}
	if n.host == nil {
		return out
	}
	out.HolePunching = slices.Contains(n.host.Mux().Protocols(), holepunch.Protocol)
	if n.hp.observed != nil {
		for _, a := range n.hp.observed.Addrs(1) {
			out.ObservedAddrs = append(out.ObservedAddrs, a.String())
		}
		slices.Sort(out.ObservedAddrs)
	}
	byPeer := map[peer.ID]*PeerInfo{}
	for _, c := range n.host.Network().Conns() {
		p := c.RemotePeer()
		info := byPeer[p]
		if info == nil {
			info = &PeerInfo{PeerID: p.String(), Path: "relay", HolePunch: n.hp.tracker.get(p)}
			byPeer[p] = info
		}
		st := c.Stat()
		ci := ConnInfo{
			Addr:      c.RemoteMultiaddr().String(),
			Direction: direction(st.Direction),
			Relayed:   isCircuit(c.RemoteMultiaddr()),
			Limited:   st.Limited,
			Opened:    st.Opened,
		}
		if !ci.Relayed {
			info.Path = "direct"
		}
		info.Conns = append(info.Conns, ci)
	}
	for _, info := range byPeer {
		slices.SortFunc(info.Conns, func(a, b ConnInfo) int { return a.Opened.Compare(b.Opened) })
		out.Peers = append(out.Peers, *info)
	}
	slices.SortFunc(out.Peers, func(a, b PeerInfo) int { return strings.Compare(a.PeerID, b.PeerID) })
	return out
}

func direction(d network.Direction) string {
	switch d {
	case network.DirInbound:
		return "inbound"
	case network.DirOutbound:
		return "outbound"
	}
	return "unknown"
}

func (a *apiServer) getPeers(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, a.n.Peers())
}

// holePunching is the node's hole punching: the libp2p pieces it needs
// (captured while the host is built), the lab's own DCUtR service when
// Config.LabPublicCIDRs is set (lab.go), and the tracker behind
// PeerInfo.HolePunch.
type holePunching struct {
	basic    *bhost.BasicHost
	observed bhost.ObservedAddrsManager
	lab      *holepunch.Service
	tracker  *punchTracker
}

// hostOptions returns the libp2p options for hole punching. Normally that
// is go-libp2p's own DCUtR service with the tracker attached; in a lab
// (Config.LabPublicCIDRs) the node starts its own after the host is up
// (startLab), because go-libp2p's offers only hole-punch addresses that
// go-multiaddr considers public.
func (hp *holePunching) hostOptions(cfg *Config) []libp2p.Option {
	hp.tracker = newPunchTracker(cfg.Registry)
	opts := []libp2p.Option{
		libp2p.WithFxOption(fx.Invoke(func(h *bhost.BasicHost, o bhost.ObservedAddrsManager) {
			hp.basic, hp.observed = h, o
		})),
	}
	if len(cfg.LabPublicCIDRs) == 0 {
		opts = append(opts, libp2p.EnableHolePunching(holepunch.WithMetricsAndEventTracer(hp.tracker, hp.tracker)))
	}
	return opts
}

// close stops the lab's DCUtR service, if any.
func (hp *holePunching) close() error {
	if hp.lab == nil {
		return nil
	}
	return hp.lab.Close()
}

// maxTrackedPunches bounds the tracker: beyond it the stalest entry goes.
const maxTrackedPunches = 256

// punchTracker records the latest hole punch per peer from the DCUtR
// service's event tracer, and passes the metrics on to libp2p's
// Prometheus tracer when the node has a registry.
type punchTracker struct {
	metrics holepunch.MetricsTracer // nil: metrics off

	mu    sync.Mutex
	peers map[peer.ID]*HolePunch
}

var (
	_ holepunch.EventTracer   = (*punchTracker)(nil)
	_ holepunch.MetricsTracer = (*punchTracker)(nil)
)

func newPunchTracker(reg prometheus.Registerer) *punchTracker {
	t := &punchTracker{peers: map[peer.ID]*HolePunch{}}
	if reg != nil {
		t.metrics = holepunch.NewMetricsTracer(holepunch.WithRegisterer(reg))
	}
	return t
}

// Trace implements holepunch.EventTracer.
func (t *punchTracker) Trace(evt *holepunch.Event) {
	if evt == nil {
		return
	}
	now := time.Unix(0, evt.Timestamp)
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.peers[evt.Remote]
	if s == nil {
		if len(t.peers) >= maxTrackedPunches {
			t.evictLocked()
		}
		s = &HolePunch{Result: HolePunchRunning}
		t.peers[evt.Remote] = s
	}
	s.Updated = now
	switch e := evt.Evt.(type) {
	case *holepunch.StartHolePunchEvt:
		s.Result, s.Error = HolePunchRunning, ""
	case *holepunch.HolePunchAttemptEvt:
		s.Attempts = e.Attempt
	case *holepunch.EndHolePunchEvt:
		s.Result, s.Error = HolePunchDirect, ""
		if !e.Success {
			s.Result, s.Error = HolePunchFailed, e.Error
		}
	case *holepunch.DirectDialEvt:
		if e.Success {
			s.Result, s.Error = HolePunchDirect, ""
		}
	case *holepunch.ProtocolErrorEvt:
		s.Result, s.Error = HolePunchFailed, e.Error
	}
}

func (t *punchTracker) evictLocked() {
	var oldest peer.ID
	var at time.Time
	for p, s := range t.peers {
		if oldest == "" || s.Updated.Before(at) {
			oldest, at = p, s.Updated
		}
	}
	delete(t.peers, oldest)
}

func (t *punchTracker) get(p peer.ID) *HolePunch {
	if t == nil {
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	s, ok := t.peers[p]
	if !ok {
		return nil
	}
	c := *s
	return &c
}

// HolePunchFinished implements holepunch.MetricsTracer.
func (t *punchTracker) HolePunchFinished(side string, attempts int, theirs, ours []ma.Multiaddr, direct network.ConnMultiaddrs) {
	if t.metrics != nil {
		t.metrics.HolePunchFinished(side, attempts, theirs, ours, direct)
	}
}

// DirectDialFinished implements holepunch.MetricsTracer.
func (t *punchTracker) DirectDialFinished(success bool) {
	if t.metrics != nil {
		t.metrics.DirectDialFinished(success)
	}
}
