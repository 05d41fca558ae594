package calls

import (
	"bytes"
	"context"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/pion/rtp"
	"github.com/pion/rtp/codecs"
	"github.com/pion/webrtc/v4"
	"github.com/pion/webrtc/v4/pkg/media/ivfreader"

	"github.com/kinmesh/kinmesh/protocols/calls/testmedia"
)

// vp8Packet returns the first RTP payload of the clip's first frame (a
// keyframe) or of its second (not one), as pion's payloader makes them.
func vp8Packet(t testing.TB, key bool) []byte {
	t.Helper()
	b, err := os.ReadFile("testmedia/testdata/pattern.ivf")
	if err != nil {
		t.Fatal(err)
	}
	rd, _, err := ivfreader.NewWith(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	fr, _, err := rd.ParseNextFrame()
	if err != nil {
		t.Fatal(err)
	}
	if !key {
		if fr, _, err = rd.ParseNextFrame(); err != nil {
			t.Fatal(err)
		}
	}
	pay := (&codecs.VP8Payloader{EnablePictureID: true}).Payload(1200, fr)
	return pay[0]
}

func TestVP8KeyframeSize(t *testing.T) {
	w, h, ok := vp8KeyframeSize(vp8Packet(t, true))
	if !ok || w != testmedia.Width || h != testmedia.Height {
		t.Fatalf("keyframe: %dx%d %v, want %dx%d", w, h, ok, testmedia.Width, testmedia.Height)
	}
	if _, _, ok := vp8KeyframeSize(vp8Packet(t, false)); ok {
		t.Fatal("an inter frame read as a keyframe")
	}
	for _, b := range [][]byte{nil, {0x80}, {0x90, 0x80}, {0x10, 0, 0, 0}} {
		if _, _, ok := vp8KeyframeSize(b); ok {
			t.Errorf("%x read as a keyframe", b)
		}
	}
}

func TestFrameCounter(t *testing.T) {
	var mu sync.Mutex
	now := time.Unix(1000, 0)
	fc := newFrameCounter(webrtc.MimeTypeVP8, func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		return now
	})
	key := vp8Packet(t, true)
	for i := range 45 { // 3 s at 15 frames a second, two packets a frame
		for range 2 {
			fc.packet(&rtp.Packet{Header: rtp.Header{Timestamp: uint32(i * 6000)}, Payload: key})
		}
		mu.Lock()
		now = now.Add(time.Second / 15)
		mu.Unlock()
	}
	frames, fps, w, h := fc.snapshot()
	if frames != 45 || fps < 14.5 || fps > 15.5 || w != 320 || h != 240 {
		t.Fatalf("frames %d, fps %.2f, %dx%d; want 45, 15, 320x240", frames, fps, w, h)
	}
}

// TestTestMedia: the player writes both clips, in real time, until its
// context ends.
func TestTestMedia(t *testing.T) {
	p, err := testmedia.New(true, true)
	if err != nil {
		t.Fatal(err)
	}
	if got := len(p.Tracks()); got != 2 {
		t.Fatalf("%d tracks, want 2", got)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		p.Play(ctx)
		close(done)
	}()
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Play did not return after its context ended")
	}
}
