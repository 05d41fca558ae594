package calls

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/pion/interceptor/pkg/stats"
	"github.com/pion/webrtc/v4"

	"github.com/kinmesh/kinmesh/protocols/contact"
	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/protocols/turn"
)

// Call is one call, live until it ends. Its state machine runs in one
// goroutine (run) that owns the signalling stream and the peer
// connection; everything else (frames read, pion's callbacks, the app's
// Accept and HangUp) reaches it as events. Info is safe to call any time.
type Call struct {
	s    *Service
	id   string
	wire [callIDSize]byte
	peer e2ee.AccountID
	dev  peer.ID // set before run, or by rekey (under s.mu) before frames flow
	dir  Direction
	opts Options

	ctx    context.Context // ends with the call
	cancel context.CancelFunc
	events chan event
	done   chan struct{}

	// Owned by run.
	rec           contact.Signed // outgoing: the callee's record
	servers       []webrtc.ICEServer
	relay         bool
	peerRelayOnly bool // outgoing: the callee's Ring said it takes calls relay-only
	sig           *sigConn
	sigByCaller   bool // sig was opened by the caller (the invite's stream, or a caller's resume)
	pc            *webrtc.PeerConnection
	phase         phase
	timer         *time.Timer
	restartT      *time.Timer
	offerSDP      string                    // caller: the offer made while ringing
	offerAt       time.Time                 // the first offer sent (caller) or received (callee)
	remoteSet     bool                      // the current remote description is set
	hadRemote     bool                      // a remote description was ever set
	pendingIn     []webrtc.ICECandidateInit // remote candidates before the description
	canSend       bool                      // local candidates may go out
	queuedOut     []frame                   // local candidates held until then
	outbox        []frame                   // frames held while the stream is being resumed
	resuming      bool
	localCands    int
	remoteCands   int
	malformed     int
	restarts      int
	tracksAdded   bool
	played        bool
	ended         bool
	remoteMedia   [2]bool // what the caller said it sends (incoming)

	tracks sync.WaitGroup // media, RTCP and remote-track goroutines

	// dialMu hands the stream dial opened to run: dialed holds it until
	// onDialed takes it; over is set once run's loop has finished, after
	// which dial resets what it opened instead (TestHangUpWhileDialing).
	dialMu sync.Mutex
	dialed *sigConn
	over   bool

	mu     sync.Mutex // guards the fields below
	info   Info
	pcRef  *webrtc.PeerConnection
	getter stats.Getter
	codecs [2]string // received audio, video codec
	frames *frameCounter
	rttMS  float64 // the last RTT measured
	closed bool    // no more track goroutines
}

type phase uint8

const (
	phaseDialing      phase = iota + 1 // outgoing: reaching the callee, sending the invite
	phaseInvited                       // outgoing: waiting for Ring
	phaseRinging                       // ringing
	phaseConnecting                    // accepted, setting up
	phaseConnected                     // media can flow
	phaseReconnecting                  // the connection failed; waiting for an ICE restart
)

type evKind uint8

const (
	evFrame        evKind = iota + 1 // f from sig
	evBadFrame                       // a frame from sig failed validation (f.kind, err)
	evStreamEnd                      // sig ended (err)
	evStream                         // a new stream for the call (sig)
	evDialed                         // outgoing: sig to dev with the invite sent, or err
	evResumeFailed                   // a stream of ours could not be opened (err)
	evAccept                         // the app accepts (opts, servers, relay)
	evHangup                         // the app hangs up
	evCandidate                      // a local ICE candidate (nil: gathering done)
	evPCState                        // the peer connection's state changed
	evICEState                       // the ICE connection's state changed
	evTest                           // tests: run fn in the loop (export_test.go)
)

type event struct {
	kind     evKind
	f        frame
	sig      *sigConn
	dev      peer.ID
	err      error
	cand     *webrtc.ICECandidate
	pcState  webrtc.PeerConnectionState
	iceState webrtc.ICEConnectionState
	own      bool // evStream: a stream this side opened
	opts     *Options
	servers  []webrtc.ICEServer
	relay    bool
	reply    chan error
	fn       func()
}

// ID returns this side's id of the call.
func (c *Call) ID() string { return c.id }

// Done is closed when the call has ended.
func (c *Call) Done() <-chan struct{} { return c.done }

