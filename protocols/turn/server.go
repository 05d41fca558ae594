package turn

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/pion/stun/v4"
	"github.com/pion/transport/v5/reuseport"
	pturn "github.com/pion/turn/v5"

	"github.com/kinmesh/kinmesh/protocols/netkit"
	"github.com/kinmesh/kinmesh/protocols/pionlog"
	"github.com/kinmesh/kinmesh/protocols/wire"
)

// Server is a relay's STUN/TURN server (pion/turn) with the credential
// service that hands accounts short-lived credentials for it over libp2p.
// Create it with NewServer; Close stops both.
type Server struct {
	h      host.Host
	secret []byte
	public netip.Addr
	cfg    config
	log    *slog.Logger
	tr     tracer

	turn  *pturn.Server
	udp   []net.PacketConn
	tcp   net.Listener
	urls  []string
	quota *quotas
	peers *peerPolicy

	peerLim *netkit.Limiter[string] // credential requests per peer
	ipLim   *netkit.Limiter[string] // credential requests per source IP (or IPv6 /64)
	acctLim *netkit.Limiter[string] // credential requests per account

	stats counters

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu        sync.Mutex
	closed    bool
	closeOnce sync.Once
	closeErr  error
}

// counters back Stats.
type counters struct {
	issued, allocsTotal, refused  atomic.Int64
	relayedBytes, relayedPackets  atomic.Int64
	droppedBytes, authFailures    atomic.Int64
	authOK, authExpired, authMalf atomic.Int64
	peerRefused                   atomic.Int64
}

// Stats are the server's counters since it started.
type Stats struct {
	// Allocations open now, and the accounts, peers (the devices the
	// credentials were issued to) and source IPs holding them.
	Allocations, Accounts, Peers, Sources int
	// AllocationsTotal were ever opened; Refused were refused for a quota.
	AllocationsTotal, Refused int64
	// Issued credentials.
	Issued int64
	// RelayedBytes and RelayedPackets crossed allocations (both
	// directions); DroppedBytes were over an account's bandwidth cap.
	RelayedBytes, RelayedPackets, DroppedBytes int64
	// AuthOK, AuthFailures (bad password), AuthExpired and AuthMalformed
	// count TURN requests carrying credentials.
	AuthOK, AuthFailures, AuthExpired, AuthMalformed int64
	// PeerRefused counts permissions, channel binds and packets refused
	// by the peer policy (WithAllowedPeers).
	PeerRefused int64
}

