package testnet

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
)

// Row is one line of the status table.
type Row struct {
	Name, Role, PeerID string
	// Relays is "connected/total" relays (for a relay: its fellows).
	Relays string
	// Via says how others reach the member: its own addresses, or the
	// relays it holds reservations on.
	Via    string
	Uptime time.Duration
	Up     bool
}

// Rows returns the current status of every member.
func (n *Network) Rows() []Row {
	names := map[string]string{}
	for _, r := range n.Relays {
		names[r.AddrInfo().ID.String()] = r.Name
	}
	var rows []Row
	for _, rl := range n.Relays {
		r := rl.Relay()
		if r == nil {
			rows = append(rows, Row{Name: rl.Name, Role: "relay", PeerID: short(rl.AddrInfo().ID.String()), Relays: "-", Via: "stopped"})
			continue
		}
		h := r.Health()
		fellows := 0
		for _, f := range n.Relays {
			if f != rl && r.Host().Network().Connectedness(f.AddrInfo().ID) == network.Connected {
				fellows++
			}
		}
		rows = append(rows, Row{
			Name: rl.Name, Role: "relay", PeerID: short(h.PeerID),
			Relays: fmt.Sprintf("%d/%d", fellows, len(n.Relays)-1),
			Via:    fmt.Sprintf("direct (%d addrs), %d reservations", len(h.Addrs), h.Counts.Reservations),
			Uptime: time.Duration(h.UptimeSeconds) * time.Second, Up: true,
		})
	}
	for _, d := range n.Devices {
		nd := d.Node()
		if nd == nil {
			rows = append(rows, Row{Name: d.Name, Role: "device", PeerID: "-", Relays: "-", Via: "stopped"})
			continue
		}
		st := nd.Status()
		connected, via := 0, []string{}
		for _, r := range st.Relays {
			if r.Connected {
				connected++
			}
			if r.Reserved {
				via = append(via, names[r.PeerID])
			}
		}
		reach := "circuit via " + strings.Join(via, ", ")
		if len(via) == 0 {
			reach = "unreachable (no reservation yet)"
		}
		if direct := directPeers(nd.Host(), names); direct > 0 {
			reach += fmt.Sprintf("; direct to %d devices", direct)
		}
		rows = append(rows, Row{
			Name: d.Name, Role: "device", PeerID: short(st.PeerID),
			Relays: fmt.Sprintf("%d/%d", connected, len(st.Relays)),
			Via:    reach, Uptime: st.Uptime, Up: true,
		})
	}
	return rows
}

// WriteTable writes the status table.
func (n *Network) WriteTable(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tROLE\tPEER ID\tRELAYS\tREACHABLE VIA\tUPTIME")
	for _, r := range n.Rows() {
		up := "-"
		if r.Up {
			up = r.Uptime.Truncate(time.Second).String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.Name, r.Role, r.PeerID, r.Relays, r.Via, up)
	}
	tw.Flush()
}

func short(id string) string {
	if len(id) <= 16 {
		return id
	}
	return id[:8] + "…" + id[len(id)-6:]
}

// directPeers counts the non-relay peers h has an unlimited (not relayed)
// connection to.
func directPeers(h host.Host, relays map[string]string) int {
	n := 0
	for _, p := range h.Network().Peers() {
		if _, isRelay := relays[p.String()]; isRelay {
			continue
		}
		for _, c := range h.Network().ConnsToPeer(p) {
			if !c.Stat().Limited {
				n++
				break
			}
		}
	}
	return n
}