// Info returns the call as the API shows it, with live statistics while
// it is connected.
func (c *Call) Info() Info {
	c.mu.Lock()
	i := c.info
	c.mu.Unlock()
	if i.State == StateConnected {
		if st := c.collectStats(); st != nil {
			i.Stats = st
		}
		i.DurationS = c.s.cfg.now().Sub(i.ConnectedAt).Seconds()
	}
	return i
}

func (c *Call) state() State {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.info.State
}

func (c *Call) setMedia(o Options) {
	c.info.Audio, c.info.Video = false, false
	if o.Media == nil {
		return
	}
	for _, t := range o.Media.Tracks() {
		switch t.Kind() {
		case webrtc.RTPCodecTypeAudio:
			c.info.Audio = true
		case webrtc.RTPCodecTypeVideo:
			c.info.Video = true
		}
	}
}

// post hands e to the call's loop; false once the call has ended.
func (c *Call) post(e event) bool {
	select {
	case c.events <- e:
		return true
	case <-c.done:
		return false
	case <-c.ctx.Done():
		return false
	}
}

// command posts e and waits for the loop's answer.
func (c *Call) command(ctx context.Context, e event) error {
	e.reply = make(chan error, 1)
	if !c.post(e) {
		if e.kind == evAccept {
			return ErrNotRinging
		}
		return nil
	}
	select {
	case err := <-e.reply:
		return err
	case <-c.done:
		if e.kind == evAccept {
			return ErrNotRinging
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// run is the call's loop.
func (c *Call) run() {
	c.timer = time.NewTimer(time.Hour)
	c.restartT = time.NewTimer(time.Hour)
	c.restartT.Stop()
	defer c.timer.Stop()
	defer c.restartT.Stop()
	if c.dir == DirectionOut {
		c.phase = phaseDialing
		c.deadline(reachWait*time.Duration(max(1, len(c.rec.Devices))) + inviteDeadline)
		c.s.wg.Go(c.dial)
	} else {
		c.phase = phaseRinging
		c.deadline(c.s.cfg.limits.RingTimeout)
		c.startReader(c.sig)
	}
	tick := time.NewTicker(statsEvery)
	defer tick.Stop()
	for !c.ended {
		select {
		case e := <-c.events:
			c.handle(e)
		case <-c.timer.C:
			c.timeout()
		case <-c.restartT.C:
			c.maybeRestart()
		case <-tick.C:
			c.tick()
		case <-c.s.ctx.Done():
			c.endWith(ReasonShutdown, &frame{kind: kindHangup, reason: reasonHangup})
		}
	}
	c.dialMu.Lock()
	c.over = true
	c.dialMu.Unlock()
	if sig := c.takeDialed(); sig != nil {
		sig.reset()
	}
}

func (c *Call) deadline(d time.Duration) {
	c.timer.Stop()
	select {
	case <-c.timer.C:
	default:
	}
	c.timer.Reset(d)
}

// dial reaches the callee's device and sends the invite.
func (c *Call) dial() {
	ctx := c.ctx
	dev, err := c.s.reach(ctx, c.rec)
	if err != nil {
		c.post(event{kind: evDialed, err: fmt.Errorf("reach %s: %w", c.peer, err)})
		return
	}
	sig, err := c.s.open(ctx, dev)
	if err != nil {
		c.post(event{kind: evDialed, err: fmt.Errorf("open a signalling stream to %s: %w", dev, err)})
		return
	}
	inv := frame{kind: kindInvite, callID: c.wire, account: c.s.self.Account, record: c.s.self.Record().Raw}
	inv.audio, inv.video = c.info.Audio, c.info.Video
	if err := sig.write(inv); err != nil {
		sig.reset()
		c.post(event{kind: evDialed, err: err})
		return
	}
	if h := c.s.cfg.afterInvite; h != nil {
		h()
	}
	// The loop may have ended (the app hung up) before it takes the
	// stream: then the stream is reset, here or when the loop finishes,
	// and the callee, ringing already, stops at once (missed) instead of
	// ringing to its timeout.
	c.dialMu.Lock()
	if c.over {
		c.dialMu.Unlock()
		sig.reset()
		return
	}
	c.dialed = sig
	c.dialMu.Unlock()
	c.post(event{kind: evDialed, dev: dev})
}

// takeDialed returns the stream dial opened, if it hasn't been taken.
func (c *Call) takeDialed() *sigConn {
	c.dialMu.Lock()
	defer c.dialMu.Unlock()
	sig := c.dialed
	c.dialed = nil
	return sig
}

// startReader reads sig's frames into the loop.
func (c *Call) startReader(sig *sigConn) {
	c.s.wg.Go(func() {
		for {
			f, err := sig.read(maxFrame)
			var e event
			switch {
			case err == nil:
				e = event{kind: evFrame, f: f, sig: sig}
			case errors.Is(err, ErrMalformed):
				e = event{kind: evBadFrame, f: f, sig: sig, err: err}
			default:
				c.post(event{kind: evStreamEnd, sig: sig, err: err})
				return
			}
			if !c.post(e) {
				return
			}
		}
	})
}

func (c *Call) handle(e event) {
	switch e.kind {
	case evFrame:
		if e.sig == c.sig {
			c.onFrame(e.f)
		}
	case evBadFrame:
		if e.sig != c.sig {
			return
		}
		c.s.tr.frameRejected(e.f.kind.String())
		c.s.log.Debug("unusable signalling frame", "call", c.id, "kind", e.f.kind, "err", e.err)
		c.malformed++
		if e.f.kind != kindCandidate || c.malformed > maxMalformed {
			c.protocolError()
		}
	case evStreamEnd:
		if e.sig != c.sig {
			return
		}
		c.sig = nil
		if errors.Is(e.err, errFlood) || errors.Is(e.err, ErrTooLarge) {
			c.s.tr.frameRejected("flood")
			c.protocolError()
			return
		}
		c.onStreamEnd()
	case evStream:
		// Both sides may resume at once: the stream the caller opened wins
		// on both, so they end up on the same one.
		byCaller := e.own == (c.dir == DirectionOut)
		if e.own {
			c.resuming = false
		}
		if c.sig != nil && (c.sigByCaller || !byCaller) {
			e.sig.reset()
			break
		}
		if c.sig != nil {
			c.sig.reset()
		}
		c.sig, c.sigByCaller = e.sig, byCaller
		c.startReader(e.sig)
		out := c.outbox
		c.outbox = nil
		for _, f := range out {
			c.send(f)
		}
	case evResumeFailed:
		c.resuming = false
		c.s.log.Debug("could not resume signalling", "call", c.id, "err", e.err)
	case evDialed:
		c.onDialed(e)
	case evAccept:
		e.reply <- c.onAccept(e)
	case evHangup:
		c.onHangup()
		e.reply <- nil
	case evCandidate:
		c.onLocalCandidate(e.cand)
	case evPCState:
		c.onPCState(e.pcState)
	case evICEState:
		c.onICEState(e.iceState)
	case evTest:
		e.fn()
	}
}

func (c *Call) onDialed(e event) {
	e.sig = c.takeDialed()
	if c.phase != phaseDialing {
		if e.sig != nil {
			e.sig.reset()
		}
		return
	}
	if e.err != nil {
		c.s.log.Debug("call could not reach the callee", "call", c.id, "err", e.err)
		c.endWith(ReasonUnreachable, nil)
		return
	}
	c.s.rekey(c, e.dev)
	c.sig, c.sigByCaller = e.sig, true
	c.startReader(e.sig)
	c.phase = phaseInvited
	c.deadline(inviteDeadline)
}

func (c *Call) onFrame(f frame) {
	switch f.kind {
	case kindHangup:
		switch {
		case c.dir == DirectionIn && c.phase == phaseRinging:
			c.endWith(ReasonMissed, nil)
		case f.reason == reasonFailed && c.phase == phaseConnecting:
			c.endWith(ReasonFailed, nil) // the other side could not set the call up
		default:
			c.endWith(ReasonRemoteHangup, nil)
		}
		return
	case kindCandidate:
		c.onRemoteCandidate(f)
		return
	}
	if c.dir == DirectionOut {
		switch {
		case f.kind == kindRing && c.phase == phaseInvited:
			c.phase, c.peerRelayOnly = phaseRinging, f.relayOnly
			c.deadline(c.s.cfg.limits.RingTimeout + ringGrace)
			if err := c.prepareOffer(); err != nil {
				c.s.log.Debug("prepare offer", "call", c.id, "err", err)
				c.endWith(ReasonFailed, &frame{kind: kindHangup, reason: reasonFailed})
			}
		case f.kind == kindBusy && c.phase <= phaseRinging:
			c.endWith(ReasonBusy, nil)
		case f.kind == kindReject && c.phase <= phaseRinging:
			c.endWith(rejectReason(f.reason), nil)
		case f.kind == kindAccept && c.phase == phaseRinging:
			c.onAccepted()
		case f.kind == kindAnswer && c.phase >= phaseConnecting && c.pc != nil:
			c.onAnswer(f.sdp)
		default:
			c.s.tr.frameRejected(f.kind.String())
			c.protocolError()
		}
		return
	}
	switch {
	case f.kind == kindOffer && c.phase >= phaseConnecting && c.pc != nil:
		c.onOffer(f)
	default:
		c.s.tr.frameRejected(f.kind.String())
		c.protocolError()
	}
}

func rejectReason(r reason) string {
	switch r {
	case reasonDeclined:
		return ReasonDeclined
	case reasonUnavailable:
		return ReasonUnavailable
	case reasonTimeout:
		return ReasonNoAnswer
	case reasonRateLimited:
		return ReasonRateLimited
	case reasonMalformed:
		return ReasonProtocolError
	}
	return ReasonFailed
}

func (c *Call) protocolError() {
	c.endWith(ReasonProtocolError, &frame{kind: kindHangup, reason: reasonMalformed})
}

func (c *Call) onStreamEnd() {
	switch {
	case c.phase == phaseConnected || c.phase == phaseReconnecting:
		// The call goes on; a new stream is opened when one is needed.
	case c.dir == DirectionIn && c.phase == phaseRinging:
		c.endWith(ReasonMissed, nil)
	default:
		c.endWith(ReasonSignallingLost, nil)
	}
}

func (c *Call) timeout() {
	switch c.phase {
	case phaseDialing, phaseInvited:
		c.endWith(ReasonUnreachable, &frame{kind: kindHangup, reason: reasonTimeout})
	case phaseRinging:
		if c.dir == DirectionIn {
			c.endWith(ReasonMissed, &frame{kind: kindReject, reason: reasonTimeout})
		} else {
			c.endWith(ReasonNoAnswer, &frame{kind: kindHangup, reason: reasonTimeout})
		}
	case phaseConnecting:
		c.endWith(ReasonConnectionFailed, &frame{kind: kindHangup, reason: reasonTimeout})
	case phaseReconnecting:
		c.endWith(ReasonConnectionLost, &frame{kind: kindHangup, reason: reasonFailed})
	}
}

func (c *Call) onHangup() {
	switch {
	case c.dir == DirectionIn && c.phase == phaseRinging:
		c.endWith(ReasonDeclined, &frame{kind: kindReject, reason: reasonDeclined})
	default:
		c.endWith(ReasonHangup, &frame{kind: kindHangup, reason: reasonHangup})
	}
}

// newPeer builds the call's peer connection and wires its callbacks.
func (c *Call) newPeer() error {
	pc, getter, err := newPeer(peerConfig{
		servers: c.servers, forceRelay: c.relay, peerRelayOnly: c.peerRelayOnly,
		loopback: c.s.cfg.loopback, net: c.s.cfg.net, log: c.s.log,
	})
	if err != nil {
		return err
	}
	pc.OnICECandidate(func(cand *webrtc.ICECandidate) { c.post(event{kind: evCandidate, cand: cand}) })
	pc.OnConnectionStateChange(func(st webrtc.PeerConnectionState) { c.post(event{kind: evPCState, pcState: st}) })
	pc.OnICEConnectionStateChange(func(st webrtc.ICEConnectionState) { c.post(event{kind: evICEState, iceState: st}) })
	pc.OnTrack(c.onTrack)
	c.pc = pc
	c.mu.Lock()
	c.pcRef, c.getter = pc, getter
	c.mu.Unlock()
	return nil
}

// addTracks adds the media's tracks (and, for the caller, receive-only
// transceivers for the kinds it doesn't send).
func (c *Call) addTracks() error {
	if c.tracksAdded {
		return nil
	}
	c.tracksAdded = true
	sends := map[webrtc.RTPCodecType]bool{}
	if c.opts.Media != nil {
		for _, t := range c.opts.Media.Tracks() {
			snd, err := c.pc.AddTrack(t)
			if err != nil {
				return fmt.Errorf("add %s track: %w", t.Kind(), err)
			}
			sends[t.Kind()] = true
			c.goTrack(func() {
				for {
					if _, _, err := snd.ReadRTCP(); err != nil {
						return
					}
				}
			})
		}
	}
	if c.dir == DirectionIn {
		return nil
	}
	for _, k := range []webrtc.RTPCodecType{webrtc.RTPCodecTypeAudio, webrtc.RTPCodecTypeVideo} {
		if !sends[k] {
			if _, err := c.pc.AddTransceiverFromKind(k, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionRecvonly}); err != nil {
				return fmt.Errorf("add %s transceiver: %w", k, err)
			}
		}
	}
	return nil
}

// goTrack runs f as a track goroutine, unless the call has ended.
func (c *Call) goTrack(f func()) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	c.tracks.Go(f)
	return true
}

// onTrack is pion's callback for a remote track (in a goroutine of
// pion's): it reads the track (or hands it to the app) until it ends.
func (c *Call) onTrack(t *webrtc.TrackRemote, r *webrtc.RTPReceiver) {
	rt := &RemoteTrack{t: t}
	c.mu.Lock()
	i := 0
	if t.Kind() == webrtc.RTPCodecTypeVideo {
		i = 1
		c.frames = newFrameCounter(t.Codec().MimeType, c.s.cfg.now)
		rt.frames = c.frames
	}
	c.codecs[i] = codecName(t.Codec().MimeType)
	c.mu.Unlock()
	c.goTrack(func() {
		for {
			if _, _, err := r.ReadRTCP(); err != nil {
				return
			}
		}
	})
	c.goTrack(func() {
		if c.opts.OnTrack != nil {
			c.opts.OnTrack(rt)
			return
		}
		for {
			if _, err := rt.ReadRTP(); err != nil {
				return
			}
		}
	})
}

// prepareOffer builds the caller's peer connection and offer while the
// callee's device rings, so gathering (and TURN allocation) is under way
// when the callee answers. Candidates wait until the offer has gone.
func (c *Call) prepareOffer() error {
	if err := c.newPeer(); err != nil {
		return err
	}
	if err := c.addTracks(); err != nil {
		return err
	}
	offer, err := c.pc.CreateOffer(nil)
	if err != nil {
		return err
	}
	if err := c.pc.SetLocalDescription(offer); err != nil {
		return err
	}
	c.offerSDP = offer.SDP
	return nil
}

// onAccepted: the callee answered; the offer goes out.
func (c *Call) onAccepted() {
	c.setPhase(phaseConnecting, StateConnecting)
	c.deadline(setupTimeout)
	c.offerAt = c.s.cfg.now()
	c.send(frame{kind: kindOffer, sdp: c.offerSDP})
	c.canSend = true
	for _, f := range c.queuedOut {
		c.send(f)
	}
	c.queuedOut = nil
}

// onAccept: the app answers an incoming call.
func (c *Call) onAccept(e event) error {
	if c.dir != DirectionIn || c.phase != phaseRinging {
		return ErrNotRinging
	}
	c.opts, c.servers, c.relay = *e.opts, e.servers, e.relay
	c.mu.Lock()
	c.setMedia(c.opts)
	c.info.ForceRelay = c.relay
	c.mu.Unlock()
	if err := c.newPeer(); err != nil {
		c.endWith(ReasonFailed, &frame{kind: kindHangup, reason: reasonFailed})
		return fmt.Errorf("calls: accept: %w", err)
	}
	c.setPhase(phaseConnecting, StateConnecting)
	c.deadline(setupTimeout)
	c.send(frame{kind: kindAccept})
	return nil
}

// onOffer: the callee gets the caller's offer (or an ICE restart).
func (c *Call) onOffer(f frame) {
	if err := c.pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeOffer, SDP: f.sdp}); err != nil {
		c.s.log.Debug("unusable offer", "call", c.id, "err", err)
		c.s.tr.frameRejected("offer")
		c.protocolError()
		return
	}
	if c.offerAt.IsZero() {
		c.offerAt = c.s.cfg.now()
	}
	if f.restart {
		c.localCands, c.remoteCands = 0, 0
	}
	c.remoteSet, c.hadRemote = true, true
	if err := c.addTracks(); err != nil {
		c.s.log.Debug("add tracks", "call", c.id, "err", err)
		c.endWith(ReasonFailed, &frame{kind: kindHangup, reason: reasonFailed})
		return
	}
	answer, err := c.pc.CreateAnswer(nil)
	if err == nil {
		err = c.pc.SetLocalDescription(answer)
	}
	if err != nil {
		c.s.log.Debug("answer", "call", c.id, "err", err)
		c.endWith(ReasonFailed, &frame{kind: kindHangup, reason: reasonFailed})
		return
	}
	c.send(frame{kind: kindAnswer, sdp: answer.SDP})
	c.canSend = true
	for _, q := range c.queuedOut {
		c.send(q)
	}
	c.queuedOut = nil
	c.flushRemote()
}