// NewServer starts a STUN/TURN server and serves /kinmesh/turn-creds/1.0.0
// on h. secret (at least SecretSize bytes; keep it in the relay's store so
// credentials survive a restart) keys the credentials; public is the
// address the relay's clients and their peers reach it at, put in relay
// candidates (the address announced, when the relay is behind a port
// forward).
//
// Defaults (see the Option functions): listen on 0.0.0.0:3478, UDP with
// runtime.NumCPU() sockets and TCP; relay ports DefaultRelayPortMin to
// DefaultRelayPortMax; credentials good for DefaultCredentialTTL, refreshes
// for DefaultRefreshGrace more; per account DefaultAccountAllocations
// allocations and DefaultAccountBandwidth bytes a second, per requesting
// peer DefaultPeerAllocations and DefaultPeerBandwidth, per source IP
// DefaultIPAllocations and DefaultIPBandwidth; the relay
// DefaultMaxAllocations allocations; per peer and per account
// DefaultIssuesPerMinute credential requests a minute, bursts of
// DefaultIssueBurst, per source IP DefaultIPIssuesPerMinute, bursts of
// DefaultIPIssueBurst; relaying to globally reachable addresses only
// (WithAllowedPeers); the real clock; slog.Default(); no metrics;
// credential streams cut after 10 s.
func NewServer(h host.Host, secret []byte, public netip.Addr, opts ...Option) (*Server, error) {
	if h == nil {
		return nil, errors.New("turn: NewServer needs a host")
	}
	if len(secret) < SecretSize {
		return nil, fmt.Errorf("turn: secret of %d bytes: want at least %d", len(secret), SecretSize)
	}
	public = public.Unmap()
	if !public.IsValid() || public.IsUnspecified() || public.IsMulticast() {
		return nil, fmt.Errorf("turn: public address %v: want the unicast IP clients reach the relay at", public)
	}
	cfg := defaultConfig()
	for _, o := range opts {
		if err := o(&cfg); err != nil {
			return nil, err
		}
	}
	if cfg.logger == nil {
		cfg.logger = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		h: h, secret: append([]byte(nil), secret...), public: public, cfg: cfg,
		log:     cfg.logger.With("component", "turn"),
		tr:      tracer{cfg.tracer},
		peers:   &peerPolicy{custom: cfg.peerOK, allow: cfg.allowPeers, own: ownAddrs(h, public, cfg.listen.Addr())},
		peerLim: netkit.NewLimiter[string](cfg.now, cfg.issueRate, cfg.issueBurst, cfg.maxTracked),
		ipLim:   netkit.NewLimiter[string](cfg.now, cfg.ipIssueRate, cfg.ipIssueBurst, cfg.maxTracked),
		acctLim: netkit.NewLimiter[string](cfg.now, cfg.issueRate, cfg.issueBurst, cfg.maxTracked),
		ctx:     ctx, cancel: cancel,
	}
	s.quota = newQuotas(s, cfg.maxAllocs, [kinds]shareCap{
		kindAccount: {cfg.acctAllocs, float64(cfg.acctBW)},
		kindPeer:    {cfg.peerAllocs, float64(cfg.peerBW)},
		kindIP:      {cfg.ipAllocs, float64(cfg.ipBW)},
	})
	s.tr.limits(cfg.acctAllocs, cfg.acctBW, cfg.maxAllocs)
	if err := s.listen(); err != nil {
		cancel()
		return nil, err
	}
	h.SetStreamHandler(ID, s.handle)
	s.log.Info("TURN server listening", "urls", s.urls)
	return s, nil
}

// listen opens the UDP sockets and the TCP listener and starts pion's
// server on them.
func (s *Server) listen() (err error) {
	lc := net.ListenConfig{Control: reuseport.Control}
	network := "udp4"
	if s.cfg.listen.Addr().Is6() {
		network = "udp6"
	}
	defer func() {
		if err != nil {
			for _, c := range s.udp {
				_ = c.Close()
			}
			if s.tcp != nil {
				_ = s.tcp.Close()
			}
		}
	}()
	addr := s.cfg.listen
	for range s.cfg.threads {
		c, err := lc.ListenPacket(s.ctx, network, addr.String())
		if err != nil {
			return fmt.Errorf("turn: listen on udp %s: %w (is the port in use?)", addr, err)
		}
		s.udp = append(s.udp, c)
		// With port 0 the first socket picks the port; the others share it.
		addr = netip.AddrPortFrom(addr.Addr(), uint16(c.LocalAddr().(*net.UDPAddr).Port))
	}
	udpPort := addr.Port()
	var tcpPort uint16
	if s.cfg.tcp {
		taddr := s.cfg.listen
		if taddr.Port() == 0 {
			taddr = netip.AddrPortFrom(taddr.Addr(), udpPort) // the same port if free
		}
		ln, err := net.Listen("tcp", taddr.String())
		if err != nil && s.cfg.listen.Port() == 0 {
			ln, err = net.Listen("tcp", netip.AddrPortFrom(taddr.Addr(), 0).String())
		}
		if err != nil {
			return fmt.Errorf("turn: listen on tcp %s: %w (is the port in use?)", taddr, err)
		}
		s.tcp = ln
		tcpPort = uint16(ln.Addr().(*net.TCPAddr).Port)
	}
	gen := &generator{s: s, inner: &pturn.RelayAddressGeneratorPortRange{
		RelayAddress: net.IP(s.public.AsSlice()),
		Address:      s.cfg.listen.Addr().String(),
		MinPort:      uint16(s.cfg.portMin),
		MaxPort:      uint16(s.cfg.portMax),
		MaxRetries:   32,
	}}
	perm := func(_ net.Addr, ip net.IP) bool {
		a, ok := netip.AddrFromSlice(ip)
		if !ok || !s.peers.permit(a) {
			s.peerRefused()
			return false
		}
		return true
	}
	sc := pturn.ServerConfig{
		Realm:         Realm,
		AuthHandler:   s.auth,
		QuotaHandler:  func(user, _ string, _ net.Addr) bool { return s.quota.admit(user) },
		LoggerFactory: pionlog.Factory(s.log),
		EventHandler: pturn.EventHandler{
			OnAuth: func(_, _ net.Addr, _, _, _, _ string, ok bool) {
				if ok {
					s.stats.authOK.Add(1)
					s.tr.auth(AuthOK)
					return
				}
				s.stats.authFailures.Add(1)
				s.tr.auth(AuthBadPassword)
			},
		},
	}
	for _, c := range s.udp {
		sc.PacketConnConfigs = append(sc.PacketConnConfigs, pturn.PacketConnConfig{PacketConn: c, RelayAddressGenerator: gen, PermissionHandler: perm})
	}
	if s.tcp != nil {
		sc.ListenerConfigs = append(sc.ListenerConfigs, pturn.ListenerConfig{Listener: s.tcp, RelayAddressGenerator: gen, PermissionHandler: perm})
	}
	if s.turn, err = pturn.NewServer(sc); err != nil {
		return fmt.Errorf("turn: start server: %w", err)
	}
	var udpAP, tcpAP netip.AddrPort
	udpAP = netip.AddrPortFrom(s.public, udpPort)
	if s.tcp != nil {
		tcpAP = netip.AddrPortFrom(s.public, tcpPort)
	}
	s.urls = serverURLs(udpAP, tcpAP)
	return nil
}

