package calls

import (
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/pion/ice/v4"
	"github.com/pion/interceptor"
	"github.com/pion/interceptor/pkg/nack"
	"github.com/pion/interceptor/pkg/report"
	"github.com/pion/interceptor/pkg/stats"
	"github.com/pion/transport/v5"
	"github.com/pion/webrtc/v4"

	"github.com/kinmesh/kinmesh/protocols/pionlog"
)

// The codecs calls negotiate: Opus for audio; VP8, then H.264
// (constrained baseline, packetization mode 1) for video. Fewer codecs
// than pion's defaults keep the SDP small.
var (
	videoFeedback = []webrtc.RTCPFeedback{{Type: "ccm", Parameter: "fir"}, {Type: "nack"}, {Type: "nack", Parameter: "pli"}}
	audioCodecs   = []webrtc.RTPCodecParameters{{
		RTPCodecCapability: webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeOpus, ClockRate: 48000, Channels: 2, SDPFmtpLine: "minptime=10;useinbandfec=1"},
		PayloadType:        111,
	}}
	videoCodecs = []webrtc.RTPCodecParameters{{
		RTPCodecCapability: webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeVP8, ClockRate: 90000, RTCPFeedback: videoFeedback},
		PayloadType:        96,
	}, {
		RTPCodecCapability: webrtc.RTPCodecCapability{
			MimeType: webrtc.MimeTypeH264, ClockRate: 90000, RTCPFeedback: videoFeedback,
			SDPFmtpLine: "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
		},
		PayloadType: 102,
	}}
)

// peerConfig is what a call's peer connection is built from.
type peerConfig struct {
	servers    []webrtc.ICEServer
	forceRelay bool
	// peerRelayOnly: the other party said it takes calls relay-only (the
	// caller learns it from Ring), so every pair that can work has its
	// relay candidate and waiting for a better one is in vain.
	peerRelayOnly bool
	loopback      bool
	net           transport.Net // nil: the OS's sockets
	log           *slog.Logger
}

// newPeer builds a peer connection with its own interceptors (NACK, RTCP
// sender and receiver reports, and a stats recorder whose Getter the call
// reads RTT, jitter and loss from).
func newPeer(pc peerConfig) (*webrtc.PeerConnection, stats.Getter, error) {
	lf := pionlog.Factory(pc.log)
	m := &webrtc.MediaEngine{}
	for _, c := range audioCodecs {
		if err := m.RegisterCodec(c, webrtc.RTPCodecTypeAudio); err != nil {
			return nil, nil, err
		}
	}
	for _, c := range videoCodecs {
		if err := m.RegisterCodec(c, webrtc.RTPCodecTypeVideo); err != nil {
			return nil, nil, err
		}
	}
	reg := &interceptor.Registry{}
	if err := webrtc.ConfigureNackWithOptions(m, reg,
		[]nack.GeneratorOption{nack.WithGeneratorLoggerFactory(lf)}, nack.WithResponderLoggerFactory(lf)); err != nil {
		return nil, nil, err
	}
	if err := webrtc.ConfigureRTCPReportsWithOptions(reg,
		[]report.ReceiverOption{report.WithReceiverLoggerFactory(lf)}, report.WithSenderLoggerFactory(lf)); err != nil {
		return nil, nil, err
	}
	sf, err := stats.NewInterceptor(stats.WithLoggerFactory(lf))
	if err != nil {
		return nil, nil, err
	}
	var (
		getterMu sync.Mutex
		getter   stats.Getter
	)
	sf.OnNewPeerConnection(func(_ string, g stats.Getter) {
		getterMu.Lock()
		defer getterMu.Unlock()
		if si, ok := g.(*stats.Interceptor); ok {
			// Called before the interceptor binds any stream.
			k := &keptRecorders{recs: map[uint32]stats.Recorder{}}
			si.RecorderFactory = k.wrap(si.RecorderFactory)
			getter = k
			return
		}
		getter = g
	})
	reg.Add(sf)

	se := webrtc.SettingEngine{LoggerFactory: lf}
	se.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	se.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4, webrtc.NetworkTypeUDP6})
	se.SetIncludeLoopbackCandidate(pc.loopback)
	if pc.net != nil {
		se.SetNet(pc.net)
	}
	// Disconnected after 4 s without consent responses (then an ICE
	// restart), failed after 15 s, keepalives every second.
	se.SetICETimeouts(4*time.Second, 15*time.Second, time.Second)
	// pion's controlling agent waits before it nominates a pair with a
	// server-reflexive (500 ms), peer-reflexive (1 s) or relay (2 s)
	// candidate on either end, in case a better pair turns up. A
	// reflexive pair that works is a direct path through the NATs (NAT
	// traversal mostly ends on a peer-reflexive pair); only a pair of
	// host candidates on one network could beat it, and its checks,
	// sent in the same round and first, answer first. So reflexive
	// pairs are taken at once. A relay pair waits half a second, enough
	// for the direct checks to answer. A call to a relay-only device has
	// nothing better than its relay candidates to wait for; a relay-only
	// call nothing at all, since each of its pairs goes through its own
	// allocation.
	se.SetSrflxAcceptanceMinWait(0)
	se.SetPrflxAcceptanceMinWait(0)
	se.SetRelayAcceptanceMinWait(500 * time.Millisecond)
	if pc.forceRelay || pc.peerRelayOnly {
		se.SetRelayAcceptanceMinWait(0)
	}

	api := webrtc.NewAPI(webrtc.WithMediaEngine(m), webrtc.WithInterceptorRegistry(reg), webrtc.WithSettingEngine(se))
	cfg := webrtc.Configuration{ICEServers: pc.servers, BundlePolicy: webrtc.BundlePolicyMaxBundle, RTCPMuxPolicy: webrtc.RTCPMuxPolicyRequire}
	if pc.forceRelay {
		cfg.ICETransportPolicy = webrtc.ICETransportPolicyRelay
	}
	p, err := api.NewPeerConnection(cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("calls: new peer connection: %w", err)
	}
	getterMu.Lock()
	g := getter
	getterMu.Unlock()
	if g == nil {
		_ = p.Close()
		return nil, nil, fmt.Errorf("calls: new peer connection: no stats recorder")
	}
	return p, g, nil
}

