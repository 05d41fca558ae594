package turn

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peerstore"
	pturn "github.com/pion/turn/v5"
	"go.uber.org/goleak"

	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/protocols/pionlog"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("github.com/ipfs/go-log/v2/writer.(*MirrorWriter).logRoutine"),
		goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"),
		goleak.IgnoreAnyFunction("github.com/libp2p/go-libp2p/p2p/transport/quicreuse.(*reuse).gc"),
	)
}

var discard = slog.New(slog.DiscardHandler)

// clock is a settable clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Now()} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func newHost(t testing.TB) host.Host {
	t.Helper()
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableMetrics())
	if err != nil {
		t.Fatalf("libp2p.New: %v", err)
	}
	t.Cleanup(func() { _ = h.Close() })
	return h
}

func testSecret(t testing.TB) []byte {
	t.Helper()
	s := make([]byte, SecretSize)
	_, _ = rand.Read(s)
	return s
}

var loopback = netip.MustParseAddr("127.0.0.1")

// allowLoopback lets a test server relay to plain sockets on loopback,
// which the default peer policy refuses.
var allowLoopback = WithAllowedPeers(netip.MustParsePrefix("127.0.0.0/8"))

// startServer starts a TURN server on loopback (free ports, 2 threads).
func startServer(t testing.TB, opts ...Option) *Server {
	t.Helper()
	return startServerSecret(t, testSecret(t), opts...)
}

// startServerSecret is startServer with the given secret.
func startServerSecret(t testing.TB, secret []byte, opts ...Option) *Server {
	t.Helper()
	base := []Option{WithListen(netip.AddrPortFrom(loopback, 0)), WithThreads(2), WithLogger(discard)}
	s, err := NewServer(newHost(t), secret, loopback, append(base, opts...)...)
	if err != nil {
		t.Fatalf("NewServer: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if err := s.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
	})
	return s
}

// newAccount returns an account identity.
func newAccount(t testing.TB) *e2ee.Identity {
	t.Helper()
	id, err := e2ee.NewIdentity(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func accountKey(t testing.TB, id *e2ee.Identity) ed25519.PublicKey {
	t.Helper()
	k, err := id.AccountID().SigningKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// newClient returns a credential client on a new host that knows s.
func newClient(t testing.TB, s *Server, id Signer, opts ...ClientOption) *Client {
	t.Helper()
	h := newHost(t)
	h.Peerstore().AddAddrs(s.h.ID(), s.h.Addrs(), peerstore.PermanentAddrTTL)
	c, err := NewClient(h, id, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// allocate makes a TURN allocation with pion's client over UDP; the
// returned conn is the relayed socket (close it to deallocate).
func allocate(t testing.TB, s *Server, user, pass string) (net.PacketConn, func(), error) {
	t.Helper()
	relay, _, done, err := allocateFrom(t, s, "127.0.0.1", user, pass)
	return relay, done, err
}

// allocateFrom is allocate from a client socket on local (a loopback
// address), returning the pion client too.
func allocateFrom(t testing.TB, s *Server, local, user, pass string) (net.PacketConn, *pturn.Client, func(), error) {
	t.Helper()
	conn, err := net.ListenPacket("udp4", local+":0")
	if err != nil {
		t.Fatal(err)
	}
	addr := s.UDPAddr().String()
	c, err := pturn.NewClient(&pturn.ClientConfig{
		STUNServerAddr: addr, TURNServerAddr: addr, Conn: conn,
		Username: user, Password: pass, Realm: Realm,
		RTO: 200 * time.Millisecond, LoggerFactory: pionlog.Factory(discard),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Listen(); err != nil {
		t.Fatal(err)
	}
	done := func() {
		c.Close()
		_ = conn.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	relay, err := c.AllocateWithContext(ctx)
	if err != nil {
		done()
		return nil, nil, nil, err
	}
	return relay, c, func() {
		_ = relay.Close()
		done()
	}, nil
}
