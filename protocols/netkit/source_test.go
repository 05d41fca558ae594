package netkit

import (
	"net/netip"
	"testing"

	ma "github.com/multiformats/go-multiaddr"
)

func TestMultiaddrSource(t *testing.T) {
	for _, tt := range []struct {
		name, addr, want string
	}{
		{"IPv4 over TCP", "/ip4/198.51.100.7/tcp/4001", "198.51.100.7"},
		{"IPv4 over QUIC", "/ip4/198.51.100.7/udp/4001/quic-v1", "198.51.100.7"},
		{"IPv6: its /64", "/ip6/2001:db8:1:2:3:4:5:6/tcp/4001", "2001:db8:1:2::/64"},
		{"IPv4-mapped IPv6", "/ip6/::ffff:198.51.100.7/tcp/4001", "198.51.100.7"},
		{"a circuit", "/ip4/198.51.100.7/tcp/4001/p2p/12D3KooWGzBqZWnFvdRiKhvY8nJBWAJsSPW9Rc1cmJNnzfsyqNrL/p2p-circuit", SourceCircuit},
		{"no IP", "/dns4/example.org/tcp/4001", SourceCircuit},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := MultiaddrSource(ma.StringCast(tt.addr)); got != tt.want {
				t.Errorf("MultiaddrSource(%s) = %q, want %q", tt.addr, got, tt.want)
			}
		})
	}
	if got := MultiaddrSource(nil); got != SourceCircuit {
		t.Errorf("MultiaddrSource(nil) = %q, want %q", got, SourceCircuit)
	}
	a, b := netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8::ffff:1")
	if SourceKey(a) != SourceKey(b) {
		t.Errorf("two addresses of one /64 are two sources: %s, %s", SourceKey(a), SourceKey(b))
	}
}
