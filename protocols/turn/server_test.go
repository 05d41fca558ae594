package turn

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/kinmesh/kinmesh/protocols/e2ee"
)

func TestCredentials(t *testing.T) {
	clk := newClock()
	s := startServer(t, WithClock(clk.Now))
	id := newAccount(t)
	c := newClient(t, s, id, WithClientClock(clk.Now))
	cr, err := c.Credentials(testCtx(t), s.h.ID())
	if err != nil {
		t.Fatalf("Credentials: %v", err)
	}
	exp, tag, err := parseUsername(cr.Username)
	if err != nil {
		t.Fatalf("username %q: %v", cr.Username, err)
	}
	if want := clk.Now().Add(DefaultCredentialTTL).Unix(); exp.Unix() != want {
		t.Errorf("expiry %d, want %d", exp.Unix(), want)
	}
	if want := accountTag(s.secret, accountKey(t, id), c.h.ID()); tag != want {
		t.Errorf("tag %q, want %q", tag, want)
	}
	if strings.Contains(cr.Username, string(id.AccountID())[:10]) {
		t.Errorf("username %q shows the account id", cr.Username)
	}
	if want := Password(s.secret, cr.Username); cr.Password != want {
		t.Errorf("password %q, want %q", cr.Password, want)
	}
	if d := cr.Expires.Sub(clk.Now()); d != DefaultCredentialTTL {
		t.Errorf("expires in %v, want %v", d, DefaultCredentialTTL)
	}
	kinds := map[string]bool{}
	for _, u := range cr.URLs {
		scheme, addr, tr, err := ParseURL(u)
		if err != nil {
			t.Fatalf("URL %q: %v", u, err)
		}
		if addr.Addr() != loopback {
			t.Errorf("URL %q: want the public address %v", u, loopback)
		}
		kinds[scheme+"/"+tr] = true
	}
	for _, k := range []string{"stun/udp", "turn/udp", "turn/tcp"} {
		if !kinds[k] {
			t.Errorf("URLs %v lack %s", cr.URLs, k)
		}
	}
	// A second account gets another tag; the same account the same one.
	cr2, err := newClient(t, s, newAccount(t)).Credentials(testCtx(t), s.h.ID())
	if err != nil {
		t.Fatal(err)
	}
	if _, tag2, _ := parseUsername(cr2.Username); tag2 == tag {
		t.Errorf("two accounts share tag %q", tag)
	}
	if got := s.Stats().Issued; got != 2 {
		t.Errorf("issued %d, want 2", got)
	}
}

// wrongSigner signs as another identity than it claims.
type wrongSigner struct {
	claim *e2ee.Identity
	sign  *e2ee.Identity
}

func (w wrongSigner) AccountID() e2ee.AccountID { return w.claim.AccountID() }
func (w wrongSigner) Sign(m []byte) []byte      { return w.sign.Sign(m) }

func TestCredentialsRefused(t *testing.T) {
	clk := newClock()
	s := startServer(t, WithClock(clk.Now), WithIssueRate(60, 3))
	ctx := testCtx(t)
	forged := newClient(t, s, wrongSigner{claim: newAccount(t), sign: newAccount(t)})
	if _, err := forged.Credentials(ctx, s.h.ID()); !errors.Is(err, ErrUnauthorized) {
		t.Errorf("forged signature: got %v, want ErrUnauthorized", err)
	}
	skewed := newClient(t, s, newAccount(t), WithClientClock(func() time.Time { return clk.Now().Add(MaxClockSkew + time.Minute) }))
	if _, err := skewed.Credentials(ctx, s.h.ID()); !errors.Is(err, ErrUnauthorized) {
		t.Errorf("clock 6 minutes ahead: got %v, want ErrUnauthorized", err)
	}
	c := newClient(t, s, newAccount(t), WithClientClock(clk.Now))
	for i := range 3 {
		if _, err := c.Credentials(ctx, s.h.ID()); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
	}
	_, err := c.Credentials(ctx, s.h.ID())
	var e *Error
	if !errors.Is(err, ErrRateLimited) || !errors.As(err, &e) || e.RetryAfter <= 0 {
		t.Fatalf("4th request at once: got %v, want ErrRateLimited with a retry hint", err)
	}
	clk.Advance(time.Second)
	if _, err := c.Credentials(ctx, s.h.ID()); err != nil {
		t.Fatalf("after the bucket refilled: %v", err)
	}
}