// onAnswer: the caller gets the answer to its offer.
func (c *Call) onAnswer(sdp string) {
	if c.remoteSet && c.pc.SignalingState() == webrtc.SignalingStateStable {
		c.protocolError() // an answer to no offer
		return
	}
	if err := c.pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: sdp}); err != nil {
		c.s.log.Debug("unusable answer", "call", c.id, "err", err)
		c.s.tr.frameRejected("answer")
		c.protocolError()
		return
	}
	c.remoteSet, c.hadRemote = true, true
	c.flushRemote()
}

// onRemoteCandidate takes a trickled candidate. Candidates follow the
// offer (from the caller) or the answer (from the callee) on the stream;
// only during an ICE restart, when they may come on a resumed stream, are
// they held until the new description is set.
func (c *Call) onRemoteCandidate(f frame) {
	if c.pc == nil || c.phase < phaseConnecting || !c.hadRemote {
		c.s.tr.frameRejected("candidate")
		c.protocolError()
		return
	}
	if f.end {
		return
	}
	c.remoteCands++
	if c.remoteCands > MaxCandidates {
		c.s.tr.frameRejected("candidate")
		return // ignored: more than any real device gathers
	}
	if c.relay && !f.candRelay && !turn.GloballyReachable(f.candAddr) {
		// Relay-only, every check goes through a TURN allocation, and
		// relays don't relay to loopback, private and other non-global
		// addresses (nor to their own but at relay ports). A pair towards
		// such a candidate never succeeds, yet outranks the relay pairs
		// that do: pion's controlling agent nominates a pair at once only
		// if it is the best pair not failed, so the call would wait for
		// its next check round (200 ms) to nominate the working one.
		c.s.log.Debug("relay-only call: a candidate no relay reaches, left out", "call", c.id)
		return
	}
	mid, idx := f.mid, f.mline
	init := webrtc.ICECandidateInit{Candidate: f.candidate, SDPMid: &mid, SDPMLineIndex: &idx}
	if !c.remoteSet {
		if len(c.pendingIn) < MaxCandidates {
			c.pendingIn = append(c.pendingIn, init)
		}
		return
	}
	c.addRemote(init)
}

