package turn

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"runtime"
	"time"
)

// Defaults of the server's settings (see the Option functions).
const (
	// DefaultPort is the STUN/TURN port (RFC 8489, RFC 8656), UDP and TCP.
	DefaultPort = 3478
	// DefaultRelayPortMin and DefaultRelayPortMax bound the UDP ports
	// allocations get (the IANA dynamic range).
	DefaultRelayPortMin = 49152
	DefaultRelayPortMax = 65535
	// DefaultCredentialTTL is how long issued credentials open new
	// allocations.
	DefaultCredentialTTL = 10 * time.Minute
	// DefaultRefreshGrace is how long past their expiry credentials may
	// still refresh an allocation made in time (and add permissions and
	// channels to it): calls last longer than credentials.
	DefaultRefreshGrace = 4 * time.Hour
	// DefaultAccountAllocations caps one account's open allocations. A
	// call takes two per relay used (UDP and TCP to the TURN server), and
	// an ICE restart two more until the old ones time out.
	DefaultAccountAllocations = 8
	// DefaultAccountBandwidth caps what one account's allocations relay,
	// in bytes per second, both directions together (4 Mbit/s: a video
	// call each way with room to spare).
	DefaultAccountBandwidth = 512 << 10
	// DefaultPeerAllocations and DefaultPeerBandwidth cap what the
	// credentials issued to one libp2p peer (a device) may hold, whatever
	// accounts they are for: a device has one account, so they are the
	// account's caps, and one peer with many throwaway keys gets no more.
	DefaultPeerAllocations = DefaultAccountAllocations
	DefaultPeerBandwidth   = DefaultAccountBandwidth
	// DefaultIPAllocations and DefaultIPBandwidth cap what clients from
	// one IP address (one IPv6 /64) may hold, whatever peers and accounts
	// they use: a household or an office behind one NAT, 1/16 of the
	// relay's allocations, so one address can't take the relay.
	DefaultIPAllocations = 64
	DefaultIPBandwidth   = 8 * DefaultAccountBandwidth
	// DefaultMaxAllocations caps the relay's open allocations.
	DefaultMaxAllocations = 1024
	// DefaultIssuesPerMinute and DefaultIssueBurst: credential requests
	// one peer (and, separately, one account) may make.
	DefaultIssuesPerMinute = 30
	DefaultIssueBurst      = 10
	// DefaultIPIssuesPerMinute and DefaultIPIssueBurst: credential
	// requests all peers connecting from one IP address (one IPv6 /64)
	// may make together. A device asks about every 8 minutes.
	DefaultIPIssuesPerMinute = 120
	DefaultIPIssueBurst      = 30
	// MaxClockSkew is how far a credential request's time may be from
	// the relay's clock.
	MaxClockSkew = 5 * time.Minute
	// DefaultMaxTracked bounds the peers and accounts whose rate buckets
	// the relay tracks at once.
	DefaultMaxTracked = 1 << 16
)

// Option configures NewServer.
type Option func(*config) error

type config struct {
	listen       netip.AddrPort
	tcp          bool
	threads      int
	portMin      int
	portMax      int
	ttl          time.Duration
	grace        time.Duration
	acctAllocs   int
	acctBW       int64
	peerAllocs   int
	peerBW       int64
	ipAllocs     int
	ipBW         int64
	maxAllocs    int
	issueRate    float64 // per second
	issueBurst   float64
	ipIssueRate  float64 // per second
	ipIssueBurst float64
	maxTracked   int
	peerOK       func(netip.Addr) bool
	allowPeers   []netip.Prefix
	now          func() time.Time
	logger       *slog.Logger
	tracer       MetricsTracer
	timeout      time.Duration // a credential stream as a whole
}

func defaultConfig() config {
	return config{
		listen:       netip.AddrPortFrom(netip.IPv4Unspecified(), DefaultPort),
		tcp:          true,
		threads:      runtime.NumCPU(),
		portMin:      DefaultRelayPortMin,
		portMax:      DefaultRelayPortMax,
		ttl:          DefaultCredentialTTL,
		grace:        DefaultRefreshGrace,
		acctAllocs:   DefaultAccountAllocations,
		acctBW:       DefaultAccountBandwidth,
		peerAllocs:   DefaultPeerAllocations,
		peerBW:       DefaultPeerBandwidth,
		ipAllocs:     DefaultIPAllocations,
		ipBW:         DefaultIPBandwidth,
		maxAllocs:    DefaultMaxAllocations,
		issueRate:    DefaultIssuesPerMinute / 60.0,
		issueBurst:   DefaultIssueBurst,
		ipIssueRate:  DefaultIPIssuesPerMinute / 60.0,
		ipIssueBurst: DefaultIPIssueBurst,
		maxTracked:   DefaultMaxTracked,
		now:          time.Now,
		timeout:      10 * time.Second,
	}
}

