package message

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/kinmesh/kinmesh/protocols/contact"
	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/protocols/mailbox"
	"github.com/kinmesh/kinmesh/protocols/prekeys"
	"github.com/kinmesh/kinmesh/storage"
)

// Account is the local account's key material, as the engine needs it.
type Account struct {
	Identity *e2ee.Identity
	// MailboxKey opens sealed envelopes addressed to us.
	MailboxKey *e2ee.MailboxKey
	// MailboxAuth proves ownership of our mailbox on our home relays.
	MailboxAuth mailbox.Key
	// Record is our signed contact record; it travels as the certificate
	// of every envelope we send, so recipients can answer. Its HomeRelays
	// are where we fetch our mail.
	Record contact.Signed
}

// Contacts is the address book the engine consults.
type Contacts interface {
	// Contact returns the contact's current signed record (contacts and
	// people known through groups alike).
	Contact(id e2ee.AccountID) (contact.Signed, bool)
	// Blocked reports whether id is blocked: nothing is sent to it and
	// everything from it is dropped.
	Blocked(id e2ee.AccountID) bool
	// InviteBundle returns the prekey bundle that came with the contact's
	// invite, if any, so a session can start without reaching a relay.
	InviteBundle(id e2ee.AccountID) *e2ee.Bundle
	// Learn offers a validly signed record of someone who wrote to us (an
	// envelope's certificate). The book keeps it if it is new or newer.
	Learn(rec contact.Signed)
}

// Config is what the engine needs. Host, Store, Account, Contacts, Mailbox
// and Prekeys are required.
type Config struct {
	Host     host.Host
	Store    *storage.Store
	Account  Account
	Contacts Contacts
	Mailbox  *mailbox.Client
	Prekeys  *prekeys.Client
	// InitialPrekeys is our prekey store, used when the engine's store
	// holds none yet (the first start after account creation).
	InitialPrekeys *e2ee.PrekeyStore
	// MaintainInterval is how often our prekeys on our home relays are
	// checked, topped up and rotated (default 6h; also at start).
	MaintainInterval time.Duration

	// Logger (default: discard).
	Logger *slog.Logger
	// Now is the clock for message times and expiry (default time.Now).
	Now func() time.Time
	// OnEvent, if set, is called (from one goroutine, in order) with every
	// event; it must not block for long.
	OnEvent func(Event)
	// OnControl, if set, receives other features' controls (SendControl)
	// once each, as soon as they are received (before the fsync: a power
	// loss can bring one again, so it must take a repeat), possibly under
	// the engine's lock: it must not call back into the engine, and
	// should only queue work.
	OnControl func(from e2ee.AccountID, kind string, payload []byte)
	// RetryMin and RetryMax bound the backoff of undelivered jobs
	// (defaults 1s and 5m).
	RetryMin, RetryMax time.Duration
	// DirectTimeout bounds an attempt to reach a recipient's device
	// directly before falling back to its relays (default 3s).
	DirectTimeout time.Duration
	// ExpiryInterval is how often undelivered messages are checked for
	// MaxAge (default 1h).
	ExpiryInterval time.Duration
	// DirectRate and DirectBurst limit the envelopes each peer may hand
	// us directly (/kinmesh/msg/1.0.0): DirectBurst at once, refilled at
	// DirectRate a second (defaults DefaultDirectRate, 1,000, and
	// DefaultDirectBurst, 4,096). Envelopes over the limit are answered
	// RATE_LIMITED unopened; the sender then leaves them to our relays
	// for a while.
	DirectRate  float64
	DirectBurst int
}

// Service is a running messaging engine.
type Service struct {
	cfg Config
	log *slog.Logger
	ns  *storage.Namespace
	me  e2ee.AccountID

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// mu serializes every change of crypto and message state: sessions,
	// prekeys, sender keys, groups, messages, jobs. Network I/O never
	// happens under it.
	mu sync.Mutex

	lanesMu sync.Mutex
	lanes   map[e2ee.AccountID]chan struct{} // wake channel per running lane

	events chan Event
	sends  chan *sendReq
	// sending counts the Sends not yet answered: while there are any, a
	// received receipt's session state waits for their syncs.
	sending atomic.Int64

	relayMu sync.Mutex
	relays  map[peer.ID]*relayLink

	recMu sync.Mutex
	rec   contact.Signed // our current record (Account.Record, then UpdateRecord)

	restMu sync.Mutex
	rest   map[peer.ID]relayRest // relays skipped after failed deposits

	notifiee *network.NotifyBundle // peerConnected

	opaqueMu  sync.Mutex
	opaqueIDs map[string]string // opaque

	drainMu sync.Mutex // one relay backlog drained at a time (drainOne)

	// laterSince: when each inner message still too far ahead of its
	// chain first came (under mu; receive.go, stillLater). laterFor is how
	// long it may wait for the ones before it.
	laterSince map[[32]byte]time.Time
	laterFor   time.Duration

	parked parkedCount // group messages waiting for their sender key (groups.go, park)

	// consumed tracks one-time prekeys consumed while a prekey maintenance
	// round runs (nil otherwise), so its result can't resurrect them.
	consumed   []e2ee.PrekeyID
	tracking   bool
	maintainMu sync.Mutex

	// limits is the direct protocol's rate limiting, both ways.
	limits directLimits

	// eng is the in-memory state beside the store: job index, group
	// commit, envelopes being received (store.go).
	eng engineState

	closeOnce sync.Once
}

