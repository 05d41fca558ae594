package nattest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/kinmesh/kinmesh/protocols/calls"
)

// These tests need neither root nor network namespaces.

func TestExpect(t *testing.T) {
	tests := []struct {
		a, b NAT
		want Path
	}{
		{EIM, EIM, PathDirect},
		{EIM, Symmetric, PathRelay},
		{Symmetric, EIM, PathRelay},
		{Symmetric, Symmetric, PathRelay},
		{Symmetric, Firewall, PathDirect},
		{Symmetric, NoNAT, PathDirect},
		{EIM, Firewall, PathDirect},
		{Firewall, Firewall, PathDirect},
		{NoNAT, NoNAT, PathDirect},
	}
	for _, tt := range tests {
		if got := Expect(tt.a, tt.b); got != tt.want {
			t.Errorf("Expect(%s, %s) = %s, want %s", tt.a, tt.b, got, tt.want)
		}
	}
}

func TestRouterRules(t *testing.T) {
	tests := []struct {
		nat       NAT
		want, not []string
	}{
		{EIM, []string{"-j MASQUERADE\n"}, []string{"random-fully", "-p udp -j DROP"}},
		{Symmetric, []string{"-j MASQUERADE --random-fully\n"}, []string{"-p udp -j DROP"}},
		{Firewall, []string{"-i wan0 -o lan0 -p udp -j DROP", "-i wan0 -o lan0 -j ACCEPT"}, []string{"MASQUERADE"}},
	}
	for _, tt := range tests {
		t.Run(string(tt.nat), func(t *testing.T) {
			rules := routerRules(tt.nat)
			// Every router drops unsolicited inbound silently: DROP
			// policies, established traffic back in, nothing answered.
			common := []string{":INPUT DROP", ":FORWARD DROP", "-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
				"-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT", "-A FORWARD -i lan0 -o wan0 -j ACCEPT"}
			for _, w := range append(common, tt.want...) {
				if !strings.Contains(rules, w) {
					t.Errorf("rules lack %q:\n%s", w, rules)
				}
			}
			for _, n := range append(tt.not, "REJECT") {
				if strings.Contains(rules, n) {
					t.Errorf("rules contain %q:\n%s", n, rules)
				}
			}
		})
	}
}

func TestAddressPlan(t *testing.T) {
	lab := netip.MustParsePrefix("198.18.0.0/15")
	seen := map[netip.Addr]string{wanGateway: "gateway"}
	use := func(a netip.Addr, what string) {
		t.Helper()
		if !lab.Contains(a) {
			t.Errorf("%s %v outside %v", what, a, lab)
		}
		if prev, ok := seen[a]; ok {
			t.Errorf("%s %v also used by %s", what, a, prev)
		}
		seen[a] = what
	}
	for i := 1; i <= maxRelays; i++ {
		use(relayAddr(i), fmt.Sprint("relay ", i))
	}
	for h := 1; h <= maxHomes; h++ {
		use(noNATAddr(h), fmt.Sprint("no-NAT device ", h))
		use(routerWANAddr(h), fmt.Sprint("router ", h))
		for _, n := range []NAT{EIM, Firewall} {
			lan := homeLAN(h, n)
			if !PublicCIDR.Contains(routerWANAddr(h)) {
				t.Errorf("router %d WAN %v not public", h, routerWANAddr(h))
			}
			switch n {
			case Firewall:
				if !PublicCIDR.Contains(lan.Addr()) || lan.Contains(wanGateway) {
					t.Errorf("firewall home %d LAN %v must be public and off the WAN segment", h, lan)
				}
			default:
				if !LANCIDR.Contains(lan.Addr()) || PublicCIDR.Overlaps(lan) {
					t.Errorf("NAT home %d LAN %v must be private", h, lan)
				}
			}
			use(hostIn(lan, 2), fmt.Sprintf("device %d (%s)", h, n))
		}
	}
	if PublicCIDR.Overlaps(LANCIDR) || !lab.Contains(LANCIDR.Addr()) {
		t.Errorf("public %v and LANs %v must split the lab range", PublicCIDR, LANCIDR)
	}
}

