package turn

import (
	"net"
	"net/netip"

	"github.com/libp2p/go-libp2p/core/host"
	manet "github.com/multiformats/go-multiaddr/net"
)

// refusedPeers are the ranges allocations may not relay to unless the
// operator allows them (WithAllowedPeers): everything the IANA
// special-purpose registries (RFC 6890 and updates) list as not globally
// reachable, so a TURN server is no way into its own host, its hosting
// network or anyone's private network. IPv4-mapped IPv6 addresses are
// checked as the IPv4 address they carry.
var refusedPeers = func() []netip.Prefix {
	var out []netip.Prefix
	for _, s := range []string{
		"0.0.0.0/8",       // "this network", unspecified
		"10.0.0.0/8",      // RFC 1918 private
		"100.64.0.0/10",   // RFC 6598 carrier-grade NAT
		"127.0.0.0/8",     // loopback
		"169.254.0.0/16",  // link-local (cloud metadata services)
		"172.16.0.0/12",   // RFC 1918 private
		"192.0.0.0/24",    // IETF protocol assignments
		"192.0.2.0/24",    // TEST-NET-1
		"192.88.99.0/24",  // 6to4 relay anycast (deprecated)
		"192.168.0.0/16",  // RFC 1918 private
		"198.18.0.0/15",   // RFC 2544 benchmarking
		"198.51.100.0/24", // TEST-NET-2
		"203.0.113.0/24",  // TEST-NET-3
		"224.0.0.0/4",     // multicast
		"240.0.0.0/4",     // reserved, and 255.255.255.255 broadcast
		"::/128",          // unspecified
		"::1/128",         // loopback
		"64:ff9b::/96",    // NAT64: would reach IPv4 through a translator
		"64:ff9b:1::/48",  // local-use NAT64
		"100::/64",        // discard-only
		"2001::/23",       // IETF protocol assignments (Teredo, ORCHID, …)
		"2001:db8::/32",   // documentation
		"2002::/16",       // 6to4: would reach IPv4 through a relay
		"fc00::/7",        // RFC 4193 unique local
		"fe80::/10",       // link-local
		"fec0::/10",       // site-local (deprecated)
		"ff00::/8",        // multicast
		"::ffff:0:0/96",   // IPv4-mapped (unmapped before the check)
		"::/96",           // IPv4-compatible (deprecated)
		"3fff::/20",       // documentation
	} {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}()

// peerPolicy decides where allocations may relay to. With a custom filter
// (WithPeerFilter) the filter alone decides. Otherwise an address is
// refused if it is invalid, unspecified, multicast or broadcast; allowed
// if an operator range (WithAllowedPeers) holds it; and otherwise refused
// if it is in refusedPeers or is one of the relay's own addresses — except
// that the relay's own addresses are allowed at the relay ports of its
// open allocations, so two devices using the same relay can relay to each
// other (a permission covers an address, not a port: the ports are
// checked per packet, ownOnly).
type peerPolicy struct {
	custom func(netip.Addr) bool
	allow  []netip.Prefix
	own    map[netip.Addr]bool
}

// permit reports whether an allocation may hold a permission (or a
// channel) for a.
func (p *peerPolicy) permit(a netip.Addr) bool {
	a = a.Unmap()
	if p.custom != nil {
		return p.custom(a)
	}
	if !a.IsValid() || a.IsUnspecified() || a.IsMulticast() || a == ipv4Broadcast {
		return false
	}
	if p.allowed(a) {
		return true
	}
	if p.own[a] {
		return true // ports checked per packet
	}
	return GloballyReachable(a)
}

// GloballyReachable reports whether a is a unicast address outside every
// range refusedPeers lists: one a relay with the default peer policy
// relays to (unless it is one of the relay's own addresses, reached only
// at its allocations' relay ports). A relay-only call (protocols/calls)
// leaves out the other party's candidates at any other address: no
// relay's allocation carries its checks there.
func GloballyReachable(a netip.Addr) bool {
	a = a.Unmap().WithZone("") // a zoned address is in no prefix
	if !a.IsValid() || a.IsUnspecified() || a.IsMulticast() || a == ipv4Broadcast {
		return false
	}
	for _, r := range refusedPeers {
		if r.Contains(a) {
			return false
		}
	}
	return true
}

// ownOnly reports whether packets to and from a may only be relayed to
// and from the relay's own allocations: a is one of the relay's
// addresses, and no operator range allows it.
func (p *peerPolicy) ownOnly(a netip.Addr) bool {
	if p.custom != nil || len(p.own) == 0 {
		return false
	}
	a = a.Unmap()
	return p.own[a] && !p.allowed(a)
}

func (p *peerPolicy) allowed(a netip.Addr) bool {
	for _, r := range p.allow {
		if r.Contains(a) {
			return true
		}
	}
	return false
}

var ipv4Broadcast = netip.AddrFrom4([4]byte{255, 255, 255, 255})

// ownAddrs collects the relay's own addresses: the public one, the listen
// one, every interface address of the host and the libp2p host's
// addresses.
func ownAddrs(h host.Host, public, listen netip.Addr) map[netip.Addr]bool {
	own := map[netip.Addr]bool{public.Unmap(): true}
	if listen.IsValid() && !listen.IsUnspecified() {
		own[listen.Unmap()] = true
	}
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok {
				if ip, ok := netip.AddrFromSlice(n.IP); ok {
					own[ip.Unmap()] = true
				}
			}
		}
	}
	for _, a := range h.Addrs() {
		if ip, err := manet.ToIP(a); err == nil {
			if ip, ok := netip.AddrFromSlice(ip); ok && !ip.IsUnspecified() {
				own[ip.Unmap()] = true
			}
		}
	}
	return own
}
