package message

import (
	"context"
	"encoding/hex"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/kinmesh/kinmesh/protocols/message/pb"
)

// TestReceiptsForABacklog: a recipient back to a large backlog sends its
// delivery receipts batched, and one batch envelope can name more messages
// than one transaction of the sender applies (each receipt up to
// maxReceiptIDs of them, up to e2ee.MaxBatchItems receipts). The sender
// applies such an envelope over several transactions, each message once,
// and shows every message delivered; it used to find it too large to
// store, drop it and answer so, and the messages stayed queued for good.
func TestReceiptsForABacklog(t *testing.T) {
	const total = 800
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	_, a, b := pair(t, ctx)
	// b drops what a sends (blocked), so no receipt comes back by itself.
	b.book.mu.Lock()
	b.book.blocked[a.me()] = true
	b.book.mu.Unlock()
	var ids [][]byte
	for i := range total {
		m, err := a.svc.Send(ctx, b.me(), fmt.Sprintf("m%04d", i))
		if err != nil {
			t.Fatal(err)
		}
		id, err := hex.DecodeString(m.ID)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	a.waitFor(t, ctx, string(b.me()), "all moved", func(ms []Message) bool {
		return len(ms) == total && !slices.ContainsFunc(ms, func(m Message) bool { return m.State == StatePending })
	})
	b.book.mu.Lock()
	b.book.blocked[a.me()] = false
	b.book.mu.Unlock()

	// b's receipts for all of them, as its lane batches them: one envelope.
	var receipts [][]byte
	for len(ids) > 0 {
		n := min(len(ids), maxReceiptIDs)
		content, err := encodeContent(&Message{ID: newID()}, &pb.Content{Body: &pb.Content_Receipt{Receipt: &pb.Receipt{Kind: pb.Receipt_DELIVERED, Ids: ids[:n]}}})
		if err != nil {
			t.Fatal(err)
		}
		receipts, ids = append(receipts, content), ids[n:]
	}
	env := sealBatch(t, b, a, ratchetContents(t, b, a, receipts...)...)
	if err := a.svc.receive([][]byte{env}, nil, nil)[0]; err != nil {
		t.Fatalf("a refused the receipts: %v", err)
	}
	ms, err := a.svc.Messages(ctx, string(b.me()))
	if err != nil {
		t.Fatal(err)
	}
	states := map[State]int{}
	for _, m := range ms {
		states[m.State]++
	}
	if states[StateDelivered] != total {
		t.Fatalf("a's states %v: want all %d delivered", states, total)
	}
	idx := a.svc.jobIndex()
	idx.mu.Lock()
	left := 0
	if q := idx.byTo[b.me()]; q != nil {
		left = q.live
	}
	idx.mu.Unlock()
	if left != 0 {
		t.Fatalf("%d delivery jobs left to b, want none", left)
	}
	// Taken again (another relay's copy): nothing is applied twice.
	if err := a.svc.receive([][]byte{env}, nil, nil)[0]; err != nil {
		t.Fatalf("a refused the copy: %v", err)
	}
}
