// Package testmedia plays two small clips as a call's media: a 440 Hz
// tone (Ogg/Opus, mono, 48 kHz, 24 kbit/s, 20 ms pages) and a test pattern
// (IVF/VP8, 320×240 at 15 frames a second, a keyframe every second), five
// seconds each, looped. The daemon, the CLI and the testnet have no
// microphone or camera; these clips make their calls carry real encoded
// media, so call statistics (codec, frame rate, resolution, loss) are
// real. testdata/README.md says how the clips were made.
package testmedia

import (
	"bytes"
	"context"
	_ "embed"
	"errors"
	"io"
	"sync"
	"time"

	"github.com/pion/webrtc/v4"
	"github.com/pion/webrtc/v4/pkg/media"
	"github.com/pion/webrtc/v4/pkg/media/ivfreader"
	"github.com/pion/webrtc/v4/pkg/media/oggreader"
)

//go:embed testdata/tone.ogg
var toneOgg []byte

//go:embed testdata/pattern.ivf
var patternIVF []byte

// The clips' properties.
const (
	Width  = 320
	Height = 240
	FPS    = 15
	// ClipLength is how long each clip lasts before it loops.
	ClipLength = 5 * time.Second
)

// Player plays the clips on two tracks: audio (Opus) and video (VP8). It
// implements calls.Media.
type Player struct {
	audio, video *webrtc.TrackLocalStaticSample
	audioOn      bool
	videoOn      bool
}

// New returns a player of both clips; audio and video say which to send.
func New(audio, video bool) (*Player, error) {
	p := &Player{audioOn: audio, videoOn: video}
	var err error
	if audio {
		p.audio, err = webrtc.NewTrackLocalStaticSample(webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeOpus, ClockRate: 48000, Channels: 2}, "audio", "kinmesh-testmedia")
		if err != nil {
			return nil, err
		}
	}
	if video {
		p.video, err = webrtc.NewTrackLocalStaticSample(webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeVP8, ClockRate: 90000}, "video", "kinmesh-testmedia")
		if err != nil {
			return nil, err
		}
	}
	return p, nil
}

// Tracks returns the player's tracks.
func (p *Player) Tracks() []webrtc.TrackLocal {
	var out []webrtc.TrackLocal
	if p.audio != nil {
		out = append(out, p.audio)
	}
	if p.video != nil {
		out = append(out, p.video)
	}
	return out
}

// Play writes the clips to the tracks, looped, in real time, until ctx
// ends.
func (p *Player) Play(ctx context.Context) {
	var wg sync.WaitGroup
	if p.audio != nil {
		wg.Go(func() { _ = playOgg(ctx, p.audio) })
	}
	if p.video != nil {
		wg.Go(func() { _ = playIVF(ctx, p.video) })
	}
	wg.Wait()
}

// playIVF writes the VP8 clip frame by frame at its frame rate.
func playIVF(ctx context.Context, t *webrtc.TrackLocalStaticSample) error {
	rd, hdr, err := ivfreader.NewWith(bytes.NewReader(patternIVF))
	if err != nil {
		return err
	}
	frame := time.Second * time.Duration(hdr.TimebaseNumerator) / time.Duration(hdr.TimebaseDenominator)
	if frame <= 0 || frame > time.Second {
		frame = time.Second / FPS
	}
	tick := time.NewTicker(frame)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		data, _, err := rd.ParseNextFrame()
		if errors.Is(err, io.EOF) {
			if rd, _, err = ivfreader.NewWith(bytes.NewReader(patternIVF)); err != nil {
				return err
			}
			data, _, err = rd.ParseNextFrame()
		}
		if err != nil {
			return err
		}
		if err := t.WriteSample(media.Sample{Data: data, Duration: frame}); err != nil {
			return err
		}
	}
}

// playOgg writes the Opus clip page by page (one 20 ms packet each).
func playOgg(ctx context.Context, t *webrtc.TrackLocalStaticSample) error {
	open := func() (*oggreader.OggReader, error) {
		rd, _, err := oggreader.NewWith(bytes.NewReader(toneOgg))
		return rd, err
	}
	rd, err := open()
	if err != nil {
		return err
	}
	const page = 20 * time.Millisecond
	tick := time.NewTicker(page)
	defer tick.Stop()
	var last uint64
	for {
		data, hdr, err := rd.ParseNextPage()
		if errors.Is(err, io.EOF) {
			if rd, err = open(); err != nil {
				return err
			}
			last = 0
			continue
		}
		if err != nil {
			return err
		}
		if bytes.HasPrefix(data, []byte("OpusTags")) {
			continue
		}
		d := page
		if hdr.GranulePosition > last && hdr.GranulePosition-last < 48000 {
			d = time.Duration(hdr.GranulePosition-last) * time.Second / 48000
		}
		last = hdr.GranulePosition
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		if err := t.WriteSample(media.Sample{Data: data, Duration: d}); err != nil {
			return err
		}
	}
}
