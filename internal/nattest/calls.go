package nattest

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/kinmesh/kinmesh/protocols/calls"
)

// The matrix's call column: after the message exchange, A calls B with
// the kinmesh CLI (`kinmesh call`), B answers (`kinmesh answer`), both
// daemons play their test clips for a couple of seconds, and the call's
// path is read from the daemons (`kinmesh calls ID --json`): direct when
// ICE connected the two devices' host, server-reflexive (STUN on a relay)
// or peer-reflexive candidates, relay when one end is a TURN relay
// candidate on a relay.

// ExpectCall returns the path a call between devices behind a and b
// should take. Call media is UDP only (ICE-UDP; TURN may be reached over
// TCP, but relays UDP): a symmetric NAT's mapping towards the peer is
// never the one STUN saw, so it reaches only a peer that takes
// unsolicited UDP (no NAT); everything else punches through. Unlike
// libp2p (TCP), a firewall that drops unsolicited UDP leaves a symmetric
// NAT's peer on the relay too.
func ExpectCall(a, b NAT) Path {
	if a == Symmetric && b != NoNAT || b == Symmetric && a != NoNAT {
		return PathRelay
	}
	return PathDirect
}

// CallResult is the call column of a pair.
type CallResult struct {
	Expected Path
	// Connected: the call reached the connected state; Path is then how
	// its media flowed (A's view), Local and Remote the candidate types of
	// A's selected pair.
	Connected     bool
	Path          Path
	Local, Remote string
	// Setup is from the offer to connected (A's daemon's measure); Ring
	// from A's `kinmesh call` until B's device rang.
	Setup, Ring time.Duration
	// Stats are what B measured of A's media.
	Stats calls.Stats
	Err   error
}

// OK reports whether the call connected on the expected path with media
// flowing.
func (c CallResult) OK() bool {
	return c.Err == nil && c.Connected && c.Path == c.Expected && c.Stats.FramesReceived > 0
}

// callTimeout bounds each step of a call.
const callTimeout = 30 * time.Second

// callHold is how much of A's video B must receive before the call ends.
const callHold = 30 // frames: two seconds of the test clip

type callReply struct {
	Call calls.Info `json:"call"`
}

// CallInfo reads a call from the device's daemon.
func (d *Device) CallInfo(ctx context.Context, id string) (calls.Info, error) {
	out, err := d.CLI(ctx, "calls", id, "--data", d.Data, "--json")
	if err != nil {
		return calls.Info{}, err
	}
	var r callReply
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		return calls.Info{}, fmt.Errorf("%s: kinmesh calls %s --json: %w", d.Name, id, err)
	}
	return r.Call, nil
}

// Calls lists the device's calls.
func (d *Device) Calls(ctx context.Context) ([]calls.Info, error) {
	var r struct {
		Calls []calls.Info `json:"calls"`
	}
	return r.Calls, d.JSON(ctx, &r, "calls")
}

// RunCall has a call b, b answer, holds the call until b received two
// seconds of a's video, and has a hang up.
func RunCall(ctx context.Context, a, b *Device, interval time.Duration) (res CallResult) {
	res = CallResult{Expected: ExpectCall(a.NAT, b.NAT), Path: PathNone}
	start := time.Now()
	out, err := a.CLI(ctx, "call", b.Account, "--data", a.Data, "--json")
	if err != nil {
		res.Err = err
		return res
	}
	var placed callReply
	if err := json.Unmarshal([]byte(out), &placed); err != nil || placed.Call.ID == "" {
		res.Err = fmt.Errorf("%s: kinmesh call printed %q: %v", a.Name, out, err)
		return res
	}
	id := placed.Call.ID
	defer func() {
		if res.Err != nil {
			_, _ = a.CLI(context.Background(), "hangup", id, "--data", a.Data)
		}
	}()
	var incoming string
	err = Poll(ctx, callTimeout, interval, func(ctx context.Context) (bool, error) {
		cs, err := b.Calls(ctx)
		for _, c := range cs {
			if c.Direction == calls.DirectionIn && c.Peer == a.Account && c.State == calls.StateRinging {
				incoming = c.ID
			}
		}
		return incoming != "", err
	})
	if err != nil {
		res.Err = fmt.Errorf("%s's device never rang: %w", b.Name, err)
		return res
	}
	res.Ring = time.Since(start)
	if _, err := b.CLI(ctx, "answer", incoming, "--data", b.Data); err != nil {
		res.Err = err
		return res
	}
	var ai calls.Info
	err = Poll(ctx, callTimeout, interval, func(ctx context.Context) (bool, error) {
		ai, err = a.CallInfo(ctx, id)
		if err == nil && ai.State.Final() {
			return false, fmt.Errorf("the call ended: %s (%s)", ai.State, ai.Reason)
		}
		return ai.State == calls.StateConnected, err
	})
	if err != nil {
		res.Err = fmt.Errorf("call %s → %s: %w", a.Name, b.Name, err)
		return res
	}
	res.Connected = true
	var bi calls.Info
	err = Poll(ctx, callTimeout, interval, func(ctx context.Context) (bool, error) {
		bi, err = b.CallInfo(ctx, incoming)
		return err == nil && bi.Stats != nil && bi.Stats.FramesReceived >= callHold, err
	})
	if err != nil {
		res.Err = fmt.Errorf("media %s → %s: %w (stats %+v)", a.Name, b.Name, err, bi.Stats)
	}
	if ai, err = a.CallInfo(ctx, id); err == nil {
		res.Path, res.Local, res.Remote = Path(ai.Path), ai.LocalCandidate, ai.RemoteCandidate
		res.Setup = time.Duration(ai.SetupMS) * time.Millisecond
	}
	if bi.Stats != nil {
		res.Stats = *bi.Stats
	}
	if _, err := a.CLI(ctx, "hangup", id, "--data", a.Data); err != nil && res.Err == nil {
		res.Err = err
	}
	err = Poll(ctx, callTimeout, interval, func(ctx context.Context) (bool, error) {
		bi, err := b.CallInfo(ctx, incoming)
		return err == nil && bi.State.Final(), err
	})
	if err != nil && res.Err == nil {
		res.Err = fmt.Errorf("%s's side did not end: %w", b.Name, err)
	}
	return res
}

// callColumns are the matrix's call columns.
var callColumns = []column{
	{"call expected", func(r PairResult) string { return string(r.Call.Expected) }},
	{"call path", func(r PairResult) string {
		if !r.Call.Connected {
			return "none"
		}
		return fmt.Sprintf("%s (%s ↔ %s)", r.Call.Path, r.Call.Local, r.Call.Remote)
	}},
	{"call setup", func(r PairResult) string { return ms(r.Call.Setup, r.Call.Connected) }},
	{"call media (B)", func(r PairResult) string {
		s := r.Call.Stats
		if s.FramesReceived == 0 {
			return "–"
		}
		return fmt.Sprintf("%s %dx%d %.0f fps, rtt %.1f ms, lost %d", strings.ReplaceAll(s.Codec, ",", "+"), s.Width, s.Height, s.FPS, s.RTTMS, s.PacketsLost)
	}},
}
