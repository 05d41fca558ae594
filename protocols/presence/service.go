package presence

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/kinmesh/kinmesh/protocols/contact"
	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/protocols/netkit"
	"github.com/kinmesh/kinmesh/protocols/wire"
	"github.com/kinmesh/kinmesh/storage"
)

// Device store layout, in namespace "presence": one record per contact
// whose beacon we accepted, under Opaque(contact's Ed25519 key), holding a
// StoredPresence (status, the beacon's time, when it arrived). Nothing
// else: presence is never stored anywhere but on the devices of the
// contacts it was sent to.

// errUnreachable means none of a contact's devices could be reached.
var errUnreachable = errors.New("presence: contact unreachable")

// Service sends this device's presence to its contacts and keeps theirs.
// Create it with New; Close stops it (sending "offline" first).
type Service struct {
	h        host.Host
	ns       *storage.Namespace
	acct     Account
	me       []byte // our Ed25519 key
	contacts Contacts
	cfg      config
	log      *slog.Logger
	tr       tracer
	lim      *netkit.Limiter[string]
	inbound  chan struct{} // streams being handled
	kick     chan struct{}

	mu       sync.Mutex // guards share, known, out, lastSent
	share    Share
	known    map[e2ee.AccountID]stored
	out      map[e2ee.AccountID]*outState
	lastSent time.Time

	roundMu sync.Mutex // one round of beacons at a time

	sent, unreachable, accepted atomic.Uint64
	dropMu                      sync.Mutex
	dropped                     map[string]uint64

	ctx      context.Context // cancelled by Close, after the offline beacons
	cancel   context.CancelFunc
	loopStop context.CancelFunc
	loopDone chan struct{}

	streams   netkit.Streams
	closeOnce sync.Once
}

// outState is what we know of sending to one contact.
type outState struct {
	next     time.Time // when the contact is due a beacon again
	failures int       // unreachable in a row
	told     bool      // our online beacon reached it since our last offline or hidden one
}

// New starts presence for acct on h: it registers the
// /kinmesh/presence/1.0.0 handler, loads last-seen records from st's
// "presence" namespace (Namespace), and beacons every contact in
// contacts.Audience() it can reach, at once and then every interval.
// st must outlive the Service: close the Service first.
//
// Defaults (see the Option functions): the real clock; slog.Default(); no
// metrics; ShareContacts; beacons every DefaultInterval (3 min), online
// for DefaultOnlineWindow (7 min) after the latest beacon, beacons
// fresher than DefaultFreshness (5 min) accepted; contacts due a beacon
// looked for every DefaultCheckEvery (10 s); contacts that can't be
// reached retried after the interval, doubling up to an hour; per peer
// DefaultBeaconsPerMinute inbound beacons a minute, bursts of
// DefaultBeaconBurst; 16 inbound streams at once; 8 beacons sent at once;
// 5 s to reach a device, 10 s per exchange; 3 s for the offline beacons
// at Close.
func New(h host.Host, st *storage.Store, acct Account, contacts Contacts, opts ...Option) (*Service, error) {
	if h == nil || st == nil || acct.Identity == nil || acct.MailboxKey == nil || contacts == nil {
		return nil, errors.New("presence: New needs a host, a store, the account's identity and mailbox key, and contacts")
	}
	s, err := newService(st, acct, contacts, opts...)
	if err != nil {
		return nil, err
	}
	s.h = h
	h.SetStreamHandler(ID, s.handle)
	loopCtx, stop := context.WithCancel(s.ctx)
	s.loopStop, s.loopDone = stop, make(chan struct{})
	go func() {
		defer close(s.loopDone)
		s.loop(loopCtx)
	}()
	return s, nil
}

