package mailbox

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"go.uber.org/goleak"

	"github.com/kinmesh/kinmesh/protocols/mailbox/pb"
	"github.com/kinmesh/kinmesh/protocols/netkit"
	"github.com/kinmesh/kinmesh/protocols/wire"
	"github.com/kinmesh/kinmesh/storage"
)

func TestMain(m *testing.M) {
	if dir := os.Getenv(childDirEnv); dir != "" {
		os.Exit(runChildRelay(dir))
	}
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

// clock is a settable clock shared by a test's store and service.
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

func (c *clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

func newHost(t testing.TB) host.Host {
	t.Helper()
	// The transports kinmesh hosts use (TCP, Noise, yamux).
	h, err := libp2p.New(netkit.Transports(), libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableMetrics())
	if err != nil {
		t.Fatalf("libp2p.New: %v", err)
	}
	t.Cleanup(func() { _ = h.Close() })
	return h
}

// testRelay is a relay host with a mailbox service on a real store.
type testRelay struct {
	h     host.Host
	st    *storage.Store
	svc   *Service
	dir   string
	clock *clock

	storeOpts []storage.Option // as started, for restart
	opts      []Option
}

func startRelay(t testing.TB, opts ...Option) *testRelay {
	t.Helper()
	return startRelayWith(t, nil, opts...)
}

// startRelayWith also takes store options.
func startRelayWith(t testing.TB, storeOpts []storage.Option, opts ...Option) *testRelay {
	t.Helper()
	clk := newClock()
	dir := t.TempDir()
	r := &testRelay{
		h:         newHost(t),
		dir:       dir,
		clock:     clk,
		storeOpts: append([]storage.Option{storage.WithProfile(storage.ProfileRelay), storage.WithClock(clk.Now)}, storeOpts...),
		opts:      append([]Option{WithClock(clk.Now)}, opts...),
	}
	r.start(t)
	return r
}

// start opens r's store and starts its service.
func (r *testRelay) start(t testing.TB) {
	t.Helper()
	st, err := storage.Open(r.dir, r.storeOpts...)
	if err != nil {
		t.Fatalf("storage.Open: %v", err)
	}
	t.Cleanup(func() { _ = st.Close() })
	svc, err := NewService(r.h, st, r.opts...)
	if err != nil {
		t.Fatalf("NewService: %v", err)
	}
	t.Cleanup(func() { _ = svc.Close() })
	r.st, r.svc = st, svc
}

// restart stops r's service and store, lets offline change the store's
// Badger database as it is on disk, and starts them again.
func (r *testRelay) restart(t testing.TB, offline func(db *badger.DB)) {
	t.Helper()
	_ = r.svc.Close()
	if err := r.st.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := badger.Open(badger.DefaultOptions(r.dir).WithLogger(nil))
	if err != nil {
		t.Fatalf("badger.Open: %v", err)
	}
	offline(db)
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	r.start(t)
}

// corruptItem damages the stored value of mbox's item seq in db (as
// restart's offline function): the store can no longer open it.
func (r *testRelay) corruptItem(t testing.TB, db *badger.DB, mbox MailboxID, seq uint64) {
	t.Helper()
	raw, _ := mailboxRaw(string(mbox))
	key := append([]byte("d/"+namespace+"/"), itemKey(r.svc.prefix(raw), seq)...)
	err := db.Update(func(txn *badger.Txn) error {
		item, err := txn.Get(key)
		if err != nil {
			return err
		}
		v, err := item.ValueCopy(nil)
		if err != nil {
			return err
		}
		v[len(v)-1] ^= 1
		return txn.Set(key, v)
	})
	if err != nil {
		t.Fatalf("corrupt item %d: %v", seq, err)
	}
}

func (r *testRelay) info() peer.AddrInfo { return peer.AddrInfo{ID: r.h.ID(), Addrs: r.h.Addrs()} }

// newClient returns a client on a new host that knows r's addresses.
func newClient(t testing.TB, r *testRelay, opts ...ClientOption) *Client {
	t.Helper()
	h := newHost(t)
	h.Peerstore().AddAddrs(r.h.ID(), r.h.Addrs(), peerstore.PermanentAddrTTL)
	c, err := NewClient(h, opts...)
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	return c
}

func newKey(t testing.TB) Key {
	t.Helper()
	k, err := GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// ownerKey returns a new mailbox key whose mailbox is registered on r:
// its owner authenticated there once, as a device does on its home
// relays, from a client of its own.
func ownerKey(t testing.TB, r *testRelay) Key {
	t.Helper()
	k := newKey(t)
	register(t, newClient(t, r), r, k)
	return k
}

// register registers k's mailbox on r: its owner authenticates on c.
func register(t testing.TB, c *Client, r *testRelay, k Key) {
	t.Helper()
	s, err := c.Open(testCtx(t), r.h.ID(), k)
	if err != nil {
		t.Fatalf("register %s: %v", k.ID(), err)
	}
	_ = s.Close()
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// envelopes returns n distinct envelopes of size bytes.
func envelopes(n, size int, tag string) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		e := make([]byte, size)
		copy(e, fmt.Sprintf("%s-%06d|", tag, i))
		out[i] = e
	}
	return out
}

func mustDeposit(t testing.TB, c *Client, r *testRelay, mbox MailboxID, envs [][]byte) {
	t.Helper()
	res, err := c.Deposit(testCtx(t), r.h.ID(), mbox, envs)
	if err != nil {
		t.Fatalf("Deposit: %v", err)
	}
	for i, x := range res {
		if x.Err != nil {
			t.Fatalf("Deposit item %d: %v", i, x.Err)
		}
	}
}

func openSession(t testing.TB, c *Client, r *testRelay, k Key) *Session {
	t.Helper()
	s, err := c.Open(testCtx(t), r.h.ID(), k)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// fetchAll pages through the whole mailbox.
func fetchAll(t testing.TB, s *Session) []Item {
	t.Helper()
	var all []Item
	var after uint64
	for {
		items, more, err := s.Fetch(testCtx(t), after, 0)
		if err != nil {
			t.Fatalf("Fetch: %v", err)
		}
		all = append(all, items...)
		if len(items) > 0 {
			after = items[len(items)-1].Seq
		}
		if !more {
			return all
		}
	}
}

// nextPush waits for the next push or fails.
func nextPush(t testing.TB, s *Session) Push {
	t.Helper()
	select {
	case p, ok := <-s.Pushed():
		if !ok {
			t.Fatalf("push channel closed: %v", s.Err())
		}
		return p
	case <-testCtx(t).Done():
		t.Fatal("no push within 30s")
	}
	return Push{}
}

// rawStream is a mailbox stream driven frame by frame, for tests that
// send what the Client never would.
type rawStream struct {
	t  testing.TB
	st network.Stream
	rd *wire.Reader
}

func openRaw(t testing.TB, c *Client, r *testRelay) *rawStream {
	t.Helper()
	st, err := c.newStream(testCtx(t), r.h.ID())
	if err != nil {
		t.Fatalf("open stream: %v", err)
	}
	t.Cleanup(func() { _ = st.Reset() })
	_ = st.SetDeadline(time.Now().Add(30 * time.Second))
	return &rawStream{t: t, st: st, rd: wire.NewReader(bufio.NewReader(st))}
}

// openRawSession opens a raw stream on c and authenticates it as the
// owner of k's mailbox.
func openRawSession(t testing.TB, c *Client, r *testRelay, k Key) *rawStream {
	t.Helper()
	s := openRaw(t, c, r)
	s.send(helloReq(1))
	nonce := s.recv().GetChallenge().GetNonce()
	sig := ed25519.Sign(k.priv, authMessage(nonce, r.h.ID(), c.h.ID(), rawIDFromPublicKey(k.Public())))
	s.send(authReq(2, k.Public(), sig))
	if m := s.recv(); m.GetAuth() == nil {
		t.Fatalf("auth: got %v, want AuthOK", m)
	}
	return s
}

func (s *rawStream) send(req *pb.Request) {
	s.t.Helper()
	if err := wire.Write(s.st, req, 4<<20); err != nil {
		s.t.Fatalf("write: %v", err)
	}
}

func (s *rawStream) sendBytes(b []byte) {
	s.t.Helper()
	if _, err := s.st.Write(b); err != nil {
		s.t.Fatalf("write: %v", err)
	}
}

func (s *rawStream) recv() *pb.Response {
	s.t.Helper()
	var m pb.Response
	if err := s.rd.Read(&m, maxResponseFrame); err != nil {
		s.t.Fatalf("read: %v", err)
	}
	return &m
}

// errCode returns the code of an Error response, or fails.
func (s *rawStream) errCode(m *pb.Response) pb.Code {
	s.t.Helper()
	e := m.GetError()
	if e == nil {
		s.t.Fatalf("got %v, want an error response", m)
	}
	return e.GetCode()
}

// waitFor polls cond until it holds, failing the test after 30 s.
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
