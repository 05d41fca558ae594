package prekeys

import (
	"context"
	"crypto/rand"
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
	}
}

var (
	discard    = slog.New(slog.DiscardHandler)
	randSource = rand.Reader
	permanent  = time.Duration(peerstore.PermanentAddrTTL)
)

type networkStream = network.Stream

func wireReader(s network.Stream) *wire.Reader { return wire.NewReader(s) }

func writeResponse(s network.Stream, r response) error {
	return wire.Write(s, encodeResponse(r), maxResponseFrame)
}

// clock is a settable clock shared by a test's services and owners.
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

// testRelay is a relay host with a prekey service on a real store. Stop
// and Start close and reopen the service and the store, as a relay
// restart (or crash after a synced write) would.
type testRelay struct {
	t     testing.TB
	h     host.Host
	dir   string
	clock *clock
	opts  []Option
	st    *storage.Store
	svc   *Service
}

// relaxed lifts the rate limits, for tests about something else.
var relaxed = []Option{WithFetchRate(1<<20, 1<<20), WithOneTimeRate(1<<20, 1<<20), WithOwnerRate(1<<20, 1<<20)}

func startRelay(t testing.TB, clk *clock, opts ...Option) *testRelay {
	t.Helper()
	if clk == nil {
		clk = newClock()
	}
	r := &testRelay{t: t, h: newHost(t), dir: t.TempDir(), clock: clk, opts: opts}
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
	svc, err := NewService(r.h, st, append([]Option{WithClock(r.clock.Now), WithLogger(discard)}, r.opts...)...)
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

// keys returns every key in the relay's prekey namespace.
func (r *testRelay) keys(t testing.TB) []string {
	t.Helper()
	var out []string
	err := r.st.Namespace(Namespace).List(context.Background(), storage.ListOptions{}, func(k string, _ []byte) error {
		out = append(out, k)
		return nil
	})
	if err != nil {
		t.Fatalf("list store: %v", err)
	}
	return out
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

// account is an owner: identity and private prekey store.
type account struct {
	id    *e2ee.Identity
	store *e2ee.PrekeyStore
}

func newAccount(t testing.TB, now time.Time, oneTime, pqOneTime int) *account {
	t.Helper()
	id, err := e2ee.NewIdentity(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	st, err := e2ee.NewPrekeyStore(id, now, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if oneTime+pqOneTime > 0 {
		if st, err = st.GenerateOneTime(id, oneTime, pqOneTime, now, rand.Reader); err != nil {
			t.Fatal(err)
		}
	}
	return &account{id: id, store: st}
}

func (a *account) ID() e2ee.AccountID { return a.id.AccountID() }

func mustPublish(t testing.TB, c *Client, r *testRelay, a *account, up *e2ee.Upload) Status {
	t.Helper()
	st, err := c.Publish(testCtx(t), r.ID(), a.id, up)
	if err != nil {
		t.Fatalf("Publish: %v", err)
	}
	return st
}

func mustStatus(t testing.TB, c *Client, r *testRelay, a *account) Status {
	t.Helper()
	st, err := c.Status(testCtx(t), r.ID(), a.id)
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	return st
}

func mustFetch(t testing.TB, c *Client, r *testRelay, a *account) *e2ee.Bundle {
	t.Helper()
	b, err := c.Fetch(testCtx(t), r.ID(), a.ID())
	if err != nil {
		t.Fatalf("Fetch: %v", err)
	}
	return b
}

// establish starts a session from the bundle (from's side) and answers it
// on owner's side, then exchanges a message each way. It returns the ids
// of the one-time prekeys the owner consumed.
func establish(t testing.TB, from *e2ee.Identity, owner *account, b *e2ee.Bundle) []e2ee.PrekeyID {
	t.Helper()
	ad := []byte("test")
	alice, err := e2ee.Initiate(from, b)
	if err != nil {
		t.Fatalf("Initiate: %v", err)
	}
	msg, alice, err := alice.Encrypt([]byte("hello bob"), ad)
	if err != nil {
		t.Fatalf("Encrypt: %v", err)
	}
	bob, pt, consumed, err := e2ee.Respond(owner.id, owner.store, msg, ad)
	if err != nil {
		t.Fatalf("Respond: %v", err)
	}
	if string(pt) != "hello bob" {
		t.Fatalf("bob read %q, want %q", pt, "hello bob")
	}
	reply, _, err := bob.Encrypt([]byte("hello alice"), ad)
	if err != nil {
		t.Fatalf("bob Encrypt: %v", err)
	}
	pt, _, err = alice.Decrypt(reply, ad)
	if err != nil {
		t.Fatalf("alice Decrypt: %v", err)
	}
	if string(pt) != "hello alice" {
		t.Fatalf("alice read %q, want %q", pt, "hello alice")
	}
	return consumed
}

// rawOwner runs an owner exchange by hand, for tests of refused proofs:
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