// newService builds a Service without a host (fuzz tests drive its stream
// handling directly).
func newService(st *storage.Store, acct Account, contacts Contacts, opts ...Option) (*Service, error) {
	cfg := defaultConfig()
	for _, o := range opts {
		if err := o(&cfg); err != nil {
			return nil, err
		}
	}
	if cfg.logger == nil {
		cfg.logger = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Service{
		ns:       st.Namespace(Namespace),
		acct:     acct,
		me:       acct.Identity.Public().Sign,
		contacts: contacts,
		cfg:      cfg,
		log:      cfg.logger.With("component", "presence"),
		tr:       tracer{cfg.tracer},
		lim:      netkit.NewLimiter[string](cfg.now, cfg.rate, cfg.burst, cfg.maxTracked),
		inbound:  make(chan struct{}, cfg.maxInbound),
		kick:     make(chan struct{}, 1),
		share:    cfg.share,
		known:    map[e2ee.AccountID]stored{},
		out:      map[e2ee.AccountID]*outState{},
		dropped:  map[string]uint64{},
		ctx:      ctx,
		cancel:   cancel,
		loopStop: func() {},
		loopDone: make(chan struct{}),
	}
	close(s.loopDone) // no loop until New starts one
	err := s.ns.List(ctx, storage.ListOptions{}, func(k string, v []byte) error {
		rec, err := decodeStored(v)
		if err != nil {
			s.log.Warn("unreadable presence record dropped", "err", err)
			return s.ns.Delete(ctx, k)
		}
		s.known[e2ee.PublicIdentity{Sign: rec.account}.AccountID()] = rec
		return nil
	})
	if err != nil {
		cancel()
		return nil, fmt.Errorf("presence: load last seen: %w", err)
	}
	return s, nil
}

// Close sends an offline beacon to every contact that saw this device
// online (at most 3 s), then stops: it removes the stream handler,
// resets the streams being served and waits for everything it started.
// It does not close the store. It is safe to call more than once.
func (s *Service) Close() error {
	s.closeOnce.Do(func() {
		s.streams.Close()
		s.loopStop()
		<-s.loopDone
		if s.h != nil && s.Share() == ShareContacts {
			ctx, cancel := context.WithTimeout(context.Background(), s.cfg.closeTimeout)
			s.roundMu.Lock()
			s.sendTold(ctx, statusOffline)
			s.roundMu.Unlock()
			cancel()
		}
		if s.h != nil {
			s.h.RemoveStreamHandler(ID)
		}
		s.cancel()
		s.streams.Wait()
	})
	return nil
}

// isClosed reports whether Close has begun.
func (s *Service) isClosed() bool { return s.streams.Closed() }

// Share returns the current setting.
func (s *Service) Share() Share {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.share
}

// SetShare changes the setting. Turning sharing off tells every contact
// this device can reach to forget its presence (a "hidden" beacon), and
// from then on nothing more is sent; contacts that were out of reach are
// told when they next beacon us. Turning it on beacons every contact at
// once.
func (s *Service) SetShare(ctx context.Context, share Share) error {
	if share != ShareContacts && share != ShareNobody {
		return fmt.Errorf("presence: share %d: %w", share, ErrInvalidSetting)
	}
	if s.isClosed() {
		return ErrClosed
	}
	s.mu.Lock()
	old := s.share
	s.share = share
	if share != old {
		for _, o := range s.out {
			o.next, o.failures = time.Time{}, 0
		}
	}
	s.mu.Unlock()
	if share == old {
		return nil
	}
	for id := range s.knownIDs() {
		s.changed(id) // what Lookup shows depends on our setting too
	}
	if share == ShareContacts {
		s.Kick()
		return nil
	}
	s.roundMu.Lock()
	defer s.roundMu.Unlock()
	var recs []contact.Signed
	for _, rec := range s.contacts.Audience() {
		if !s.contacts.Blocked(rec.AccountID()) {
			recs = append(recs, rec)
		}
	}
	s.sendAll(ctx, recs, statusHidden)
	return nil
}

func (s *Service) knownIDs() map[e2ee.AccountID]bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[e2ee.AccountID]bool, len(s.known))
	for id := range s.known {
		out[id] = true
	}
	return out
}

func (s *Service) changed(id e2ee.AccountID) {
	if s.cfg.onChange != nil {
		s.cfg.onChange(id)
	}
}

// Kick makes the service beacon every contact soon (after a random delay
// under a second) rather than when each is due: call it when the device's
// connectivity changed. It does not wait.
func (s *Service) Kick() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// Announce beacons every contact it can reach now, and returns what it
// did. With ShareNobody it sends nothing.
func (s *Service) Announce(ctx context.Context) (Round, error) {
	if s.isClosed() {
		return Round{}, ErrClosed
	}
	return s.round(ctx, true), nil
}

func (s *Service) loop(ctx context.Context) {
	t := time.NewTicker(s.cfg.checkEvery)
	defer t.Stop()
	if !s.cfg.skipFirst {
		s.round(ctx, false)
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.kick:
			// Contacts kicked by the same event (a relay restart) would
			// otherwise dial each other at the same instant; a TCP
			// simultaneous open fails both dials.
			j := time.NewTimer(rand.N(time.Second))
			select {
			case <-ctx.Done():
				j.Stop()
				return
			case <-j.C:
			}
			s.round(ctx, true)
		case <-t.C:
			s.round(ctx, false)
		}
	}
}

