package mailbox

import (
	badger "github.com/dgraph-io/badger/v4"

	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/kinmesh/kinmesh/protocols/mailbox/pb"
	"github.com/kinmesh/kinmesh/storage"
)

// countItems returns how many items the relay's store holds for mbox,
// readable or not, whatever the service thinks.
func countItems(t testing.TB, r *testRelay, mbox MailboxID) int {
	t.Helper()
	raw, _ := mailboxRaw(string(mbox))
	n := 0
	count := func(string) error {
		n++
		return nil
	}
	opts := storage.ListOptions{Prefix: r.svc.prefix(raw) + "/", Corrupt: count}
	err := r.st.Namespace(namespace).List(testCtx(t), opts, func(key string, _ []byte) error {
		return count(key)
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func wantErrs(t *testing.T, res []DepositResult, want ...error) {
	t.Helper()
	if len(res) != len(want) {
		t.Fatalf("%d results, want %d", len(res), len(want))
	}
	for i := range res {
		if want[i] == nil && res[i].Err != nil || want[i] != nil && !errors.Is(res[i].Err, want[i]) {
			t.Errorf("item %d: got %v, want %v", i, res[i].Err, want[i])
		}
	}
}

func TestMailboxFull(t *testing.T) {
	r := startRelay(t, WithMailboxQuota(3, 2*MaxEnvelopeSize+100))
	c := newClient(t, r)
	k, other := ownerKey(t, r), ownerKey(t, r)

	res, err := c.Deposit(testCtx(t), r.h.ID(), k.ID(), envelopes(5, 100, "full"))
	if err != nil {
		t.Fatal(err)
	}
	wantErrs(t, res, nil, nil, nil, ErrMailboxFull, ErrMailboxFull)
	if n := countItems(t, r, k.ID()); n != 3 {
		t.Fatalf("store holds %d items, want 3", n)
	}
	// Other mailboxes are unaffected.
	mustDeposit(t, c, r, other.ID(), envelopes(3, 100, "other"))

	// Acking frees room.
	s := openSession(t, c, r, k)
	items := fetchAll(t, s)
	if _, err := s.Ack(testCtx(t), items[0].Seq); err != nil {
		t.Fatal(err)
	}
	res, _ = c.Deposit(testCtx(t), r.h.ID(), k.ID(), envelopes(2, 100, "more"))
	wantErrs(t, res, nil, ErrMailboxFull)

	// The byte quota: two large envelopes fit, the third does not.
	big := ownerKey(t, r)
	res, _ = c.Deposit(testCtx(t), r.h.ID(), big.ID(), envelopes(3, MaxEnvelopeSize, "big"))
	wantErrs(t, res, nil, nil, ErrMailboxFull)

	// The quota survives a restart of the service (it is on disk).
	if err := r.svc.Close(); err != nil {
		t.Fatal(err)
	}
	svc, err := NewService(r.h, r.st, WithClock(r.clock.Now), WithMailboxQuota(3, 2*MaxEnvelopeSize+100))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Close() })
	res, _ = c.Deposit(testCtx(t), r.h.ID(), k.ID(), envelopes(1, 100, "after restart"))
	wantErrs(t, res, ErrMailboxFull)
}

func TestDepositorRateLimit(t *testing.T) {
	r := startRelay(t, WithDepositorRate(5, 1<<20))
	c, c2 := newClient(t, r), newClient(t, r)
	k := ownerKey(t, r)
	res, err := c.Deposit(testCtx(t), r.h.ID(), k.ID(), envelopes(8, 100, "rate"))
	if err != nil {
		t.Fatal(err)
	}
	wantErrs(t, res, nil, nil, nil, nil, nil, ErrRateLimited, ErrRateLimited, ErrRateLimited)
	if ra := res[5].RetryAfter; ra <= 0 || ra > 13*time.Second {
		t.Fatalf("RetryAfter = %v, want about 12s (one token at 5/min)", ra)
	}
	if n := countItems(t, r, k.ID()); n != 5 {
		t.Fatalf("store holds %d items, want 5", n)
	}
	// Another depositor is unaffected.
	mustDeposit(t, c2, r, k.ID(), envelopes(5, 100, "other"))
	// Tokens come back with time.
	r.clock.Advance(12 * time.Second)
	res, _ = c.Deposit(testCtx(t), r.h.ID(), k.ID(), envelopes(2, 100, "later"))
	wantErrs(t, res, nil, ErrRateLimited)
	r.clock.Advance(time.Minute)
	mustDeposit(t, c, r, k.ID(), envelopes(5, 100, "much later"))

	// The byte rate.
	r2 := startRelay(t, WithDepositorRate(1000, 2*MaxEnvelopeSize))
	c3 := newClient(t, r2)
	register(t, c3, r2, k)
	res, _ = c3.Deposit(testCtx(t), r2.h.ID(), k.ID(), envelopes(3, MaxEnvelopeSize, "bytes"))
	wantErrs(t, res, nil, nil, ErrRateLimited)
}

// TestSourceDepositRate: the depositors at one address (here every
// client: all on loopback) share a byte budget, whatever their peer ids,
// which a restart of the relay doesn't refill; what a depositor's own
// rate refuses is not charged to its address.
func TestSourceDepositRate(t *testing.T) {
	const size, perSecond = 20_000, 1000
	r := startRelay(t, WithSourceDepositRate(perSecond*3600, MaxEnvelopeSize), WithDepositorRate(2, 1<<20))
	k := ownerKey(t, r)
	c1, c2 := newClient(t, r), newClient(t, r)
	// The address's budget (69,632 bytes) would take 3; c1's own rate
	// takes 2, and the third goes back to the address.
	res, err := c1.Deposit(testCtx(t), r.h.ID(), k.ID(), envelopes(4, size, "first peer"))
	if err != nil {
		t.Fatal(err)
	}
	wantErrs(t, res, nil, nil, ErrRateLimited, ErrRateLimited)
	// A fresh peer id at the same address gets what is left: 29,632 bytes.
	res, err = c2.Deposit(testCtx(t), r.h.ID(), k.ID(), envelopes(2, size, "second peer"))
	if err != nil {
		t.Fatal(err)
	}
	wantErrs(t, res, nil, ErrRateLimited)
	left := MaxEnvelopeSize - 3*size
	if ra, want := res[1].RetryAfter, time.Duration(size-left)*time.Second/perSecond; ra < want-time.Second || ra > want+time.Second {
		t.Fatalf("RetryAfter = %v, want about %v", ra, want)
	}
	if n := countItems(t, r, k.ID()); n != 3 {
		t.Fatalf("store holds %d items, want 3", n)
	}
	r.restart(t, func(*badger.DB) {})
	res, err = c2.Deposit(testCtx(t), r.h.ID(), k.ID(), envelopes(1, size, "after a restart"))
	if err != nil {
		t.Fatal(err)
	}
	wantErrs(t, res, ErrRateLimited)
	r.clock.Advance(11 * time.Second)
	mustDeposit(t, c2, r, k.ID(), envelopes(1, size, "later"))
}

// TestRelayFull: on a relay whose disk is below the operator's floor
// (storage.WithMinFree over the file system's real free space), every
// deposit is refused with ErrRelayFull and nothing is stored, while the
// owner still fetches, acks (which frees space) and purges.
func TestRelayFull(t *testing.T) {
	r := startRelay(t)
	c := newClient(t, r)
	k := ownerKey(t, r)
	mustDeposit(t, c, r, k.ID(), envelopes(2, 100, "before"))
	free, err := r.st.FreeSpace()
	if err != nil {
		t.Fatal(err)
	}
	if err := r.svc.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.st.Close(); err != nil {
		t.Fatal(err)
	}
	r.storeOpts = append(r.storeOpts, storage.WithMinFree(free+1<<40))
	r.start(t)

	res, err := c.Deposit(testCtx(t), r.h.ID(), k.ID(), envelopes(3, 100, "while full"))
	if err != nil {
		t.Fatal(err)
	}
	wantErrs(t, res, ErrRelayFull, ErrRelayFull, ErrRelayFull)
	if n := countItems(t, r, k.ID()); n != 2 {
		t.Fatalf("store holds %d items, want the 2 from before", n)
	}
	s := openSession(t, c, r, k)
	items := fetchAll(t, s)
	if len(items) != 2 {
		t.Fatalf("fetched %d items, want 2", len(items))
	}
	if _, err := s.Ack(testCtx(t), items[0].Seq); err != nil {
		t.Fatalf("Ack while the disk is low: %v", err)
	}
	if n := countItems(t, r, k.ID()); n != 1 {
		t.Fatalf("store holds %d items after the ack, want 1", n)
	}
	if _, err := s.Purge(testCtx(t)); err != nil {
		t.Fatalf("Purge while the disk is low: %v", err)
	}
	if n := countItems(t, r, k.ID()); n != 0 {
		t.Fatalf("store holds %d items after the purge, want 0", n)
	}
}

// TestMaxDepositors: a table full of busy depositors (made-up peer ids
// cost nothing) still admits a new one, in place of the depositor used
// least recently, and stays bounded; idle ones are swept after a minute.
func TestMaxDepositors(t *testing.T) {
	r := startRelay(t, WithMaxDepositors(2))
	k := ownerKey(t, r)
	for i := range 2 {
		mustDeposit(t, newClient(t, r), r, k.ID(), envelopes(1, 10, fmt.Sprint("filler ", i)))
	}
	mustDeposit(t, newClient(t, r), r, k.ID(), envelopes(1, 10, "newcomer"))
	if n := r.svc.lim.len(); n != 2 {
		t.Fatalf("%d depositors tracked, want the cap 2", n)
	}
	r.clock.Advance(time.Minute)
	r.svc.lim.sweep()
	if n := r.svc.lim.len(); n != 0 {
		t.Fatalf("%d depositors tracked after a minute idle, want 0", n)
	}
}

func TestTooLargeAndMalformed(t *testing.T) {
	r := startRelay(t)
	c := newClient(t, r)
	k := ownerKey(t, r)
	id := rawID(k.ID())

	// Client side: unsendable envelopes are reported, the rest stored.
	envs := [][]byte{[]byte("ok-1"), make([]byte, MaxEnvelopeSize+1), nil, []byte("ok-2")}
	res, err := c.Deposit(testCtx(t), r.h.ID(), k.ID(), envs)
	if err != nil {
		t.Fatal(err)
	}
	wantErrs(t, res, nil, ErrEnvelopeTooLarge, ErrMalformed, nil)
	if _, err := c.Deposit(testCtx(t), r.h.ID(), "not-a-mailbox", envs); !errors.Is(err, ErrBadMailboxID) {
		t.Fatalf("bad mailbox id: %v", err)
	}

	s := openRaw(t, c, r)
	// Relay side, per item: the large envelope is refused, the others stored.
	s.send(depositReq(1, id, []byte("ok-3"), make([]byte, MaxEnvelopeSize+1), []byte("ok-4")))
	m := s.recv()
	if codes := m.GetDeposit().GetCodes(); len(codes) != 3 || codes[0] != pb.Code_CODE_OK || codes[1] != pb.Code_CODE_TOO_LARGE || codes[2] != pb.Code_CODE_OK {
		t.Fatalf("got %v, want ok, too large, ok", m)
	}
	// Whole requests.
	tooMany := make([][]byte, MaxBatchItems+1)
	for i := range tooMany {
		tooMany[i] = []byte("x")
	}
	// Over MaxBatchBytes, but within the frame cap.
	tooBig := envelopes(MaxBatchBytes/(64<<10), 64<<10, "big")
	tooBig = append(tooBig, []byte("one more"))
	tests := []struct {
		name string
		req  *pb.Request
		want pb.Code
	}{
		{"too many envelopes", depositReq(2, id, tooMany...), pb.Code_CODE_BATCH_TOO_LARGE},
		{"too many bytes", depositReq(3, id, tooBig...), pb.Code_CODE_BATCH_TOO_LARGE},
		{"short mailbox id", depositReq(4, id[:31], []byte("x")), pb.Code_CODE_MALFORMED},
		{"no envelopes", depositReq(5, id), pb.Code_CODE_MALFORMED},
		{"empty envelope", depositReq(6, id, []byte("x"), nil), pb.Code_CODE_MALFORMED},
		{"no body", &pb.Request{Id: 7}, pb.Code_CODE_MALFORMED},
		{"request id 0", depositReq(0, id, []byte("x")), pb.Code_CODE_MALFORMED},
		{"short auth key", authReq(8, make([]byte, 31), make([]byte, 64)), pb.Code_CODE_MALFORMED},
		{"too many acks", &pb.Request{Id: 9, Body: &pb.Request_Ack{Ack: &pb.Ack{Seqs: make([]uint64, MaxAckSeqs+1)}}}, pb.Code_CODE_BATCH_TOO_LARGE},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s.send(tt.req)
			m := s.recv()
			if m.GetId() != tt.req.GetId() || s.errCode(m) != tt.want {
				t.Fatalf("got %v, want error %v for request %d", m, tt.want, tt.req.GetId())
			}
		})
	}
	// A frame that is no protobuf: answered, and the stream goes on.
	s.sendBytes([]byte{3, 0xff, 0xff, 0xff})
	if got := s.errCode(s.recv()); got != pb.Code_CODE_MALFORMED {
		t.Fatalf("garbage frame: got %v, want MALFORMED", got)
	}
	s.send(&pb.Request{Id: 10, Body: &pb.Request_Ping{Ping: &pb.Ping{}}})
	if m := s.recv(); m.GetPong() == nil || m.GetId() != 10 {
		t.Fatalf("ping after garbage: %v", m)
	}
	// An oversized frame: refused before reading it, and the stream ends.
	s.sendBytes(binary.AppendUvarint(nil, maxRequestFrame+1))
	if m := s.recv(); s.errCode(m) != pb.Code_CODE_BATCH_TOO_LARGE || m.GetId() != 0 {
		t.Fatalf("oversized frame: got %v", m)
	}
	if _, err := s.rd.ReadBytes(maxResponseFrame); !errors.Is(err, io.EOF) {
		t.Fatalf("after an oversized frame: %v, want EOF", err)
	}

	// Only the valid envelopes were stored.
	all := fetchAll(t, openSession(t, c, r, k))
	var got []string
	for _, it := range all {
		got = append(got, string(it.Envelope))
	}
	want := []string{"ok-1", "ok-2", "ok-3", "ok-4"}
	if len(got) != len(want) {
		t.Fatalf("stored %q, want %q", got, want)
	}
	for i := range want {
		if !bytes.Equal([]byte(got[i]), []byte(want[i])) {
			t.Fatalf("stored %q, want %q", got, want)
		}
	}
}

