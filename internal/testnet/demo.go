package testnet

import (
	"context"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/protocol/ping"
	ma "github.com/multiformats/go-multiaddr"
)

// Step is one scripted step of the demo.
type Step struct {
	Name string
	Run  func(ctx context.Context, n *Network) (detail string, err error)
}

// Result is the outcome of a step.
type Result struct {
	Step     string
	Detail   string
	Err      error
	Duration time.Duration
}

// Steps returns the demo script for the running network.
func (n *Network) Steps() []Step {
	return []Step{
		{"every device holds a reservation on every relay", func(ctx context.Context, n *Network) (string, error) {
			if err := n.WaitReady(ctx); err != nil {
				return "", err
			}
			return fmt.Sprintf("%d devices × %d relays", len(n.Devices), len(n.Relays)), nil
		}},
		{"devices reach each other through a relay circuit", stepCircuitPing},
		{"every device creates an account", stepAccounts},
		{"sign-up refuses under-13s, and EU teens without a parent's consent", stepAgeGate},
		{"devices exchange invites", stepInvites},
		{"a contact's signed record is found in the relays' DHT", stepRecordInDHT},
		{"an online message is delivered at once", stepOnlineMessage},
		{"an offline device gets its mail after a restart", stepOfflineMessage},
		{"a family group reaches every member", stepGroup},
		{"optional data collection waits for consent", stepConsent},
		{"a blocked contact's messages are dropped", stepBlock},
		{"contacts see who is online; \"nobody\" hides", stepPresence},
		{"a report with one disclosed message reaches the operators", stepReport},
		{"feedback reaches the operators, diagnostics only with consent", stepFeedback},
		{"a phone number is verified, then found from an address book", stepDiscovery},
		{"a location is shared for 15 minutes", stepLocation},
		{"two devices hold a call, peer to peer", stepCall},
		{"a call forced through a relay's TURN server", stepRelayCall},
		{"a profile photo is sealed on the relays and opened by a contact", stepPhoto},
		{"a lost phone's account is recovered on a new one", stepRecovery},
		{"a moment with a photo is posted, liked and deleted", stepMoments},
		{"an export holds everything", stepExport},
		// Keep last: it removes an account.
		{"an account is deleted and purged from its relays", stepDelete},
	}
}

// RunDemo runs every step in order, each bounded by perStep, and reports
// each result to report as it completes.
func (n *Network) RunDemo(ctx context.Context, perStep time.Duration, report func(Result)) []Result {
	var out []Result
	for _, s := range n.Steps() {
		sctx, cancel := context.WithTimeout(ctx, perStep)
		start := time.Now()
		detail, err := s.Run(sctx, n)
		cancel()
		r := Result{Step: s.Name, Detail: detail, Err: err, Duration: time.Since(start)}
		out = append(out, r)
		if report != nil {
			report(r)
		}
	}
	return out
}

// stepCircuitPing has each device ping the next one by dialing it only
// through the first relay's circuit address.
func stepCircuitPing(ctx context.Context, n *Network) (string, error) {
	if len(n.Devices) < 2 {
		return "skipped: fewer than 2 devices", nil
	}
	relay := n.Relays[0]
	var rtts []string
	for i, d := range n.Devices {
		to := n.Devices[(i+1)%len(n.Devices)]
		a, b := d.Node(), to.Node()
		if a == nil || b == nil {
			continue
		}
		rtt, err := CircuitPing(ctx, a.Host(), relay.AddrInfo(), b.ID())
		if err != nil {
			return "", fmt.Errorf("%s → %s via %s: %w", d.Name, to.Name, relay.Name, err)
		}
		rtts = append(rtts, fmt.Sprintf("%s→%s %s", d.Name, to.Name, rtt.Round(10*time.Microsecond)))
	}
	return fmt.Sprint(rtts), nil
}

// CircuitPing connects h to target through relay's circuit
// (<relay addr>/p2p/<relay>/p2p-circuit/p2p/<target>), the way a contact
// is reached through its home relays, and pings it once. Any connection h
// had to target is closed first and the only addresses it knows for target
// are the circuit's, so the connection is made through the relay (hole
// punching may upgrade it to a direct one right after: that's fine).
func CircuitPing(ctx context.Context, h host.Host, relay peer.AddrInfo, target peer.ID) (time.Duration, error) {
	circuit := ma.StringCast("/p2p/" + relay.ID.String() + "/p2p-circuit")
	var addrs []ma.Multiaddr
	for _, a := range relay.Addrs {
		addrs = append(addrs, a.Encapsulate(circuit))
	}
	_ = h.Network().ClosePeer(target)
	h.Peerstore().ClearAddrs(target)
	if err := h.Connect(ctx, peer.AddrInfo{ID: target, Addrs: addrs}); err != nil {
		return 0, fmt.Errorf("connect through relay circuit: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	res := <-ping.Ping(network.WithAllowLimitedConn(ctx, "kinmesh demo"), h, target)
	if res.Error != nil {
		return 0, fmt.Errorf("ping: %w", res.Error)
	}
	return res.RTT, nil
}