func (c *Call) addRemote(init webrtc.ICECandidateInit) {
	if err := c.pc.AddICECandidate(init); err != nil {
		c.s.tr.frameRejected("candidate")
		c.s.log.Debug("unusable candidate", "call", c.id, "err", err)
		c.malformed++
		if c.malformed > maxMalformed {
			c.protocolError()
		}
	}
}

func (c *Call) flushRemote() {
	in := c.pendingIn
	c.pendingIn = nil
	for _, init := range in {
		c.addRemote(init)
	}
}

func (c *Call) onLocalCandidate(cand *webrtc.ICECandidate) {
	if c.pc == nil {
		return
	}
	var f frame
	if cand == nil {
		if c.relay && c.localCands == 0 && c.phase < phaseConnected {
			// Relay-only, and gathering ended without a relay candidate (the
			// TURN server refused the allocation — a quota, credentials — or
			// could not be reached): the call can't connect without showing
			// this device's address, so it ends now rather than at the
			// setup timeout.
			c.s.log.Debug("relay-only call without a relay candidate", "call", c.id)
			c.endWith(ReasonNoRelay, &frame{kind: kindHangup, reason: reasonFailed})
			return
		}
		f = frame{kind: kindCandidate, end: true}
	} else {
		c.localCands++
		if c.localCands > MaxCandidates {
			return
		}
		init := cand.ToJSON()
		f = frame{kind: kindCandidate, candidate: init.Candidate}
		if init.SDPMid != nil {
			f.mid = *init.SDPMid
		}
		if init.SDPMLineIndex != nil {
			f.mline = *init.SDPMLineIndex
		}
	}
	if !c.canSend {
		c.queuedOut = append(c.queuedOut, f)
		return
	}
	c.send(f)
}

