package calls

import (
	"context"
	"encoding/binary"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/pion/rtp"
	"github.com/pion/webrtc/v4"
)

// Media is what a call sends: the embedding app's tracks (or the test
// clips of protocols/calls/testmedia). Tracks are added before the offer
// or answer; Play runs once the call first connects, with a context that
// ends with the call, and should write samples until it does.
type Media interface {
	Tracks() []webrtc.TrackLocal
	Play(ctx context.Context)
}

// Tracks returns a Media of tracks the app writes to itself (Play does
// nothing): for example webrtc.NewTrackLocalStaticSample tracks of
// mime type webrtc.MimeTypeOpus, MimeTypeVP8 or MimeTypeH264.
func Tracks(ts ...webrtc.TrackLocal) Media { return trackList(ts) }

type trackList []webrtc.TrackLocal

func (l trackList) Tracks() []webrtc.TrackLocal { return l }
func (trackList) Play(context.Context)          {}

// Options are a call's own settings.
type Options struct {
	// Media is what this side sends (nil: nothing; the call still
	// receives audio and video).
	Media Media
	// OnTrack gets each track the other side sends. Read it with
	// RemoteTrack.ReadRTP until it fails, or the track stalls. nil: the
	// call reads and discards them itself, counting what the statistics
	// need.
	OnTrack func(*RemoteTrack)
	// ForceRelay makes this call relay-only (see WithForceRelay) whatever
	// the device-wide setting.
	ForceRelay bool
}

// RemoteTrack is a track the other side sends. ReadRTP passes every
// packet through the call's statistics (frame rate, resolution) on its
// way to the app.
type RemoteTrack struct {
	t      *webrtc.TrackRemote
	frames *frameCounter // nil for audio
}

// Kind is audio or video.
func (r *RemoteTrack) Kind() webrtc.RTPCodecType { return r.t.Kind() }

// Codec is the track's negotiated codec.
func (r *RemoteTrack) Codec() webrtc.RTPCodecParameters { return r.t.Codec() }

// Track returns the underlying pion track (read it only through ReadRTP,
// or the statistics miss its frames).
func (r *RemoteTrack) Track() *webrtc.TrackRemote { return r.t }

// ReadRTP reads the next RTP packet.
func (r *RemoteTrack) ReadRTP() (*rtp.Packet, error) {
	p, _, err := r.t.ReadRTP()
	if err != nil {
		return nil, err
	}
	if r.frames != nil {
		r.frames.packet(p)
	}
	return p, nil
}

// codecName turns "video/VP8" into "vp8".
func codecName(mime string) string {
	_, name, _ := strings.Cut(mime, "/")
	return strings.ToLower(name)
}

// frameCounter counts the frames of a received video track and reads its
// resolution from VP8 keyframes.
type frameCounter struct {
	vp8 bool
	now func() time.Time

	mu      sync.Mutex
	started bool
	lastTS  uint32
	frames  int64
	arrived []time.Time // the last statsFrames frames' arrival, a ring
	next    int
	width   int
	height  int
}

const statsFrames = 64

func newFrameCounter(mime string, now func() time.Time) *frameCounter {
	return &frameCounter{vp8: strings.EqualFold(mime, webrtc.MimeTypeVP8), now: now, arrived: make([]time.Time, 0, statsFrames)}
}

// packet accounts one RTP packet: a new timestamp starts a new frame.
func (f *frameCounter) packet(p *rtp.Packet) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.started || p.Timestamp != f.lastTS {
		f.started, f.lastTS = true, p.Timestamp
		f.frames++
		now := f.now()
		if len(f.arrived) < statsFrames {
			f.arrived = append(f.arrived, now)
		} else {
			f.arrived[f.next] = now
			f.next = (f.next + 1) % statsFrames
		}
	}
	if f.vp8 {
		if w, h, ok := vp8KeyframeSize(p.Payload); ok {
			f.width, f.height = w, h
		}
	}
}

// snapshot returns the frames so far, the frame rate over the last two
// seconds (of arrivals, ending at the newest) and the resolution.
func (f *frameCounter) snapshot() (frames int64, fps float64, w, h int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := len(f.arrived)
	if n >= 2 {
		newest := f.arrived[(f.next+n-1)%n]
		count, oldest := 0, newest
		for i := range n {
			t := f.arrived[(f.next+n-1-i)%n]
			if newest.Sub(t) > 2*time.Second {
				break
			}
			count, oldest = count+1, t
		}
		if span := newest.Sub(oldest); count >= 2 && span > 0 {
			fps = float64(count-1) / span.Seconds()
		}
	}
	return f.frames, fps, f.width, f.height
}

var errShortVP8 = errors.New("short VP8 payload")

// vp8Payload strips a VP8 RTP payload descriptor (RFC 7741 §4.2) and
// reports whether the packet starts a frame's first partition (S=1,
// PID=0).
//
//	 0 1 2 3 4 5 6 7
//	+-+-+-+-+-+-+-+-+
//	|X|R|N|S|R| PID | (required)
//	+-+-+-+-+-+-+-+-+
//	|I|L|T|K| RSV   | (X: extension)
//	|M| PictureID   | (I: 7 bits, or 15 with M)
//	|   TL0PICIDX   | (L)
//	|TID|Y| KEYIDX  | (T or K)
func vp8Payload(b []byte) (payload []byte, start bool, err error) {
	if len(b) < 1 {
		return nil, false, errShortVP8
	}
	x, s, pid := b[0]&0x80 != 0, b[0]&0x10 != 0, b[0]&0x07
	i := 1
	if x {
		if len(b) < 2 {
			return nil, false, errShortVP8
		}
		ext := b[1]
		i = 2
		if ext&0x80 != 0 { // I: PictureID
			if len(b) < i+1 {
				return nil, false, errShortVP8
			}
			if b[i]&0x80 != 0 { // M: 15 bits
				i++
			}
			i++
		}
		if ext&0x40 != 0 { // L: TL0PICIDX
			i++
		}
		if ext&0x30 != 0 { // T or K
			i++
		}
	}
	if len(b) < i {
		return nil, false, errShortVP8
	}
	return b[i:], s && pid == 0, nil
}

// vp8KeyframeSize reads the width and height of a VP8 keyframe from the
// first packet of a frame (RFC 6386 §9.1): a 3-byte frame tag whose low
// bit is 0 for keyframes, the start code 9d 01 2a, then 14-bit width and
// height (little-endian, 2 scaling bits above).
func vp8KeyframeSize(rtpPayload []byte) (w, h int, ok bool) {
	p, start, err := vp8Payload(rtpPayload)
	if err != nil || !start || len(p) < 10 || p[0]&0x01 != 0 {
		return 0, 0, false
	}
	if p[3] != 0x9d || p[4] != 0x01 || p[5] != 0x2a {
		return 0, 0, false
	}
	w = int(binary.LittleEndian.Uint16(p[6:8]) & 0x3fff)
	h = int(binary.LittleEndian.Uint16(p[8:10]) & 0x3fff)
	return w, h, w > 0 && h > 0
}