// TestPurgeRateLimit: one peer gets a few purges a minute, then
// RATE_LIMITED with a retry time, until its budget refills; another peer
// is unaffected. A purge of a mailbox that holds nothing writes nothing.
func TestPurgeRateLimit(t *testing.T) {
	tr := &countingTracer{}
	r := startRelay(t, WithPurgeRate(2), WithMetricsTracer(tr))
	c := newClient(t, r)
	k := ownerKey(t, r)
	s := openSession(t, c, r, k)
	base := tr.get("commits") // the registration's, and the session's check of it
	mustDeposit(t, c, r, k.ID(), envelopes(2, 100, "purge"))
	waitFor(t, "the deposit's commit counted", func() bool { return tr.get("commits") == base+1 })

	if n, err := s.Purge(testCtx(t)); err != nil || n != 2 {
		t.Fatalf("first purge: %d, %v; want 2", n, err)
	}
	if got := tr.get("commits") - base; got != 2 {
		t.Fatalf("%d commits after a purge of 2 items, want 2", got)
	}
	if n, err := s.Purge(testCtx(t)); err != nil || n != 0 {
		t.Fatalf("second purge: %d, %v; want 0", n, err)
	}
	if got := tr.get("commits") - base; got != 2 {
		t.Fatalf("%d commits after a purge of nothing, want still 2", got)
	}

	// The budget is per peer: a raw session of the same host is refused.
	raw := openRawSession(t, c, r, k)
	raw.send(&pb.Request{Id: 3, Body: &pb.Request_Purge{Purge: &pb.Purge{}}})
	m := raw.recv()
	if raw.errCode(m) != pb.Code_CODE_RATE_LIMITED || m.GetId() != 3 {
		t.Fatalf("third purge: got %v, want RATE_LIMITED", m)
	}
	if ra := m.GetError().GetRetryAfterMs(); ra < 29_000 || ra > 30_000 {
		t.Fatalf("retry after %d ms, want about 30,000 (one purge at 2/min)", ra)
	}
	if _, err := s.Purge(testCtx(t)); !errors.Is(err, ErrRateLimited) {
		t.Fatalf("purge over the budget: got %v, want ErrRateLimited", err)
	}
	if n, err := openSession(t, newClient(t, r), r, k).Purge(testCtx(t)); err != nil || n != 0 {
		t.Fatalf("purge from another peer: %d, %v", n, err)
	}
	r.clock.Advance(30 * time.Second)
	if _, err := s.Purge(testCtx(t)); err != nil {
		t.Fatalf("purge once the budget refilled: %v", err)
	}
}