// send writes f on the signalling stream; without one (it broke after
// the call connected) f waits for a resumed stream.
func (c *Call) send(f frame) {
	if c.sig != nil {
		if err := c.sig.write(f); err == nil {
			return
		}
		c.sig.reset()
		c.sig = nil
	}
	if c.phase < phaseConnected {
		c.endWith(ReasonSignallingLost, nil)
		return
	}
	if len(c.outbox) < 2*MaxCandidates+8 {
		c.outbox = append(c.outbox, f)
	}
	c.resume()
}

// resume opens a new signalling stream to the other device (in the
// background) and carries the call's frames on it.
func (c *Call) resume() {
	if c.resuming {
		return
	}
	c.resuming = true
	dev, acct := c.dev, c.peer
	c.s.wg.Go(func() {
		ctx, cancel := context.WithTimeout(c.ctx, resumeTimeout)
		defer cancel()
		if rec, ok := c.s.contacts.Contact(acct); ok && !c.s.connected(dev) {
			rec.Devices = []peer.ID{dev}
			if _, err := c.s.reach(ctx, rec); err != nil {
				c.post(event{kind: evResumeFailed, err: err})
				return
			}
		}
		sig, err := c.s.open(ctx, dev)
		if err == nil {
			if err = sig.write(frame{kind: kindResume, callID: c.wire}); err != nil {
				sig.reset()
			}
		}
		if err != nil {
			c.post(event{kind: evResumeFailed, err: err})
			return
		}
		if !c.post(event{kind: evStream, sig: sig, own: true}) {
			sig.reset()
		}
	})
}

