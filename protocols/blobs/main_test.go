package blobs

import (
	"context"
	"crypto/rand"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"

	"github.com/kinmesh/kinmesh/protocols/netkit"
	"github.com/kinmesh/kinmesh/protocols/wire"
	"github.com/kinmesh/kinmesh/storage"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("github.com/ipfs/go-log/v2/writer.(*MirrorWriter).logRoutine"),
		goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"),
		goleak.IgnoreAnyFunction("github.com/libp2p/go-libp2p/p2p/transport/quicreuse.(*reuse).gc"),
	)
}

var discard = slog.New(slog.DiscardHandler)

func marshal(m proto.Message) []byte {
	b, err := proto.Marshal(m)
	if err != nil {
		panic(err)
	}
	return b
}

func newHost(t testing.TB) host.Host {
	t.Helper()
	return newHostOn(t, "127.0.0.1")
}

// newHostOn returns a host listening (and so dialing) on TCP at ip.
func newHostOn(t testing.TB, ip string) host.Host {
	t.Helper()
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/"+ip+"/tcp/0"), libp2p.DisableMetrics())
	if err != nil {
		t.Fatalf("libp2p.New: %v", err)
	}
	t.Cleanup(func() { _ = h.Close() })
	return h
}

// testRelay is a relay host with a blob service on a real store. Stop and
// Start close and reopen both, as a relay restart would.
type testRelay struct {
	t    testing.TB
	h    host.Host
	dir  string
	opts []Option
	// storeOpts are added to the store's options at Start.
	storeOpts []storage.Option
	st        *storage.Store
	svc       *Service
}

// relaxed lifts the rate limits, for tests about something else.
var relaxed = []Option{WithPutRate(1<<20, 1<<20), WithGetRate(1<<20, 1<<20), WithIPUploadRate(1<<50, 1<<50)}

func startRelay(t testing.TB, opts ...Option) *testRelay {
	t.Helper()
	r := &testRelay{t: t, h: newHost(t), dir: t.TempDir(), opts: opts}
	r.Start()
	t.Cleanup(r.Stop)
	return r
}

func (r *testRelay) Start() {
	r.t.Helper()
	st, err := storage.Open(r.dir, append([]storage.Option{storage.WithProfile(storage.ProfileRelay), storage.WithLogger(discard)}, r.storeOpts...)...)
	if err != nil {
		r.t.Fatalf("storage.Open: %v", err)
	}
	svc, err := NewService(r.h, st, append([]Option{WithLogger(discard)}, r.opts...)...)
	if err != nil {
		_ = st.Close()
		r.t.Fatalf("NewService: %v", err)
	}
	r.st, r.svc = st, svc
}

func (r *testRelay) Stop() {
	if r.svc == nil {
		return
	}
	if err := r.svc.Close(); err != nil {
		r.t.Errorf("Service.Close: %v", err)
	}
	if err := r.svc.Close(); err != nil {
		r.t.Errorf("second Service.Close: %v", err)
	}
	if err := r.st.Close(); err != nil {
		r.t.Errorf("Store.Close: %v", err)
	}
	r.svc, r.st = nil, nil
}

func (r *testRelay) ID() peer.ID { return r.h.ID() }

// keys counts the keys in the relay's blob namespace.
func (r *testRelay) keys(t testing.TB) int {
	t.Helper()
	n := 0
	err := r.st.Namespace(Namespace).List(context.Background(), storage.ListOptions{}, func(string, []byte) error {
		n++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func newClient(t testing.TB, relays ...*testRelay) *Client {
	t.Helper()
	return newClientOn(t, "127.0.0.1", relays...)
}

// newClientOn returns a client whose host connects from ip (another
// loopback address, 127.0.0.2, is another source for the relay).
func newClientOn(t testing.TB, ip string, relays ...*testRelay) *Client {
	t.Helper()
	h := newHostOn(t, ip)
	for _, r := range relays {
		h.Peerstore().AddAddrs(r.h.ID(), r.h.Addrs(), peerstore.PermanentAddrTTL)
	}
	c, err := NewClient(h, WithClientLogger(discard))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// source returns the source key (netkit.MultiaddrSource) r sees c's
// connections come from.
func (r *testRelay) source(t testing.TB, c *Client) string {
	t.Helper()
	conns := r.h.Network().ConnsToPeer(c.h.ID())
	if len(conns) == 0 {
		t.Fatalf("relay has no connection to %s", c.h.ID())
	}
	return netkit.MultiaddrSource(conns[0].RemoteMultiaddr())
}

// clock is a settable clock for WithClock.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock { return &clock{now: time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// waitFor polls cond until it holds, failing the test after a minute.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	ctx := testCtx(t)
	for !cond() {
		select {
		case <-tick.C:
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func randKey(t testing.TB) *[32]byte {
	var k [32]byte
	if _, err := rand.Read(k[:]); err != nil {
		t.Fatal(err)
	}
	return &k
}

// sealed seals n random bytes under a fresh key.
func sealed(t testing.TB, n int) (*Sealed, *[32]byte, []byte) {
	t.Helper()
	data := make([]byte, n)
	_, _ = rand.Read(data)
	k := randKey(t)
	s, err := Seal(k, data)
	if err != nil {
		t.Fatal(err)
	}
	return s, k, data
}

// rawStream opens a blob stream by hand, for tests of hostile clients.
func rawStream(t testing.TB, c *Client, relay peer.ID, fn func(network.Stream, *wire.Reader) error) error {
	t.Helper()
	return c.roundTrip(testCtx(t), relay, fn)
}
