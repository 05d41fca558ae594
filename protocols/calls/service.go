package calls

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/pion/webrtc/v4"

	"github.com/kinmesh/kinmesh/protocols/contact"
	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/protocols/netkit"
)

// Contacts is what the service needs of the address book: who may call
// this account and be called by it.
type Contacts interface {
	// Contact returns the current signed record of someone this account
	// takes calls from and calls; false for anyone else, whose invites
	// are refused (unavailable) and whom Call refuses (ErrUnknownContact).
	// The embedding app decides who that is: the node answers for friends
	// only (contacts added from their invite), not for everyone whose
	// record it happens to hold.
	Contact(id e2ee.AccountID) (contact.Signed, bool)
	// Blocked reports whether id is blocked: its calls never ring.
	Blocked(id e2ee.AccountID) bool
	// Learn offers a contact's newer signed record (a caller's, from its
	// invite). The book keeps it if it is newer.
	Learn(rec contact.Signed)
}

// Self is this account as calls need it.
type Self struct {
	// Account is this account's id.
	Account e2ee.AccountID
	// Record returns this account's current signed contact record; it
	// travels in invites so a callee with an older one can still tell
	// this device is the account's.
	Record func() contact.Signed
}

// Service places and answers calls for one account. Create it with
// NewService; Close ends every call and stops.
type Service struct {
	h        host.Host
	self     Self
	contacts Contacts
	cfg      config
	log      *slog.Logger
	tr       tracer
	hist     *history

	peerLim *netkit.Limiter[string] // invites per caller peer
	acctLim *netkit.Limiter[string] // invites per caller account
	pending chan struct{}

	ctx     context.Context
	cancel  context.CancelFunc
	streams netkit.Streams // stream handlers and Call: what may start calls
	wg      sync.WaitGroup // calls

	mu     sync.Mutex
	live   map[string]*Call  // by local id
	byWire map[wireKey]*Call // by peer and wire id

	closeOnce sync.Once
}

type wireKey struct {
	peer peer.ID
	id   [callIDSize]byte
}

// NewService serves /kinmesh/call/1.0.0 on h for the account self, taking
// calls from the contacts in contacts.
//
// Defaults (see the Option functions): no STUN/TURN servers; relay-only
// off; calls kept in memory only; no events; Limits' defaults; the real
// clock; slog.Default(); no metrics; no loopback candidates.
func NewService(h host.Host, self Self, contacts Contacts, opts ...Option) (*Service, error) {
	if h == nil || contacts == nil || self.Record == nil {
		return nil, errors.New("calls: NewService needs a host, the account's record and contacts")
	}
	if _, err := e2ee.ParseAccountID(string(self.Account)); err != nil {
		return nil, fmt.Errorf("calls: NewService: %w", err)
	}
	cfg := defaultConfig()
	if err := cfg.limits.defaults(); err != nil {
		return nil, err
	}
	for _, o := range opts {
		if err := o(&cfg); err != nil {
			return nil, err
		}
	}
	if cfg.logger == nil {
		cfg.logger = slog.Default()
	}
	hist, err := loadHistory(context.Background(), cfg.history, cfg.limits.MaxHistory, cfg.now())
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	rate, burst := float64(cfg.limits.InvitesPerMinute)/60, float64(cfg.limits.InviteBurst)
	s := &Service{
		h: h, self: self, contacts: contacts, cfg: cfg,
		log:     cfg.logger.With("component", "calls"),
		tr:      tracer{cfg.tracer},
		hist:    hist,
		peerLim: netkit.NewLimiter[string](cfg.now, rate, burst, cfg.maxTracked),
		acctLim: netkit.NewLimiter[string](cfg.now, rate, burst, cfg.maxTracked),
		pending: make(chan struct{}, 32),
		ctx:     ctx, cancel: cancel,
		live:   map[string]*Call{},
		byWire: map[wireKey]*Call{},
	}
	h.SetStreamHandler(ID, s.handle)
	return s, nil
}

// Close hangs up every live call (telling the other side when it can),
// removes the stream handler and waits for the calls to end. It is safe
// to call more than once.
func (s *Service) Close() error {
	s.closeOnce.Do(func() {
		s.streams.Close()
		s.h.RemoveStreamHandler(ID)
		s.cancel()
		s.streams.Wait() // then no new call starts
		s.wg.Wait()
	})
	return nil
}