func (c *Call) onPCState(st webrtc.PeerConnectionState) {
	switch st {
	case webrtc.PeerConnectionStateConnected:
		c.onConnected()
	case webrtc.PeerConnectionStateFailed:
		switch {
		case c.phase == phaseConnecting:
			c.endWith(ReasonConnectionFailed, &frame{kind: kindHangup, reason: reasonFailed})
		case c.dir == DirectionOut && c.restarts < maxRestarts:
			c.restart()
			c.phase = phaseReconnecting
			c.deadline(reconnectWait)
		case c.phase == phaseConnected:
			c.phase = phaseReconnecting
			c.deadline(reconnectWait)
		}
	case webrtc.PeerConnectionStateClosed:
		// The other side closed its connection (DTLS close_notify): it hung
		// up, even if its Hangup frame was lost.
		c.endWith(ReasonRemoteHangup, nil)
	}
}

func (c *Call) onICEState(st webrtc.ICEConnectionState) {
	switch st {
	case webrtc.ICEConnectionStateDisconnected:
		if c.dir == DirectionOut && c.phase == phaseConnected {
			c.restartT.Reset(restartAfter)
		}
	case webrtc.ICEConnectionStateConnected, webrtc.ICEConnectionStateCompleted:
		c.restartT.Stop()
	}
}

