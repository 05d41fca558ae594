package calls

import (
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/transport/v5"
	"github.com/pion/transport/v5/stdnet"
	"github.com/pion/webrtc/v4"
)

// cuttable is the OS's network as pion sees it, with a switch that drops
// every packet in and out of the sockets pion opened through it: a device
// whose Wi-Fi drops out, and comes back. The signalling (libp2p, its own
// sockets) is not cut: it resumes on its own (TestICERestartOverResumedStream).
type cuttable struct {
	*stdnet.Net
	cut     atomic.Bool
	dropped atomic.Int64
}

func newCuttable(t *testing.T) *cuttable {
	t.Helper()
	n, err := stdnet.NewNet()
	if err != nil {
		t.Fatal(err)
	}
	return &cuttable{Net: n}
}

func (c *cuttable) ListenUDP(network string, laddr *net.UDPAddr) (transport.UDPConn, error) {
	conn, err := c.Net.ListenUDP(network, laddr)
	if err != nil {
		return nil, err
	}
	return &cutConn{UDPConn: conn, n: c}, nil
}

func (c *cuttable) ListenPacket(network, address string) (net.PacketConn, error) {
	conn, err := c.Net.ListenPacket(network, address)
	if err != nil {
		return nil, err
	}
	return &cutPacketConn{PacketConn: conn, n: c}, nil
}

// drop reports whether a packet of size n is dropped now (and counts it).
func (c *cuttable) drop(n int) bool {
	if !c.cut.Load() {
		return false
	}
	c.dropped.Add(int64(n))
	return true
}

type cutConn struct {
	transport.UDPConn
	n *cuttable
}

func (c *cutConn) ReadFrom(p []byte) (int, net.Addr, error) {
	for {
		n, addr, err := c.UDPConn.ReadFrom(p)
		if err != nil || !c.n.drop(n) {
			return n, addr, err
		}
	}
}

func (c *cutConn) ReadFromUDP(p []byte) (int, *net.UDPAddr, error) {
	for {
		n, addr, err := c.UDPConn.ReadFromUDP(p)
		if err != nil || !c.n.drop(n) {
			return n, addr, err
		}
	}
}

func (c *cutConn) Read(p []byte) (int, error) {
	for {
		n, err := c.UDPConn.Read(p)
		if err != nil || !c.n.drop(n) {
			return n, err
		}
	}
}

func (c *cutConn) WriteTo(p []byte, addr net.Addr) (int, error) {
	if c.n.drop(len(p)) {
		return len(p), nil
	}
	return c.UDPConn.WriteTo(p, addr)
}

func (c *cutConn) WriteToUDP(p []byte, addr *net.UDPAddr) (int, error) {
	if c.n.drop(len(p)) {
		return len(p), nil
	}
	return c.UDPConn.WriteToUDP(p, addr)
}

func (c *cutConn) Write(p []byte) (int, error) {
	if c.n.drop(len(p)) {
		return len(p), nil
	}
	return c.UDPConn.Write(p)
}

func (c *cutConn) WriteMsgUDP(p, oob []byte, addr *net.UDPAddr) (int, int, error) {
	if c.n.drop(len(p)) {
		return len(p), len(oob), nil
	}
	return c.UDPConn.WriteMsgUDP(p, oob, addr)
}

type cutPacketConn struct {
	net.PacketConn
	n *cuttable
}

func (c *cutPacketConn) ReadFrom(p []byte) (int, net.Addr, error) {
	for {
		n, addr, err := c.PacketConn.ReadFrom(p)
		if err != nil || !c.n.drop(n) {
			return n, addr, err
		}
	}
}

func (c *cutPacketConn) WriteTo(p []byte, addr net.Addr) (int, error) {
	if c.n.drop(len(p)) {
		return len(p), nil
	}
	return c.PacketConn.WriteTo(p, addr)
}

