package node

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/libp2p/go-libp2p/p2p/protocol/holepunch"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
)

// The lab setting (Config.LabPublicCIDRs, `kinmesh node --lab-public-cidr`)
// lets a network-namespace testbed (internal/nattest) stand in for the
// internet. go-libp2p only hole-punches from addresses go-multiaddr calls
// public, and the only addresses a lab may use, 198.18.0.0/15 (RFC 2544's
// benchmarking range), are on its unroutable list: in a lab the DCUtR
// handler would never register. With the setting, the node runs its own
// DCUtR service (go-libp2p's, constructed here instead of by the host)
// whose hole-punch addresses are the host's addresses and observed
// addresses that are public to go-multiaddr *or* inside one of the lab's
// public ranges; the rest of 198.18.0.0/15 stays private (the lab's home
// LANs). Nothing global is changed: go-multiaddr's lists and every other
// libp2p component keep their own notion of public.

// labRange is the only address space the lab setting accepts.
var labRange = netip.MustParsePrefix("198.18.0.0/15")

// checkLabCIDRs refuses lab ranges outside labRange, so the setting can't
// be used to pass off real networks as public.
func checkLabCIDRs(ps []netip.Prefix) error {
	for _, p := range ps {
		if !p.IsValid() || !p.Addr().Is4() || p.Bits() < labRange.Bits() || !labRange.Contains(p.Addr()) {
			return fmt.Errorf("%w: lab public range %v: the lab setting only takes ranges inside %v (it is for network-namespace testbeds, never for real devices)", ErrConfig, p, labRange)
		}
	}
	return nil
}

// labPublic tells whether a is public in the lab: public to go-multiaddr,
// or an IP address inside one of the lab's public ranges.
func labPublic(a ma.Multiaddr, public []netip.Prefix) bool {
	if manet.IsPublicAddr(a) {
		return true
	}
	ip, err := manet.ToIP(a)
	if err != nil {
		return false
	}
	addr, ok := netip.AddrFromSlice(ip)
	if !ok {
		return false
	}
	addr = addr.Unmap()
	for _, p := range public {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// startLab starts the lab's DCUtR service when the lab setting is on. It
// mirrors go-libp2p's own (basichost's HolePunchAddrs: the host's direct
// addresses plus every observed address, even with a single observer),
// with labPublic in place of go-multiaddr's public filter.
func (hp *holePunching) startLab(cfg *Config) error {
	if len(cfg.LabPublicCIDRs) == 0 {
		return nil
	}
	if hp.basic == nil {
		return errors.New("node: lab hole punching: the libp2p host was not captured")
	}
	public := slices.Clone(cfg.LabPublicCIDRs)
	addrs := func() []ma.Multiaddr {
		all := hp.basic.AllAddrs()
		if hp.observed != nil {
			all = append(all, hp.observed.Addrs(1)...)
		}
		return slices.DeleteFunc(ma.Unique(all), func(a ma.Multiaddr) bool {
			return isCircuit(a) || !labPublic(a, public)
		})
	}
	s, err := holepunch.NewService(hp.basic, hp.basic.IDService(), addrs,
		holepunch.WithMetricsAndEventTracer(hp.tracker, hp.tracker))
	if err != nil {
		return fmt.Errorf("node: lab hole punching: %w", err)
	}
	hp.lab = s
	return nil
}
