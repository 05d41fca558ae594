package mailbox

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/kinmesh/kinmesh/protocols/mailbox/pb"
	"github.com/kinmesh/kinmesh/protocols/wire"
	"github.com/kinmesh/kinmesh/storage"
)

func TestExpiry(t *testing.T) {
	// Only the explicit Sweep below may delete: no background sweep.
	r := startRelayWith(t, []storage.Option{storage.WithSweepInterval(0)})
	c := newClient(t, r)
	k := ownerKey(t, r)
	t0 := r.clock.Now()
	mustDeposit(t, c, r, k.ID(), [][]byte{[]byte("old")})
	r.clock.Advance(14*24*time.Hour + 23*time.Hour)
	mustDeposit(t, c, r, k.ID(), [][]byte{[]byte("young")})
	s := openSession(t, c, r, k)

	items := fetchAll(t, s)
	if len(items) != 2 || string(items[0].Envelope) != "old" {
		t.Fatalf("at 14d23h: fetched %d items, want the old one too", len(items))
	}
	oldSeq := items[0].Seq
	oldKey := itemKey(r.svc.prefix(rawIDFromPublicKey(k.Public())), oldSeq)

	r.clock.Set(t0.Add(MaxAge))
	items = fetchAll(t, s)
	if len(items) != 1 || string(items[0].Envelope) != "young" {
		t.Fatalf("at 15d: fetched %v, want only the young item", items)
	}

	// Still on disk until the sweep: visible with the clock set back.
	r.clock.Set(t0)
	if _, err := r.st.Namespace(namespace).Get(testCtx(t), oldKey); err != nil {
		t.Fatalf("expired item before the sweep: %v", err)
	}
	r.clock.Set(t0.Add(MaxAge))
	// The sweep deletes it from the store: even with the clock set back,
	// it is gone.
	n, err := r.st.Sweep(testCtx(t))
	if err != nil || n < 1 {
		t.Fatalf("Sweep: %d, %v; want at least 1", n, err)
	}
	r.clock.Set(t0)
	if _, err := r.st.Namespace(namespace).Get(testCtx(t), oldKey); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("expired item after sweep: %v, want ErrNotFound", err)
	}
	r.clock.Set(t0.Add(MaxAge))
	res, err := s.Ack(testCtx(t), oldSeq)
	if err != nil || !errors.Is(res[0], ErrNotFound) {
		t.Fatalf("ack of an expired item: %v, %v; want ErrNotFound", res, err)
	}

	// The young one goes at its own 15 days.
	r.clock.Set(t0.Add(14*24*time.Hour + 23*time.Hour + MaxAge))
	if items := fetchAll(t, s); len(items) != 0 {
		t.Fatalf("after both expired: %d items", len(items))
	}
}

func TestExpiryFreesQuota(t *testing.T) {
	tr := &countingTracer{}
	r := startRelay(t, WithMailboxQuota(2, 1<<20), WithMetricsTracer(tr))
	c := newClient(t, r)
	k := ownerKey(t, r)
	mustDeposit(t, c, r, k.ID(), envelopes(2, 100, "a"))
	res, _ := c.Deposit(testCtx(t), r.h.ID(), k.ID(), envelopes(1, 100, "b"))
	wantErrs(t, res, ErrMailboxFull)
	// Usage is kept per deposit-time bucket (MaxAge/90 wide); a bucket
	// stops counting once everything in it has expired.
	r.clock.Advance(MaxAge + MaxAge/90)
	mustDeposit(t, c, r, k.ID(), envelopes(2, 100, "c"))
	if got := tr.get("expired"); got != 2 {
		t.Fatalf("expired count %d, want 2", got)
	}
}