func TestAllocate(t *testing.T) {
	clk := newClock()
	s := startServer(t, WithClock(clk.Now), allowLoopback)
	cr := s.Issue(accountKey(t, newAccount(t)))

	relay, done, err := allocate(t, s, cr.Username, cr.Password)
	if err != nil {
		t.Fatalf("allocate with good credentials: %v", err)
	}
	defer done()
	if st := s.Stats(); st.Allocations != 1 || st.Accounts != 1 {
		t.Fatalf("stats %+v, want one allocation of one account", st)
	}
	peer, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	msg := []byte("media, through the relay")
	if _, err := relay.WriteTo(msg, peer.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	_ = peer.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 1500)
	n, from, err := peer.ReadFrom(buf)
	if err != nil || !bytes.Equal(buf[:n], msg) {
		t.Fatalf("peer read %q, %v; want %q", buf[:n], err, msg)
	}
	if from.String() != relay.LocalAddr().String() {
		t.Errorf("packet came from %v, want the relay address %v", from, relay.LocalAddr())
	}
	if _, err := peer.WriteTo([]byte("and back"), from); err != nil {
		t.Fatal(err)
	}
	_ = relay.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, _, err = relay.ReadFrom(buf); err != nil || string(buf[:n]) != "and back" {
		t.Fatalf("relay read %q, %v", buf[:n], err)
	}
	// The relay counts a packet once its send returns, which may be after
	// the peer has already answered it: wait for both counts, then check
	// nothing else was counted.
	want := int64(len(msg) + len("and back"))
	waitFor(t, func() bool { st := s.Stats(); return st.RelayedBytes >= want && st.RelayedPackets >= 2 }, "both packets to be counted")
	if st := s.Stats(); st.RelayedBytes != want || st.RelayedPackets != 2 {
		t.Errorf("relayed %d bytes in %d packets, want %d in 2", st.RelayedBytes, st.RelayedPackets, len(msg)+8)
	}

	// Bad and expired credentials open nothing.
	if _, _, err := allocate(t, s, cr.Username, "d3JvbmcgcGFzc3dvcmQ="); err == nil {
		t.Error("allocation with a wrong password succeeded")
	}
	if _, _, err := allocate(t, s, "1:"+strings.Repeat("a", tagLen), "x"); err == nil {
		t.Error("allocation with a malformed username succeeded")
	}
	clk.Advance(DefaultCredentialTTL + time.Second)
	if _, _, err := allocate(t, s, cr.Username, cr.Password); err == nil {
		t.Error("allocation with expired credentials succeeded")
	}
	st := s.Stats()
	if st.AuthFailures == 0 || st.AuthExpired == 0 {
		t.Errorf("stats %+v: want counted bad-password and expired requests", st)
	}
	if st.Allocations != 1 {
		t.Errorf("%d allocations, want still 1", st.Allocations)
	}
	done()
	waitFor(t, func() bool { return s.Stats().Allocations == 0 }, "the allocation to be released")
}

func TestAllocationQuota(t *testing.T) {
	s := startServer(t, WithAccountQuota(2, DefaultAccountBandwidth), WithMaxAllocations(3))
	a := s.Issue(accountKey(t, newAccount(t)))
	for i := range 2 {
		_, done, err := allocate(t, s, a.Username, a.Password)
		if err != nil {
			t.Fatalf("allocation %d: %v", i, err)
		}
		defer done()
	}
	for range 3 { // a flood from the same account: refused every time
		if _, _, err := allocate(t, s, a.Username, a.Password); err == nil {
			t.Fatal("allocation over the account's quota succeeded")
		}
	}
	b := s.Issue(accountKey(t, newAccount(t)))
	_, done, err := allocate(t, s, b.Username, b.Password)
	if err != nil {
		t.Fatalf("another account: %v", err)
	}
	defer done()
	c := s.Issue(accountKey(t, newAccount(t)))
	if _, _, err := allocate(t, s, c.Username, c.Password); err == nil {
		t.Fatal("allocation over the relay's quota succeeded")
	}
	if st := s.Stats(); st.Allocations != 3 || st.Refused < 4 {
		t.Fatalf("stats %+v: want 3 allocations, at least 4 refused", st)
	}
}

func TestBandwidthCap(t *testing.T) {
	s := startServer(t, WithAccountQuota(4, 10_000), allowLoopback)
	cr := s.Issue(accountKey(t, newAccount(t)))
	relay, done, err := allocate(t, s, cr.Username, cr.Password)
	if err != nil {
		t.Fatal(err)
	}
	defer done()
	peer, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	pkt := make([]byte, 1000)
	for range 50 { // 50 kB at once against 10 kB/s
		if _, err := relay.WriteTo(pkt, peer.LocalAddr()); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, func() bool {
		st := s.Stats()
		return st.RelayedBytes+st.DroppedBytes >= 50_000
	}, "all 50 packets to be relayed or dropped")
	st := s.Stats()
	if st.RelayedBytes > 12_000 || st.DroppedBytes < 38_000 {
		t.Fatalf("relayed %d, dropped %d bytes: want at most ~10 kB through", st.RelayedBytes, st.DroppedBytes)
	}
}

