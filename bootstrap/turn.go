package bootstrap

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"

	ma "github.com/multiformats/go-multiaddr"

	"github.com/kinmesh/kinmesh/protocols/netkit"
	"github.com/kinmesh/kinmesh/protocols/turn"
	"github.com/kinmesh/kinmesh/storage"
)

// The STUN/TURN server for calls (protocols/turn): every relay runs one
// unless TURNDisable, and hands short-lived credentials for it to
// authenticated accounts over /kinmesh/turn-creds/1.0.0. Its settings are
// the TURN* fields of Config; its metrics are kinmesh_turn_* on /metrics.

// applyTURNDefaults fills the TURN* fields of c: the listen address from
// the relay's listen addresses, the public address from its announce or
// listen addresses (else the host's first global IPv4 address).
func (c *Config) applyTURNDefaults() error {
	if c.TURNDisable {
		return nil
	}
	for _, f := range []struct {
		name string
		p    *int
		def  int
	}{
		{"turn_threads", &c.TURNThreads, 0},
		{"turn_relay_port_min", &c.TURNRelayPortMin, turn.DefaultRelayPortMin},
		{"turn_relay_port_max", &c.TURNRelayPortMax, turn.DefaultRelayPortMax},
		{"turn_account_allocations", &c.TURNAccountAllocations, turn.DefaultAccountAllocations},
		{"turn_peer_allocations", &c.TURNPeerAllocations, turn.DefaultPeerAllocations},
		{"turn_ip_allocations", &c.TURNIPAllocations, turn.DefaultIPAllocations},
		{"turn_max_allocations", &c.TURNMaxAllocations, turn.DefaultMaxAllocations},
	} {
		if *f.p < 0 {
			return fmt.Errorf("%w: %s must be positive, got %d", ErrConfig, f.name, *f.p)
		}
		if *f.p == 0 {
			*f.p = f.def
		}
	}
	if c.TURNRelayPortMin > c.TURNRelayPortMax || c.TURNRelayPortMax > 65535 {
		return fmt.Errorf("%w: turn_relay_port_min %d, turn_relay_port_max %d: want min <= max <= 65535", ErrConfig, c.TURNRelayPortMin, c.TURNRelayPortMax)
	}
	for _, f := range []struct {
		name string
		p    *int64
		def  int64
	}{
		{"turn_account_bandwidth", &c.TURNAccountBandwidth, turn.DefaultAccountBandwidth},
		{"turn_peer_bandwidth", &c.TURNPeerBandwidth, turn.DefaultPeerBandwidth},
		{"turn_ip_bandwidth", &c.TURNIPBandwidth, turn.DefaultIPBandwidth},
	} {
		if *f.p < 0 {
			return fmt.Errorf("%w: %s must be positive, got %d", ErrConfig, f.name, *f.p)
		}
		if *f.p == 0 {
			*f.p = f.def
		}
	}
	if _, err := parsePeerRanges(c.TURNAllowPeers); err != nil {
		return err
	}
	if c.TURNCredentialTTL < 0 {
		return fmt.Errorf("%w: turn_credential_ttl must be positive", ErrConfig)
	}
	if c.TURNCredentialTTL == 0 {
		c.TURNCredentialTTL = Duration(turn.DefaultCredentialTTL)
	}
	listen, _ := netkit.ParseListen(c.Listen)
	announce, _ := netkit.ParseListen(c.Announce)
	if c.TURNListen == "" {
		ip, port, ok := firstIPv4(listen, false)
		if !ok {
			ip, port = netip.IPv4Unspecified(), 1
		}
		p := uint16(turn.DefaultPort)
		if port == 0 {
			p = 0
		}
		c.TURNListen = netip.AddrPortFrom(ip, p).String()
	}
	lap, err := netip.ParseAddrPort(c.TURNListen)
	if err != nil {
		return fmt.Errorf("%w: turn_listen %q: want IP:port (e.g. 0.0.0.0:3478)", ErrConfig, c.TURNListen)
	}
	if c.TURNPublicIP == "" {
		pub, ok := netip.Addr{}, false
		if ip, _, found := firstIPv4(announce, true); found {
			pub, ok = ip, true
		} else if !lap.Addr().IsUnspecified() {
			pub, ok = lap.Addr(), true
		} else if ip, _, found := firstIPv4(listen, true); found {
			pub, ok = ip, true
		} else {
			pub, ok = hostIPv4()
		}
		if !ok {
			return fmt.Errorf("%w: no public address for TURN relay candidates: set turn_public_ip (or announce), or turn_disable", ErrConfig)
		}
		c.TURNPublicIP = pub.String()
	}
	if ip, err := netip.ParseAddr(c.TURNPublicIP); err != nil || ip.IsUnspecified() {
		return fmt.Errorf("%w: turn_public_ip %q: want the relay's public IP address", ErrConfig, c.TURNPublicIP)
	}
	return nil
}

