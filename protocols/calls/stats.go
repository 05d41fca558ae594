package calls

import (
	"time"

	"github.com/pion/webrtc/v4"
)

// collectStats reads the call's statistics: RTP counters, jitter, loss
// and round-trip times from the stats interceptor (RTCP sender and
// receiver reports), the received codecs, and the video frame counter.
// nil before the call has a peer connection.
func (c *Call) collectStats() *Stats {
	c.mu.Lock()
	pc, g, fc, codecs := c.pcRef, c.getter, c.frames, c.codecs
	c.mu.Unlock()
	if pc == nil || g == nil {
		return nil
	}
	st := &Stats{AudioCodec: codecs[0], VideoCodec: codecs[1]}
	for _, name := range codecs {
		if name == "" {
			continue
		}
		if st.Codec != "" {
			st.Codec += ","
		}
		st.Codec += name
	}
	for _, r := range pc.GetReceivers() {
		for _, t := range r.Tracks() {
			s := g.Get(uint32(t.SSRC()))
			if s == nil {
				continue
			}
			in := s.InboundRTPStreamStats
			st.PacketsReceived += int64(in.PacketsReceived)
			st.PacketsLost += in.PacketsLost
			st.BytesReceived += int64(in.BytesReceived + in.HeaderBytesReceived)
			st.JitterMS = max(st.JitterMS, in.Jitter*1000)
		}
	}
	var rtt time.Duration
	n := 0
	for _, snd := range pc.GetSenders() {
		if snd.Track() == nil {
			continue
		}
		for _, enc := range snd.GetParameters().Encodings {
			s := g.Get(uint32(enc.SSRC))
			if s == nil {
				continue
			}
			st.BytesSent += int64(s.OutboundRTPStreamStats.BytesSent + s.OutboundRTPStreamStats.HeaderBytesSent)
			if ri := s.RemoteInboundRTPStreamStats; ri.RoundTripTimeMeasurements > 0 && ri.RoundTripTime > 0 {
				rtt += ri.RoundTripTime
				n++
			}
		}
	}
	if n > 0 {
		st.RTTMS = float64(rtt/time.Duration(n)) / float64(time.Millisecond)
	} else {
		st.RTTMS = iceRTT(pc)
	}
	if fc != nil {
		st.FramesReceived, st.FPS, st.Width, st.Height = fc.snapshot()
	}
	return st
}

// mergeStats returns the final statistics of a call: cur, unless the
// peer connection had already closed when they were read (the other side
// closed it first) and the RTP counters of the last refresh (prev) are
// all that is left of them.
func mergeStats(prev, cur *Stats) *Stats {
	if cur == nil {
		return prev
	}
	if prev != nil && cur.PacketsReceived < prev.PacketsReceived {
		merged := *prev
		merged.FramesReceived, merged.FPS, merged.Width, merged.Height = cur.FramesReceived, cur.FPS, cur.Width, cur.Height
		if merged.Codec == "" {
			merged.Codec, merged.AudioCodec, merged.VideoCodec = cur.Codec, cur.AudioCodec, cur.VideoCodec
		}
		return &merged
	}
	return cur
}

// iceRTT is the round-trip time of the selected candidate pair's ICE
// checks, in milliseconds (0 if none yet). (Not pc.GetStats: it reads
// state pion's own close writes without a lock.)
func iceRTT(pc *webrtc.PeerConnection) float64 {
	sctp := pc.SCTP()
	if sctp == nil || sctp.Transport() == nil || sctp.Transport().ICETransport() == nil {
		return 0
	}
	if p, ok := sctp.Transport().ICETransport().GetSelectedCandidatePairStats(); ok && p.CurrentRoundTripTime > 0 {
		return p.CurrentRoundTripTime * 1000
	}
	return 0
}