// TestICERestartOnDroppedNetwork: the caller's network drops out in the
// middle of a call. ICE notices (no consent responses: disconnected), the
// caller restarts ICE instead of letting the call die, and once the
// network is back the restarted ICE connects and media flows again: the
// same call, still connected, with its restart counted.
func TestICERestartOnDroppedNetwork(t *testing.T) {
	nw := newCuttable(t)
	a := newDevice(t, deviceConfig{opts: []Option{withNet(nw)}})
	b := newDevice(t, deviceConfig{})
	befriend(t, a, b)
	ctx := testCtx(t, 90*time.Second)
	out, in := connectedCall(t, ctx, a, b, Options{})
	before := b.poll(ctx, in.ID, "frames before the drop", func(i Info) bool {
		return i.Stats != nil && i.Stats.FramesReceived > 10
	}).Stats.FramesReceived

	nw.cut.Store(true)
	// Disconnected after 4 s without consent, restarted 2 s later.
	a.poll(ctx, out.ID, "an ICE restart while the network is down", func(i Info) bool {
		if i.State.Final() {
			t.Fatalf("the call ended while the network was down: %+v", i)
		}
		return i.Restarts >= 1
	})
	if live := a.svc.Live(out.ID); live == nil {
		t.Fatal("the call ended with the network")
	}
	frozen := b.poll(ctx, in.ID, "the callee's stats", func(i Info) bool { return i.Stats != nil }).Stats.FramesReceived
	nw.cut.Store(false)
	if nw.dropped.Load() == 0 {
		t.Fatal("the cut dropped nothing: pion did not use the test network")
	}

	i := b.poll(ctx, in.ID, "media after the network came back", func(i Info) bool {
		if i.State.Final() {
			t.Fatalf("the call ended after the network came back: %+v", i)
		}
		return i.State == StateConnected && i.Stats != nil && i.Stats.FramesReceived > max(before, frozen)+15
	})
	o := a.poll(ctx, out.ID, "the caller connected again", func(i Info) bool {
		ok := false
		if c := a.svc.Live(out.ID); c != nil {
			c.inLoop(func() {
				ok = c.pc != nil && (c.pc.ICEConnectionState() == webrtc.ICEConnectionStateConnected || c.pc.ICEConnectionState() == webrtc.ICEConnectionStateCompleted)
			})
		}
		return ok && i.State == StateConnected
	})
	t.Logf("restarts %d; callee received %d frames before the drop, %d during, %d after", o.Restarts, before, frozen, i.Stats.FramesReceived)

	if err := a.svc.HangUp(ctx, out.ID); err != nil {
		t.Fatal(err)
	}
	if i := b.waitState(ctx, in.ID, StateEnded); i.Reason != ReasonRemoteHangup {
		t.Errorf("callee: %q, want remote_hangup", i.Reason)
	}
}

// TestCallOverTURNTCP: a caller on a network that drops all UDP (some
// corporate and hotel networks) still gets through: its host candidates
// and TURN over UDP go nowhere, its TURN allocation over TCP gives it a
// relay candidate, and the relay carries the call's media (relayed to the
// callee as UDP).
func TestCallOverTURNTCP(t *testing.T) {
	r := startRelay(t)
	nw := newCuttable(t)
	nw.cut.Store(true) // UDP only: TCP (the TURN server's TCP port) goes through
	a := newDevice(t, deviceConfig{relay: r, opts: []Option{withNet(nw)}})
	b := newDevice(t, deviceConfig{relay: r})
	befriend(t, a, b)
	ctx := testCtx(t, 90*time.Second)
	out, in := connectedCall(t, ctx, a, b, Options{})
	if out.Path != PathRelay || out.LocalCandidate != "relay" {
		t.Errorf("caller: path %q (%s ↔ %s), want its TURN relay candidate", out.Path, out.LocalCandidate, out.RemoteCandidate)
	}
	if in.Path != PathRelay || in.RemoteCandidate != "relay" {
		t.Errorf("callee: path %q (%s ↔ %s), want the caller's relay candidate", in.Path, in.LocalCandidate, in.RemoteCandidate)
	}
	plausible(t, ctx, b, in.ID)
	if nw.dropped.Load() == 0 {
		t.Error("the caller's UDP was never dropped: pion did not use the test network")
	}
	if st := r.srv.Stats(); st.Allocations == 0 || st.RelayedPackets < 50 {
		t.Errorf("TURN server stats %+v: want the call's media through a TCP client's allocation", st)
	}
	if err := a.svc.HangUp(ctx, out.ID); err != nil {
		t.Fatal(err)
	}
	b.waitState(ctx, in.ID, StateEnded)
}
