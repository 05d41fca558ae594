package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/protocol/holepunch"
	ma "github.com/multiformats/go-multiaddr"
)

func TestLabSettingRefusesRealNetworks(t *testing.T) {
	tests := []struct {
		name   string
		cidrs  []string
		wantOK bool
	}{
		{"lab public half", []string{"198.18.0.0/16"}, true},
		{"whole lab range", []string{"198.18.0.0/15"}, true},
		{"two lab ranges", []string{"198.18.0.0/24", "198.18.7.0/24"}, true},
		{"private network", []string{"10.0.0.0/8"}, false},
		{"public internet", []string{"0.0.0.0/0"}, false},
		{"wider than the lab", []string{"198.16.0.0/13"}, false},
		{"ipv6", []string{"2001:db8::/32"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var ps []netip.Prefix
			for _, c := range tt.cidrs {
				ps = append(ps, netip.MustParsePrefix(c))
			}
			_, err := New(Config{DataDir: "x", LabPublicCIDRs: ps})
			if tt.wantOK && err != nil {
				t.Fatalf("got %v, want it accepted", err)
			}
			if !tt.wantOK && (!errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "lab")) {
				t.Fatalf("got %v, want a lab-setting ErrConfig", err)
			}
		})
	}
}

func TestLabPublic(t *testing.T) {
	public := []netip.Prefix{netip.MustParsePrefix("198.18.0.0/16")}
	tests := []struct {
		addr string
		want bool
	}{
		{"/ip4/198.18.0.101/tcp/4001", true},            // lab internet
		{"/ip4/198.18.3.2/udp/4001/quic-v1", true},      // lab public home
		{"/ip4/198.19.1.2/tcp/4001", false},             // lab home LAN
		{"/ip4/127.0.0.1/tcp/4001", false},              // loopback
		{"/ip4/192.168.1.2/tcp/4001", false},            // private
		{"/ip4/1.1.1.1/tcp/4001", true},                 // really public
		{"/ip4/198.18.0.11/tcp/4001/p2p-circuit", true}, // the caller drops circuits
		{"/dns4/relay.example/tcp/4001", true},          // as go-multiaddr says
	}
	for _, tt := range tests {
		if got := labPublic(ma.StringCast(tt.addr), public); got != tt.want {
			t.Errorf("labPublic(%s) = %v, want %v", tt.addr, got, tt.want)
		}
	}
}

func TestPunchTracker(t *testing.T) {
	tr := newPunchTracker(nil)
	p := peer.ID("remote")
	ev := func(e any) {
		tr.Trace(&holepunch.Event{Timestamp: time.Now().UnixNano(), Remote: p, Evt: e})
	}
	if got := tr.get(p); got != nil {
		t.Fatalf("before any event got %+v, want nil", got)
	}
	steps := []struct {
		evt      any
		result   string
		attempts int
	}{
		{&holepunch.StartHolePunchEvt{}, HolePunchRunning, 0},
		{&holepunch.HolePunchAttemptEvt{Attempt: 1}, HolePunchRunning, 1},
		{&holepunch.EndHolePunchEvt{Success: false, Error: "timeout"}, HolePunchFailed, 1},
		{&holepunch.StartHolePunchEvt{}, HolePunchRunning, 1},
		{&holepunch.HolePunchAttemptEvt{Attempt: 2}, HolePunchRunning, 2},
		{&holepunch.EndHolePunchEvt{Success: true}, HolePunchDirect, 2},
	}
	for i, s := range steps {
		ev(s.evt)
		got := tr.get(p)
		if got == nil || got.Result != s.result || got.Attempts != s.attempts {
			t.Fatalf("step %d (%T): got %+v, want result %s after %d attempts", i, s.evt, got, s.result, s.attempts)
		}
	}
	ev(&holepunch.ProtocolErrorEvt{Error: "no public address"})
	if got := tr.get(p); got.Result != HolePunchFailed || got.Error != "no public address" {
		t.Fatalf("after a protocol error got %+v", got)
	}
	// The tracker is bounded.
	for i := range 2 * maxTrackedPunches {
		tr.Trace(&holepunch.Event{Timestamp: time.Now().UnixNano(), Remote: peer.ID(fmt.Sprint(i)), Evt: &holepunch.StartHolePunchEvt{}})
	}
	if n := len(tr.peers); n > maxTrackedPunches {
		t.Fatalf("tracker holds %d peers, want at most %d", n, maxTrackedPunches)
	}
}

// TestPeersShowsDirectConnections: two nodes connected directly appear in
// each other's GET /v1/node/peers as "direct"; a node in lab mode starts
// (and closes) its own DCUtR service, which without a lab-public address
// stays unregistered.
func TestPeersShowsDirectConnections(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a")
	a := startNode(t, Config{DataDir: dir, API: "127.0.0.1:0"})
	b := startNode(t, Config{LabPublicCIDRs: []netip.Prefix{netip.MustParsePrefix("198.18.0.0/16")}})
	if b.hp.lab == nil {
		t.Fatal("lab mode: no DCUtR service of the node's own")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.Host().Connect(ctx, peer.AddrInfo{ID: b.ID(), Addrs: b.Host().Addrs()}); err != nil {
		t.Fatal(err)
	}
	if pl := b.Peers(); pl.HolePunching || len(pl.Peers) != 1 || pl.Peers[0].PeerID != a.ID().String() {
		t.Fatalf("b.Peers() = %+v, want a only and no hole punching (no lab-public address)", pl)
	}

	tok, err := os.ReadFile(filepath.Join(dir, TokenFile))
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+a.APIAddr()+"/v1/node/peers", nil)
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	defer http.DefaultClient.CloseIdleConnections()
	var pl PeerList
	if err := json.NewDecoder(resp.Body).Decode(&pl); err != nil {
		t.Fatal(err)
	}
	if len(pl.Peers) != 1 {
		t.Fatalf("GET /v1/node/peers: %+v, want one peer", pl)
	}
	p := pl.Peers[0]
	if p.PeerID != b.ID().String() || p.Path != "direct" || len(p.Conns) != 1 {
		t.Fatalf("peer %+v, want b, direct, one connection", p)
	}
	c := p.Conns[0]
	if c.Relayed || c.Limited || c.Direction != "outbound" || c.Opened.IsZero() {
		t.Fatalf("connection %+v, want direct, unlimited, outbound, with an open time", c)
	}
}