// Call calls the contact to. It returns at once with the call ringing;
// reaching the callee's device, the ringing and the setup go on in the
// background (Info, WithEvents). o says what to send (Media), what to do
// with what arrives (OnTrack) and whether to go relay-only.
//
// Errors: ErrUnknownContact, ErrBlocked, ErrTooManyCalls, ErrNoRelay
// (relay-only and no TURN server answered), ErrClosed.
func (s *Service) Call(ctx context.Context, to e2ee.AccountID, o Options) (*Call, error) {
	if to == s.self.Account {
		return nil, fmt.Errorf("%w: that is this account", ErrUnknownContact)
	}
	rec, ok := s.contacts.Contact(to)
	if !ok {
		return nil, ErrUnknownContact
	}
	if s.contacts.Blocked(to) {
		return nil, ErrBlocked
	}
	if len(rec.Devices) == 0 {
		return nil, fmt.Errorf("%w: the contact's record lists no device", ErrUnknownContact)
	}
	if !s.streams.Enter() {
		return nil, ErrClosed
	}
	defer s.streams.Leave()
	relay := o.ForceRelay || s.cfg.forceRelay()
	servers, err := s.iceServers(ctx, relay)
	if err != nil {
		return nil, err
	}
	c := s.newCall(DirectionOut, to, "", o, relay)
	c.servers, c.relay, c.rec = servers, relay, rec
	if _, err := rand.Read(c.wire[:]); err != nil {
		return nil, err
	}
	if err := s.add(c, false); err != nil {
		return nil, err
	}
	s.start(c)
	return c, nil
}

// iceServers fetches the ICE servers for a call; relay-only calls need a
// TURN server.
func (s *Service) iceServers(ctx context.Context, relay bool) ([]webrtc.ICEServer, error) {
	if s.cfg.ice == nil {
		if relay {
			return nil, ErrNoRelay
		}
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	servers, err := s.cfg.ice(ctx)
	hasTURN := slices.ContainsFunc(servers, func(v webrtc.ICEServer) bool {
		return slices.ContainsFunc(v.URLs, func(u string) bool { return len(u) > 5 && u[:5] == "turn:" })
	})
	switch {
	case relay && !hasTURN:
		return nil, fmt.Errorf("%w (%v)", ErrNoRelay, err)
	case err != nil:
		s.log.Debug("no STUN/TURN servers for a call; host candidates only", "err", err)
	}
	return servers, nil
}

// Accept answers the incoming call id with o.
func (s *Service) Accept(ctx context.Context, id string, o Options) (*Call, error) {
	c := s.liveCall(id)
	if c == nil {
		if _, ok := s.hist.get(id); ok {
			return nil, ErrNotRinging
		}
		return nil, ErrNoCall
	}
	if c.dir != DirectionIn {
		return nil, ErrNotRinging
	}
	relay := o.ForceRelay || s.cfg.forceRelay()
	servers, err := s.iceServers(ctx, relay)
	if err != nil {
		return nil, err
	}
	if err := c.command(ctx, event{kind: evAccept, opts: &o, servers: servers, relay: relay}); err != nil {
		return nil, err
	}
	return c, nil
}

// HangUp ends call id: hangs up a live call, declines a ringing one, and
// cancels an outgoing one still ringing. Hanging up an ended call does
// nothing.
func (s *Service) HangUp(ctx context.Context, id string) error {
	c := s.liveCall(id)
	if c == nil {
		if _, ok := s.hist.get(id); ok {
			return nil
		}
		return ErrNoCall
	}
	return c.command(ctx, event{kind: evHangup})
}

// Get returns call id, live or ended.
func (s *Service) Get(id string) (Info, error) {
	if c := s.liveCall(id); c != nil {
		return c.Info(), nil
	}
	if i, ok := s.hist.get(id); ok {
		return i, nil
	}
	return Info{}, ErrNoCall
}

// Live returns the live call id (nil once it ended), for its media and
// Done.
func (s *Service) Live(id string) *Call { return s.liveCall(id) }

// connected reports whether this node has a connection to p.
func (s *Service) connected(p peer.ID) bool {
	return s.h.Network().Connectedness(p) == network.Connected
}

// List returns every call, live and kept, newest first.
func (s *Service) List() []Info {
	s.mu.Lock()
	live := make([]*Call, 0, len(s.live))
	for _, c := range s.live {
		live = append(live, c)
	}
	s.mu.Unlock()
	out := s.hist.list()
	for _, c := range live {
		i := c.Info()
		if j := slices.IndexFunc(out, func(x Info) bool { return x.ID == i.ID }); j >= 0 {
			out[j] = i
		} else {
			out = append(out, i)
		}
	}
	slices.SortStableFunc(out, func(a, b Info) int { return b.StartedAt.Compare(a.StartedAt) })
	return out
}

func (s *Service) liveCall(id string) *Call {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.live[id]
}

func newLocalID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func (s *Service) newCall(dir Direction, peerAcct e2ee.AccountID, dev peer.ID, o Options, relay bool) *Call {
	ctx, cancel := context.WithCancel(s.ctx)
	c := &Call{
		s: s, id: newLocalID(), peer: peerAcct, dev: dev, dir: dir, opts: o,
		ctx: ctx, cancel: cancel,
		events: make(chan event, 64),
		done:   make(chan struct{}),
	}
	c.info = Info{
		ID: c.id, Peer: string(peerAcct), Direction: dir, State: StateRinging,
		ForceRelay: relay, StartedAt: s.cfg.now(),
	}
	c.setMedia(o)
	return c
}

// add registers a live call; incoming calls are refused beyond the
// ringing cap, and any call beyond the live cap.
func (s *Service) add(c *Call, incoming bool) error {
	if s.streams.Closed() {
		return ErrClosed
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.live) >= s.cfg.limits.MaxLive {
		return ErrTooManyCalls
	}
	if incoming {
		ringing := 0
		for _, x := range s.live {
			if x.dir == DirectionIn && x.state() == StateRinging {
				ringing++
			}
		}
		if ringing >= s.cfg.limits.MaxRinging {
			return ErrTooManyCalls
		}
	}
	s.live[c.id] = c
	s.byWire[wireKey{c.dev, c.wire}] = c
	return nil
}

// inCall reports whether a call is connecting or connected.
func (s *Service) inCall() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.live {
		if st := c.state(); st == StateConnecting || st == StateConnected {
			return true
		}
	}
	return false
}