// maybeRestart restarts ICE if the connection is still down.
func (c *Call) maybeRestart() {
	if c.pc == nil || c.phase != phaseConnected {
		return
	}
	if st := c.pc.ICEConnectionState(); st == webrtc.ICEConnectionStateDisconnected || st == webrtc.ICEConnectionStateFailed {
		c.restart()
	}
}

// restart starts an ICE restart (the caller's job, so the two sides never
// offer at once): a new offer with new ICE credentials goes out, and new
// candidates follow it.
func (c *Call) restart() {
	if c.restarts >= maxRestarts {
		return
	}
	offer, err := c.pc.CreateOffer(&webrtc.OfferOptions{ICERestart: true})
	if err == nil {
		err = c.pc.SetLocalDescription(offer)
	}
	if err != nil {
		c.s.log.Debug("ICE restart", "call", c.id, "err", err)
		return
	}
	c.restarts++
	c.s.tr.restart()
	c.mu.Lock()
	c.info.Restarts = c.restarts
	c.mu.Unlock()
	c.localCands, c.remoteCands, c.remoteSet = 0, 0, false
	c.send(frame{kind: kindOffer, sdp: offer.SDP, restart: true})
}

func (c *Call) onConnected() {
	if c.phase == phaseConnected {
		return
	}
	first := c.phase == phaseConnecting
	c.phase = phaseConnected
	c.timer.Stop()
	now := c.s.cfg.now()
	local, remote := candidateTypes(c.pc)
	c.mu.Lock()
	if first {
		c.info.ConnectedAt = now
		if !c.offerAt.IsZero() {
			c.info.SetupMS = now.Sub(c.offerAt).Milliseconds()
		}
	}
	c.info.State = StateConnected
	c.info.LocalCandidate, c.info.RemoteCandidate, c.info.Path = local, remote, pathOf(local, remote)
	info := c.info
	c.mu.Unlock()
	if first {
		c.s.tr.setup(now.Sub(c.offerAt), info.Path)
		if c.opts.Media != nil && !c.played {
			c.played = true
			media := c.opts.Media
			c.goTrack(func() { media.Play(c.ctx) })
		}
	}
	c.s.emit(c.Info())
}

