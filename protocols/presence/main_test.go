package presence

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/kinmesh/kinmesh/protocols/contact"
	"github.com/kinmesh/kinmesh/protocols/contact/contacttest"
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

// book is an address book for tests: every contact is in the audience
// (blocked ones too: the service must leave them out itself).
type book struct {
	mu      sync.Mutex
	recs    map[e2ee.AccountID]contact.Signed
	blocked map[e2ee.AccountID]bool
}

func newBook() *book {
	return &book{recs: map[e2ee.AccountID]contact.Signed{}, blocked: map[e2ee.AccountID]bool{}}
}

func (b *book) Audience() []contact.Signed {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]contact.Signed, 0, len(b.recs))
	for _, r := range b.recs {
		out = append(out, r)
	}
	return out
}

func (b *book) Member(id e2ee.AccountID) (contact.Signed, bool) {
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

func (b *book) add(r contact.Signed) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.recs[r.AccountID()] = r
}

func (b *book) block(id e2ee.AccountID) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.blocked[id] = true
}

// device is a device under test: host, store, account, book and a
// presence service, restartable on the same data.
type device struct {
	t       testing.TB
	name    string
	h       host.Host
	dir     string
	id      *e2ee.Identity
	mk      *e2ee.MailboxKey
	rec     contact.Signed
	book    *book
	opts    []Option
	st      *storage.Store
	svc     *Service
	changes chan e2ee.AccountID
}

func newDevice(t testing.TB, name string, opts ...Option) *device {
	t.Helper()
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableMetrics())
	if err != nil {
		t.Fatalf("libp2p.New: %v", err)
	}
	t.Cleanup(func() { _ = h.Close() })
	id, mk, rec := contacttest.Device(t, name, h.ID())
	d := &device{t: t, name: name, h: h, dir: t.TempDir(), id: id, mk: mk, rec: rec, book: newBook(), opts: opts, changes: make(chan e2ee.AccountID, 64)}
	d.Start()
	t.Cleanup(d.Stop)
	return d
}

// Start starts the presence service (again, on the same data).
func (d *device) Start() {
	d.t.Helper()
	st, err := storage.Open(d.dir, storage.WithSyncWrites(false), storage.WithLogger(discard))
	if err != nil {
		d.t.Fatalf("storage.Open: %v", err)
	}
	opts := append([]Option{
		WithLogger(discard),
		WithCheckEvery(time.Hour), // tests drive rounds with Announce
		withoutFirstRound(),
		WithOnChange(func(id e2ee.AccountID) {
			select {
			case d.changes <- id:
			default:
			}
		}),
	}, d.opts...)
	svc, err := New(d.h, st, Account{Identity: d.id, MailboxKey: d.mk}, d.book, opts...)
	if err != nil {
		_ = st.Close()
		d.t.Fatalf("New: %v", err)
	}
	d.st, d.svc = st, svc
}

// Stop closes the service (sending offline beacons) and the store.
func (d *device) Stop() {
	if d.svc == nil {
		return
	}
	if err := d.svc.Close(); err != nil {
		d.t.Errorf("Close: %v", err)
	}
	if err := d.svc.Close(); err != nil {
		d.t.Errorf("second Close: %v", err)
	}
	if err := d.st.Close(); err != nil {
		d.t.Errorf("store Close: %v", err)
	}
	d.svc, d.st = nil, nil
}

func (d *device) account() e2ee.AccountID { return d.id.AccountID() }

// befriend makes the devices contacts of each other and lets their hosts
// find each other.
func befriend(devs ...*device) {
	// Addresses first: a service that sees a new contact before its
	// address would fail the dial and back off.
	for _, a := range devs {
		for _, b := range devs {
			if a != b {
				a.h.Peerstore().AddAddrs(b.h.ID(), b.h.Addrs(), peerstore.PermanentAddrTTL)
			}
		}
	}
	for _, a := range devs {
		for _, b := range devs {
			if a != b {
				a.book.add(b.rec)
			}
		}
	}
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func announce(t testing.TB, d *device) Round {
	t.Helper()
	r, err := d.svc.Announce(testCtx(t))
	if err != nil {
		t.Fatalf("%s Announce: %v", d.name, err)
	}
	return r
}

// waitFor waits until cond holds, re-checking whenever d's presence view
// changes.
func waitFor(t testing.TB, d *device, what string, cond func() bool) {
	t.Helper()
	timeout := time.NewTimer(20 * time.Second)
	defer timeout.Stop()
	for !cond() {
		select {
		case <-d.changes:
		case <-timeout.C:
			t.Fatalf("%s: timed out waiting until %s", d.name, what)
		}
	}
}

// craft seals a beacon by hand: from's identity as sender, signed by
// signer, addressed to recipient, sealed to to's mailbox key.
func craft(t testing.TB, from *device, signer *e2ee.Identity, recipient e2ee.AccountID, to *device, st status, sent time.Time) []byte {
	t.Helper()
	key, err := recipient.SigningKey()
	if err != nil {
		t.Fatal(err)
	}
	sent = sent.Truncate(time.Millisecond)
	b := beacon{status: st, sent: sent, recipient: key, sig: signer.Sign(signedMessage(st, sent, key))}
	env, err := e2ee.SealEnvelope(to.mk.Public(), e2ee.EnvelopeContent{Sender: from.id.Public(), Type: e2ee.ContentPresence, Payload: b.encode()})
	if err != nil {
		t.Fatal(err)
	}
	return env
}

// deliver hands env to to's device on a stream from from's host and
// returns the reply's envelope.
func deliver(t testing.TB, from, to *device, env []byte) ([]byte, error) {
	t.Helper()
	ctx := testCtx(t)
	if err := from.h.Connect(ctx, peerAddrInfo(to)); err != nil {
		t.Fatalf("connect: %v", err)
	}
	s, err := from.h.NewStream(ctx, to.h.ID(), ID)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	_ = s.SetDeadline(time.Now().Add(10 * time.Second))
	if err := wire.Write(s, encodeFrame(env), maxFrame); err != nil {
		return nil, err
	}
	b, err := wire.NewReader(s).ReadBytes(maxFrame)
	if err != nil {
		return nil, err
	}
	return decodeEnvelopeFrame(b)
}

func peerAddrInfo(d *device) peer.AddrInfo { return peer.AddrInfo{ID: d.h.ID(), Addrs: d.h.Addrs()} }

// testClock is a settable clock.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func testMetric(t testing.TB, reg *prometheus.Registry, name, result string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" && l.GetValue() == result {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}