func (s *Server) peerRefused() {
	s.stats.peerRefused.Add(1)
	s.tr.peerRefused()
}

// auth is pion's AuthHandler: it checks a REST username's form and expiry
// and returns the key MESSAGE-INTEGRITY must match, and as the user id
// quotas are kept by the tag (account and peer) and the client's source
// IP (userID).
func (s *Server) auth(ra *pturn.RequestAttributes) (string, []byte, bool) {
	exp, tag, err := parseUsername(ra.Username)
	if err != nil || ra.Realm != Realm {
		s.stats.authMalf.Add(1)
		s.tr.auth(AuthMalformed)
		return "", nil, false
	}
	limit := exp
	if ra.Method != stun.MethodAllocate {
		limit = exp.Add(s.cfg.grace)
	}
	if s.cfg.now().After(limit) {
		s.stats.authExpired.Add(1)
		s.tr.auth(AuthExpired)
		return "", nil, false
	}
	src, ok := addrOf(ra.SrcAddr)
	if !ok {
		s.stats.authMalf.Add(1)
		s.tr.auth(AuthMalformed)
		return "", nil, false
	}
	return userID(tag, netkit.SourceKey(src)), pturn.GenerateAuthKey(ra.Username, Realm, Password(s.secret, ra.Username)), true
}

// addrOf is the IP address of a UDP or TCP client address.
func addrOf(a net.Addr) (netip.Addr, bool) {
	switch a := a.(type) {
	case *net.UDPAddr:
		return a.AddrPort().Addr().Unmap(), true
	case *net.TCPAddr:
		return a.AddrPort().Addr().Unmap(), true
	}
	return netip.Addr{}, false
}

// URLs returns the STUN and TURN URLs clients get with their credentials.
func (s *Server) URLs() []string { return append([]string(nil), s.urls...) }

// UDPAddr and TCPAddr return the listeners' local addresses (TCPAddr is
// invalid with TCP off).
func (s *Server) UDPAddr() netip.AddrPort {
	return s.udp[0].LocalAddr().(*net.UDPAddr).AddrPort()
}

// TCPAddr returns the TCP listener's address (invalid with TCP off).
func (s *Server) TCPAddr() netip.AddrPort {
	if s.tcp == nil {
		return netip.AddrPort{}
	}
	return s.tcp.Addr().(*net.TCPAddr).AddrPort()
}