func (s *Service) remove(c *Call) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.live, c.id)
	if s.byWire[wireKey{c.dev, c.wire}] == c {
		delete(s.byWire, wireKey{c.dev, c.wire})
	}
}

// rekey files an outgoing call under the device it reached.
func (s *Service) rekey(c *Call, dev peer.ID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.byWire[wireKey{c.dev, c.wire}] == c {
		delete(s.byWire, wireKey{c.dev, c.wire})
	}
	c.dev = dev
	s.byWire[wireKey{dev, c.wire}] = c
}

// start runs a registered call.
func (s *Service) start(c *Call) {
	s.hist.put(s.ctx, c.Info())
	s.tr.callStarted(c.dir)
	s.emit(c.Info())
	s.wg.Go(c.run)
}

func (s *Service) emit(i Info) {
	if s.cfg.onEvent != nil {
		s.cfg.onEvent(i)
	}
}

// handle serves a signalling stream: an invite (a new call) or a resume
// (an existing call's new stream).
func (s *Service) handle(st network.Stream) {
	if !s.streams.Enter() {
		_ = st.Reset()
		return
	}
	defer s.streams.Leave()
	select {
	case s.pending <- struct{}{}:
	default:
		_ = st.Reset() // too many streams awaiting their first frame
		return
	}
	release := func() { <-s.pending }
	if err := st.Scope().SetService(ServiceName); err != nil {
		release()
		_ = st.Reset()
		return
	}
	remote := st.Conn().RemotePeer()
	sig := newSigConn(st)
	_ = st.SetReadDeadline(time.Now().Add(inviteDeadline))
	f, err := sig.read(maxInviteFrame)
	release()
	if err != nil {
		s.tr.inviteRefused(RefusedMalformed)
		s.log.Debug("signalling stream: no usable first frame", "peer", remote, "err", err)
		sig.reset()
		return
	}
	_ = st.SetReadDeadline(time.Time{})
	switch f.kind {
	case kindResume:
		s.mu.Lock()
		c := s.byWire[wireKey{remote, f.callID}]
		s.mu.Unlock()
		if c == nil || !c.post(event{kind: evStream, sig: sig}) {
			sig.reset()
		}
	case kindInvite:
		s.invite(sig, remote, f)
	default:
		s.tr.inviteRefused(RefusedMalformed)
		sig.reset()
	}
}