// tick refreshes a connected call's path and statistics.
func (c *Call) tick() {
	if c.phase != phaseConnected || c.pc == nil {
		return
	}
	local, remote := candidateTypes(c.pc)
	st := c.collectStats()
	c.mu.Lock()
	if local != "" {
		c.info.LocalCandidate, c.info.RemoteCandidate, c.info.Path = local, remote, pathOf(local, remote)
	}
	if st != nil {
		c.info.Stats = st
	}
	c.mu.Unlock()
}

func (c *Call) setPhase(p phase, st State) {
	c.phase = p
	c.mu.Lock()
	c.info.State = st
	if st == StateConnecting && c.info.AnsweredAt.IsZero() {
		c.info.AnsweredAt = c.s.cfg.now()
	}
	c.mu.Unlock()
	c.s.emit(c.Info())
}

// endWith ends the call for reason, first sending fr (if any) to the
// other side.
func (c *Call) endWith(reason string, fr *frame) {
	if c.ended {
		return
	}
	c.ended = true
	st := StateFailed
	switch reason {
	case ReasonHangup, ReasonRemoteHangup, ReasonDeclined, ReasonBusy, ReasonNoAnswer, ReasonMissed:
		st = StateEnded
	case ReasonShutdown:
		if c.phase == phaseConnected {
			st = StateEnded
		}
	}
	if fr != nil && c.sig != nil {
		_ = c.sig.write(*fr)
	}
	var final *Stats
	if c.pc != nil && c.phase >= phaseConnected {
		// Only a call that connected has statistics (and before it did,
		// pion may still be starting the ICE transport collectStats reads,
		// unlocked, for the RTT).
		final = c.collectStats()
	}
	now := c.s.cfg.now()
	c.mu.Lock()
	final = mergeStats(c.info.Stats, final)
	c.info.State, c.info.Reason, c.info.EndedAt = st, reason, now
	if !c.info.ConnectedAt.IsZero() {
		c.info.DurationS = now.Sub(c.info.ConnectedAt).Seconds()
	}
	if final != nil {
		c.info.Stats = final
	}
	c.closed = true
	info := c.info
	c.mu.Unlock()
	c.cancel()
	if c.pc != nil {
		_ = c.pc.Close()
	}
	if c.sig != nil {
		c.sig.close()
		c.sig = nil
	}
	c.tracks.Wait()
	c.s.remove(c)
	c.s.hist.put(context.Background(), info)
	connected := time.Duration(0)
	if !info.ConnectedAt.IsZero() {
		connected = info.EndedAt.Sub(info.ConnectedAt)
	}
	c.s.tr.callEnded(c.dir, st, reason, connected, info.Path)
	c.s.emit(info)
	close(c.done)
}
