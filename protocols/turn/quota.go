package turn

import (
	"errors"
	"net"
	"strings"
	"sync"
	"time"

	pturn "github.com/pion/turn/v5"
)

// quotas keeps the allocations and bandwidth of every account, every
// requesting peer and every source IP. pion hands the server the user id
// its AuthHandler returned (auth: "<tag>@<source>", see userID), whose
// tag names the account and the peer the credentials were issued to, and
// whose source is the client's IP (or IPv6 /64). pion asks admit before
// it makes an allocation (refusing with 486), and the relay address
// generator takes a slot in acquire when it opens the relay socket, so
// the caps hold exactly even when requests race; closing the socket gives
// the slot back.
type quotas struct {
	s        *Server
	maxTotal int
	caps     [kinds]shareCap

	mu     sync.Mutex
	shares [kinds]map[string]*share
	total  int
	conns  map[*relayConn]struct{}
	closed bool

	portsMu sync.RWMutex
	ports   map[uint16]int // relay ports of open allocations
}

// The kinds of share every allocation counts against.
const (
	kindAccount = iota
	kindPeer
	kindIP
	kinds
)

// shareCap is what one share of a kind may hold: open allocations, and
// relayed bytes a second.
type shareCap struct {
	allocs int
	rate   float64
}

// share is one account's, peer's or source IP's share: its open
// allocations and a token bucket of relayed bytes (burst: one second's
// worth).
type share struct {
	allocs int // guarded by quotas.mu

	mu     sync.Mutex
	tokens float64
	last   time.Time
	rate   float64
	now    func() time.Time
}

func newQuotas(s *Server, maxTotal int, caps [kinds]shareCap) *quotas {
	q := &quotas{s: s, maxTotal: maxTotal, caps: caps, conns: map[*relayConn]struct{}{}, ports: map[uint16]int{}}
	for k := range q.shares {
		q.shares[k] = map[string]*share{}
	}
	return q
}

// userID is what the AuthHandler returns for a request: the credentials'
// tag and the client's source, which pion hands back to admit and acquire
// and matches against the allocation's for refreshes (the source is part
// of the allocation's 5-tuple, so it never changes under it).
func userID(tag, source string) string { return tag + "@" + source }

// shareKeys splits a user id into the keys of its account, peer and
// source shares.
func shareKeys(user string) (keys [kinds]string, ok bool) {
	tag, src, found := strings.Cut(user, "@")
	if !found || src == "" {
		return keys, false
	}
	acct, dev, ok := splitTag(tag)
	if !ok {
		return keys, false
	}
	keys[kindAccount], keys[kindPeer], keys[kindIP] = acct, dev, src
	return keys, true
}

// admit reports whether user may open one more allocation now.
func (q *quotas) admit(user string) bool {
	keys, ok := shareKeys(user)
	q.mu.Lock()
	defer q.mu.Unlock()
	reason := AllocFailed
	if ok {
		ok, reason = q.checkLocked(keys)
	}
	if !ok {
		q.s.stats.refused.Add(1)
		q.s.tr.allocation(reason)
	}
	return ok
}

var refusedBy = [kinds]string{kindAccount: AllocAccountQuota, kindPeer: AllocPeerQuota, kindIP: AllocIPQuota}

func (q *quotas) checkLocked(keys [kinds]string) (bool, string) {
	if q.closed || q.total >= q.maxTotal {
		return false, AllocRelayQuota
	}
	for k, key := range keys {
		if sh := q.shares[k][key]; sh != nil && sh.allocs >= q.caps[k].allocs {
			return false, refusedBy[k]
		}
	}
	return true, ""
}

// acquire takes an allocation slot for user, in each of its shares.
func (q *quotas) acquire(user string) ([kinds]*share, error) {
	var out [kinds]*share
	keys, ok := shareKeys(user)
	if !ok {
		return out, ErrQuota
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if ok, reason := q.checkLocked(keys); !ok {
		q.s.stats.refused.Add(1)
		q.s.tr.allocation(reason)
		return out, ErrQuota
	}
	for k, key := range keys {
		sh := q.shares[k][key]
		if sh == nil {
			now := q.s.cfg.now
			sh = &share{tokens: q.caps[k].rate, last: now(), rate: q.caps[k].rate, now: now}
			q.shares[k][key] = sh
		}
		sh.allocs++
		out[k] = sh
	}
	q.total++
	q.s.tr.allocations(q.total, len(q.shares[kindAccount]))
	return out, nil
}

// release gives back a slot of user's.
func (q *quotas) release(user string, shares [kinds]*share) {
	keys, _ := shareKeys(user)
	q.mu.Lock()
	defer q.mu.Unlock()
	for k, sh := range shares {
		sh.allocs--
		if sh.allocs <= 0 && q.shares[k][keys[k]] == sh {
			delete(q.shares[k], keys[k])
		}
	}
	q.total--
	q.s.tr.allocations(q.total, len(q.shares[kindAccount]))
}

func (q *quotas) counts() (allocs, accounts, peers, sources int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.total, len(q.shares[kindAccount]), len(q.shares[kindPeer]), len(q.shares[kindIP])
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

// take takes n bytes from the share's bucket; false: over its cap.
func (sh *share) take(n float64) bool {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	now := sh.now()
	if el := now.Sub(sh.last); el > 0 {
		sh.tokens = min(sh.rate, sh.tokens+el.Seconds()*sh.rate)
		sh.last = now
	}
	if sh.tokens < n {
		return false
	}
	sh.tokens -= n
	return true
}

// give puts back n bytes taken.
func (sh *share) give(n float64) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	sh.tokens = min(sh.rate, sh.tokens+n)
}

// spend takes n bytes from every share of an allocation, or from none:
// false means one of them is over its cap.
func spend(shares [kinds]*share, n int) bool {
	f := float64(n)
	for i, sh := range shares {
		if !sh.take(f) {
			for _, back := range shares[:i] {
				back.give(f)
			}
			return false
		}
	}
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
	shares, err := g.s.quota.acquire(conf.UserID)
	if err != nil {
		return nil, nil, err
	}
	conn, addr, err := g.inner.AllocatePacketConn(conf)
	if err != nil {
		g.s.quota.release(conf.UserID, shares)
		g.s.tr.allocation(AllocFailed)
		return nil, nil, err
	}
	var port uint16
	if ua, ok := conn.LocalAddr().(*net.UDPAddr); ok {
		port = uint16(ua.Port)
	}
	c := &relayConn{PacketConn: conn, s: g.s, user: conf.UserID, shares: shares, port: port, opened: time.Now()}
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
	user   string
	shares [kinds]*share
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
	if !spend(c.shares, len(p)) {
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
		if !spend(c.shares, n) {
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
		c.s.quota.release(c.user, c.shares)
		c.s.tr.allocationClosed(time.Since(c.opened))
	})
	return err
}