// Issue returns credentials for the account with Ed25519 key account, as
// the credential protocol hands them out to the relay's own peer (for
// tests and for tools on the relay itself).
func (s *Server) Issue(account ed25519.PublicKey) Credentials {
	return s.IssueFor(account, s.h.ID())
}

// IssueFor returns credentials for the account with Ed25519 key account
// as the credential protocol hands them out to device: allocations made
// with them count against both the account's and the device's quotas.
func (s *Server) IssueFor(account ed25519.PublicKey, device peer.ID) Credentials {
	s.stats.issued.Add(1)
	return issue(s.secret, account, device, s.cfg.now().Add(s.cfg.ttl), s.URLs())
}

// Stats returns the server's counters.
func (s *Server) Stats() Stats {
	allocs, accts, peers, sources := s.quota.counts()
	return Stats{
		Allocations: allocs, Accounts: accts, Peers: peers, Sources: sources,
		AllocationsTotal: s.stats.allocsTotal.Load(), Refused: s.stats.refused.Load(),
		Issued:       s.stats.issued.Load(),
		RelayedBytes: s.stats.relayedBytes.Load(), RelayedPackets: s.stats.relayedPackets.Load(),
		DroppedBytes: s.stats.droppedBytes.Load(),
		AuthOK:       s.stats.authOK.Load(), AuthFailures: s.stats.authFailures.Load(),
		AuthExpired: s.stats.authExpired.Load(), AuthMalformed: s.stats.authMalf.Load(),
		PeerRefused: s.stats.peerRefused.Load(),
	}
}

// Close stops the credential service and the TURN server (every
// allocation ends). It is safe to call more than once.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		s.h.RemoveStreamHandler(ID)
		s.cancel()
		s.wg.Wait()
		s.closeErr = s.turn.Close()
		s.quota.closeAll()
	})
	return s.closeErr
}

func (s *Server) enter() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.wg.Add(1)
	return true
}

// handle answers one credential request.
func (s *Server) handle(st network.Stream) {
	if !s.enter() {
		_ = st.Reset()
		return
	}
	defer s.wg.Done()
	if err := st.Scope().SetService(ServiceName); err != nil {
		_ = st.Reset()
		return
	}
	stop := context.AfterFunc(s.ctx, func() { _ = st.Reset() })
	defer stop()
	_ = st.SetDeadline(time.Now().Add(s.cfg.timeout))
	r := s.serve(wire.NewReader(st), st.Conn().RemotePeer(), netkit.MultiaddrSource(st.Conn().RemoteMultiaddr()))
	s.tr.credentialRequest(r.code)
	if err := wire.Write(st, encodeResponse(r), maxResponseFrame); err != nil {
		_ = st.Reset()
		return
	}
	_ = st.Close()
}

// serve reads and answers a request from remote, connected from source
// (netkit.MultiaddrSource).
func (s *Server) serve(rd *wire.Reader, remote peer.ID, source string) response {
	b, err := rd.ReadBytes(maxRequestFrame)
	if err != nil {
		if errors.Is(err, wire.ErrTooLarge) {
			return response{code: CodeTooLarge}
		}
		return response{code: CodeMalformed}
	}
	if ok, wait := s.peerLim.Take(string(remote)); !ok {
		return response{code: CodeRateLimited, retryAfter: wait}
	}
	if ok, wait := s.ipLim.Take(source); !ok {
		return response{code: CodeRateLimited, retryAfter: wait}
	}
	req, code := decodeRequest(b)
	if code != CodeOK {
		return response{code: code}
	}
	now := s.cfg.now()
	t := time.Unix(req.time, 0)
	if t.Before(now.Add(-MaxClockSkew)) || t.After(now.Add(MaxClockSkew)) {
		return response{code: CodeUnauthorized}
	}
	if !ed25519.Verify(req.account[:], authMessage(s.h.ID(), remote, req.time), req.sig) {
		s.log.Debug("credential request refused", "peer", remote)
		return response{code: CodeUnauthorized}
	}
	if ok, wait := s.acctLim.Take(string(req.account[:])); !ok {
		return response{code: CodeRateLimited, retryAfter: wait}
	}
	c := s.IssueFor(req.account[:], remote)
	return response{creds: &c, ttl: s.cfg.ttl}
}