func TestPairs(t *testing.T) {
	l := &Lab{}
	for i, n := range []NAT{EIM, EIM, Symmetric, Symmetric, Firewall, Firewall, NoNAT, NoNAT} {
		l.Devices = append(l.Devices, &Device{Name: fmt.Sprint(i), NAT: n})
	}
	pairs, err := l.Pairs()
	if err != nil {
		t.Fatal(err)
	}
	if len(pairs) != 10 {
		t.Fatalf("got %d pairs, want 10 (4 types, with repetition)", len(pairs))
	}
	kinds := map[[2]NAT]bool{}
	for _, p := range pairs {
		if p[0] == p[1] {
			t.Errorf("pair %s–%s uses one device twice", p[0].NAT, p[1].NAT)
		}
		kinds[[2]NAT{p[0].NAT, p[1].NAT}] = true
	}
	for i, a := range NATs {
		for _, b := range NATs[i:] {
			if !kinds[[2]NAT{a, b}] {
				t.Errorf("no pair %s–%s", a, b)
			}
		}
	}
	if _, err := (&Lab{Devices: l.Devices[:7]}).Pairs(); err == nil {
		t.Error("one none device: got no error, want one (none–none needs two)")
	}
}

func TestWriteMarkdown(t *testing.T) {
	a, b := &Device{Name: "d1", NAT: EIM}, &Device{Name: "d3", NAT: Symmetric}
	rep := Report{Results: []PairResult{
		{A: a, B: b, Expected: PathRelay, Connected: true, Path: PathRelay, FirstConn: 80 * time.Millisecond,
			HolePunch: "failed after 3 attempts", MsgAB: 300 * time.Millisecond, MsgBA: 250 * time.Millisecond,
			Call: CallResult{Expected: PathRelay, Connected: true, Path: PathRelay, Local: "srflx", Remote: "relay", Setup: 120 * time.Millisecond,
				Stats: calls.Stats{Codec: "opus,vp8", Width: 320, Height: 240, FPS: 15, FramesReceived: 30, RTTMS: 1.5}}},
		{A: a, B: a, Expected: PathDirect, Path: PathNone, Err: errors.New("boom")},
	}}
	var buf bytes.Buffer
	rep.WriteMarkdown(&buf)
	out := buf.String()
	for _, want := range []string{"# NAT matrix", "| eim | symmetric | relay | yes | relay | 80 ms | – | – | failed after 3 attempts | 300 ms | 250 ms | relay | relay (srflx ↔ relay) | 120 ms | opus+vp8 320x240 15 fps, rtt 1.5 ms, lost 0 |", "| FAIL |", "1 of 2 pairs", "boom"} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
	// Every row has as many cells as the header.
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "| ") && strings.Contains(line, "first connection") {
			if got := strings.Count(line, "|"); got != len(columns)+1 {
				t.Errorf("header has %d separators, want %d", got, len(columns)+1)
			}
		}
	}
}

func TestExpectCall(t *testing.T) {
	for _, tt := range []struct {
		a, b NAT
		want Path
	}{
		{EIM, EIM, PathDirect}, {EIM, Symmetric, PathRelay}, {EIM, Firewall, PathDirect}, {EIM, NoNAT, PathDirect},
		{Symmetric, Symmetric, PathRelay}, {Symmetric, Firewall, PathRelay}, {Symmetric, NoNAT, PathDirect},
		{Firewall, Firewall, PathDirect}, {Firewall, NoNAT, PathDirect}, {NoNAT, NoNAT, PathDirect},
	} {
		if got, back := ExpectCall(tt.a, tt.b), ExpectCall(tt.b, tt.a); got != tt.want || back != tt.want {
			t.Errorf("%s–%s: got %s / %s, want %s", tt.a, tt.b, got, back, tt.want)
		}
	}
}

func TestStaleNames(t *testing.T) {
	tests := []struct {
		name string
		pid  string
	}{
		{"kmnat-1234-abc123-wan", "1234"},
		{"kmnat-77-00ff00-d3", "77"},
		{"kmnat-x-abc-wan", ""},
		{"other-1234-abc-wan", ""},
	}
	for _, tt := range tests {
		m := staleName.FindStringSubmatch(tt.name)
		got := ""
		if m != nil {
			got = m[1]
		}
		if got != tt.pid {
			t.Errorf("%s: got owner %q, want %q", tt.name, got, tt.pid)
		}
	}
}

func TestPoll(t *testing.T) {
	calls := 0
	err := Poll(context.Background(), 5*time.Second, time.Millisecond, func(context.Context) (bool, error) {
		calls++
		return calls == 3, nil
	})
	if err != nil || calls != 3 {
		t.Fatalf("got %v after %d calls, want success after 3", err, calls)
	}
	err = Poll(context.Background(), 20*time.Millisecond, time.Millisecond, func(context.Context) (bool, error) {
		return false, errors.New("not yet")
	})
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "not yet") {
		t.Fatalf("got %v, want a deadline error naming the last error", err)
	}
}
