package discovery

import (
	"context"
	"errors"
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

	"github.com/kinmesh/kinmesh/protocols/contact"
	"github.com/kinmesh/kinmesh/protocols/contact/contacttest"
	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/protocols/wire"
	"github.com/kinmesh/kinmesh/storage"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, leakIgnores()...)
}

// leakIgnores lists goroutines that libraries start once per process.
func leakIgnores() []goleak.Option {
	return []goleak.Option{
		goleak.IgnoreTopFunction("github.com/ipfs/go-log/v2/writer.(*MirrorWriter).logRoutine"),
		goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"),
		goleak.IgnoreAnyFunction("github.com/libp2p/go-libp2p/p2p/transport/quicreuse.(*reuse).gc"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
	}
}

var discard = slog.New(slog.DiscardHandler)

// clock is a settable clock shared by a test's relays and stores.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Now().Truncate(time.Second)} }

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

// testRelay is a relay host with a discovery service on a real store and
// a console gateway. Stop and Start close and reopen the service and the
// store, as a relay restart would.
type testRelay struct {
	t     testing.TB
	h     host.Host
	dir   string
	clock *clock
	opts  []Option
	gw    *ConsoleGateway
	st    *storage.Store
	svc   *Service
}

// relaxed lifts the rate limits, for tests about something else.
var relaxed = []Option{
	WithSendRate(1<<20, 1<<20), WithNumberSendRate(1<<20, 1<<20), WithGuessRate(1<<20, 1<<20),
	WithEvaluationRate(1<<20, 1<<20), WithListRate(1<<20, 1<<20), WithAccountOpRate(1<<20, 1<<20),
	WithSMSBudget(1<<20, 1<<20),
}

func startRelay(t testing.TB, clk *clock, opts ...Option) *testRelay {
	t.Helper()
	if clk == nil {
		clk = newClock()
	}
	r := &testRelay{t: t, h: newHost(t), dir: t.TempDir(), clock: clk, opts: opts, gw: NewConsoleGateway()}
	r.Start()
	t.Cleanup(r.Stop)
	return r
}

func (r *testRelay) Start() {
	r.t.Helper()
	st, err := storage.Open(r.dir, storage.WithProfile(storage.ProfileRelay), storage.WithClock(r.clock.Now), storage.WithLogger(discard))
	if err != nil {
		r.t.Fatalf("storage.Open: %v", err)
	}
	svc, err := NewService(r.h, st, r.gw, append([]Option{WithClock(r.clock.Now), WithLogger(discard)}, r.opts...)...)
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

// records returns every key and value in the relay's namespace,
// decrypted.
func (r *testRelay) records(t testing.TB) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	err := r.st.Namespace(Namespace).List(context.Background(), storage.ListOptions{}, func(k string, v []byte) error {
		out[k] = v
		return nil
	})
	if err != nil {
		t.Fatalf("list store: %v", err)
	}
	return out
}

// code returns the code the relay last texted to n.
func (r *testRelay) code(t testing.TB, n Number) string {
	t.Helper()
	c, ok := r.gw.LastCode(n)
	if !ok {
		t.Fatalf("no code was sent to %s", n.Masked())
	}
	return c
}

// newClient returns a client on a new host that knows the relays'
// addresses.
func newClient(t testing.TB, relays ...*testRelay) *Client {
	t.Helper()
	h := newHost(t)
	for _, r := range relays {
		h.Peerstore().AddAddrs(r.h.ID(), r.h.Addrs(), peerstore.PermanentAddrTTL)
	}
	c, err := NewClient(h, WithClientLogger(discard))
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	return c
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// account is a user: identity and signed contact record.
type account struct {
	id     *e2ee.Identity
	record contact.Signed
}

func newAccount(t testing.TB, name string) *account {
	t.Helper()
	id, rec := contacttest.Account(t, name)
	return &account{id: id, record: rec}
}

func mustNumber(t testing.TB, s string) Number {
	t.Helper()
	n, err := ParseNumber(s)
	if err != nil {
		t.Fatalf("ParseNumber(%q): %v", s, err)
	}
	return n
}

// verify runs the whole verification of n for a on r.
func verify(t testing.TB, c *Client, r *testRelay, a *account, n Number) Status {
	t.Helper()
	if _, err := c.RequestCode(testCtx(t), r.ID(), a.id, n); err != nil {
		t.Fatalf("RequestCode: %v", err)
	}
	st, err := c.VerifyCode(testCtx(t), r.ID(), a.id, r.code(t, n), a.record)
	if err != nil {
		t.Fatalf("VerifyCode: %v", err)
	}
	if !st.Verified {
		t.Fatalf("status after verification %+v, want verified", st)
	}
	return st
}

func wantCode(t testing.TB, err error, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("got error %v, want %v", err, want)
	}
}

// rawOwner runs an account exchange by hand, for tests of refused proofs:
// sign gets the challenge and returns the request to send.
func rawOwner(t testing.TB, c *Client, relay peer.ID, sign func(nonce []byte, relay, self peer.ID) request) (response, error) {
	t.Helper()
	var out response
	err := c.roundTrip(testCtx(t), relay, func(st network.Stream, rd *wire.Reader) error {
		if err := wire.Write(st, encodeRequest(request{kind: reqHello}), maxRequestFrame); err != nil {
			return err
		}
		r, err := readResponse(rd)
		if err != nil {
			return err
		}
		if r.nonce == nil {
			return errors.New("no challenge")
		}
		if err := wire.Write(st, encodeRequest(sign(r.nonce, st.Conn().RemotePeer(), st.Conn().LocalPeer())), maxOwnerFrame); err != nil {
			return err
		}
		out, err = readResponse(rd)
		return err
	})
	return out, err
}

// signed returns a signer of body by id (claiming identity).
func signed(id *e2ee.Identity, identity []byte, body ownerBody) func([]byte, peer.ID, peer.ID) request {
	enc := encodeOwnerBody(body)
	return func(nonce []byte, relay, self peer.ID) request {
		return request{kind: reqOwner, identity: identity, body: enc, sig: id.Sign(authMessage(nonce, relay, self, requestHash(identity, enc)))}
	}
}

// reopen opens the relay's store and a service on it with gw, for tests
// that need another gateway than the console one; the caller closes both.
func (r *testRelay) reopen(t testing.TB, gw SMSGateway, opts ...Option) (*storage.Store, *Service) {
	t.Helper()
	st, err := storage.Open(r.dir, storage.WithProfile(storage.ProfileRelay), storage.WithClock(r.clock.Now), storage.WithLogger(discard))
	if err != nil {
		t.Fatalf("storage.Open: %v", err)
	}
	svc, err := NewService(r.h, st, gw, append([]Option{WithClock(r.clock.Now), WithLogger(discard)}, append(r.opts, opts...)...)...)
	if err != nil {
		_ = st.Close()
		t.Fatalf("NewService: %v", err)
	}
	return st, svc
}
