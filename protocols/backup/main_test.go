package backup

import (
	"bytes"
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

	"github.com/kinmesh/kinmesh/protocols/contact"
	"github.com/kinmesh/kinmesh/protocols/contact/contacttest"
	"github.com/kinmesh/kinmesh/protocols/discovery"
	"github.com/kinmesh/kinmesh/protocols/e2ee"
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

// testKDF keeps tests fast; the format is the same as with DefaultKDF.
var testKDF = KDFParams{Time: 1, MemoryKiB: 1 << 10, Threads: 1}

// clock is a settable clock shared by a test's relay and store.
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

// relaxedDiscovery lifts the discovery service's rate limits, for tests
// about something else.
var relaxedDiscovery = []discovery.Option{
	discovery.WithSendRate(1<<20, 1<<20), discovery.WithNumberSendRate(1<<20, 1<<20), discovery.WithGuessRate(1<<20, 1<<20),
	discovery.WithAccountOpRate(1<<20, 1<<20),
}

// testRelay is a relay host with the discovery and backup services on one
// real store, as bootstrap runs them, and a console SMS gateway. Stop and
// Start close and reopen both services and the store.
type testRelay struct {
	t        testing.TB
	h        host.Host
	dir      string
	clock    *clock
	opts     []Option
	discOpts []discovery.Option
	gw       *discovery.ConsoleGateway
	st       *storage.Store
	disc     *discovery.Service
	svc      *Service
}

func startRelay(t testing.TB, clk *clock, opts []Option, discOpts ...discovery.Option) *testRelay {
	t.Helper()
	if clk == nil {
		clk = newClock()
	}
	r := &testRelay{t: t, h: newHost(t), dir: t.TempDir(), clock: clk, opts: opts, gw: discovery.NewConsoleGateway(),
		discOpts: append(append([]discovery.Option{}, relaxedDiscovery...), discOpts...)}
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
	disc, err := discovery.NewService(r.h, st, r.gw, append([]discovery.Option{discovery.WithClock(r.clock.Now), discovery.WithLogger(discard)}, r.discOpts...)...)
	if err != nil {
		_ = st.Close()
		r.t.Fatalf("discovery.NewService: %v", err)
	}
	svc, err := NewService(r.h, st, disc, append([]Option{WithClock(r.clock.Now), WithLogger(discard)}, r.opts...)...)
	if err != nil {
		_ = disc.Close()
		_ = st.Close()
		r.t.Fatalf("NewService: %v", err)
	}
	r.st, r.disc, r.svc = st, disc, svc
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
	if err := r.disc.Close(); err != nil {
		r.t.Errorf("discovery Close: %v", err)
	}
	if err := r.st.Close(); err != nil {
		r.t.Errorf("Store.Close: %v", err)
	}
	r.svc, r.disc, r.st = nil, nil, nil
}

func (r *testRelay) ID() peer.ID { return r.h.ID() }

// records returns every key and value in the relay's backup namespace,
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

// device is a host with both protocols' clients.
type device struct {
	h    host.Host
	c    *Client
	disc *discovery.Client
}

func newDevice(t testing.TB, relays ...*testRelay) *device {
	t.Helper()
	h := newHost(t)
	for _, r := range relays {
		h.Peerstore().AddAddrs(r.h.ID(), r.h.Addrs(), peerstore.PermanentAddrTTL)
	}
	c, err := NewClient(h, WithClientLogger(discard))
	if err != nil {
		t.Fatal(err)
	}
	dc, err := discovery.NewClient(h, discovery.WithClientLogger(discard))
	if err != nil {
		t.Fatal(err)
	}
	return &device{h: h, c: c, disc: dc}
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// account is a user: identity and signed contact record.
type account struct {
	name   string
	id     *e2ee.Identity
	record contact.Signed
}

func newAccount(t testing.TB, name string) *account {
	t.Helper()
	id, rec := contacttest.Account(t, name)
	return &account{name: name, id: id, record: rec}
}

func mustNumber(t testing.TB, s string) discovery.Number {
	t.Helper()
	n, err := discovery.ParseNumber(s)
	if err != nil {
		t.Fatalf("ParseNumber(%q): %v", s, err)
	}
	return n
}

// code returns the code the relay last texted to n.
func (r *testRelay) code(t testing.TB, n discovery.Number) string {
	t.Helper()
	c, ok := r.gw.LastCode(n)
	if !ok {
		t.Fatalf("no code was sent to %s", n.Masked())
	}
	return c
}

// verify links n to a's account on r.
func verify(t testing.TB, d *device, r *testRelay, a *account, n discovery.Number) {
	t.Helper()
	if _, err := d.disc.RequestCode(testCtx(t), r.ID(), a.id, n); err != nil {
		t.Fatalf("RequestCode: %v", err)
	}
	if _, err := d.disc.VerifyCode(testCtx(t), r.ID(), a.id, r.code(t, n), a.record); err != nil {
		t.Fatalf("VerifyCode: %v", err)
	}
}

// sealed returns a sealed backup of contents under a fresh key of secret.
func sealed(t testing.TB, s Secret, contents []byte) ([]byte, *Key) {
	t.Helper()
	k, err := NewKey(s, testKDF, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	blob, err := k.Seal(contents, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return blob, k
}

func newSecret(t testing.TB) Secret {
	t.Helper()
	s, err := NewSecret(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// recoverOn runs a new device's recovery on r: a throwaway identity asks
// for a code for n, then fetches with it.
func recoverOn(t testing.TB, d *device, r *testRelay, n discovery.Number) (Fetched, error) {
	t.Helper()
	tmp, err := e2ee.NewIdentity(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.disc.RequestCode(testCtx(t), r.ID(), tmp, n); err != nil {
		t.Fatalf("RequestCode: %v", err)
	}
	f, _, err := d.c.Fetch(testCtx(t), r.ID(), tmp, r.code(t, n))
	return f, err
}

func wantErr(t testing.TB, err error, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("got error %v, want %v", err, want)
	}
}

// rawOwner runs an exchange by hand, for tests of refused proofs: sign
// gets the challenge and returns the request to send.
func rawOwner(t testing.TB, d *device, relay peer.ID, sign func(nonce []byte, relay, self peer.ID) request) (response, error) {
	t.Helper()
	var out response
	err := d.c.roundTrip(testCtx(t), relay, func(st network.Stream, rd *wire.Reader) error {
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

// signed returns a signer of b by id, claiming identity.
func signed(id *e2ee.Identity, identity []byte, b body) func([]byte, peer.ID, peer.ID) request {
	enc := encodeBody(b)
	return func(nonce []byte, relay, self peer.ID) request {
		return request{kind: reqOwner, identity: identity, body: enc, sig: id.Sign(authMessage(nonce, relay, self, requestHash(identity, enc)))}
	}
}

// contains reports whether any record's key or value contains needle.
func contains(recs map[string][]byte, needle []byte) bool {
	for k, v := range recs {
		if bytes.Contains([]byte(k), needle) || bytes.Contains(v, needle) {
			return true
		}
	}
	return false
}
