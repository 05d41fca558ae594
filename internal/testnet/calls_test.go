package testnet

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/kinmesh/kinmesh/protocols/calls"
)

// TestCallsTestnet: calls between devices of a whole network (bootstrap
// relays with their TURN servers): a direct call, a relay-only one (the
// device-wide setting) whose media crosses a relay's TURN, a blocked
// caller that never rings, and the demo's steps.
func TestCallsTestnet(t *testing.T) {
	n := startNet(t, Config{Relays: 2, Devices: 3, RelayHTTP: true})
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	accounts(t, ctx, n)
	a, b, c := n.Devices[0], n.Devices[1], n.Devices[2]
	for _, d := range []*Device{b, c} {
		if err := Introduce(ctx, a, d); err != nil {
			t.Fatal(err)
		}
	}
	if err := Introduce(ctx, b, c); err != nil {
		t.Fatal(err)
	}

	direct, err := HoldCall(ctx, a, b, false, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range []calls.Info{direct.Caller, direct.Callee} {
		if i.State != calls.StateEnded || i.Path != calls.PathDirect || i.Stats == nil || i.Stats.FramesReceived < 10 ||
			i.Stats.Width != 320 || i.Stats.Codec != "opus,vp8" || i.DurationS <= 0 {
			t.Errorf("direct call, %s side: %s", i.Direction, DescribeCall(i))
		}
	}
	t.Logf("direct: %s", DescribeCall(direct.Callee))

	// Relay-only, by the device-wide setting.
	if _, err := a.Node().SetCallForceRelay(ctx, true); err != nil {
		t.Fatal(err)
	}
	relayed, err := HoldCall(ctx, a, b, false, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if i := relayed.Caller; i.Path != calls.PathRelay || i.LocalCandidate != "relay" || !i.ForceRelay {
		t.Errorf("relay-only call: %s (force relay %v)", DescribeCall(i), i.ForceRelay)
	}
	if i := relayed.Callee; i.RemoteCandidate != "relay" {
		t.Errorf("the callee saw the caller's %q candidate, want relay", i.RemoteCandidate)
	}
	t.Logf("relay-only: %s", DescribeCall(relayed.Callee))
	var allocs, bytes int64
	for _, r := range n.Relays {
		st := r.Relay().TURN().Stats()
		allocs += st.AllocationsTotal
		bytes += st.RelayedBytes
	}
	if allocs == 0 || bytes < 20_000 {
		t.Errorf("the relays' TURN servers made %d allocations, relayed %d bytes: want the call's media", allocs, bytes)
	}
	metrics := ""
	for _, r := range n.Relays {
		resp, err := http.Get("http://" + r.Relay().HTTPAddr() + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		metrics += string(body)
	}
	if !strings.Contains(metrics, `kinmesh_turn_relayed_bytes_total{direction="to_peer"}`) {
		t.Error("/metrics has no TURN counters")
	}
	if _, err := a.Node().SetCallForceRelay(ctx, false); err != nil {
		t.Fatal(err)
	}

	// c is blocked by b: its call fails "unavailable" and never rings.
	if _, err := b.Node().BlockContact(ctx, c.AccountID()); err != nil {
		t.Fatal(err)
	}
	events, stop := b.Node().Subscribe()
	defer stop()
	cev, cstop := c.Node().Subscribe()
	defer cstop()
	o, _ := TestMediaOptions()
	call, err := c.Node().Call(ctx, b.AccountID(), o)
	if err != nil {
		t.Fatal(err)
	}
	i, err := waitCall(ctx, cev, func(i calls.Info) bool { return i.ID == call.ID() && i.State.Final() })
	if err != nil {
		t.Fatal(err)
	}
	if i.State != calls.StateFailed || i.Reason != calls.ReasonUnavailable {
		t.Errorf("blocked caller's call: %s", DescribeCall(i))
	}
	for len(events) > 0 {
		if e := <-events; e.Call != nil {
			t.Errorf("the blocking device saw a call event: %+v", e)
		}
	}
	if l, _ := b.Node().Calls(); len(l) != 2 {
		t.Errorf("the blocking device lists %d calls, want the 2 from a", len(l))
	}

	for _, step := range []func(context.Context, *Network) (string, error){stepCall, stepRelayCall} {
		detail, err := step(ctx, n)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("demo: %s", detail)
	}
}