// keptRecorders is a call's stats.Getter: the stats interceptor's
// recorders, kept once their streams end. pion unbinds a stream from the
// interceptor, which forgets its recorder, when the stream's receiver or
// sender stops: when the peer connection closes, and pion closes it by
// itself on the other side's DTLS close_notify, which may well come
// before the other side's Hangup frame. The interceptor's own Get then
// has nothing for the streams of a call that is just ending, while a
// stopped recorder still holds the stream's final statistics.
type keptRecorders struct {
	mu   sync.Mutex
	recs map[uint32]stats.Recorder // by SSRC
}

// wrap returns f, keeping the recorders it makes (the latest for an SSRC
// bound again).
func (k *keptRecorders) wrap(f stats.RecorderFactory) stats.RecorderFactory {
	return func(ssrc uint32, clockRate float64) stats.Recorder {
		r := f(ssrc, clockRate)
		k.mu.Lock()
		k.recs[ssrc] = r
		k.mu.Unlock()
		return r
	}
}

// Get returns the statistics of stream ssrc, live or ended; nil if it
// never had any.
func (k *keptRecorders) Get(ssrc uint32) *stats.Stats {
	k.mu.Lock()
	r, ok := k.recs[ssrc]
	k.mu.Unlock()
	if !ok {
		return nil
	}
	st := r.GetStats()
	return &st
}

// candidateTypes returns the types of the selected candidate pair's ends
// ("", "" before one is selected).
func candidateTypes(p *webrtc.PeerConnection) (local, remote string) {
	sctp := p.SCTP()
	if sctp == nil || sctp.Transport() == nil || sctp.Transport().ICETransport() == nil {
		return "", ""
	}
	pair, err := sctp.Transport().ICETransport().GetSelectedCandidatePair()
	if err != nil || pair == nil || pair.Local == nil || pair.Remote == nil {
		return "", ""
	}
	return pair.Local.Typ.String(), pair.Remote.Typ.String()
}

// pathOf is "relay" if either end of the pair is a TURN relay candidate.
func pathOf(local, remote string) string {
	switch {
	case local == "" || remote == "":
		return ""
	case local == webrtc.ICECandidateTypeRelay.String() || remote == webrtc.ICECandidateTypeRelay.String():
		return PathRelay
	}
	return PathDirect
}