// New starts the engine: it registers the /kinmesh/msg/1.0.0 handler,
// opens owner sessions on our home relays to receive mail, and resumes the
// delivery of every job left from before.
func New(cfg Config) (*Service, error) {
	switch {
	case cfg.Host == nil, cfg.Store == nil, cfg.Account.Identity == nil, cfg.Account.MailboxKey == nil,
		cfg.Contacts == nil, cfg.Mailbox == nil, cfg.Prekeys == nil:
		return nil, errors.New("message: New needs Host, Store, Account, Contacts, Mailbox and Prekeys")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.RetryMin <= 0 {
		cfg.RetryMin = time.Second
	}
	if cfg.RetryMax <= 0 {
		cfg.RetryMax = 5 * time.Minute
	}
	if cfg.DirectTimeout <= 0 {
		cfg.DirectTimeout = 3 * time.Second
	}
	if cfg.ExpiryInterval <= 0 {
		cfg.ExpiryInterval = time.Hour
	}
	if cfg.MaintainInterval <= 0 {
		cfg.MaintainInterval = 6 * time.Hour
	}
	if cfg.DirectRate <= 0 {
		cfg.DirectRate = DefaultDirectRate
	}
	if cfg.DirectBurst <= 0 {
		cfg.DirectBurst = DefaultDirectBurst
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Service{
		cfg:    cfg,
		log:    cfg.Logger,
		ns:     cfg.Store.Namespace("message"),
		me:     cfg.Account.Identity.AccountID(),
		ctx:    ctx,
		cancel: cancel,
		lanes:  map[e2ee.AccountID]chan struct{}{},
		events: make(chan Event, 1024),
		sends:  make(chan *sendReq, maxSendBatch),
		relays: map[peer.ID]*relayLink{},
		rest:   map[peer.ID]relayRest{},
		limits: directLimits{in: newDirectLimiter(time.Now, cfg.DirectRate, cfg.DirectBurst, maxDirectPeers)},

		laterFor: maxLaterWait,
	}
	if err := s.initPrekeys(); err != nil {
		cancel()
		return nil, err
	}
	s.wg.Go(s.emitLoop)
	s.wg.Go(s.sendLoop)
	cfg.Host.SetStreamHandler(ID, s.handleDeliver)
	s.rec = cfg.Account.Record
	for _, r := range cfg.Account.Record.Relays() {
		s.startRelay(r)
	}
	if err := s.resumeLanes(); err != nil {
		s.Close()
		return nil, err
	}
	s.wg.Go(s.expiryLoop)
	s.wg.Go(s.maintainLoop)
	s.notifiee = &network.NotifyBundle{ConnectedF: func(_ network.Network, c network.Conn) { s.peerConnected(c.RemotePeer()) }}
	cfg.Host.Network().Notify(s.notifiee)
	return s, nil
}

// Close stops the engine: removes the handler, ends relay sessions and
// lanes, and waits for them. Jobs left undone resume at the next New.
// It is safe to call more than once.
func (s *Service) Close() error {
	s.closeOnce.Do(func() {
		s.cfg.Host.RemoveStreamHandler(ID)
		if s.notifiee != nil {
			s.cfg.Host.Network().StopNotify(s.notifiee)
		}
		s.cancel()
		s.wg.Wait()
		s.eng.direct.close()
	})
	return nil
}

// emit queues an event for OnEvent.
func (s *Service) emit(e Event) {
	if s.cfg.OnEvent == nil {
		return
	}
	select {
	case s.events <- e:
	case <-s.ctx.Done():
	}
}

func (s *Service) emitLoop() {
	for {
		select {
		case <-s.ctx.Done():
			return
		case e := <-s.events:
			s.cfg.OnEvent(e)
		}
	}
}

// record returns our current signed contact record.
func (s *Service) record() contact.Signed {
	s.recMu.Lock()
	defer s.recMu.Unlock()
	return s.rec
}

// UpdateRecord makes rec our contact record: envelopes carry it from now
// on, so contacts learn it with our next message, and our mailbox moves to
// its home relays (sessions on relays no longer listed end; new ones
// start; prekeys are published there).
func (s *Service) UpdateRecord(rec contact.Signed) {
	s.recMu.Lock()
	old := s.rec
	s.rec = rec
	s.recMu.Unlock()
	keep := map[peer.ID]bool{}
	for _, r := range rec.Relays() {
		keep[r.ID] = true
	}
	for _, r := range old.Relays() {
		if !keep[r.ID] {
			s.stopRelay(r.ID)
		}
	}
	s.relayMu.Lock()
	var start []peer.AddrInfo
	for _, r := range rec.Relays() {
		if _, ok := s.relays[r.ID]; !ok {
			start = append(start, r)
		}
	}
	s.relayMu.Unlock()
	for _, r := range start {
		s.startRelay(r)
	}
	s.wg.Go(func() {
		ctx, cancel := context.WithTimeout(s.ctx, 2*time.Minute)
		defer cancel()
		if err := s.MaintainPrekeys(ctx); err != nil && s.ctx.Err() == nil {
			s.log.Debug("prekeys on new home relays", "err", err)
		}
	})
}

// Me returns our account id.
func (s *Service) Me() e2ee.AccountID { return s.me }

func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%x", b)
}