// storedUsage returns the item count of mbox's record in the store.
func storedUsage(t testing.TB, r *testRelay, mbox MailboxID) int {
	t.Helper()
	raw, _ := mailboxRaw(string(mbox))
	b, err := r.st.Namespace(namespace).Get(testCtx(t), metaKey(r.svc.prefix(raw)))
	if err != nil {
		t.Fatalf("mailbox record: %v", err)
	}
	m, err := decodeMeta(b)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := m.usage()
	return n
}

// wantAcks acks seqs on s and checks each result.
func wantAcks(t testing.TB, s *Session, want error, seqs ...uint64) {
	t.Helper()
	res, err := s.Ack(testCtx(t), seqs...)
	if err != nil {
		t.Fatalf("Ack: %v", err)
	}
	for i, e := range res {
		if want == nil && e != nil || want != nil && !errors.Is(e, want) {
			t.Fatalf("ack of %d: got %v, want %v", seqs[i], e, want)
		}
	}
}

func seqsOf(items []Item) []uint64 {
	out := make([]uint64, len(items))
	for i, it := range items {
		out[i] = it.Seq
	}
	return out
}

// TestAckFromTwoSessions: items delivered on two sessions of one mailbox
// and acked on both are counted off once. The second ack finds nothing,
// the usage stays what the store holds, and the item quota still holds.
func TestAckFromTwoSessions(t *testing.T) {
	r := startRelay(t, WithMailboxQuota(4, 1<<20))
	c := newClient(t, r)
	k := ownerKey(t, r)
	a, b := openSession(t, c, r, k), openSession(t, newClient(t, r), r, k)
	mustDeposit(t, c, r, k.ID(), envelopes(2, 100, "first"))
	seqs := seqsOf(fetchAll(t, a))
	if got := fetchAll(t, b); len(got) != 2 {
		t.Fatalf("second session fetched %d items, want 2", len(got))
	}
	wantAcks(t, a, nil, seqs...)
	mustDeposit(t, c, r, k.ID(), envelopes(2, 100, "second"))
	wantAcks(t, b, ErrNotFound, seqs...)
	if used, held := storedUsage(t, r, k.ID()), countItems(t, r, k.ID()); used != 2 || held != 2 {
		t.Fatalf("usage %d with %d items stored, want 2 and 2", used, held)
	}
	res, err := c.Deposit(testCtx(t), r.h.ID(), k.ID(), envelopes(3, 100, "third"))
	if err != nil {
		t.Fatal(err)
	}
	wantErrs(t, res, nil, nil, ErrMailboxFull)
	if n := countItems(t, r, k.ID()); n != 4 {
		t.Fatalf("store holds %d items, want the quota of 4", n)
	}
}

