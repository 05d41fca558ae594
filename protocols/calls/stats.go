package calls

import (
	"cmp"
	"time"

	"github.com/pion/webrtc/v4"
)

// collectStats reads the call's statistics: RTP counters, jitter, loss
// and round-trip times from the stats interceptor (RTCP sender and
// receiver reports), the received codecs, and the video frame counter.
// nil before the call has a peer connection. The streams' statistics
// outlive the connection (keptRecorders), so they never fall back, not
// even once it has closed.
func (c *Call) collectStats() *Stats {
	c.mu.Lock()
	pc, g, fc, codecs := c.pcRef, c.getter, c.frames, c.codecs
	c.mu.Unlock()
	if pc == nil || g == nil {
		return nil
	}
	st := &Stats{Codec: codecList(codecs[0], codecs[1]), AudioCodec: codecs[0], VideoCodec: codecs[1]}
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
		// Not only senders with a track: a stopped sender (the connection
		// closed) has none, but its streams' statistics are still there.
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
	c.mu.Lock()
	if st.RTTMS > 0 {
		c.rttMS = st.RTTMS
	} else {
		st.RTTMS = c.rttMS // none now (the connection closed): the last one
	}
	c.mu.Unlock()
	if fc != nil {
		st.FramesReceived, st.FPS, st.Width, st.Height = fc.snapshot()
	}
	return st
}

// mergeStats returns the final statistics of a call from a reading at
// its end (cur) and the loop's last refresh (prev): cur, but never less
// than prev. The counters only grow while the call lasts, so if cur's
// fall short of prev's (a stream whose statistics were lost), prev's
// stand, each group of them whole: the received streams' counters and
// jitter; the sent bytes and RTT; the video frames, rate and resolution.
// An RTT of 0 (none measured) is prev's, and so is a codec cur lacks.
func mergeStats(prev, cur *Stats) *Stats {
	if cur == nil || prev == nil {
		return cmp.Or(cur, prev)
	}
	m := *cur
	if m.PacketsReceived < prev.PacketsReceived || m.BytesReceived < prev.BytesReceived {
		m.PacketsReceived, m.PacketsLost, m.BytesReceived, m.JitterMS = prev.PacketsReceived, prev.PacketsLost, prev.BytesReceived, prev.JitterMS
	}
	if m.BytesSent < prev.BytesSent {
		m.BytesSent, m.RTTMS = prev.BytesSent, cmp.Or(prev.RTTMS, m.RTTMS)
	} else {
		m.RTTMS = cmp.Or(m.RTTMS, prev.RTTMS) // none measured at the end: the last one
	}
	if m.FramesReceived < prev.FramesReceived {
		m.FramesReceived, m.FPS, m.Width, m.Height = prev.FramesReceived, prev.FPS, prev.Width, prev.Height
	}
	m.AudioCodec, m.VideoCodec = cmp.Or(m.AudioCodec, prev.AudioCodec), cmp.Or(m.VideoCodec, prev.VideoCodec)
	m.Codec = codecList(m.AudioCodec, m.VideoCodec)
	return &m
}

// codecList is Stats.Codec: the received codecs, audio then video.
func codecList(audio, video string) string {
	switch {
	case audio == "":
		return video
	case video == "":
		return audio
	}
	return audio + "," + video
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
