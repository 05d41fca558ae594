package netkit

import (
	"net/netip"

	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
)

// SourceCircuit is the source key of connections without an IP address of
// their own (relayed circuits): they all count as one source.
const SourceCircuit = "circuit"

// SourceKey is the key relays keep per-address limits by: an IPv4 address
// as is, an IPv6 address as the /64 it is in (one subscriber's network,
// in which a host can pick any address).
func SourceKey(a netip.Addr) string {
	a = a.Unmap()
	if a.Is6() {
		p, _ := a.WithZone("").Prefix(64)
		return p.String()
	}
	return a.String()
}

// MultiaddrSource is SourceKey of a connection's remote multiaddr;
// SourceCircuit for a relayed circuit or an address without an IP.
func MultiaddrSource(a ma.Multiaddr) string {
	if a == nil {
		return SourceCircuit
	}
	if _, err := a.ValueForProtocol(ma.P_CIRCUIT); err == nil {
		return SourceCircuit
	}
	ip, err := manet.ToIP(a)
	if err != nil {
		return SourceCircuit
	}
	addr, ok := netip.AddrFromSlice(ip)
	if !ok {
		return SourceCircuit
	}
	return SourceKey(addr)
}
