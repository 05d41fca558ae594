package message

import (
	"context"
	"crypto/rand"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"go.uber.org/goleak"

	"github.com/kinmesh/kinmesh/protocols/contact"
	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/protocols/mailbox"
	"github.com/kinmesh/kinmesh/protocols/prekeys"
	"github.com/kinmesh/kinmesh/storage"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("github.com/ipfs/go-log/v2/writer.(*MirrorWriter).logRoutine"),
		goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"),
	)
}

func newHost(t testing.TB) host.Host {
	t.Helper()
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableMetrics())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

func openStore(t testing.TB, dir string) *storage.Store {
	t.Helper()
	st, err := storage.Open(dir, storage.WithSweepInterval(0))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// relay is a relay host running the mailbox and prekeys services.
type relay struct {
	h  host.Host
	st *storage.Store
	mb *mailbox.Service
	pk *prekeys.Service
}

func newRelay(t testing.TB) *relay {
	t.Helper()
	return newRelayWith(t)
}

// newRelayWith is newRelay with opts for its mailbox service.
func newRelayWith(t testing.TB, opts ...mailbox.Option) *relay {
	t.Helper()
	h := newHost(t)
	st := openStore(t, t.TempDir())
	mb, err := mailbox.NewService(h, st, opts...)
	if err != nil {
		t.Fatal(err)
	}
	pk, err := prekeys.NewService(h, st)
	if err != nil {
		t.Fatal(err)
	}
	r := &relay{h: h, st: st, mb: mb, pk: pk}
	t.Cleanup(func() { r.mb.Close(); r.pk.Close() })
	return r
}

func (r *relay) addr() ma.Multiaddr {
	return r.h.Addrs()[0].Encapsulate(ma.StringCast("/p2p/" + r.h.ID().String()))
}

// book is a plain in-memory address book.
type book struct {
	mu      sync.Mutex
	recs    map[e2ee.AccountID]contact.Signed
	blocked map[e2ee.AccountID]bool
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
func (b *book) InviteBundle(e2ee.AccountID) *e2ee.Bundle { return nil }
func (b *book) Learn(rec contact.Signed) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if old, ok := b.recs[rec.AccountID()]; !ok || rec.Newer(old.Record) {
		b.recs[rec.AccountID()] = rec
	}
}

// device is an account running the engine on its own host and store.
type device struct {
	h      host.Host
	st     *storage.Store
	id     *e2ee.Identity
	auth   mailbox.Key
	rec    contact.Signed
	book   *book
	svc    *Service
	events chan Event
}

func newDevice(t testing.TB, name string, relays ...*relay) *device {
	t.Helper()
	return newDeviceOn(t, name, newHost(t), nil, relays...)
}

// newDeviceOn is newDevice on host h, with tweak (if not nil) applied to
// the engine's Config.
func newDeviceOn(t testing.TB, name string, h host.Host, tweak func(*Config), relays ...*relay) *device {
	t.Helper()
	st := openStore(t, filepath.Join(t.TempDir(), name))
	id, _ := e2ee.NewIdentity(rand.Reader)
	mk, _ := e2ee.NewMailboxKey(rand.Reader)
	auth, _ := mailbox.GenerateKey(rand.Reader)
	pk, err := e2ee.NewPrekeyStore(id, time.Now(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rec := contact.Record{
		Identity: id.Public(), Seq: 1, IssuedAt: time.Now(), Name: name,
		Devices: []peer.ID{h.ID()}, MailboxID: string(auth.ID()), MailboxKey: mk.Public(),
	}
	for _, r := range relays {
		rec.HomeRelays = append(rec.HomeRelays, r.addr())
	}
	signed, err := rec.Sign(id)
	if err != nil {
		t.Fatal(err)
	}
	mc, _ := mailbox.NewClient(h)
	pc, _ := prekeys.NewClient(h)
	d := &device{h: h, st: st, id: id, auth: auth, rec: signed, book: &book{recs: map[e2ee.AccountID]contact.Signed{}, blocked: map[e2ee.AccountID]bool{}}, events: make(chan Event, 4096)}
	cfg := Config{
		Host: h, Store: st, Contacts: d.book, Mailbox: mc, Prekeys: pc, InitialPrekeys: pk,
		Account:  Account{Identity: id, MailboxKey: mk, MailboxAuth: auth, Record: signed},
		OnEvent:  func(e Event) { d.events <- e },
		RetryMin: 50 * time.Millisecond,
	}
	if tweak != nil {
		tweak(&cfg)
	}
	d.svc, err = New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.svc.Close() })
	return d
}

func (d *device) me() e2ee.AccountID { return d.id.AccountID() }

// meet makes a and b contacts and publishes their prekeys.
func meet(t testing.TB, ctx context.Context, ds ...*device) {
	t.Helper()
	for _, a := range ds {
		for _, b := range ds {
			if a != b {
				a.book.Learn(b.rec)
			}
		}
		if err := a.svc.MaintainPrekeys(ctx); err != nil {
			t.Fatalf("publish prekeys: %v", err)
		}
	}
}

// waitFor waits on d's events until cond holds for the conversation.
func (d *device) waitFor(t testing.TB, ctx context.Context, with string, what string, cond func([]Message) bool) []Message {
	t.Helper()
	for {
		ms, err := d.svc.Messages(ctx, with)
		if err != nil {
			t.Fatal(err)
		}
		if cond(ms) {
			return ms
		}
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting until %s; have %+v", what, ms)
		case <-d.events:
		}
	}
}
