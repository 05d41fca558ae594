package turn

import (
	"errors"
	"net"
	"sync"
	"time"

	pturn "github.com/pion/turn/v5"
)

// quotas keeps every account's allocations and bandwidth. Accounts are
// the tags of their credentials (pion's "user id"). pion asks admit
// before it makes an allocation (refusing with 486), and the relay
// address generator takes a slot in acquire when it opens the relay
// socket, so the caps hold exactly even when requests race; closing the
// socket gives the slot back.
type quotas struct {
	s        *Server
	perAcct  int
	maxTotal int
	rate     float64 // bytes per second per account

	mu     sync.Mutex
	accts  map[string]*acct
	total  int
	conns  map[*relayConn]struct{}
	closed bool

	portsMu sync.RWMutex
	ports   map[uint16]int // relay ports of open allocations
}

// acct is one account's share: its open allocations and a token bucket
// of relayed bytes (burst: one second's worth).
type acct struct {
	allocs int // guarded by quotas.mu

	mu     sync.Mutex
	tokens float64
	last   time.Time
	rate   float64
	now    func() time.Time
}

func newQuotas(s *Server, perAcct, maxTotal int, rate float64) *quotas {
	return &quotas{s: s, perAcct: perAcct, maxTotal: maxTotal, rate: rate, accts: map[string]*acct{}, conns: map[*relayConn]struct{}{}, ports: map[uint16]int{}}
}

// admit reports whether tag may open one more allocation now.
func (q *quotas) admit(tag string) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	ok, reason := q.checkLocked(tag)
	if !ok {
		q.s.stats.refused.Add(1)
		q.s.tr.allocation(reason)
	}
	return ok
}

func (q *quotas) checkLocked(tag string) (bool, string) {
	if q.closed || q.total >= q.maxTotal {
		return false, AllocRelayQuota
	}
	if a := q.accts[tag]; a != nil && a.allocs >= q.perAcct {
		return false, AllocAccountQuota
	}
	return true, ""
}

// acquire takes an allocation slot for tag.
func (q *quotas) acquire(tag string) (*acct, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if ok, reason := q.checkLocked(tag); !ok {
		q.s.stats.refused.Add(1)
		q.s.tr.allocation(reason)
		return nil, ErrQuota
	}
	a := q.accts[tag]
	if a == nil {
		now := q.s.cfg.now
		a = &acct{tokens: q.rate, last: now(), rate: q.rate, now: now}
		q.accts[tag] = a
	}
	a.allocs++
	q.total++
	q.s.tr.allocations(q.total, len(q.accts))
	return a, nil
}

// release gives back a slot of tag's.
func (q *quotas) release(tag string, a *acct) {
	q.mu.Lock()
	defer q.mu.Unlock()
	a.allocs--
	q.total--
	if a.allocs <= 0 && q.accts[tag] == a {
		delete(q.accts, tag)
	}
	q.s.tr.allocations(q.total, len(q.accts))
}

func (q *quotas) counts() (allocs, accounts int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.total, len(q.accts)
}

// track and untrack keep the open relay sockets, so Close can end them,
// and their ports, so allocations may relay to each other (ownOnly).
func (q *quotas) track(c *relayConn) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return false
	}
	q.conns[c] = struct{}{}
	q.portsMu.Lock()
	q.ports[c.port]++
	q.portsMu.Unlock()
	return true
}

func (q *quotas) untrack(c *relayConn) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if _, ok := q.conns[c]; !ok {
		return
	}
	delete(q.conns, c)
	q.portsMu.Lock()
	if q.ports[c.port]--; q.ports[c.port] <= 0 {
		delete(q.ports, c.port)
	}
	q.portsMu.Unlock()
}

// relayPort reports whether an open allocation relays on port.
func (q *quotas) relayPort(port uint16) bool {
	q.portsMu.RLock()
	defer q.portsMu.RUnlock()
	return q.ports[port] > 0
}

// closeAll closes every relay socket still open (pion's Close stops its
// read loops but leaves allocations' sockets to their timers).
func (q *quotas) closeAll() {
	q.mu.Lock()
	q.closed = true
	conns := make([]*relayConn, 0, len(q.conns))
	for c := range q.conns {
		conns = append(conns, c)
	}
	q.mu.Unlock()
	for _, c := range conns {
		_ = c.Close()
	}
}

// spend takes n bytes from the account's bucket; false: over its cap.
func (a *acct) spend(n int) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.now()
	if el := now.Sub(a.last); el > 0 {
		a.tokens = min(a.rate, a.tokens+el.Seconds()*a.rate)
		a.last = now
	}
	if a.tokens < float64(n) {
		return false
	}
	a.tokens -= float64(n)
	return true
}

