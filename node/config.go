package node

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kinmesh/kinmesh/protocols/netkit"
)

// Config configures a Node. Only DataDir is required; zero fields take the
// defaults listed.
type Config struct {
	// DataDir holds the node's encrypted store and, for the daemon, the
	// API token. Required. Created if missing.
	DataDir string
	// Passphrase, if set, derives the store key (Argon2id) instead of
	// keeping a random key file in DataDir: the data on a lost device is
	// then unreadable without it.
	Passphrase []byte
	// Listen are the multiaddrs to listen on.
	// Default: /ip4/0.0.0.0/tcp/0 and /ip4/0.0.0.0/udp/0/quic-v1.
	Listen []string
	// Bootstrap are the relays (multiaddrs ending in /p2p/<id>) the node
	// keeps connected to, holding a circuit-relay reservation on each.
	Bootstrap []string
	// API, if set, is the loopback host:port of the local HTTP API (port 0
	// picks one; see Node.APIAddr). Requests need the bearer token kept in
	// DataDir/api.token.
	API string

	// Logger receives the node's logs (default: discard).
	Logger *slog.Logger
	// Registry, if set, receives the node's and libp2p's metrics. Default:
	// metrics off (a phone has no one to scrape them).
	Registry prometheus.Registerer
	// Now is the clock (default time.Now); tests inject one.
	Now func() time.Time

	// RelayBackoff is the first wait before re-dialing a relay that went
	// away (default 500ms, doubling up to 30s).
	RelayBackoff time.Duration
	// RetryMin is the first wait before retrying an undelivered message
	// (default 1s, doubling up to 5m).
	RetryMin time.Duration
	// PolicyVersion is the privacy policy version this node ships
	// (default the package's PolicyVersion). Tests set it to act as a
	// newer build whose policy the user has not accepted yet.
	PolicyVersion string
	// RehomeAfter is how long a home relay may stay unreachable before the
	// account moves its mail to another bootstrap relay (default 24h);
	// RehomeCheck how often that is checked (default 10m).
	RehomeAfter, RehomeCheck time.Duration

	// LabPublicCIDRs is a lab setting, for network-namespace testbeds
	// (internal/nattest) only; never set it on a real device. A lab may
	// only use 198.18.0.0/15 (RFC 2544 benchmarking space), which
	// go-multiaddr calls unroutable, so go-libp2p would never hole-punch
	// there. The ranges listed (each inside 198.18.0.0/15) count as the
	// public internet for hole punching: the node then runs its own DCUtR
	// service offering its own and observed addresses in these ranges; the
	// rest of 198.18.0.0/15 is the lab's private LANs. Library globals are
	// left alone. Default empty: go-libp2p's hole punching, unchanged. See
	// docs/decisions.md.
	LabPublicCIDRs []netip.Prefix
}

// ErrConfig means the configuration is unusable; the message says which
// setting and what to do.
var ErrConfig = errors.New("node config")

func (c *Config) applyDefaults() error {
	if c.DataDir == "" {
		return fmt.Errorf("%w: no data directory: pass --data DIR", ErrConfig)
	}
	if len(c.Listen) == 0 {
		c.Listen = []string{"/ip4/0.0.0.0/tcp/0", "/ip4/0.0.0.0/udp/0/quic-v1"}
	}
	if _, err := netkit.ParseListen(c.Listen); err != nil {
		return fmt.Errorf("%w: %w", ErrConfig, err)
	}
	if _, err := netkit.ParsePeers(c.Bootstrap); err != nil {
		return fmt.Errorf("%w: %w", ErrConfig, err)
	}
	if err := checkLabCIDRs(c.LabPublicCIDRs); err != nil {
		return err
	}
	if c.API != "" {
		if err := checkLoopback(c.API); err != nil {
			return err
		}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.PolicyVersion == "" {
		c.PolicyVersion = PolicyVersion
	}
	if c.RehomeAfter <= 0 {
		c.RehomeAfter = 24 * time.Hour
	}
	if c.RehomeCheck <= 0 {
		c.RehomeCheck = 10 * time.Minute
	}
	return nil
}

// checkLoopback refuses API addresses that aren't on loopback: the local
// API controls the account and must never be reachable from the network.
func checkLoopback(hostport string) error {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return fmt.Errorf("%w: API address %q: %v (want e.g. 127.0.0.1:7777)", ErrConfig, hostport, err)
	}
	if host == "localhost" {
		return nil
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || !ip.IsLoopback() {
		return fmt.Errorf("%w: API address %q is not on loopback; the local API only listens on 127.0.0.1 or [::1]", ErrConfig, hostport)
	}
	return nil
}