func TestPeerPolicy(t *testing.T) {
	own := netip.MustParseAddr("185.199.108.1") // the relay's own public address
	def := &peerPolicy{own: map[netip.Addr]bool{own: true}}
	lab := &peerPolicy{own: map[netip.Addr]bool{own: true}, allow: []netip.Prefix{
		netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("198.18.0.0/15"), netip.MustParsePrefix("185.199.108.0/24"),
	}}
	all := &peerPolicy{allow: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}}
	for _, tt := range []struct {
		name                string
		addr                string
		def, lab, all       bool // permit
		defOwnOnly, labOwnO bool // ownOnly
	}{
		{"public IPv4", "8.8.8.8", true, true, true, false, false},
		{"public IPv6", "2606:4700:4700::1111", true, true, true, false, false},
		{"RFC 1918 10/8", "10.0.0.5", false, false, true, false, false},
		{"RFC 1918 172.16/12", "172.20.1.1", false, false, true, false, false},
		{"RFC 1918 192.168/16", "192.168.1.1", false, false, true, false, false},
		{"CGNAT", "100.64.0.1", false, false, true, false, false},
		{"loopback", "127.0.0.1", false, true, true, false, false},
		{"loopback, elsewhere in 127/8", "127.0.0.2", false, true, true, false, false},
		{"IPv6 loopback", "::1", false, false, true, false, false},
		{"cloud metadata (link-local)", "169.254.169.254", false, false, true, false, false},
		{"IPv6 link-local", "fe80::1", false, false, true, false, false},
		{"RFC 4193 unique local", "fd12:3456::1", false, false, true, false, false},
		{"benchmarking (the NAT lab)", "198.18.0.10", false, true, true, false, false},
		{"IPv4-mapped private", "::ffff:10.0.0.5", false, false, true, false, false},
		{"NAT64 of a private address", "64:ff9b::a00:5", false, false, true, false, false},
		{"the relay's own address", own.String(), true, true, true, true, false},
		{"multicast", "224.0.0.1", false, false, false, false, false},
		{"IPv6 multicast", "ff02::1", false, false, false, false, false},
		{"broadcast", "255.255.255.255", false, false, false, false, false},
		{"unspecified", "0.0.0.0", false, false, false, false, false},
		{"IPv6 unspecified", "::", false, false, false, false, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			a := netip.MustParseAddr(tt.addr)
			if got := def.permit(a); got != tt.def {
				t.Errorf("default policy, peer %s: got %v, want %v", a, got, tt.def)
			}
			if got := lab.permit(a); got != tt.lab {
				t.Errorf("policy allowing 127/8, 198.18/15 and its own /24, peer %s: got %v, want %v", a, got, tt.lab)
			}
			if got := all.permit(a); got != tt.all {
				t.Errorf("policy allowing everything, peer %s: got %v, want %v", a, got, tt.all)
			}
			if got := def.ownOnly(a); got != tt.defOwnOnly {
				t.Errorf("default policy, ownOnly(%s): got %v, want %v", a, got, tt.defOwnOnly)
			}
			if got := lab.ownOnly(a); got != tt.labOwnO {
				t.Errorf("lab policy, ownOnly(%s): got %v, want %v", a, got, tt.labOwnO)
			}
		})
	}
	custom := &peerPolicy{custom: func(a netip.Addr) bool { return a.IsLoopback() }, own: map[netip.Addr]bool{loopback: true}}
	if !custom.permit(loopback) || custom.permit(netip.MustParseAddr("8.8.8.8")) || custom.ownOnly(loopback) {
		t.Error("a custom filter does not decide alone")
	}
}

func TestParseURL(t *testing.T) {
	for _, tt := range []struct {
		in, scheme, addr, transport string
	}{
		{"stun:198.51.100.7:3478", "stun", "198.51.100.7:3478", "udp"},
		{"turn:198.51.100.7:3478?transport=udp", "turn", "198.51.100.7:3478", "udp"},
		{"turn:[2001:db8::1]:443?transport=tcp", "turn", "[2001:db8::1]:443", "tcp"},
		{"turn:example.org:3478?transport=udp", "", "", ""},
		{"turns:198.51.100.7:5349?transport=tcp", "", "", ""},
		{"turn:198.51.100.7:3478", "", "", ""},
		{"turn:198.51.100.7:0?transport=udp", "", "", ""},
		{"stun:198.51.100.7:3478?transport=udp", "", "", ""},
		{"turn:198.51.100.7:3478?transport=sctp", "", "", ""},
		{"", "", "", ""},
	} {
		scheme, addr, tr, err := ParseURL(tt.in)
		if tt.scheme == "" {
			if err == nil || !errors.Is(err, ErrMalformed) {
				t.Errorf("%q: got %v, want ErrMalformed", tt.in, err)
			}
			continue
		}
		if err != nil || scheme != tt.scheme || addr.String() != tt.addr || tr != tt.transport {
			t.Errorf("%q: got %s %s %s %v", tt.in, scheme, addr, tr, err)
		}
	}
}

func TestNewServerErrors(t *testing.T) {
	h := newHost(t)
	if _, err := NewServer(h, make([]byte, 8), loopback); err == nil {
		t.Error("short secret accepted")
	}
	if _, err := NewServer(h, testSecret(t), netip.IPv4Unspecified()); err == nil {
		t.Error("unspecified public address accepted")
	}
	if _, err := NewServer(h, testSecret(t), loopback, WithRelayPorts(5000, 4000)); err == nil {
		t.Error("inverted port range accepted")
	}
}

// waitFor polls cond (state in another goroutine: pion's read loops) until
// it holds, failing after 10 s.
func waitFor(t testing.TB, cond func() bool, what string) {
	t.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(10 * time.Second)
	for !cond() {
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}
