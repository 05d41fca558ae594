package mailbox

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	badger "github.com/dgraph-io/badger/v4"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/kinmesh/kinmesh/protocols/mailbox/pb"
	"github.com/kinmesh/kinmesh/storage"
)

func TestDepositFetchAckGone(t *testing.T) {
	r := startRelay(t)
	depositor := newClient(t, r)
	owner := newClient(t, r)
	k := ownerKey(t, r)
	envs := envelopes(3, 700, "hello")
	mustDeposit(t, depositor, r, k.ID(), envs)

	s := openSession(t, owner, r, k)
	items := fetchAll(t, s)
	if len(items) != 3 {
		t.Fatalf("fetched %d items, want 3", len(items))
	}
	for i, it := range items {
		if !bytes.Equal(it.Envelope, envs[i]) {
			t.Errorf("item %d: envelope differs", i)
		}
		if i > 0 && it.Seq <= items[i-1].Seq {
			t.Errorf("seqs not increasing: %d after %d", it.Seq, items[i-1].Seq)
		}
		if d := r.clock.Now().Sub(it.Deposited); d < 0 || d > 1e9 {
			t.Errorf("item %d: deposited %v, clock %v", i, it.Deposited, r.clock.Now())
		}
	}
	seqs := []uint64{items[0].Seq, items[1].Seq, items[2].Seq}
	res, err := s.Ack(testCtx(t), seqs...)
	if err != nil {
		t.Fatalf("Ack: %v", err)
	}
	for i, e := range res {
		if e != nil {
			t.Errorf("ack %d: %v", i, e)
		}
	}
	if got := fetchAll(t, s); len(got) != 0 {
		t.Fatalf("after ack: fetched %d items, want 0", len(got))
	}
	// Acking again, and acking what never was, is reported per item.
	res, err = s.Ack(testCtx(t), seqs[0], 12345, 0)
	if err != nil {
		t.Fatalf("second Ack: %v", err)
	}
	for i, e := range res {
		if !errors.Is(e, ErrNotFound) {
			t.Errorf("second ack %d: got %v, want ErrNotFound", i, e)
		}
	}
	// Gone from the store: only the mailbox record remains.
	var keys []string
	err = r.st.Namespace(namespace).List(testCtx(t), storage.ListOptions{}, func(key string, _ []byte) error {
		keys = append(keys, key)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range keys {
		if strings.Contains(key, "/") {
			t.Errorf("item %q still in the store after ack", key)
		}
	}
	if len(keys) != 1 {
		t.Errorf("store holds %d keys (%v), want only the mailbox record", len(keys), keys)
	}
}

func TestFetchUnknownMailboxIsEmpty(t *testing.T) {
	r := startRelay(t)
	s := openSession(t, newClient(t, r), r, ownerKey(t, r))
	items, more, err := s.Fetch(testCtx(t), 0, 10)
	if err != nil || len(items) != 0 || more {
		t.Fatalf("Fetch of a never-written mailbox: got %d items, more %v, err %v; want empty", len(items), more, err)
	}
	n, err := s.Purge(testCtx(t))
	if err != nil || n != 0 {
		t.Fatalf("Purge of a never-written mailbox: got %d, %v", n, err)
	}
}

func TestFetchPages(t *testing.T) {
	r := startRelay(t)
	c := newClient(t, r)
	k := ownerKey(t, r)
	envs := envelopes(600, 100, "page")
	mustDeposit(t, c, r, k.ID(), envs)
	s := openSession(t, c, r, k)

	items, more, err := s.Fetch(testCtx(t), 0, 0)
	if err != nil || len(items) != MaxPageItems || !more {
		t.Fatalf("first page: %d items, more %v, err %v; want %d, true", len(items), more, err, MaxPageItems)
	}
	items, more, err = s.Fetch(testCtx(t), items[9].Seq, 5)
	if err != nil || len(items) != 5 || !more || !bytes.Equal(items[0].Envelope, envs[10]) {
		t.Fatalf("page after the 10th: %d items, more %v, err %v", len(items), more, err)
	}
	all := fetchAll(t, s)
	if len(all) != len(envs) {
		t.Fatalf("fetched %d, want %d", len(all), len(envs))
	}
	for i, it := range all {
		if !bytes.Equal(it.Envelope, envs[i]) {
			t.Fatalf("item %d out of order", i)
		}
	}

	// Pages also stop at MaxPageBytes.
	big := ownerKey(t, r)
	mustDeposit(t, c, r, big.ID(), envelopes(20, MaxEnvelopeSize, "big"))
	sb := openSession(t, c, r, big)
	items, more, err = sb.Fetch(testCtx(t), 0, 0)
	if want := MaxPageBytes / MaxEnvelopeSize; err != nil || len(items) != want || !more {
		t.Fatalf("page of large items: %d items, more %v, err %v; want %d, true", len(items), more, err, want)
	}
}

func TestManyEnvelopesOneDeposit(t *testing.T) {
	r := startRelay(t)
	c := newClient(t, r)
	k := ownerKey(t, r)
	// 1,500 envelopes of 2 KiB: split into 6 requests by count, and more
	// by bytes, pipelined on one stream.
	envs := envelopes(1500, 2<<10, "many")
	mustDeposit(t, c, r, k.ID(), envs)
	all := fetchAll(t, openSession(t, c, r, k))
	if len(all) != len(envs) {
		t.Fatalf("fetched %d, want %d", len(all), len(envs))
	}
	for i, it := range all {
		if !bytes.Equal(it.Envelope, envs[i]) {
			t.Fatalf("item %d out of order", i)
		}
	}
}

func TestConcurrentDepositors(t *testing.T) {
	r := startRelay(t)
	k := ownerKey(t, r)
	const clients, each = 4, 200
	var wg sync.WaitGroup
	for i := range clients {
		c := newClient(t, r)
		wg.Go(func() {
			mustDeposit(t, c, r, k.ID(), envelopes(each, 300, fmt.Sprintf("c%d", i)))
		})
	}
	wg.Wait()
	all := fetchAll(t, openSession(t, newClient(t, r), r, k))
	if len(all) != clients*each {
		t.Fatalf("fetched %d, want %d", len(all), clients*each)
	}
	seen := map[uint64]bool{}
	last := map[string]int{}
	for _, it := range all {
		if seen[it.Seq] {
			t.Fatalf("seq %d twice", it.Seq)
		}
		seen[it.Seq] = true
		var who string
		var n int
		fmt.Sscanf(strings.SplitN(string(it.Envelope), "|", 2)[0], "%2s-%06d", &who, &n)
		// Each depositor's envelopes keep their order.
		if p, ok := last[who]; ok && n <= p {
			t.Fatalf("%s: envelope %d after %d", who, n, p)
		}
		last[who] = n
	}
}

func TestPipelinedRawRequests(t *testing.T) {
	r := startRelay(t)
	c := newClient(t, r)
	k := ownerKey(t, r)
	raw := openRaw(t, c, r)
	id := rawID(k.ID())
	const n = 8
	for i := range n {
		raw.send(depositReq(uint64(i+1), id, envelopes(3, 100, fmt.Sprintf("p%d", i))...))
	}
	got := map[uint64]bool{}
	for range n {
		m := raw.recv()
		if d := m.GetDeposit(); d == nil || len(d.GetCodes()) != 3 {
			t.Fatalf("got %v, want a deposit result for 3", m)
		}
		got[m.GetId()] = true
	}
	if len(got) != n {
		t.Fatalf("answers for %d requests, want %d", len(got), n)
	}
	if all := fetchAll(t, openSession(t, c, r, k)); len(all) != 3*n {
		t.Fatalf("fetched %d, want %d", len(all), 3*n)
	}
}

// TestPaddedDeposit: a deposit frame padded with an unknown field to
// most of a megabyte around two small envelopes, sent over a real stream,
// is stored, pushed to the owner and fetched like any other (the relay
// reads such a frame in place, viewDeposit).
func TestPaddedDeposit(t *testing.T) {
	r := startRelay(t)
	owner, depositor := newClient(t, r), newClient(t, r)
	k := ownerKey(t, r)
	s := openSession(t, owner, r, k)
	envs := [][]byte{[]byte("tiny one"), []byte("tiny two")}
	frame, err := proto.Marshal(depositReq(1, rawID(k.ID()), envs...))
	if err != nil {
		t.Fatal(err)
	}
	frame = protowire.AppendBytes(protowire.AppendTag(frame, 99, protowire.BytesType), make([]byte, 900<<10))
	raw := openRaw(t, depositor, r)
	raw.sendBytes(append(protowire.AppendVarint(nil, uint64(len(frame))), frame...))
	if m := raw.recv(); len(m.GetDeposit().GetCodes()) != 2 || m.GetDeposit().GetCodes()[1] != pb.Code_CODE_OK {
		t.Fatalf("got %v, want both deposited", m)
	}
	var pushed []Item
	for len(pushed) < 2 {
		pushed = append(pushed, nextPush(t, s).Items...)
	}
	all := fetchAll(t, s)
	for i, want := range envs {
		if !bytes.Equal(pushed[i].Envelope, want) || !bytes.Equal(all[i].Envelope, want) {
			t.Fatalf("envelope %d: pushed %q, fetched %q; want %q", i, pushed[i].Envelope, all[i].Envelope, want)
		}
	}
}

func TestPurge(t *testing.T) {
	r := startRelay(t)
	c := newClient(t, r)
	k, other := ownerKey(t, r), ownerKey(t, r)
	mustDeposit(t, c, r, k.ID(), envelopes(1200, 64, "purge"))
	mustDeposit(t, c, r, other.ID(), envelopes(2, 64, "keep"))
	// In the store: the items and record ("d/"), and the index entries
	// of the items' group and of the record's ("y/", by when they are due,
	// and "g/", the groups' due records): no index entry per item.
	before := keysNaming(t, r, k.ID())
	if before["d/"] != 1201 || before["x/"] != 0 || before["y/"] != 2 || before["g/"] != 2 {
		t.Fatalf("keys naming the mailbox before the purge: %v", before)
	}
	s := openSession(t, c, r, k)
	n, err := s.Purge(testCtx(t))
	if err != nil || n != 1200 {
		t.Fatalf("Purge: %d, %v; want 1200", n, err)
	}
	if after := keysNaming(t, r, k.ID()); len(after) != 0 {
		t.Fatalf("keys naming the mailbox after the purge: %v", after)
	}
	s = openSession(t, c, r, k) // the relay restarted
	if got := fetchAll(t, s); len(got) != 0 {
		t.Fatalf("after purge: %d items", len(got))
	}
	if n := countItems(t, r, k.ID()); n != 0 {
		t.Fatalf("store holds %d items after purge", n)
	}
	// The mailbox starts anew.
	mustDeposit(t, c, r, k.ID(), envelopes(1, 64, "again"))
	if got := fetchAll(t, s); len(got) != 1 {
		t.Fatalf("after purge and deposit: %d items", len(got))
	}
	if got := fetchAll(t, openSession(t, c, r, other)); len(got) != 2 {
		t.Fatalf("other mailbox: %d items, want 2", len(got))
	}
}

// keysNaming counts the store's keys that hold mbox's storage prefix, by
// their first two bytes (the store's key families), reading Badger itself
// with the relay stopped.
func keysNaming(t *testing.T, r *testRelay, mbox MailboxID) map[string]int {
	t.Helper()
	raw, _ := mailboxRaw(string(mbox))
	prefix := []byte(r.svc.prefix(raw))
	n := make(map[string]int)
	r.restart(t, func(db *badger.DB) {
		err := db.View(func(txn *badger.Txn) error {
			it := txn.NewIterator(badger.IteratorOptions{})
			defer it.Close()
			for it.Rewind(); it.Valid(); it.Next() {
				if k := it.Item().Key(); bytes.Contains(k, prefix) {
					n[string(k[:2])]++
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})
	return n
}

func TestPush(t *testing.T) {
	r := startRelay(t)
	owner, depositor := newClient(t, r), newClient(t, r)
	k := ownerKey(t, r)
	s := openSession(t, owner, r, k)
	envs := envelopes(3, 500, "push")
	mustDeposit(t, depositor, r, k.ID(), envs[:1])
	mustDeposit(t, depositor, r, k.ID(), envs[1:])
	var got []Item
	for len(got) < 3 {
		p := nextPush(t, s)
		if p.Missed {
			t.Fatalf("unexpected missed notice")
		}
		got = append(got, p.Items...)
	}
	for i, it := range got {
		if !bytes.Equal(it.Envelope, envs[i]) {
			t.Fatalf("push %d: wrong envelope", i)
		}
	}
	// Pushed items are still there until acked.
	if all := fetchAll(t, s); len(all) != 3 || all[2].Seq != got[2].Seq {
		t.Fatalf("fetch after push: %v", all)
	}
}

func TestPushOverflow(t *testing.T) {
	r := startRelay(t, WithPushQueue(2, MaxEnvelopeSize))
	c := newClient(t, r)
	k := ownerKey(t, r)
	s := openSession(t, c, r, k)
	envs := envelopes(10, 100, "flood")
	mustDeposit(t, c, r, k.ID(), envs) // one request: one commit, 10 pushes at once
	p := nextPush(t, s)
	if p.Missed || len(p.Items) != 2 {
		t.Fatalf("first push: %+v, want 2 items", p)
	}
	m := nextPush(t, s)
	if !m.Missed || m.FetchAfter != p.Items[1].Seq {
		t.Fatalf("second push: %+v, want a missed notice after %d", m, p.Items[1].Seq)
	}
	rest := fetchAll2(t, s, m.FetchAfter)
	if len(rest) != 8 || !bytes.Equal(rest[0].Envelope, envs[2]) {
		t.Fatalf("fetch after the notice: %d items, want 8", len(rest))
	}
}

func TestClientPushBufferOverflow(t *testing.T) {
	r := startRelay(t)
	c := newClient(t, r, WithPushBuffer(1))
	k := ownerKey(t, r)
	s := openSession(t, c, r, k)
	envs := envelopes(5, 100, "slow")
	for i := range envs {
		mustDeposit(t, c, r, k.ID(), envs[i:i+1]) // five separate pushes, nobody reading
	}
	var got []Item
	for {
		p := nextPush(t, s)
		if p.Missed {
			got = append(got, fetchAll2(t, s, p.FetchAfter)...)
			break
		}
		got = append(got, p.Items...)
	}
	// Nothing lost: pushes up to the notice plus the fetch cover all five.
	seen := map[string]bool{}
	for _, it := range got {
		seen[string(it.Envelope)] = true
	}
	for i, e := range envs {
		if !seen[string(e)] {
			t.Fatalf("envelope %d neither pushed nor fetched", i)
		}
	}
}

func fetchAll2(t *testing.T, s *Session, after uint64) []Item {
	t.Helper()
	var all []Item
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

func TestSessionEndsWithService(t *testing.T) {
	r := startRelay(t)
	s := openSession(t, newClient(t, r), r, newKey(t))
	if r.svc.Sessions() != 1 {
		t.Fatalf("Sessions() = %d, want 1", r.svc.Sessions())
	}
	if err := r.svc.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.svc.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	select {
	case <-s.Done():
	case <-testCtx(t).Done():
		t.Fatal("session did not end when the service closed")
	}
	if !errors.Is(s.Err(), ErrSessionClosed) {
		t.Fatalf("Err() = %v, want ErrSessionClosed", s.Err())
	}
	if _, _, err := s.Fetch(context.Background(), 0, 0); !errors.Is(err, ErrSessionClosed) {
		t.Fatalf("Fetch on an ended session: %v", err)
	}
	if _, ok := <-s.Pushed(); ok {
		t.Fatal("push channel still open")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// A closed service refuses new streams.
	if _, err := newClient(t, r).Deposit(testCtx(t), r.h.ID(), newKey(t).ID(), envelopes(1, 10, "x")); err == nil {
		t.Fatal("deposit on a closed service succeeded")
	}
}

// TestGroupTooLargeSplits: when a group commit is too large for one store
// transaction, the committer commits it in halves; concurrent depositors
// see every envelope stored once, in order.
func TestGroupTooLargeSplits(t *testing.T) {
	// The device profile's transactions hold about 300 KB; groups are
	// allowed to grow far beyond.
	r := startRelayWith(t, []storage.Option{storage.WithProfile(storage.ProfileDevice)}, withGroupCost(64<<20))
	k := ownerKey(t, r)
	const clients, each = 6, 1024
	var wg sync.WaitGroup
	for i := range clients {
		c := newClient(t, r, WithWindow(8))
		wg.Go(func() {
			mustDeposit(t, c, r, k.ID(), envelopes(each, 500, fmt.Sprintf("c%d", i)))
		})
	}
	wg.Wait()
	all := fetchAll(t, openSession(t, newClient(t, r), r, k))
	if len(all) != clients*each {
		t.Fatalf("fetched %d, want %d", len(all), clients*each)
	}
	last := map[string]int{}
	for _, it := range all {
		var who string
		var n int
		fmt.Sscanf(strings.SplitN(string(it.Envelope), "|", 2)[0], "%2s-%06d", &who, &n)
		if p, ok := last[who]; ok && n != p+1 {
			t.Fatalf("%s: envelope %d after %d", who, n, p)
		}
		last[who] = n
	}
}

// TestUnreadableItem: an item whose stored value no longer opens (damaged
// on disk) blocks nothing. A fetch returns the items around it and has it
// deleted; a purge deletes it with the rest.
func TestUnreadableItem(t *testing.T) {
	tr := &countingTracer{}
	r := startRelay(t, WithMetricsTracer(tr))
	c := newClient(t, r)
	fetched, purged := ownerKey(t, r), ownerKey(t, r)
	envs := envelopes(3, 100, "unreadable")
	var middle []uint64
	for _, k := range []Key{fetched, purged} {
		mustDeposit(t, c, r, k.ID(), envs)
		s := openSession(t, c, r, k)
		middle = append(middle, fetchAll(t, s)[1].Seq)
		_ = s.Close()
	}
	r.restart(t, func(db *badger.DB) {
		r.corruptItem(t, db, fetched.ID(), middle[0])
		r.corruptItem(t, db, purged.ID(), middle[1])
	})

	s := openSession(t, c, r, fetched)
	items, more, err := s.Fetch(testCtx(t), 0, 0)
	if err != nil {
		t.Fatalf("Fetch past an unreadable item: %v", err)
	}
	if len(items) != 2 || more || !bytes.Equal(items[0].Envelope, envs[0]) || !bytes.Equal(items[1].Envelope, envs[2]) {
		t.Fatalf("Fetch: got %d items (more %v), want the first and the third", len(items), more)
	}
	waitFor(t, "the unreadable item deleted", func() bool { return countItems(t, r, fetched.ID()) == 2 })
	if got := tr.get("unreadable"); got != 1 {
		t.Fatalf("unreadable count %d, want 1", got)
	}

	n, err := openSession(t, c, r, purged).Purge(testCtx(t))
	if err != nil || n != 3 {
		t.Fatalf("Purge with an unreadable item: %d, %v; want 3", n, err)
	}
	if got := countItems(t, r, purged.ID()); got != 0 {
		t.Fatalf("store holds %d items after purge", got)
	}
}

// TestDeliveredLeavesNoTimes: once every item of a mailbox is acked, the
// store keeps no index entry of its deposits (which say when they came),
// only the mailbox's record.
func TestDeliveredLeavesNoTimes(t *testing.T) {
	r := startRelay(t)
	c := newClient(t, r)
	k := ownerKey(t, r)
	mustDeposit(t, c, r, k.ID(), envelopes(3, 64, "a"))
	r.clock.Advance(time.Minute)
	mustDeposit(t, c, r, k.ID(), envelopes(2, 64, "b"))
	items := fetchAll(t, openSession(t, c, r, k))
	var seqs []uint64
	for _, it := range items {
		seqs = append(seqs, it.Seq)
	}
	ack := func(seqs ...uint64) {
		t.Helper()
		res, err := openSession(t, c, r, k).Ack(testCtx(t), seqs...)
		if err != nil {
			t.Fatal(err)
		}
		for i, err := range res {
			if err != nil {
				t.Fatalf("ack of item %d: %v", i, err)
			}
		}
	}
	// With an item left, the items' index entry and the record's stay:
	// the sweep finds that item through them.
	ack(seqs[:4]...)
	if got := keysNaming(t, r, k.ID()); got["d/"] != 2 || got["y/"] != 2 || got["g/"] != 2 || len(got) != 3 {
		t.Fatalf("keys naming the mailbox with one item left: %v", got)
	}
	ack(seqs[4])
	if got := keysNaming(t, r, k.ID()); got["d/"] != 1 || got["y/"] != 1 || got["g/"] != 1 || len(got) != 3 {
		t.Fatalf("keys naming the mailbox once all were delivered: %v, want only its record and the record's index entry", got)
	}
}

// TestPushedEnvelopesOwnTheirBytes: a deposit's envelopes alias its
// request frame, which a depositor may pad with unknown fields to many
// times their size; what an owner session's push queue keeps are copies,
// so a queue holding an item of a few bytes doesn't keep a frame of a
// megabyte alive.
func TestPushedEnvelopesOwnTheirBytes(t *testing.T) {
	r := startRelay(t)
	var mbox [idRawSize]byte
	mbox[0] = 1
	sub := newSubscription(256, 1<<20)
	r.svc.subscribe(mbox, sub)
	defer r.svc.unsubscribe(mbox, sub)
	frame := make([]byte, maxRequestFrame)
	r.svc.notify(mbox, []storedItem{{seq: 1, envelope: frame[100:108]}, {seq: 2, envelope: frame[200:216]}})
	items, _ := sub.take()
	if len(items) != 2 {
		t.Fatalf("%d items queued, want 2", len(items))
	}
	for _, it := range items {
		start := unsafe.Pointer(unsafe.SliceData(it.envelope))
		if uintptr(start) >= uintptr(unsafe.Pointer(&frame[0])) && uintptr(start) < uintptr(unsafe.Pointer(&frame[len(frame)-1])) {
			t.Fatalf("queued item %d aliases the frame", it.seq)
		}
		if cap(it.envelope) > 32 {
			t.Fatalf("queued item %d keeps %d bytes for %d", it.seq, cap(it.envelope), len(it.envelope))
		}
	}
}