// parsePeerRanges parses turn_allow_peers: CIDR prefixes, or single
// addresses.
func parsePeerRanges(ss []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range ss {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			a, aerr := netip.ParseAddr(s)
			if aerr != nil {
				return nil, fmt.Errorf("%w: turn_allow_peers %q: want a CIDR range (e.g. 127.0.0.0/8) or an IP address", ErrConfig, s)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// firstIPv4 returns the IP and port of the first /ip4 address of addrs
// (specific: skipping 0.0.0.0).
func firstIPv4(addrs []ma.Multiaddr, specific bool) (netip.Addr, int, bool) {
	for _, a := range addrs {
		v, err := a.ValueForProtocol(ma.P_IP4)
		if err != nil {
			continue
		}
		ip, err := netip.ParseAddr(v)
		if err != nil || specific && ip.IsUnspecified() {
			continue
		}
		port := -1
		for _, p := range []int{ma.P_TCP, ma.P_UDP} {
			if s, err := a.ValueForProtocol(p); err == nil {
				port, _ = strconv.Atoi(s)
				break
			}
		}
		return ip, port, true
	}
	return netip.Addr{}, 0, false
}

// hostIPv4 is this host's first global unicast IPv4 address.
func hostIPv4() (netip.Addr, bool) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return netip.Addr{}, false
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok && ip.Unmap().Is4() && ip.IsGlobalUnicast() {
				return ip.Unmap(), true
			}
		}
	}
	return netip.Addr{}, false
}

// turnSecret loads the relay's TURN secret, creating it on first start.
func turnSecret(ctx context.Context, ns *storage.Namespace) ([]byte, error) {
	b, err := ns.Get(ctx, "secret")
	if err == nil && len(b) >= turn.SecretSize {
		return b, nil
	}
	if err != nil && !errors.Is(err, storage.ErrNotFound) {
		return nil, fmt.Errorf("load TURN secret: %w", err)
	}
	b = make([]byte, turn.SecretSize)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	if err := ns.Put(ctx, "secret", b); err != nil {
		return nil, fmt.Errorf("store TURN secret: %w", err)
	}
	return b, nil
}

// startTURN starts the STUN/TURN server and the credential service.
func (r *Relay) startTURN(ctx context.Context) error {
	if r.cfg.TURNDisable {
		return nil
	}
	secret, err := turnSecret(ctx, r.store.Namespace(turn.Namespace))
	if err != nil {
		return err
	}
	allow, err := parsePeerRanges(r.cfg.TURNAllowPeers)
	if err != nil {
		return err
	}
	opts := []turn.Option{
		turn.WithListen(netip.MustParseAddrPort(r.cfg.TURNListen)),
		turn.WithTCP(!r.cfg.TURNNoTCP),
		turn.WithRelayPorts(r.cfg.TURNRelayPortMin, r.cfg.TURNRelayPortMax),
		turn.WithCredentialTTL(time.Duration(r.cfg.TURNCredentialTTL), turn.DefaultRefreshGrace),
		turn.WithAccountQuota(r.cfg.TURNAccountAllocations, r.cfg.TURNAccountBandwidth),
		turn.WithPeerQuota(r.cfg.TURNPeerAllocations, r.cfg.TURNPeerBandwidth),
		turn.WithIPQuota(r.cfg.TURNIPAllocations, r.cfg.TURNIPBandwidth),
		turn.WithMaxAllocations(r.cfg.TURNMaxAllocations),
		turn.WithAllowedPeers(allow...),
		turn.WithClock(r.cfg.Now),
		turn.WithLogger(r.log),
		turn.WithMetricsTracer(turn.NewMetricsTracer(r.cfg.Registry)),
	}
	if r.cfg.TURNThreads > 0 {
		opts = append(opts, turn.WithThreads(r.cfg.TURNThreads))
	}
	srv, err := turn.NewServer(r.host, secret, netip.MustParseAddr(r.cfg.TURNPublicIP), opts...)
	if err != nil {
		return fmt.Errorf("start TURN server: %w (pick another turn_listen, or turn_disable)", err)
	}
	r.turn = srv
	return nil
}

// TURN returns the relay's STUN/TURN server (nil before Start, or with
// TURNDisable).
func (r *Relay) TURN() *turn.Server { return r.turn }