// round beacons the contacts that are due (all of them if force).
func (s *Service) round(ctx context.Context, force bool) Round {
	s.roundMu.Lock()
	defer s.roundMu.Unlock()
	var r Round
	if s.Share() == ShareNobody {
		return r
	}
	now := s.cfg.now()
	members := s.contacts.Audience()
	var due []contact.Signed
	s.mu.Lock()
	inAudience := make(map[e2ee.AccountID]bool, len(members))
	for _, rec := range members {
		id := rec.AccountID()
		inAudience[id] = true
		if o := s.out[id]; !force && o != nil && now.Before(o.next) {
			r.Skipped++
			continue
		}
		due = append(due, rec)
	}
	for id := range s.out {
		if !inAudience[id] {
			delete(s.out, id)
		}
	}
	s.mu.Unlock()
	var send []contact.Signed
	for _, rec := range due {
		if s.contacts.Blocked(rec.AccountID()) {
			r.Skipped++
			continue
		}
		send = append(send, rec)
	}
	for _, err := range s.sendAll(ctx, send, statusOnline) {
		if err == nil {
			r.Sent++
		} else {
			r.Unreachable++
		}
	}
	return r
}

// sendTold sends st to every contact that saw us online. Called with
// roundMu held.
func (s *Service) sendTold(ctx context.Context, st status) {
	var recs []contact.Signed
	for _, rec := range s.contacts.Audience() {
		id := rec.AccountID()
		s.mu.Lock()
		o := s.out[id]
		told := o != nil && o.told
		s.mu.Unlock()
		if told && !s.contacts.Blocked(id) {
			recs = append(recs, rec)
		}
	}
	s.sendAll(ctx, recs, st)
}

// sendAll sends st to each contact, a few at once, and records the
// outcome. Called with roundMu held.
func (s *Service) sendAll(ctx context.Context, recs []contact.Signed, st status) []error {
	errs := make([]error, len(recs))
	sem := make(chan struct{}, s.cfg.parallel)
	var wg sync.WaitGroup
	for i, rec := range recs {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			errs[i] = ctx.Err()
			continue
		}
		wg.Go(func() {
			defer func() { <-sem }()
			errs[i] = s.sendOne(ctx, rec, st)
		})
	}
	wg.Wait()
	now := s.cfg.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, rec := range recs {
		id := rec.AccountID()
		o := s.out[id]
		if o == nil {
			o = &outState{}
			s.out[id] = o
		}
		if errs[i] == nil {
			o.failures = 0
			o.next = now.Add(s.cfg.interval)
			o.told = st == statusOnline
			continue
		}
		o.failures++
		o.next = now.Add(min(s.cfg.interval<<min(o.failures-1, 10), max(s.cfg.maxBackoff, s.cfg.interval)))
	}
	return errs
}

// sendOne reaches one of rec's devices and hands it a beacon; the answer
// may carry the contact's own beacon, taken as if it had come in.
func (s *Service) sendOne(ctx context.Context, rec contact.Signed, st status) error {
	err := s.exchange(ctx, rec, st)
	if err != nil {
		s.unreachable.Add(1)
		s.tr.sent("unreachable")
		s.log.Debug("beacon not delivered", "contact", rec.AccountID(), "status", st, "err", err)
		return err
	}
	s.sent.Add(1)
	s.tr.sent("ok")
	return nil
}

func (s *Service) exchange(ctx context.Context, rec contact.Signed, st status) error {
	dev, err := s.reach(ctx, rec)
	if err != nil {
		return err
	}
	env, err := s.seal(rec, st)
	if err != nil {
		return err
	}
	dctx, cancel := context.WithTimeout(network.WithAllowLimitedConn(ctx, "presence beacon"), s.cfg.dialTimeout)
	str, err := s.h.NewStream(dctx, dev, ID)
	cancel()
	if err != nil {
		return fmt.Errorf("open stream: %w", err)
	}
	if err := str.Scope().SetService(ServiceName); err != nil {
		_ = str.Reset()
		return err
	}
	if err := str.SetDeadline(time.Now().Add(s.cfg.timeout)); err != nil {
		_ = str.Reset()
		return err
	}
	stop := context.AfterFunc(ctx, func() { _ = str.Reset() })
	defer stop()
	if err := wire.Write(str, encodeFrame(env), maxFrame); err != nil {
		_ = str.Reset()
		return err
	}
	b, err := wire.NewReader(str).ReadBytes(maxFrame)
	if err != nil {
		_ = str.Reset()
		return fmt.Errorf("read reply: %w", err)
	}
	_ = str.Close()
	reply, err := decodeEnvelopeFrame(b)
	if err != nil {
		return nil // delivered; the answer is the contact's problem
	}
	if len(reply) > 0 && st == statusOnline {
		s.receive(reply, rec.AccountID())
	}
	return nil
}

