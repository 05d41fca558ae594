package calls

import (
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/client"
	relayv2 "github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/relay"
	ma "github.com/multiformats/go-multiaddr"
)

// TestCallOverRelayCircuit: the caller knows the callee only by its
// signed record — its device and its home relay — and reaches it through
// the relay's circuit (<relay>/p2p-circuit/p2p/<device>), a limited
// connection. The signalling runs on that circuit; the media goes its own
// way (ICE), and the call connects.
func TestCallOverRelayCircuit(t *testing.T) {
	rh, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableMetrics(), libp2p.ForceReachabilityPublic())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rh.Close() })
	svc, err := relayv2.New(rh)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Close() })
	relayAddr := rh.Addrs()[0].Encapsulate(ma.StringCast("/p2p/" + rh.ID().String()))

	a, b := newDevice(t, deviceConfig{}), newDevice(t, deviceConfig{})
	ctx := testCtx(t, 60*time.Second)
	// b reserves a slot on its home relay and says so in its record.
	connect(t, b.h, rh)
	if _, err := client.Reserve(ctx, b.h, peer.AddrInfo{ID: rh.ID(), Addrs: rh.Addrs()}); err != nil {
		t.Fatalf("reserve: %v", err)
	}
	rec := b.record().Record
	rec.Seq++
	rec.HomeRelays = []ma.Multiaddr{relayAddr}
	signed, err := rec.Sign(b.id)
	if err != nil {
		t.Fatal(err)
	}
	b.setRecord(signed)
	a.book.add(signed)
	b.book.add(a.record())

	out, in := connectedCall(t, ctx, a, b, Options{})
	conns := b.h.Network().ConnsToPeer(a.h.ID())
	if len(conns) == 0 {
		t.Fatal("no connection between the two devices")
	}
	for _, c := range conns {
		if !c.Stat().Limited {
			t.Fatalf("a connection that is not the relay's circuit: %s", c.RemoteMultiaddr())
		}
	}
	plausible(t, ctx, b, in.ID)
	if err := b.svc.HangUp(ctx, in.ID); err != nil {
		t.Fatal(err)
	}
	if i := a.waitState(ctx, out.ID, StateEnded); i.Reason != ReasonRemoteHangup {
		t.Errorf("caller: %q, want remote_hangup", i.Reason)
	}
}