func TestWithMaxAge(t *testing.T) {
	r := startRelay(t, WithMaxAge(time.Hour))
	c := newClient(t, r)
	k := ownerKey(t, r)
	mustDeposit(t, c, r, k.ID(), envelopes(1, 100, "short"))
	s := openSession(t, c, r, k)
	r.clock.Advance(59 * time.Minute)
	if n := len(fetchAll(t, s)); n != 1 {
		t.Fatalf("at 59m: %d items", n)
	}
	r.clock.Advance(time.Minute)
	if n := len(fetchAll(t, s)); n != 0 {
		t.Fatalf("at 1h: %d items", n)
	}
	if _, err := NewService(r.h, r.st, WithMaxAge(MaxAge+time.Second)); err == nil {
		t.Fatal("WithMaxAge above MaxAge accepted")
	}
}

// TestExpiredNeverPushed: an item that expires while queued for push is
// dropped by the writer.
func TestExpiredNeverPushed(t *testing.T) {
	clk := newClock()
	st, err := storage.Open(t.TempDir(), storage.WithClock(clk.Now))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	svc, err := newService(st, WithClock(clk.Now))
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	fs := &fakeStream{r: strings.NewReader("")}
	c := svc.newConn(fs, nil, peer.ID("a"), peer.ID("b"))
	now := clk.Now().UnixNano()
	c.sub.push([]storedItem{
		{seq: 1, deposited: now - int64(MaxAge), envelope: []byte("expired")},
		{seq: 2, deposited: now, envelope: []byte("fresh")},
	})
	if err := c.writePushes(); err != nil {
		t.Fatal(err)
	}
	if err := c.flush(); err != nil {
		t.Fatal(err)
	}
	rd := wire.NewReader(bytes.NewReader(fs.w.Bytes()))
	var m pb.Response
	if err := rd.Read(&m, maxResponseFrame); err != nil {
		t.Fatal(err)
	}
	items := m.GetPush().GetItems()
	if len(items) != 1 || items[0].GetSeq() != 2 {
		t.Fatalf("pushed %v, want only the fresh item", items)
	}
	if err := rd.Read(&m, maxResponseFrame); !errors.Is(err, io.EOF) {
		t.Fatalf("more frames: %v", err)
	}
}

// fakeStream is an in-memory stream: reads come from r, writes go to w.
type fakeStream struct {
	r  io.Reader
	mu sync.Mutex
	w  bytes.Buffer
}

func (f *fakeStream) Read(p []byte) (int, error) { return f.r.Read(p) }

func (f *fakeStream) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.w.Write(p)
}

func (f *fakeStream) SetReadDeadline(time.Time) error  { return nil }
func (f *fakeStream) SetWriteDeadline(time.Time) error { return nil }
func (f *fakeStream) Close() error                     { return nil }
func (f *fakeStream) Reset() error                     { return nil }

// countingTracer counts events by name.
type countingTracer struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *countingTracer) add(name string, v int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[string]int{}
	}
	c.n[name] += v
}

func (c *countingTracer) get(name string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[name]
}

func (c *countingTracer) Deposited(items int, _ int64) { c.add("deposited", items) }
func (c *countingTracer) DepositRejected(code Code, items int) {
	c.add("rejected_"+code.String(), items)
}
func (c *countingTracer) Fetched(items int, _ int64)                { c.add("fetched", items) }
func (c *countingTracer) Acked(items int)                           { c.add("acked", items) }
func (c *countingTracer) Expired(items int, _ int64)                { c.add("expired", items) }
func (c *countingTracer) Purged(items int)                          { c.add("purged", items) }
func (c *countingTracer) Unreadable(items int)                      { c.add("unreadable", items) }
func (c *countingTracer) Pushed(items int)                          { c.add("pushed", items) }
func (c *countingTracer) PushOverflow()                             { c.add("overflow", 1) }
func (c *countingTracer) SessionOpened()                            { c.add("sessions", 1) }
func (c *countingTracer) SessionClosed(time.Duration)               { c.add("sessions", -1) }
func (c *countingTracer) AuthFailed()                               { c.add("auth_failed", 1) }
func (c *countingTracer) Committed(ops, items int, _ time.Duration) { c.add("commits", 1) }
