package calls

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/pion/ice/v4"
	"github.com/pion/webrtc/v4"

	"github.com/kinmesh/kinmesh/protocols/turn"
)

// Call setup benchmarks (docs/benchmarks.md, "Calls"): the time from the
// caller's offer to its peer connection being connected, for a kinmesh
// call (signalling on a libp2p stream between two hosts, both sides
// sending audio and video) against a raw pion pair in the same process
// (the same offer/answer and trickled candidates handed over by function
// call, the same tracks, the same ICE settings: loopback candidates, no
// mDNS, UDP, kinmesh's acceptance waits), directly, with the caller
// relay-only through a TURN server on loopback, and with the callee's
// device set to relay-only. Each iteration is one call, hung up before
// the next.
//
//	go test -run '^$' -bench BenchmarkCallSetup ./protocols/calls/

func BenchmarkCallSetup(b *testing.B)      { benchSetup(b, false, false) }
func BenchmarkCallSetupRelay(b *testing.B) { benchSetup(b, true, false) }

// BenchmarkCallSetupRelayCallee: the callee's device takes calls
// relay-only (its setting, which its Ring tells the caller). The raw
// pair's offerer is told as much: it waits for no better pair than a
// relay one, as the kinmesh caller now does.
func BenchmarkCallSetupRelayCallee(b *testing.B) { benchSetup(b, false, true) }

func benchSetup(b *testing.B, relay, calleeRelay bool) {
	r := startRelay(b, turn.WithAccountQuota(1<<16, 1<<30), turn.WithMaxAllocations(1<<16), turn.WithIssueRate(1<<20, 1<<20), turn.WithIPIssueRate(1<<20, 1<<20))
	lim := []Option{WithLimits(Limits{InvitesPerMinute: 1 << 20, InviteBurst: 1 << 20})}
	yOpts := append([]Option{WithForceRelay(func() bool { return calleeRelay })}, lim...)
	x, y := newDevice(b, deviceConfig{relay: r, opts: lim}), newDevice(b, deviceConfig{relay: r, opts: yOpts})
	befriend(b, x, y)
	servers := func() []webrtc.ICEServer {
		cr := r.srv.Issue(make([]byte, 32))
		return []webrtc.ICEServer{{URLs: cr.URLs, Username: cr.Username, Credential: cr.Password}}
	}

	var ours, raw, whole time.Duration
	for b.Loop() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		// kinmesh: Call, ring, accept, offer … connected.
		start := time.Now()
		c, err := x.svc.Call(ctx, y.account(), Options{Media: media(b), ForceRelay: relay})
		if err != nil {
			b.Fatal(err)
		}
		ring := y.incoming(ctx, x.account())
		if _, err := y.svc.Accept(ctx, ring.ID, Options{Media: media(b)}); err != nil {
			b.Fatal(err)
		}
		info := x.waitState(ctx, c.ID(), StateConnected)
		whole += time.Since(start)
		ours += time.Duration(info.SetupMS) * time.Millisecond
		if (relay || calleeRelay) && info.Path != PathRelay {
			b.Fatalf("path %s, want relay", info.Path)
		}
		_ = x.svc.HangUp(ctx, c.ID())
		x.waitState(ctx, c.ID(), StateEnded)
		y.waitState(ctx, ring.ID, StateEnded)

		// The baseline: two raw pion peer connections.
		var srv []webrtc.ICEServer
		if relay || calleeRelay {
			srv = servers()
		}
		d, err := rawPair(ctx, srv, relay, calleeRelay)
		if err != nil {
			b.Fatal(err)
		}
		raw += d
		cancel()
	}
	n := float64(b.N)
	b.ReportMetric(float64(ours.Microseconds())/1000/n, "setup-ms")
	b.ReportMetric(float64(raw.Microseconds())/1000/n, "raw-setup-ms")
	b.ReportMetric(float64(ours)/float64(raw), "setup-x-vs-raw")
	b.ReportMetric(float64(whole.Microseconds())/1000/n, "call-to-connected-ms")
}

