package node

import (
	"context"
	"time"

	"github.com/libp2p/go-libp2p/core/network"

	"github.com/kinmesh/kinmesh/protocols/netkit"
)

// Status is a snapshot of the node's connectivity.
type Status struct {
	PeerID string `json:"peer_id"`
	// Addrs are the node's addresses, including circuit addresses through
	// its relays, as full multiaddrs ending in /p2p/<peer_id>.
	Addrs  []string      `json:"addrs"`
	Relays []RelayStatus `json:"relays"`
	// Uptime since Start.
	Uptime time.Duration `json:"-"`
}

// RelayStatus is the node's link to one of its relays.
type RelayStatus struct {
	PeerID    string `json:"peer_id"`
	Connected bool   `json:"connected"`
	// Reserved is true while the node holds a circuit-relay reservation
	// on the relay, i.e. is reachable through it.
	Reserved bool `json:"reserved"`
	// ReservationExpiry is when the reservation lapses unless renewed.
	ReservationExpiry time.Time `json:"reservation_expiry,omitzero"`
	// LastError is the last dial or reservation error, if the link is down.
	LastError string `json:"last_error,omitempty"`
	// DownSince is when the node saw the relay go down (unset while it is
	// up); a home relay down for RehomeAfter is replaced.
	DownSince time.Time `json:"down_since,omitzero"`
}

// Status returns the node's current connectivity.
func (n *Node) Status() Status {
	if n.host == nil {
		return Status{}
	}
	st := Status{
		PeerID: n.host.ID().String(),
		Addrs:  netkit.P2PAddrs(n.host.ID(), n.host.Addrs()),
		Uptime: n.cfg.Now().Sub(n.start),
	}
	kept := map[string]netkit.PeerState{}
	for _, s := range n.keeper.State() {
		kept[s.ID.String()] = s
	}
	n.rsvMu.Lock()
	defer n.rsvMu.Unlock()
	now := time.Now()
	for _, r := range n.relays {
		s := kept[r.ID.String()]
		exp, ok := n.reservations[r.ID]
		connected := n.host.Network().Connectedness(r.ID) == network.Connected
		rs := RelayStatus{
			PeerID:    r.ID.String(),
			Connected: connected,
			Reserved:  ok && connected && now.Before(exp),
			LastError: s.LastErr,
		}
		if rs.Reserved {
			rs.ReservationExpiry = exp
		}
		rs.DownSince = n.downSince[r.ID]
		st.Relays = append(st.Relays, rs)
	}
	return st
}

// WaitRelays blocks until at least want relays are connected with a
// reservation, or ctx ends.
func (n *Node) WaitRelays(ctx context.Context, want int) error {
	for {
		changed := n.keeper.Changed()
		got := 0
		for _, r := range n.Status().Relays {
			if r.Reserved {
				got++
			}
		}
		if got >= want {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		}
	}
}

// Changed returns a channel closed at the next change of the node's relay
// links, so callers can wait on a condition instead of polling.
func (n *Node) Changed() <-chan struct{} { return n.keeper.Changed() }
