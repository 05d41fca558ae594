package message

import (
	"context"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kinmesh/kinmesh/protocols/mailbox"
)

// TestUnregisteredMailboxWaits: a relay refuses mail for a mailbox whose
// owner has not authenticated there (here the owner purged it and stayed
// away). The sender's message stays pending, not queued, and is
// deposited once the owner has authenticated again.
func TestUnregisteredMailboxWaits(t *testing.T) {
	reg := prometheus.NewRegistry()
	r := newRelayWith(t, mailbox.WithMetricsTracer(mailbox.NewMetricsTracer(reg)))
	a, b := newDevice(t, "a", r), newDevice(t, "b", r)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	meet(t, ctx, a, b)
	if err := b.svc.Close(); err != nil {
		t.Fatal(err)
	}
	a.h.Network().ClosePeer(b.h.ID())
	owner := newHost(t)
	owner.Peerstore().AddAddrs(r.h.ID(), r.h.Addrs(), peerstore.PermanentAddrTTL)
	mc, err := mailbox.NewClient(owner)
	if err != nil {
		t.Fatal(err)
	}
	s, err := mc.Open(ctx, r.h.ID(), b.auth)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Purge(ctx); err != nil {
		t.Fatal(err)
	}
	_ = s.Close()

	m, err := a.svc.Send(ctx, b.me(), "wait for me")
	if err != nil {
		t.Fatal(err)
	}
	refused := func() float64 {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			for _, x := range mf.GetMetric() {
				if mf.GetName() == "kinmesh_mailbox_deposits_total" && x.GetLabel()[0].GetValue() == "unknown_mailbox" {
					return x.GetCounter().GetValue()
				}
			}
		}
		return 0
	}
	for refused() == 0 {
		select {
		case <-ctx.Done():
			t.Fatal("no deposit refused as unknown")
		case <-time.After(5 * time.Millisecond):
		}
	}
	if got, _ := a.svc.Message(m.ID); got.State != StatePending || got.Queued != 0 {
		t.Fatalf("after the relay refused it: %s on %d relays, want pending", got.State, got.Queued)
	}

	// The owner is back: its Auth registers the mailbox again.
	s, err = mc.Open(ctx, r.h.ID(), b.auth)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	a.waitFor(t, ctx, string(b.me()), "queued", func(ms []Message) bool { return has(ms, "wait for me", StateQueued) })
	if items, _, err := s.Fetch(ctx, 0, 0); err != nil || len(items) != 1 {
		t.Fatalf("the relay holds %d items (%v), want 1", len(items), err)
	}
}
