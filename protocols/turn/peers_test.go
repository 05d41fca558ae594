package turn

import (
	"net"
	"net/netip"
	"testing"
	"time"
)

// TestRelayPeerPolicy: by default a relay on loopback refuses permissions
// for private, carrier-grade NAT, link-local and loopback peers, and
// relays to and from its own address only at its allocations' relay
// ports: two allocations reach each other, a plain socket on the relay's
// host does not.
func TestRelayPeerPolicy(t *testing.T) {
	s := startServer(t)
	cr := s.Issue(accountKey(t, newAccount(t)))
	relayA, clientA, doneA, err := allocateFrom(t, s, "127.0.0.1", cr.Username, cr.Password)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(doneA)
	for _, a := range []string{"10.0.0.5:9", "192.168.1.1:9", "100.64.0.1:9", "169.254.169.254:80", "127.0.0.2:9", "[::1]:9"} {
		ua, err := net.ResolveUDPAddr("udp", a)
		if err != nil {
			t.Fatal(err)
		}
		if err := clientA.CreatePermission(ua); err == nil {
			t.Errorf("permission for %s granted", a)
		}
	}

	relayB, clientB, doneB, err := allocateFrom(t, s, "127.0.0.1", cr.Username, cr.Password)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(doneB)
	host, err := net.ListenPacket("udp4", "127.0.0.1:0") // a service on the relay's host
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	buf := make([]byte, 1500)
	read := func(c net.PacketConn, want string) {
		t.Helper()
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, _, err := c.ReadFrom(buf)
		if err != nil || string(buf[:n]) != want {
			t.Fatalf("read %q, %v; want %q", buf[:n], err, want)
		}
	}
	// A and B permit the relay's own address (each other's relay
	// candidate). Then A sends to the host's socket and to B, in that
	// order, on one client socket: the server handles them in order, so
	// once B has the second the first was refused or sent.
	if err := clientA.CreatePermission(relayB.LocalAddr()); err != nil {
		t.Fatalf("permission for another allocation: %v", err)
	}
	if err := clientB.CreatePermission(relayA.LocalAddr()); err != nil {
		t.Fatalf("permission for another allocation: %v", err)
	}
	if _, err := relayA.WriteTo([]byte("to the host"), host.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	if _, err := relayA.WriteTo([]byte("to B"), relayB.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	read(relayB, "to B")
	if b, ok := queued(t, host); ok {
		t.Fatalf("the relay sent %q to a socket on its own address that is no allocation", b)
	}
	// The other way: what the host's socket sends A is dropped, what B
	// sends arrives.
	if _, err := host.WriteTo([]byte("from the host"), relayA.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	if _, err := relayB.WriteTo([]byte("from B"), relayA.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	read(relayA, "from B")
}

func TestGloballyReachable(t *testing.T) {
	for _, tt := range []struct {
		addr string
		want bool
	}{
		{"203.0.114.1", true},
		{"8.8.8.8", true},
		{"2a00:1450:4001::1", true},
		{"::ffff:8.8.8.8", true},
		{"127.0.0.1", false},
		{"10.1.2.3", false},
		{"172.16.0.1", false},
		{"192.168.1.5", false},
		{"100.64.0.1", false},
		{"169.254.169.254", false},
		{"192.0.2.2", false},
		{"198.18.0.1", false},
		{"0.0.0.0", false},
		{"224.0.0.1", false},
		{"255.255.255.255", false},
		{"::1", false},
		{"::", false},
		{"fd00::2", false},
		{"fe80::1", false},
		{"fe80::1%eth0", false},
		{"::ffff:192.168.1.5", false},
		{"2001:db8::1", false},
	} {
		if got := GloballyReachable(netip.MustParseAddr(tt.addr)); got != tt.want {
			t.Errorf("GloballyReachable(%s) = %v, want %v", tt.addr, got, tt.want)
		}
	}
	if GloballyReachable(netip.Addr{}) {
		t.Error("the zero address is globally reachable")
	}
}