// WithListen sets the address the STUN/TURN server listens on, UDP and
// TCP alike (default 0.0.0.0:3478). Port 0 picks free ports (tests); the
// UDP and TCP ports may then differ (see Server.URLs).
func WithListen(addr netip.AddrPort) Option {
	return func(c *config) error {
		if !addr.Addr().IsValid() {
			return errors.New("turn: listen address must be an IP address and port")
		}
		c.listen = addr
		return nil
	}
}

// WithTCP turns TURN over TCP on or off (default on: for networks that
// block UDP; relayed traffic to the peer is UDP either way).
func WithTCP(on bool) Option {
	return func(c *config) error {
		c.tcp = on
		return nil
	}
}

// WithThreads sets how many UDP sockets share the listen port
// (SO_REUSEPORT), each with its own read loop, so the kernel spreads
// clients over cores (default runtime.NumCPU()).
func WithThreads(n int) Option {
	return func(c *config) error {
		if n < 1 || n > 256 {
			return fmt.Errorf("turn: %d threads: want 1 to 256", n)
		}
		c.threads = n
		return nil
	}
}

// WithRelayPorts sets the UDP port range allocations get their relay
// ports from (default DefaultRelayPortMin–DefaultRelayPortMax). Open it
// in the firewall.
func WithRelayPorts(lo, hi int) Option {
	return func(c *config) error {
		if lo < 1 || hi > 65535 || lo > hi {
			return fmt.Errorf("turn: relay port range %d-%d: want 1 <= min <= max <= 65535", lo, hi)
		}
		c.portMin, c.portMax = lo, hi
		return nil
	}
}

// WithCredentialTTL sets how long issued credentials open new
// allocations (default DefaultCredentialTTL), and how long past that they
// may still refresh an allocation made in time (default
// DefaultRefreshGrace; 0 for none).
func WithCredentialTTL(ttl, refreshGrace time.Duration) Option {
	return func(c *config) error {
		if ttl < time.Minute || ttl > 24*time.Hour || refreshGrace < 0 {
			return fmt.Errorf("turn: credential lifetime %v (grace %v): want 1m to 24h, grace not negative", ttl, refreshGrace)
		}
		c.ttl, c.grace = ttl, refreshGrace
		return nil
	}
}

// WithAccountQuota caps what one account (its credentials' tag) may hold:
// open allocations, and relayed bytes per second over all of them, both
// directions together (bursts of up to a second's worth). Beyond the
// first, allocations are refused (TURN error 486); beyond the second,
// packets are dropped.
func WithAccountQuota(allocations int, bytesPerSecond int64) Option {
	return quotaOption("account", allocations, bytesPerSecond, func(c *config) { c.acctAllocs, c.acctBW = allocations, bytesPerSecond })
}

// WithPeerQuota caps what the credentials issued to one libp2p peer may
// hold, whatever accounts they are for (defaults DefaultPeerAllocations,
// DefaultPeerBandwidth): an account's keys are free, so the peer that asks
// is what bounds one requester. Beyond the first, allocations are refused
// (TURN error 486); beyond the second, packets are dropped.
func WithPeerQuota(allocations int, bytesPerSecond int64) Option {
	return quotaOption("peer", allocations, bytesPerSecond, func(c *config) { c.peerAllocs, c.peerBW = allocations, bytesPerSecond })
}

// WithIPQuota caps what TURN clients from one IP address (one IPv6 /64:
// a subscriber can pick any address in it) may hold, whatever peers and
// accounts their credentials are for (defaults DefaultIPAllocations,
// DefaultIPBandwidth): peer ids are free too. Beyond the first,
// allocations are refused (TURN error 486); beyond the second, packets
// are dropped.
func WithIPQuota(allocations int, bytesPerSecond int64) Option {
	return quotaOption("IP", allocations, bytesPerSecond, func(c *config) { c.ipAllocs, c.ipBW = allocations, bytesPerSecond })
}

// WithMaxAllocations caps the relay's open allocations, all accounts
// together (default DefaultMaxAllocations).
func WithMaxAllocations(n int) Option {
	return func(c *config) error {
		if n < 1 {
			return fmt.Errorf("turn: max allocations %d: want at least 1", n)
		}
		c.maxAllocs = n
		return nil
	}
}

