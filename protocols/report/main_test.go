package report

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

type peerID = peer.ID

// clock is a settable clock shared by a test's relay store and service.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC)} }

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

// testRelay is a relay host with a report service on a real store. Stop
// and Start close and reopen both, as a relay restart would.
type testRelay struct {
	t     testing.TB
	h     host.Host
	dir   string
	clock *clock
	opts  []Option
	st    *storage.Store
	svc   *Service
}

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

// keys returns every key in the relay's report namespace.
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

func (r *testRelay) list(t testing.TB, q Queue) []Item {
	t.Helper()
	items, err := r.svc.List(context.Background(), q, ListOptions{})
	if err != nil {
		t.Fatalf("List %s: %v", q, err)
	}
	return items
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

func newIdentity(t testing.TB) *e2ee.Identity {
	t.Helper()
	id, err := e2ee.NewIdentity(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func reportOf(reported e2ee.AccountID, now time.Time, msgs ...DisclosedMessage) Submission {
	return Submission{
		Kind: KindReport, ID: SubmissionID(), CreatedAt: now,
		Reported: reported, Reason: ReasonHarassment, Text: "keeps sending threats", Messages: msgs,
	}
}

func feedbackOf(kind Kind, text string, now time.Time) Submission {
	return Submission{Kind: kind, ID: SubmissionID(), CreatedAt: now, Text: text}
}

// rawSubmit runs a submission exchange by hand, for tests of refused
// signatures: sign gets the challenge and returns the request to send.
func rawSubmit(t testing.TB, c *Client, relay peer.ID, sign func(nonce []byte, relay peer.ID) request) (response, error) {
	t.Helper()
	var out response
	err := c.roundTrip(testCtx(t), relay, func(st network.Stream, rd *wire.Reader) error {
		if err := wire.Write(st, encodeRequest(request{kind: reqHello}), maxHelloFrame); err != nil {
			return err
		}
		r, err := readResponse(rd)
		if err != nil {
			return err
		}
		if r.nonce == nil {
			return &Error{Code: r.code}
		}
		if err := wire.Write(st, encodeRequest(sign(r.nonce, st.Conn().RemotePeer())), maxSubmitFrame); err != nil {
			return err
		}
		out, err = readResponse(rd)
		return err
	})
	return out, err
}

// signed returns a validly signed request for body, as id.
func signed(id *e2ee.Identity, body, nonce []byte, relay peer.ID) request {
	ident := id.Public().Marshal()
	return request{kind: reqSubmit, submission: body, identity: ident, sig: id.Sign(authMessage(nonce, relay, submitHash(ident, body)))}
}
