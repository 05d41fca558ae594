package calls

import (
	"context"
	"crypto/rand"
	"log/slog"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/pion/webrtc/v4"
	"go.uber.org/goleak"

	"github.com/kinmesh/kinmesh/protocols/calls/testmedia"
	"github.com/kinmesh/kinmesh/protocols/contact"
	"github.com/kinmesh/kinmesh/protocols/contact/contacttest"
	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/protocols/turn"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, leakIgnores()...)
}

func leakIgnores() []goleak.Option {
	return []goleak.Option{
		goleak.IgnoreTopFunction("github.com/ipfs/go-log/v2/writer.(*MirrorWriter).logRoutine"),
		goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"),
		goleak.IgnoreAnyFunction("github.com/libp2p/go-libp2p/p2p/transport/quicreuse.(*reuse).gc"),
	}
}

// testLog is the tests' logger: quiet unless KINMESH_TEST_LOG=debug.
func testLog() *slog.Logger {
	if os.Getenv("KINMESH_TEST_LOG") == "debug" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
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

func testCtx(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// book is a contact book.
type book struct {
	mu      sync.Mutex
	recs    map[e2ee.AccountID]contact.Signed
	blocked map[e2ee.AccountID]bool
	learned int
}

func newBook() *book {
	return &book{recs: map[e2ee.AccountID]contact.Signed{}, blocked: map[e2ee.AccountID]bool{}}
}

func (b *book) Contact(id e2ee.AccountID) (contact.Signed, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	r, ok := b.recs[id]
	return r, ok
}

func (b *book) Blocked(id e2ee.AccountID) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.blocked[id]
}

func (b *book) Learn(rec contact.Signed) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if old, ok := b.recs[rec.AccountID()]; ok && rec.Newer(old.Record) {
		b.recs[rec.AccountID()] = rec
		b.learned++
	}
}

func (b *book) add(rec contact.Signed) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.recs[rec.AccountID()] = rec
}

func (b *book) block(id e2ee.AccountID) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.blocked[id] = true
}

// relay is a host running a TURN server on loopback.
type relay struct {
	h   host.Host
	srv *turn.Server
}

func startRelay(t testing.TB, opts ...turn.Option) *relay {
	t.Helper()
	h := newHost(t)
	secret := make([]byte, turn.SecretSize)
	_, _ = rand.Read(secret)
	base := []turn.Option{turn.WithListen(netip.MustParseAddrPort("127.0.0.1:0")), turn.WithThreads(2), turn.WithLogger(testLog())}
	srv, err := turn.NewServer(h, secret, netip.MustParseAddr("127.0.0.1"), append(base, opts...)...)
	if err != nil {
		t.Fatalf("turn.NewServer: %v", err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	return &relay{h: h, srv: srv}
}

// device is one account on one host, with its calls service.
type device struct {
	mu     sync.Mutex // guards rec
	t      testing.TB
	h      host.Host
	id     *e2ee.Identity
	rec    contact.Signed
	book   *book
	svc    *Service
	events chan Info
}

type deviceConfig struct {
	relay *relay
	opts  []Option
}

func newDevice(t testing.TB, dc deviceConfig) *device {
	t.Helper()
	h := newHost(t)
	id, _, rec := contacttest.Device(t, "test", h.ID())
	d := &device{t: t, h: h, id: id, rec: rec, book: newBook(), events: make(chan Info, 256)}
	opts := []Option{
		WithLogger(testLog()), WithLoopbackCandidates(true),
		WithEvents(func(i Info) {
			select {
			case d.events <- i:
			default:
			}
		}),
	}
	if dc.relay != nil {
		h.Peerstore().AddAddrs(dc.relay.h.ID(), dc.relay.h.Addrs(), peerstore.PermanentAddrTTL)
		tc, err := turn.NewClient(h, id)
		if err != nil {
			t.Fatal(err)
		}
		r := dc.relay
		opts = append(opts, WithICEServers(func(ctx context.Context) ([]webrtc.ICEServer, error) {
			cr, err := tc.Credentials(ctx, r.h.ID())
			if err != nil {
				return nil, err
			}
			return []webrtc.ICEServer{{URLs: cr.URLs, Username: cr.Username, Credential: cr.Password}}, nil
		}))
	}
	svc, err := NewService(h, Self{Account: id.AccountID(), Record: d.record}, d.book, append(opts, dc.opts...)...)
	if err != nil {
		t.Fatalf("NewService: %v", err)
	}
	d.svc = svc
	t.Cleanup(func() {
		if err := svc.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if err := svc.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
	})
	return d
}

func (d *device) account() e2ee.AccountID { return d.id.AccountID() }

func (d *device) record() contact.Signed {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.rec
}

func (d *device) setRecord(r contact.Signed) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.rec = r
}

// befriend makes a and b contacts and connects their hosts.
func befriend(t testing.TB, a, b *device) {
	t.Helper()
	a.book.add(b.rec)
	b.book.add(a.rec)
	connect(t, a.h, b.h)
}

func connect(t testing.TB, a, b host.Host) {
	t.Helper()
	if err := a.Connect(testCtx(t, 10*time.Second), peer.AddrInfo{ID: b.ID(), Addrs: b.Addrs()}); err != nil {
		t.Fatal(err)
	}
}

// media returns a test clip player sending audio and video.
func media(t testing.TB) *testmedia.Player {
	t.Helper()
	p, err := testmedia.New(true, true)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// waitEvent waits until d's service emits an Info that cond accepts.
func (d *device) waitEvent(ctx context.Context, cond func(Info) bool) Info {
	d.t.Helper()
	for {
		select {
		case i := <-d.events:
			if cond(i) {
				return i
			}
		case <-ctx.Done():
			d.t.Fatalf("waiting for a call event: %v", ctx.Err())
			return Info{}
		}
	}
}

// waitState waits until call id on d is in state st.
func (d *device) waitState(ctx context.Context, id string, st State) Info {
	d.t.Helper()
	if i, err := d.svc.Get(id); err == nil && i.State == st {
		return i
	}
	return d.waitEvent(ctx, func(i Info) bool { return i.ID == id && i.State == st })
}

// incoming waits for an incoming call from caller to ring on d.
func (d *device) incoming(ctx context.Context, caller e2ee.AccountID) Info {
	d.t.Helper()
	return d.waitEvent(ctx, func(i Info) bool {
		return i.Direction == DirectionIn && i.Peer == string(caller) && i.State == StateRinging
	})
}

// poll waits until cond holds for call id's Info (statistics change with
// no event: the call's own goroutines update them).
func (d *device) poll(ctx context.Context, id string, what string, cond func(Info) bool) Info {
	d.t.Helper()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var last Info
	for {
		i, err := d.svc.Get(id)
		if err == nil && cond(i) {
			return i
		}
		last = i
		select {
		case <-tick.C:
		case <-ctx.Done():
			d.t.Fatalf("waiting for %s: %v; last %+v stats %+v", what, ctx.Err(), last, last.Stats)
			return Info{}
		}
	}
}