// TestAckAfterPurge: a purge makes the mailbox's sessions forget what
// they delivered. Acking such an item after the purge and new deposits
// finds nothing and counts nothing off.
func TestAckAfterPurge(t *testing.T) {
	r := startRelay(t, WithMailboxQuota(3, 1<<20))
	c := newClient(t, r)
	k := ownerKey(t, r)
	s := openSession(t, c, r, k)
	mustDeposit(t, c, r, k.ID(), envelopes(2, 100, "before"))
	seqs := seqsOf(fetchAll(t, s))
	if n, err := openSession(t, newClient(t, r), r, k).Purge(testCtx(t)); err != nil || n != 2 {
		t.Fatalf("Purge: %d, %v; want 2", n, err)
	}
	// The purge forgot the mailbox: nothing is taken for it until its
	// owner authenticates again.
	res, err := c.Deposit(testCtx(t), r.h.ID(), k.ID(), envelopes(1, 100, "forgotten"))
	if err != nil {
		t.Fatal(err)
	}
	wantErrs(t, res, ErrUnknownMailbox)
	// The new record's seqs start at the clock's microsecond: let it move
	// on, so they don't repeat the purged ones.
	r.clock.Advance(time.Millisecond)
	register(t, c, r, k)
	mustDeposit(t, c, r, k.ID(), envelopes(2, 100, "after"))
	wantAcks(t, s, ErrNotFound, seqs...)
	if used, held := storedUsage(t, r, k.ID()), countItems(t, r, k.ID()); used != 2 || held != 2 {
		t.Fatalf("usage %d with %d items stored, want 2 and 2", used, held)
	}
	res, err = c.Deposit(testCtx(t), r.h.ID(), k.ID(), envelopes(2, 100, "more"))
	if err != nil {
		t.Fatal(err)
	}
	wantErrs(t, res, nil, ErrMailboxFull)
}