// WithIssueRate sets how many credential requests one peer, and one
// account, may make per minute, and how many at once (defaults
// DefaultIssuesPerMinute, DefaultIssueBurst).
func WithIssueRate(perMinute, burst int) Option {
	return func(c *config) error {
		if perMinute < 1 || burst < 1 {
			return fmt.Errorf("turn: issue rate %d, burst %d: want both at least 1", perMinute, burst)
		}
		c.issueRate, c.issueBurst = float64(perMinute)/60, float64(burst)
		return nil
	}
}

// WithIPIssueRate sets how many credential requests all peers connecting
// from one IP address (one IPv6 /64) may make per minute together, and
// how many at once (defaults DefaultIPIssuesPerMinute,
// DefaultIPIssueBurst).
func WithIPIssueRate(perMinute, burst int) Option {
	return func(c *config) error {
		if perMinute < 1 || burst < 1 {
			return fmt.Errorf("turn: IP issue rate %d, burst %d: want both at least 1", perMinute, burst)
		}
		c.ipIssueRate, c.ipIssueBurst = float64(perMinute)/60, float64(burst)
		return nil
	}
}

// WithAllowedPeers lets allocations relay to addresses in ranges the
// default refuses. By default a TURN server relays only to globally
// reachable addresses: not to loopback, private (RFC 1918, RFC 4193),
// carrier-grade NAT, link-local, multicast, benchmarking, documentation
// or other special-purpose ranges, nor to the relay's own addresses
// (except the relay ports of its own allocations, so two devices on one
// relay reach each other): it must be no way into its own host or its
// hosting network. A range given here is allowed, the relay's own
// addresses in it included; unspecified, multicast and broadcast
// addresses never are. For test networks (loopback, a lab's range) and
// relays that serve a private network on purpose.
func WithAllowedPeers(ranges ...netip.Prefix) Option {
	return func(c *config) error {
		for _, r := range ranges {
			if !r.IsValid() {
				return fmt.Errorf("turn: allowed peer range %v: want an address prefix", r)
			}
			c.allowPeers = append(c.allowPeers, r.Masked())
		}
		return nil
	}
}

// WithPeerFilter replaces the peer policy (see WithAllowedPeers) with ok:
// it alone decides which peer addresses allocations may send to
// (CreatePermission, ChannelBind), the relay's own addresses included, at
// any port. A TURN server must not be a way into its own host's services.
func WithPeerFilter(ok func(netip.Addr) bool) Option {
	return func(c *config) error {
		if ok == nil {
			return errors.New("turn: nil peer filter")
		}
		c.peerOK = ok
		return nil
	}
}

// WithClock sets the clock credentials are issued and checked by.
func WithClock(now func() time.Time) Option {
	return func(c *config) error {
		if now == nil {
			return errors.New("turn: nil clock")
		}
		c.now = now
		return nil
	}
}

// WithLogger sets the logger (default slog.Default()); pion's own logs go
// to it at debug level.
func WithLogger(l *slog.Logger) Option {
	return func(c *config) error {
		if l == nil {
			return errors.New("turn: nil logger")
		}
		c.logger = l
		return nil
	}
}

// WithMetricsTracer sets the tracer that receives the server's events
// (default none). NewMetricsTracer makes a Prometheus one.
func WithMetricsTracer(t MetricsTracer) Option {
	return func(c *config) error {
		c.tracer = t
		return nil
	}
}

// ClientOption configures NewClient.
type ClientOption func(*clientConfig) error

type clientConfig struct {
	dialTimeout    time.Duration
	requestTimeout time.Duration
	now            func() time.Time
}

func defaultClientConfig() clientConfig {
	return clientConfig{dialTimeout: 10 * time.Second, requestTimeout: 10 * time.Second, now: time.Now}
}

// WithClientTimeouts bounds connecting to a relay and opening a stream,
// and the request once the stream is open (defaults 10 s each).
func WithClientTimeouts(dial, request time.Duration) ClientOption {
	return func(c *clientConfig) error {
		if dial <= 0 || request <= 0 {
			return errors.New("turn: timeouts must be positive")
		}
		c.dialTimeout, c.requestTimeout = dial, request
		return nil
	}
}

// WithClientClock sets the clock requests are dated by.
func WithClientClock(now func() time.Time) ClientOption {
	return func(c *clientConfig) error {
		if now == nil {
			return errors.New("turn: nil clock")
		}
		c.now = now
		return nil
	}
}

// quotaOption checks a quota of allocations and bytes per second (at
// least one, and one full-size packet a second) before set applies it.
func quotaOption(what string, allocations int, bytesPerSecond int64, set func(*config)) Option {
	return func(c *config) error {
		if allocations < 1 || bytesPerSecond < 1500 {
			return fmt.Errorf("turn: %s quota %d allocations, %d B/s: want at least 1 and 1500", what, allocations, bytesPerSecond)
		}
		set(c)
		return nil
	}
}
