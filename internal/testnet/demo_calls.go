package testnet

import (
	"context"
	"fmt"
	"time"

	"github.com/kinmesh/kinmesh/node"
	"github.com/kinmesh/kinmesh/protocols/calls"
)

// Calls in the demo: two short calls between the first two devices, both
// sides playing the built-in test clips (a tone and a test pattern), one
// direct and one relay-only through a relay's TURN server; each prints
// its path and quality statistics.

// demoCallLength is how long a demo call holds once media flows.
const demoCallLength = 3 * time.Second

func stepCall(ctx context.Context, n *Network) (string, error) {
	return demoCall(ctx, n, false)
}

func stepRelayCall(ctx context.Context, n *Network) (string, error) {
	return demoCall(ctx, n, true)
}

func demoCall(ctx context.Context, n *Network, relay bool) (string, error) {
	if len(n.Devices) < 2 {
		return "skipped: fewer than 2 devices", nil
	}
	a, b := n.Devices[0], n.Devices[1]
	res, err := HoldCall(ctx, a, b, relay, demoCallLength)
	if err != nil {
		return "", err
	}
	out := fmt.Sprintf("%s → %s: %s", a.Name, b.Name, DescribeCall(res.Callee))
	if relay {
		relayed := int64(0)
		for _, r := range n.Relays {
			if rl := r.Relay(); rl != nil && rl.TURN() != nil {
				relayed += rl.TURN().Stats().RelayedBytes
			}
		}
		out += fmt.Sprintf("; the relays' TURN servers relayed %d kB", relayed/1000)
	}
	return out, nil
}

// CallResult is a call HoldCall held, as each side saw it at the end.
type CallResult struct {
	Caller, Callee calls.Info
}

// HoldCall has a call b (relay-only if relay), b answer, both sending
// the test clips; holds the call until each side has received hold's
// worth of video; has a hang up; and returns both sides' record of it.
func HoldCall(ctx context.Context, a, b *Device, relay bool, hold time.Duration) (CallResult, error) {
	na, nb := a.Node(), b.Node()
	if na == nil || nb == nil {
		return CallResult{}, fmt.Errorf("%s or %s is stopped", a.Name, b.Name)
	}
	events, stop := nb.Subscribe()
	defer stop()
	o, err := node.TestMedia(relay)
	if err != nil {
		return CallResult{}, err
	}
	c, err := na.Call(ctx, b.AccountID(), o)
	if err != nil {
		return CallResult{}, fmt.Errorf("%s calls %s: %w", a.Name, b.Name, err)
	}
	ring, err := waitCall(ctx, events, func(i calls.Info) bool {
		return i.Direction == calls.DirectionIn && i.Peer == a.AccountID() && i.State == calls.StateRinging
	})
	if err != nil {
		return CallResult{}, fmt.Errorf("%s's device never rang: %w", b.Name, err)
	}
	ob, err := node.TestMedia(false)
	if err != nil {
		return CallResult{}, err
	}
	if _, err := nb.AcceptCall(ctx, ring.ID, ob); err != nil {
		return CallResult{}, fmt.Errorf("%s answers: %w", b.Name, err)
	}
	if _, err := waitCall(ctx, events, func(i calls.Info) bool { return i.ID == ring.ID && i.State == calls.StateConnected }); err != nil {
		return CallResult{}, fmt.Errorf("the call never connected: %w", err)
	}
	// Hold the call until hold's worth of video has arrived on both sides.
	want := int64(hold.Seconds() * 15)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for _, side := range []struct {
		n  *node.Node
		id string
	}{{nb, ring.ID}, {na, c.ID()}} {
		for {
			i, err := side.n.CallInfo(side.id)
			if err != nil {
				return CallResult{}, err
			}
			if i.State.Final() {
				return CallResult{}, fmt.Errorf("the call ended early: %s", i.Reason)
			}
			if i.Stats != nil && i.Stats.FramesReceived >= want {
				break
			}
			select {
			case <-ctx.Done():
				return CallResult{}, fmt.Errorf("holding the call (%s side): %w (stats %+v)", i.Direction, ctx.Err(), i.Stats)
			case <-tick.C:
			}
		}
	}
	if err := na.HangUp(ctx, c.ID()); err != nil {
		return CallResult{}, err
	}
	callee, err := waitCall(ctx, events, func(i calls.Info) bool { return i.ID == ring.ID && i.State.Final() })
	if err != nil {
		return CallResult{}, fmt.Errorf("%s's side did not end: %w", b.Name, err)
	}
	caller, err := na.CallInfo(c.ID())
	if err != nil {
		return CallResult{}, err
	}
	return CallResult{Caller: caller, Callee: callee}, nil
}

// waitCall waits for a call event that cond accepts.
func waitCall(ctx context.Context, events <-chan node.Event, cond func(calls.Info) bool) (calls.Info, error) {
	for {
		select {
		case e := <-events:
			if i, ok := e.Call.(calls.Info); ok && cond(i) {
				return i, nil
			}
		case <-ctx.Done():
			return calls.Info{}, ctx.Err()
		}
	}
}

// DescribeCall renders a call's path and statistics in one line.
func DescribeCall(i calls.Info) string {
	s := fmt.Sprintf("connected in %d ms via %s (%s ↔ %s), %s after %.1f s", i.SetupMS, i.Path, i.LocalCandidate, i.RemoteCandidate, i.State, i.DurationS)
	if i.State != calls.StateEnded || i.Path == "" {
		s = fmt.Sprintf("%s (%s)", i.State, i.Reason)
	}
	if st := i.Stats; st != nil {
		s += fmt.Sprintf("; rtt %.1f ms, jitter %.1f ms, %d of %d packets lost, %s, %dx%d at %.1f fps",
			st.RTTMS, st.JitterMS, st.PacketsLost, st.PacketsReceived+st.PacketsLost, st.Codec, st.Width, st.Height, st.FPS)
	}
	return s
}

// TestMediaOptions are call options playing the test clips.
func TestMediaOptions() (node.CallOptions, error) { return node.TestMedia(false) }
