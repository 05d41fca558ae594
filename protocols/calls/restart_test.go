package calls

import (
	"testing"
	"time"
)

// TestICERestartOverResumedStream: the signalling stream breaks after the
// call connected (as a relay circuit's limits would break it); the call
// goes on, an ICE restart's offer and answer travel on a resumed stream,
// and media keeps flowing.
func TestICERestartOverResumedStream(t *testing.T) {
	a, b := newDevice(t, deviceConfig{}), newDevice(t, deviceConfig{})
	befriend(t, a, b)
	ctx := testCtx(t, 60*time.Second)
	out, in := connectedCall(t, ctx, a, b, Options{})
	caller := a.svc.Live(out.ID)
	callee := b.svc.Live(in.ID)
	if caller == nil || callee == nil {
		t.Fatal("calls not live")
	}
	before := b.poll(ctx, in.ID, "frames", func(i Info) bool { return i.Stats != nil && i.Stats.FramesReceived > 5 }).Stats.FramesReceived

	caller.breakSignalling()
	// Both sides notice; neither ends the call.
	b.poll(ctx, in.ID, "the callee to lose its stream", func(Info) bool {
		lost := false
		callee.inLoop(func() { lost = callee.sig == nil })
		return lost
	})
	if st := a.svc.Live(out.ID); st == nil {
		t.Fatal("the call ended with its signalling stream")
	}

	caller.restartICE()
	i := a.poll(ctx, out.ID, "the restart to complete", func(i Info) bool {
		ok := false
		caller.inLoop(func() { ok = caller.sig != nil && caller.remoteSet })
		return ok && i.Restarts == 1 && i.State == StateConnected
	})
	if i.Restarts != 1 {
		t.Fatalf("restarts %d, want 1", i.Restarts)
	}
	b.poll(ctx, in.ID, "frames after the restart", func(i Info) bool {
		return i.State == StateConnected && i.Stats != nil && i.Stats.FramesReceived > before+15
	})

	// A hang-up still reaches the other side.
	if err := b.svc.HangUp(ctx, in.ID); err != nil {
		t.Fatal(err)
	}
	if i := a.waitState(ctx, out.ID, StateEnded); i.Reason != ReasonRemoteHangup {
		t.Errorf("caller: %q, want remote_hangup", i.Reason)
	}
}