// reach returns a connected device of rec, dialing it through its home
// relays' circuits (<relay>/p2p-circuit/p2p/<device>) if needed.
func (s *Service) reach(ctx context.Context, rec contact.Signed) (peer.ID, error) {
	for _, d := range rec.Devices {
		if s.h.Network().Connectedness(d) == network.Connected {
			return d, nil
		}
	}
	var addrs []ma.Multiaddr
	circuit := ma.StringCast("/p2p-circuit")
	for _, r := range rec.HomeRelays {
		addrs = append(addrs, r.Encapsulate(circuit))
	}
	var errs []error
	for _, d := range rec.Devices {
		dctx, cancel := context.WithTimeout(ctx, s.cfg.dialTimeout)
		err := s.h.Connect(dctx, peer.AddrInfo{ID: d, Addrs: addrs})
		cancel()
		if err == nil {
			return d, nil
		}
		errs = append(errs, err)
	}
	return "", fmt.Errorf("%w: %w", errUnreachable, errors.Join(errs...))
}

// seal builds, signs and seals a beacon to rec. Our beacons' times are
// strictly increasing, so a contact never takes two for a replay.
func (s *Service) seal(rec contact.Signed, st status) ([]byte, error) {
	key, err := rec.AccountID().SigningKey()
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	sent := s.cfg.now().Truncate(time.Millisecond)
	if !sent.After(s.lastSent) {
		sent = s.lastSent.Add(time.Millisecond)
	}
	s.lastSent = sent
	s.mu.Unlock()
	b := beacon{status: st, sent: sent, recipient: key}
	b.sig = s.acct.Identity.Sign(signedMessage(st, sent, key))
	return e2ee.SealEnvelope(rec.MailboxKey, e2ee.EnvelopeContent{
		Sender: s.acct.Identity.Public(), Type: e2ee.ContentPresence, Payload: b.encode(),
	})
}

// handle serves a stream within the inbound cap and the sender's rate;
// it logs nothing.
func (s *Service) handle(str network.Stream) {
	if !s.streams.Enter() {
		_ = str.Reset()
		return
	}
	defer s.streams.Leave()
	select {
	case s.inbound <- struct{}{}:
		defer func() { <-s.inbound }()
	default:
		s.drop("rate_limited")
		_ = str.Reset()
		return
	}
	if ok, _ := s.lim.Take(string(str.Conn().RemotePeer())); !ok {
		s.drop("rate_limited")
		_ = str.Reset()
		return
	}
	netkit.ServeStream(s.ctx, str, ServiceName, nil, func(_ context.Context, st netkit.Stream, _ netkit.MemScope, _ peer.ID) error {
		return s.serve(st)
	})
}

// serve takes one beacon and answers: with our own beacon when we
// accepted theirs and share with them, with a hidden one when we share
// with nobody, else empty. The answer never says why a beacon was
// dropped.
func (s *Service) serve(str netkit.Stream) error {
	if err := str.SetDeadline(time.Now().Add(s.cfg.timeout)); err != nil {
		return err
	}
	b, err := wire.NewReader(str).ReadBytes(maxFrame)
	if err != nil {
		if errors.Is(err, wire.ErrTooLarge) {
			s.drop("invalid")
		}
		return err
	}
	env, err := decodeEnvelopeFrame(b)
	if err != nil {
		s.drop("invalid")
		return err
	}
	res := s.receive(env, "")
	var reply []byte
	if res.rec != nil && res.status == statusOnline {
		reply = s.replyTo(*res.rec)
	}
	return wire.Write(str, encodeReply(reply), maxFrame)
}

// replyTo seals our answer to a contact whose online beacon we took.
func (s *Service) replyTo(rec contact.Signed) []byte {
	st := statusOnline
	if s.Share() == ShareNobody {
		st = statusHidden
	}
	env, err := s.seal(rec, st)
	if err != nil {
		return nil
	}
	if st == statusOnline {
		now := s.cfg.now()
		s.mu.Lock()
		o := s.out[rec.AccountID()]
		if o == nil {
			o = &outState{}
			s.out[rec.AccountID()] = o
		}
		o.told, o.failures, o.next = true, 0, now.Add(s.cfg.interval)
		s.mu.Unlock()
	}
	return env
}

func (s *Service) drop(reason string) {
	s.dropMu.Lock()
	s.dropped[reason]++
	s.dropMu.Unlock()
	s.tr.received(reason)
}

