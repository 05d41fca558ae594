package calls

import (
	"testing"
	"time"

	"github.com/pion/webrtc/v4"

	"github.com/kinmesh/kinmesh/protocols/calls/testmedia"
)

// TestFinalStatsAfterRemoteClose: the caller hangs up while the callee's
// loop is slow to get to it (here: paused), so pion has closed the
// callee's peer connection itself, on the caller's DTLS close_notify,
// before the call ends there; closing stops its receivers and senders,
// which unbinds their streams from the stats interceptor. The callee's
// statistics, live and final, still hold all the media it received: they
// never fall back below what the app last saw (once they fell back to the
// loop's last refresh, up to a second old: in a short call, from before
// the video arrived).
func TestFinalStatsAfterRemoteClose(t *testing.T) {
	a, b := newDevice(t, deviceConfig{}), newDevice(t, deviceConfig{})
	befriend(t, a, b)
	ctx := testCtx(t, 60*time.Second)
	out, in := connectedCall(t, ctx, a, b, Options{})
	plausible(t, ctx, b, in.ID)

	c := b.svc.Live(in.ID)
	if c == nil {
		t.Fatal("the callee's call is not live")
	}
	release, ok := c.pauseLoop()
	if !ok {
		t.Fatal("the callee's call ended")
	}
	t.Cleanup(release)
	var refreshed Stats
	if st := c.refreshedStats(); st != nil {
		refreshed = *st
	}
	// The app sees more media than the loop's last refresh did.
	live := b.poll(ctx, in.ID, "media beyond the last refresh", func(i Info) bool {
		return i.Stats != nil && i.Stats.PacketsReceived > refreshed.PacketsReceived &&
			i.Stats.FramesReceived > refreshed.FramesReceived && i.Stats.BytesSent > refreshed.BytesSent
	}).Stats

	if err := a.svc.HangUp(ctx, out.ID); err != nil {
		t.Fatal(err)
	}
	b.poll(ctx, in.ID, "pion to close the callee's connection on the caller's close_notify", func(Info) bool {
		return c.peerState() == webrtc.PeerConnectionStateClosed
	})
	i, err := b.svc.Get(in.ID)
	if err != nil {
		t.Fatal(err)
	}
	if i.State != StateConnected {
		t.Fatalf("the callee's call is %s with its loop paused, want still connected", i.State)
	}
	noRegress(t, "live, after pion closed the connection", live, i.Stats)

	release()
	end := b.waitState(ctx, in.ID, StateEnded)
	if end.Reason != ReasonRemoteHangup {
		t.Errorf("callee's reason %q, want remote_hangup", end.Reason)
	}
	noRegress(t, "final", live, end.Stats)
	if kept, err := b.svc.Get(in.ID); err != nil || kept.Stats == nil || *kept.Stats != *end.Stats {
		t.Errorf("the kept record's statistics %+v (%v), want the final %+v", kept.Stats, err, end.Stats)
	}
}

// noRegress checks that got holds at least what was, with the clips'
// codecs and resolution.
func noRegress(t *testing.T, what string, was, got *Stats) {
	t.Helper()
	if got == nil {
		t.Errorf("%s: no statistics, want at least %+v", what, *was)
		return
	}
	if got.PacketsReceived < was.PacketsReceived || got.BytesReceived < was.BytesReceived ||
		got.BytesSent < was.BytesSent || got.FramesReceived < was.FramesReceived {
		t.Errorf("%s: packets received %d, bytes received %d, sent %d, frames %d; want at least %d, %d, %d, %d seen before",
			what, got.PacketsReceived, got.BytesReceived, got.BytesSent, got.FramesReceived,
			was.PacketsReceived, was.BytesReceived, was.BytesSent, was.FramesReceived)
	}
	if got.Codec != "opus,vp8" || got.Width != testmedia.Width || got.Height != testmedia.Height {
		t.Errorf("%s: codecs %q, %dx%d; want opus,vp8, %dx%d", what, got.Codec, got.Width, got.Height, testmedia.Width, testmedia.Height)
	}
	if got.RTTMS <= 0 {
		t.Errorf("%s: RTT %.3f ms, want the last measured", what, got.RTTMS)
	}
}

func TestMergeStats(t *testing.T) {
	// The last refresh, taken before the video arrived.
	early := &Stats{RTTMS: 0.5, JitterMS: 0.4, PacketsReceived: 3, BytesReceived: 400, BytesSent: 900, Codec: "opus", AudioCodec: "opus"}
	later := &Stats{RTTMS: 0.7, JitterMS: 0.2, PacketsReceived: 90, BytesReceived: 30_000, BytesSent: 31_000,
		Codec: "opus,vp8", AudioCodec: "opus", VideoCodec: "vp8", FPS: 15, Width: 320, Height: 240, FramesReceived: 20}
	// What a reading finds of later's streams once they are gone.
	lost := &Stats{Codec: "opus,vp8", AudioCodec: "opus", VideoCodec: "vp8", FPS: 15, Width: 320, Height: 240, FramesReceived: 20}
	tests := []struct {
		name      string
		prev, cur *Stats
		want      *Stats
	}{
		{name: "no reading", prev: early, cur: nil, want: early},
		{name: "no refresh", prev: nil, cur: later, want: later},
		{name: "neither", want: nil},
		{name: "reading ahead", prev: early, cur: later, want: later},
		{name: "streams lost", prev: early, cur: lost, want: &Stats{
			RTTMS: 0.5, JitterMS: 0.4, PacketsReceived: 3, BytesReceived: 400, BytesSent: 900,
			Codec: "opus,vp8", AudioCodec: "opus", VideoCodec: "vp8", FPS: 15, Width: 320, Height: 240, FramesReceived: 20,
		}},
		{name: "reading behind", prev: later, cur: early, want: &Stats{
			RTTMS: 0.7, JitterMS: 0.2, PacketsReceived: 90, BytesReceived: 30_000, BytesSent: 31_000,
			Codec: "opus,vp8", AudioCodec: "opus", VideoCodec: "vp8", FPS: 15, Width: 320, Height: 240, FramesReceived: 20,
		}},
		{name: "no RTT at the end", prev: early, cur: &Stats{PacketsReceived: 5, BytesReceived: 500, BytesSent: 1000, Codec: "opus", AudioCodec: "opus"},
			want: &Stats{RTTMS: 0.5, PacketsReceived: 5, BytesReceived: 500, BytesSent: 1000, Codec: "opus", AudioCodec: "opus"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := mergeStats(tt.prev, tt.cur)
			if (got == nil) != (tt.want == nil) || got != nil && *got != *tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}