// invite answers an invite: it rings, or is refused. Refusals don't tell
// a stranger or a blocked contact apart from a device that takes no
// calls: both get "unavailable".
func (s *Service) invite(sig *sigConn, remote peer.ID, f frame) {
	refuse := func(why string, fr frame) {
		s.tr.inviteRefused(why)
		s.log.Debug("invite refused", "peer", remote, "why", why)
		_ = sig.write(fr)
		sig.close()
	}
	unavailable := frame{kind: kindReject, reason: reasonUnavailable}
	if ok, _ := s.peerLim.Take(string(remote)); !ok {
		refuse(RefusedRateLimited, frame{kind: kindReject, reason: reasonRateLimited})
		return
	}
	rec, ok := s.contacts.Contact(f.account)
	if !ok || f.account == s.self.Account {
		refuse(RefusedUnknown, unavailable)
		return
	}
	if s.contacts.Blocked(f.account) {
		refuse(RefusedBlocked, unavailable)
		return
	}
	if !slices.Contains(rec.Devices, remote) {
		// Perhaps our record of the caller is old: its invite carries its
		// current one, signed by the account.
		newer, err := contact.Parse(f.record)
		if err != nil || newer.AccountID() != f.account || !newer.Newer(rec.Record) || !slices.Contains(newer.Devices, remote) {
			refuse(RefusedUnknown, unavailable)
			return
		}
		s.contacts.Learn(newer)
	}
	if ok, _ := s.acctLim.Take(string(f.account)); !ok {
		refuse(RefusedRateLimited, frame{kind: kindReject, reason: reasonRateLimited})
		return
	}
	if s.inCall() {
		refuse(RefusedBusy, frame{kind: kindBusy})
		return
	}
	c := s.newCall(DirectionIn, f.account, remote, Options{}, false)
	c.wire = f.callID
	c.sig, c.sigByCaller = sig, true
	c.info.Audio, c.info.Video = false, false
	c.remoteMedia = [2]bool{f.audio, f.video}
	if err := s.add(c, true); err != nil {
		c.cancel()
		refuse(RefusedTooMany, frame{kind: kindBusy})
		return
	}
	if err := sig.write(frame{kind: kindRing, relayOnly: s.cfg.forceRelay()}); err != nil {
		s.remove(c)
		c.cancel()
		sig.reset()
		return
	}
	s.start(c)
}

// reach returns a device of rec this node is connected to, dialing it
// through the contact's home relays' circuits
// (<relay>/p2p-circuit/p2p/<device>) if need be.
func (s *Service) reach(ctx context.Context, rec contact.Signed) (peer.ID, error) {
	for _, d := range rec.Devices {
		if s.h.Network().Connectedness(d) == network.Connected {
			return d, nil
		}
	}
	var errs []error
	for _, d := range rec.Devices {
		var addrs []ma.Multiaddr
		for _, r := range rec.HomeRelays {
			addrs = append(addrs, r.Encapsulate(ma.StringCast("/p2p-circuit")))
		}
		dctx, cancel := context.WithTimeout(ctx, reachWait)
		err := s.h.Connect(dctx, peer.AddrInfo{ID: d, Addrs: addrs})
		cancel()
		if err == nil {
			return d, nil
		}
		errs = append(errs, err)
	}
	return "", errors.Join(errs...)
}

// open opens a signalling stream to dev (over a relay circuit if that is
// all there is).
func (s *Service) open(ctx context.Context, dev peer.ID) (*sigConn, error) {
	st, err := s.h.NewStream(network.WithAllowLimitedConn(ctx, "kinmesh call signalling"), dev, ID)
	if err != nil {
		return nil, err
	}
	if err := st.Scope().SetService(ServiceName); err != nil {
		_ = st.Reset()
		return nil, err
	}
	return newSigConn(st), nil
}