// received is what receive made of a beacon. rec is set when the beacon
// came from a contact, verified, whether or not it was stored.
type received struct {
	rec    *contact.Signed
	status status
}

// receive checks a beacon envelope and, if it is a fresh beacon from a
// contact that isn't blocked, records it. expect, if set, is the contact
// it must come from (an answer to our beacon).
func (s *Service) receive(env []byte, expect e2ee.AccountID) received {
	c, err := s.acct.MailboxKey.OpenEnvelope(env)
	if err != nil || c.Type != e2ee.ContentPresence {
		s.drop("invalid")
		return received{}
	}
	b, err := decodeBeacon(c.Payload)
	if err != nil || !bytes.Equal(b.recipient, s.me) {
		s.drop("invalid")
		return received{}
	}
	from := c.Sender.AccountID()
	if expect != "" && from != expect {
		s.drop("invalid")
		return received{}
	}
	if s.contacts.Blocked(from) {
		s.drop("blocked")
		return received{}
	}
	rec, ok := s.contacts.Member(from)
	if !ok {
		s.drop("not_contact")
		return received{}
	}
	if !rec.Identity.Equal(c.Sender) || c.Sender.Verify(signedMessage(b.status, b.sent, b.recipient), b.sig) != nil {
		s.drop("invalid")
		return received{}
	}
	out := received{rec: &rec, status: b.status}
	now := s.cfg.now()
	if d := b.sent.Sub(now); d > s.cfg.freshness || d < -s.cfg.freshness {
		s.drop("stale")
		return received{}
	}
	s.mu.Lock()
	if s.share == ShareNobody && b.status != statusHidden {
		s.mu.Unlock()
		s.drop("not_sharing")
		return out
	}
	if prev, ok := s.known[from]; ok && !b.sent.After(prev.sent) {
		s.mu.Unlock()
		s.drop("replay")
		return received{}
	}
	rs := stored{account: c.Sender.Sign, status: b.status, sent: b.sent, received: time.UnixMilli(now.UnixMilli())}
	if err := s.ns.Put(s.ctx, s.ns.Opaque(c.Sender.Sign), rs.encode()); err != nil {
		s.mu.Unlock()
		s.log.Warn("store last seen", "err", err)
		s.drop("invalid")
		return received{}
	}
	s.known[from] = rs
	s.mu.Unlock()
	s.accepted.Add(1)
	s.tr.received("accepted")
	s.changed(from)
	return out
}

// Lookup returns what this device knows of id's presence: nothing while
// we share with nobody, for blocked accounts, and for contacts that
// haven't shared theirs or hid it.
func (s *Service) Lookup(id e2ee.AccountID) Presence {
	p := Presence{Account: id}
	if s.contacts.Blocked(id) {
		return p
	}
	now := s.cfg.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	k, ok := s.known[id]
	if s.share == ShareNobody || !ok || k.status == statusHidden {
		return p
	}
	p.LastSeen = k.received
	p.Online = k.status == statusOnline && now.Sub(k.received) < s.cfg.onlineWindow
	return p
}

// List returns the presence of every contact in the audience, in its
// order.
func (s *Service) List() []Presence {
	members := s.contacts.Audience()
	out := make([]Presence, 0, len(members))
	for _, rec := range members {
		if s.contacts.Blocked(rec.AccountID()) {
			continue
		}
		out = append(out, s.Lookup(rec.AccountID()))
	}
	return out
}

// Known returns every contact's presence this device keeps, whatever the
// setting and blocks say (for the user's data export), sorted by account.
// Records of contacts that hid their presence are left out: only their
// time remains, to refuse older beacons.
func (s *Service) Known() []Presence {
	now := s.cfg.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Presence, 0, len(s.known))
	for id, k := range s.known {
		if k.status == statusHidden {
			continue
		}
		out = append(out, Presence{Account: id, Online: k.status == statusOnline && now.Sub(k.received) < s.cfg.onlineWindow, LastSeen: k.received})
	}
	slices.SortFunc(out, func(a, b Presence) int { return strings.Compare(string(a.Account), string(b.Account)) })
	return out
}

// Stats returns the service's counters.
func (s *Service) Stats() Stats {
	st := Stats{Sent: s.sent.Load(), Unreachable: s.unreachable.Load(), Accepted: s.accepted.Load(), Dropped: map[string]uint64{}}
	s.dropMu.Lock()
	defer s.dropMu.Unlock()
	for k, v := range s.dropped {
		st.Dropped[k] = v
	}
	return st
}