// generator wraps pion's port-range relay address generator: every
// allocation's socket takes a quota slot and counts (and caps) what it
// relays. TURN-over-TCP relays (RFC 6062) are not offered.
type generator struct {
	s     *Server
	inner *pturn.RelayAddressGeneratorPortRange
}

var errNoTCPRelay = errors.New("turn: TCP relay allocations are not offered")

func (g *generator) Validate() error { return g.inner.Validate() }

func (g *generator) AllocatePacketConn(conf pturn.AllocateListenerConfig) (net.PacketConn, net.Addr, error) {
	if conf.UserID == "" {
		// pion probing for a free even port (EVEN-PORT): the socket is
		// closed at once, never relays.
		return g.inner.AllocatePacketConn(conf)
	}
	a, err := g.s.quota.acquire(conf.UserID)
	if err != nil {
		return nil, nil, err
	}
	conn, addr, err := g.inner.AllocatePacketConn(conf)
	if err != nil {
		g.s.quota.release(conf.UserID, a)
		g.s.tr.allocation(AllocFailed)
		return nil, nil, err
	}
	var port uint16
	if ua, ok := conn.LocalAddr().(*net.UDPAddr); ok {
		port = uint16(ua.Port)
	}
	c := &relayConn{PacketConn: conn, s: g.s, tag: conf.UserID, acct: a, port: port, opened: time.Now()}
	if !g.s.quota.track(c) {
		_ = c.Close()
		return nil, nil, ErrClosed
	}
	g.s.stats.allocsTotal.Add(1)
	g.s.tr.allocation(AllocOpened)
	return c, addr, nil
}

func (g *generator) AllocateListener(pturn.AllocateListenerConfig) (net.Listener, net.Addr, error) {
	return nil, nil, errNoTCPRelay
}

func (g *generator) AllocateConn(pturn.AllocateConnConfig) (net.Conn, error) {
	return nil, errNoTCPRelay
}

// relayConn is an allocation's relay socket: packets it sends go to the
// peer (from the device), packets it reads come from the peer.
type relayConn struct {
	net.PacketConn
	s      *Server
	tag    string
	acct   *acct
	port   uint16
	opened time.Time
	once   sync.Once
}

// peerOK reports whether the peer policy lets this allocation exchange
// packets with addr: an address the policy keeps to the relay's own
// allocations must be at one of their ports.
func (c *relayConn) peerOK(addr net.Addr) bool {
	ua, ok := addr.(*net.UDPAddr)
	if !ok {
		return false
	}
	ap := ua.AddrPort()
	if !c.s.peers.ownOnly(ap.Addr()) {
		return true
	}
	return ap.Port() != c.port && c.s.quota.relayPort(ap.Port())
}

func (c *relayConn) WriteTo(p []byte, addr net.Addr) (int, error) {
	if !c.peerOK(addr) {
		c.s.peerRefused()
		return len(p), nil // dropped, as a firewall would
	}
	if !c.acct.spend(len(p)) {
		c.s.stats.droppedBytes.Add(int64(len(p)))
		c.s.tr.dropped(true, len(p))
		return len(p), nil // dropped, as the network would
	}
	n, err := c.PacketConn.WriteTo(p, addr)
	if n > 0 {
		c.s.stats.relayedBytes.Add(int64(n))
		c.s.stats.relayedPackets.Add(1)
		c.s.tr.relayed(true, n)
	}
	return n, err
}

func (c *relayConn) ReadFrom(p []byte) (int, net.Addr, error) {
	for {
		n, addr, err := c.PacketConn.ReadFrom(p)
		if err != nil {
			return n, addr, err
		}
		if !c.peerOK(addr) {
			c.s.peerRefused()
			continue
		}
		if !c.acct.spend(n) {
			c.s.stats.droppedBytes.Add(int64(n))
			c.s.tr.dropped(false, n)
			continue
		}
		c.s.stats.relayedBytes.Add(int64(n))
		c.s.stats.relayedPackets.Add(1)
		c.s.tr.relayed(false, n)
		return n, addr, nil
	}
}

func (c *relayConn) Close() error {
	err := c.PacketConn.Close()
	c.once.Do(func() {
		c.s.quota.untrack(c)
		c.s.quota.release(c.tag, c.acct)
		c.s.tr.allocationClosed(time.Since(c.opened))
	})
	return err
}
