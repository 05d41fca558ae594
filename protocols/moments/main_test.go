package moments

import (
	"context"
	"crypto/rand"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"go.uber.org/goleak"

	"github.com/kinmesh/kinmesh/protocols/blobs"
	"github.com/kinmesh/kinmesh/protocols/contact"
	"github.com/kinmesh/kinmesh/protocols/e2ee"
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

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func newHost(t testing.TB, key crypto.PrivKey, listen ...string) host.Host {
	t.Helper()
	if len(listen) == 0 {
		listen = []string{"/ip4/127.0.0.1/tcp/0"}
	}
	h, err := libp2p.New(libp2p.Identity(key), libp2p.ListenAddrStrings(listen...), libp2p.DisableMetrics())
	if err != nil {
		t.Fatalf("libp2p.New: %v", err)
	}
	return h
}

func newKey(t testing.TB) crypto.PrivKey {
	k, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// testRelay is a relay: host, store, router, blob and moments services.
// Stop and Start restart it on the same address with the same data.
type testRelay struct {
	t      testing.TB
	key    crypto.PrivKey
	dir    string
	listen []string
	// storeOpts are added to the store's options at Start.
	storeOpts []storage.Option
	opts      []Option
	// id and addrs stay the same across restarts (same key and
	// addresses): devices read them while the relay restarts.
	id    peer.ID
	addrs []ma.Multiaddr

	h      host.Host
	st     *storage.Store
	router *Router
	blobs  *blobs.Service
	svc    *Service
}

func startRelay(t testing.TB, opts ...Option) *testRelay {
	t.Helper()
	r := &testRelay{t: t, key: newKey(t), dir: t.TempDir(), opts: opts}
	r.Start()
	t.Cleanup(r.Stop)
	return r
}

func (r *testRelay) Start() {
	r.t.Helper()
	r.h = newHost(r.t, r.key, r.listen...)
	if r.listen == nil {
		for _, a := range r.h.Addrs() {
			r.listen = append(r.listen, a.String())
		}
	}
	if r.id == "" {
		r.id, r.addrs = r.h.ID(), r.h.Addrs()
	}
	st, err := storage.Open(r.dir, append([]storage.Option{storage.WithProfile(storage.ProfileRelay), storage.WithLogger(discard)}, r.storeOpts...)...)
	if err != nil {
		r.t.Fatal(err)
	}
	r.st = st
	if r.router, err = NewRouter(r.h, WithRouterLogger(discard)); err != nil {
		r.t.Fatal(err)
	}
	if r.blobs, err = blobs.NewService(r.h, st, blobs.WithLogger(discard)); err != nil {
		r.t.Fatal(err)
	}
	if r.svc, err = NewService(r.h, st, r.router, r.blobs, append([]Option{WithLogger(discard)}, r.opts...)...); err != nil {
		r.t.Fatal(err)
	}
}

func (r *testRelay) Stop() {
	if r.svc == nil {
		return
	}
	for _, c := range []interface{ Close() error }{r.svc, r.svc, r.blobs, r.router, r.router, r.h, r.st} {
		if err := c.Close(); err != nil {
			r.t.Errorf("relay close: %v", err)
		}
	}
	r.svc = nil
}

func (r *testRelay) info() peer.AddrInfo { return peer.AddrInfo{ID: r.id, Addrs: r.addrs} }

func (r *testRelay) maddr() ma.Multiaddr {
	return r.addrs[0].Encapsulate(ma.StringCast("/p2p/" + r.id.String()))
}

// testNet delivers controls between test devices, as the messaging
// engine's pairwise sessions would.
type testNet struct {
	mu      sync.Mutex
	devices map[e2ee.AccountID]*testDevice
}

func newNet() *testNet { return &testNet{devices: map[e2ee.AccountID]*testDevice{}} }

// fakeContacts is a device's address book.
type fakeContacts struct {
	mu      sync.Mutex
	friends map[e2ee.AccountID]bool
	blocked map[e2ee.AccountID]bool
	records map[e2ee.AccountID]contact.Signed
}

func (c *fakeContacts) Friends() []e2ee.AccountID {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []e2ee.AccountID
	for id := range c.friends {
		if !c.blocked[id] {
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return out
}

func (c *fakeContacts) Contact(id e2ee.AccountID) (contact.Signed, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	r, ok := c.records[id]
	return r, ok
}

func (c *fakeContacts) Blocked(id e2ee.AccountID) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.blocked[id]
}

// testDevice is a device: host, store, router and engine, with an
// identity kept across restarts.
type testDevice struct {
	t        testing.TB
	name     string
	net      *testNet
	id       *e2ee.Identity
	key      crypto.PrivKey
	dir      string
	relays   []*testRelay
	contacts *fakeContacts
	ropts    []RouterOption

	mu     sync.Mutex
	h      host.Host
	st     *storage.Store
	router *Router
	eng    *Engine
	events chan Event
}

func newDevice(t testing.TB, n *testNet, name string, relays ...*testRelay) *testDevice {
	t.Helper()
	return newDeviceWith(t, n, name, nil, relays...)
}

func newDeviceWith(t testing.TB, n *testNet, name string, ropts []RouterOption, relays ...*testRelay) *testDevice {
	t.Helper()
	id, err := e2ee.NewIdentity(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	d := &testDevice{t: t, name: name, net: n, id: id, key: newKey(t), dir: t.TempDir(), relays: relays, ropts: ropts,
		contacts: &fakeContacts{friends: map[e2ee.AccountID]bool{}, blocked: map[e2ee.AccountID]bool{}, records: map[e2ee.AccountID]contact.Signed{}}}
	n.mu.Lock()
	n.devices[id.AccountID()] = d
	n.mu.Unlock()
	d.Start()
	t.Cleanup(d.Stop)
	return d
}

func (d *testDevice) ID() e2ee.AccountID { return d.id.AccountID() }

func (d *testDevice) homeRelays() []peer.AddrInfo {
	var out []peer.AddrInfo
	for _, r := range d.relays {
		out = append(out, r.info())
	}
	return out
}

func (d *testDevice) record() contact.Signed {
	rec := contact.Record{Identity: d.id.Public(), Name: d.name}
	for _, r := range d.relays {
		rec.HomeRelays = append(rec.HomeRelays, r.maddr())
	}
	return contact.Signed{Record: rec}
}

func (d *testDevice) Start() {
	d.t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	d.h = newHost(d.t, d.key)
	st, err := storage.Open(d.dir, storage.WithLogger(discard))
	if err != nil {
		d.t.Fatal(err)
	}
	d.st = st
	d.events = make(chan Event, 1024)
	if d.router, err = NewRouter(d.h, append([]RouterOption{WithRouterLogger(discard)}, d.ropts...)...); err != nil {
		d.t.Fatal(err)
	}
	for _, r := range d.relays {
		if err := d.h.Connect(context.Background(), r.info()); err != nil {
			d.t.Fatalf("%s connects to relay: %v", d.name, err)
		}
	}
	rc, _ := NewClient(d.h, WithClientLogger(discard))
	bc, _ := blobs.NewClient(d.h, blobs.WithClientLogger(discard))
	events := d.events
	e, err := New(Config{
		Host: d.h, Store: st, Router: d.router, Identity: d.id, Contacts: d.contacts,
		HomeRelays: d.homeRelays, SendControl: d.net.sendControl(d), Relays: rc, Blobs: bc,
		Name: func() string { return d.name }, Logger: discard,
		OnEvent: func(ev Event) {
			select {
			case events <- ev:
			default:
			}
		},
		AudienceInterval: time.Hour, BackfillInterval: time.Hour, RetryMin: 50 * time.Millisecond, RetryMax: time.Second,
	})
	if err != nil {
		d.t.Fatal(err)
	}
	d.eng = e
}

func (d *testDevice) Stop() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.eng == nil {
		return
	}
	for _, c := range []interface{ Close() error }{d.eng, d.eng, d.router, d.h, d.st} {
		if err := c.Close(); err != nil {
			d.t.Errorf("%s close: %v", d.name, err)
		}
	}
	d.eng = nil
}

func (d *testDevice) engine() *Engine {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.eng
}

// sendControl is the device's SendControl: straight into the recipients'
// engines (stored there before it returns, as OnControl is).
func (n *testNet) sendControl(from *testDevice) func(context.Context, []e2ee.AccountID, string, []byte) error {
	return func(_ context.Context, to []e2ee.AccountID, kind string, payload []byte) error {
		for _, id := range to {
			n.mu.Lock()
			d := n.devices[id]
			n.mu.Unlock()
			if d == nil {
				continue
			}
			if e := d.engine(); e != nil {
				e.HandleControl(from.ID(), kind, payload)
			}
		}
		return nil
	}
}

// befriend makes a and b friends of each other (each in the other's
// audience, with the other's record).
func befriend(a, b *testDevice) {
	for _, p := range [][2]*testDevice{{a, b}, {b, a}} {
		p[0].contacts.mu.Lock()
		p[0].contacts.friends[p[1].ID()] = true
		p[0].contacts.records[p[1].ID()] = p[1].record()
		p[0].contacts.mu.Unlock()
	}
}

// waitMoments waits until d's moments satisfy cond.
func waitMoments(t testing.TB, ctx context.Context, d *testDevice, what string, cond func([]Moment) bool) []Moment {
	t.Helper()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		ms, err := d.engine().Moments(ctx, 0)
		if err != nil {
			t.Fatal(err)
		}
		if cond(ms) {
			return ms
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: waiting for %s: have %+v", d.name, what, ms)
		case <-d.events:
		case <-tick.C:
		}
	}
}

func has(id string) func([]Moment) bool {
	return func(ms []Moment) bool { return slices.ContainsFunc(ms, func(m Moment) bool { return m.ID == id }) }
}

func hasNot(id string) func([]Moment) bool {
	return func(ms []Moment) bool { return !has(id)(ms) }
}

func find(ms []Moment, id string) Moment {
	for _, m := range ms {
		if m.ID == id {
			return m
		}
	}
	return Moment{}
}

// waitFor polls cond until it holds.
func waitFor(t testing.TB, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v", what, ctx.Err())
		case <-tick.C:
		}
	}
}

// distribute runs the audience sync of every device and waits until
// every friend follows every author.
func distribute(t testing.TB, ctx context.Context, ds ...*testDevice) {
	t.Helper()
	for _, d := range ds {
		if err := d.engine().SyncAudience(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range ds {
		for _, f := range d.contacts.Friends() {
			other := d.net.devices[f]
			waitFor(t, ctx, other.name+" follows "+d.name, func() bool {
				e := other.engine()
				e.mu.Lock()
				defer e.mu.Unlock()
				return e.follows[d.ID()] != nil
			})
		}
	}
}