// rawPair connects two pion peer connections in this process and returns
// the time from the offer to the offerer being connected: both relay-only
// if relay, the answerer alone if answererRelay (the offerer then waits
// for no better pair than a relay one).
func rawPair(ctx context.Context, servers []webrtc.ICEServer, relay, answererRelay bool) (time.Duration, error) {
	newPC := func(relay, waitNoRelay bool) (*webrtc.PeerConnection, error) {
		m := &webrtc.MediaEngine{}
		if err := m.RegisterDefaultCodecs(); err != nil {
			return nil, err
		}
		se := webrtc.SettingEngine{}
		se.SetIncludeLoopbackCandidate(true)
		se.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
		se.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4, webrtc.NetworkTypeUDP6})
		se.SetPrflxAcceptanceMinWait(500 * time.Millisecond)
		se.SetRelayAcceptanceMinWait(500 * time.Millisecond)
		if relay || waitNoRelay {
			se.SetRelayAcceptanceMinWait(0)
		}
		cfg := webrtc.Configuration{ICEServers: servers, BundlePolicy: webrtc.BundlePolicyMaxBundle}
		if relay {
			cfg.ICETransportPolicy = webrtc.ICETransportPolicyRelay
		}
		pc, err := webrtc.NewAPI(webrtc.WithMediaEngine(m), webrtc.WithSettingEngine(se)).NewPeerConnection(cfg)
		if err != nil {
			return nil, err
		}
		for _, mt := range []string{webrtc.MimeTypeOpus, webrtc.MimeTypeVP8} {
			tr, err := webrtc.NewTrackLocalStaticSample(webrtc.RTPCodecCapability{MimeType: mt}, mt, "raw")
			if err != nil {
				return nil, err
			}
			if _, err := pc.AddTrack(tr); err != nil {
				return nil, err
			}
		}
		return pc, nil
	}
	a, err := newPC(relay, answererRelay)
	if err != nil {
		return 0, err
	}
	defer a.Close()
	bpc, err := newPC(relay || answererRelay, false)
	if err != nil {
		return 0, err
	}
	defer bpc.Close()
	// Trickle candidates once the other side has its remote description.
	trickle := func(from, to *webrtc.PeerConnection, ready <-chan struct{}) {
		var mu sync.Mutex
		var held []webrtc.ICECandidateInit
		open := false
		go func() {
			<-ready
			mu.Lock()
			open = true
			for _, c := range held {
				_ = to.AddICECandidate(c)
			}
			mu.Unlock()
		}()
		from.OnICECandidate(func(c *webrtc.ICECandidate) {
			if c == nil {
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if open {
				_ = to.AddICECandidate(c.ToJSON())
			} else {
				held = append(held, c.ToJSON())
			}
		})
	}
	aReady, bReady := make(chan struct{}), make(chan struct{})
	trickle(a, bpc, bReady)
	trickle(bpc, a, aReady)
	connected := make(chan struct{})
	var once sync.Once
	a.OnConnectionStateChange(func(s webrtc.PeerConnectionState) {
		if s == webrtc.PeerConnectionStateConnected {
			once.Do(func() { close(connected) })
		}
	})
	start := time.Now()
	offer, err := a.CreateOffer(nil)
	if err != nil {
		return 0, err
	}
	if err := a.SetLocalDescription(offer); err != nil {
		return 0, err
	}
	if err := bpc.SetRemoteDescription(offer); err != nil {
		return 0, err
	}
	close(bReady)
	answer, err := bpc.CreateAnswer(nil)
	if err != nil {
		return 0, err
	}
	if err := bpc.SetLocalDescription(answer); err != nil {
		return 0, err
	}
	if err := a.SetRemoteDescription(answer); err != nil {
		return 0, err
	}
	close(aReady)
	select {
	case <-connected:
		return time.Since(start), nil
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}
