package moments

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"

	"github.com/kinmesh/kinmesh/protocols/blobs"
	"github.com/kinmesh/kinmesh/protocols/contact"
	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/protocols/netkit"
	"github.com/kinmesh/kinmesh/storage"
)

// Contacts is the address book the engine consults.
type Contacts interface {
	// Friends are the default audience: contacts added from an invite,
	// not blocked.
	Friends() []e2ee.AccountID
	// Contact returns a contact's signed record (its home relays).
	Contact(id e2ee.AccountID) (contact.Signed, bool)
	// Blocked reports whether id is blocked: its moments and reactions
	// are dropped, and it is never in the audience.
	Blocked(id e2ee.AccountID) bool
}

// Config is what the device engine needs. Every field up to Blobs is
// required.
type Config struct {
	Host     host.Host
	Store    *storage.Store
	Router   *Router
	Identity *e2ee.Identity
	Contacts Contacts
	// HomeRelays returns this account's home relays (its signed record's).
	HomeRelays func() []peer.AddrInfo
	// SendControl sends a control to contacts over the pairwise sessions
	// (message.Service.SendControl): key distributions travel this way.
	SendControl func(ctx context.Context, to []e2ee.AccountID, kind string, payload []byte) error
	// Relays speaks the relay protocol; Blobs uploads and fetches media.
	Relays *Client
	Blobs  *blobs.Client

	// Name returns this account's name, shown with its likes and comments.
	Name func() string
	// Logger (default: discard).
	Logger *slog.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
	// OnEvent, if set, is called from one goroutine, in order, with every
	// event; it must not block for long.
	OnEvent func(Event)
	// BackfillInterval is how often every followed feed is backfilled from
	// its author's relays (default 10m; also at start, when a key
	// arrives, after gossipsub dropped one of its frames, and repeatedly
	// for CatchUpWindow after a topic is joined). A backfill that fails is
	// retried with the RetryMin-RetryMax backoff.
	BackfillInterval time.Duration
	// AudienceInterval is how often the audience is compared with the
	// contacts: new friends get the key, removed ones trigger a rotation
	// (default 30s; also before every post).
	AudienceInterval time.Duration
	// RetryMin and RetryMax bound the backoff of frames and registrations
	// not yet confirmed by relays (defaults 1s and 5m).
	RetryMin, RetryMax time.Duration
}

// Engine is a device's moments: its own feed and the feeds of the friends
// who sent it their keys. Create it with New; Close stops it.
type Engine struct {
	cfg         Config
	log         *slog.Logger
	ns          *storage.Namespace
	me          e2ee.AccountID
	owner       ed25519.PrivateKey
	mediaSecret []byte

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// mu serializes every change of moments state: keys, moments,
	// reactions, cursors. Network I/O never happens under it.
	mu       sync.Mutex
	own      *ownState
	follows  map[e2ee.AccountID]*follow
	audience Audience

	// joinMu serializes joinAll (and Close's leaving): each call acts on
	// the state it reads, so an older snapshot never leaves a topic that a
	// newer one joined.
	joinMu  sync.Mutex
	topicMu sync.RWMutex
	topics  map[string]topicInfo
	// catching holds the topics joined lately, each backfilled again and
	// again until its time (CatchUpWindow after the join).
	catchMu  sync.Mutex
	catching map[string]time.Time

	topicLim *netkit.Limiter[string]
	seq      atomic.Uint64
	keyReqMu sync.Mutex
	keyReqs  map[e2ee.AccountID]time.Time

	wakeInbox, wakeOutbox, wakeBackfill chan struct{}
	wakeCatchUp                         chan struct{} // a topic joined: see catching
	wakeAudience                        chan struct{} // a legacy topic refused: see ownState.refused
	events                              chan Event

	closeOnce sync.Once
}

// topicInfo is what a joined topic belongs to.
type topicInfo struct {
	author   e2ee.AccountID
	own      bool
	epoch    uint64
	keys     feedKeys
	audience ed25519.PrivateKey
}

// ownState is this account's own feed.
type ownState struct {
	sk         *e2ee.SenderKey
	cur        epochKeys
	members    map[e2ee.AccountID]bool
	previous   []oldEpoch
	registered map[peer.ID]bool
	started    time.Time
	// refused is set when a relay refused to register the current epoch's
	// legacy topic: the next audience sync starts a new epoch.
	refused bool
}

type oldEpoch struct {
	epochKeys
	retired time.Time
}

// follow is a friend's feed this device follows.
type follow struct {
	author e2ee.AccountID
	state  *e2ee.SenderKeyState
	owner  ed25519.PublicKey
	epochs []oldEpoch // newest first; the current one has a zero retired
}

// maxFollowEpochs caps the epochs kept per followed feed (for backfill).
const maxFollowEpochs = 8

// New starts the engine: it loads the state, joins the topics of its own
// feed and of every followed feed, and starts keeping the audience, the
// relays and the backfill up to date. Controls received while it was
// stopped are applied.
func New(cfg Config) (*Engine, error) {
	if cfg.Host == nil || cfg.Store == nil || cfg.Router == nil || cfg.Identity == nil || cfg.Contacts == nil ||
		cfg.HomeRelays == nil || cfg.SendControl == nil || cfg.Relays == nil || cfg.Blobs == nil {
		return nil, errors.New("moments: New needs Host, Store, Router, Identity, Contacts, HomeRelays, SendControl, Relays and Blobs")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Name == nil {
		cfg.Name = func() string { return "" }
	}
	if cfg.BackfillInterval <= 0 {
		cfg.BackfillInterval = 10 * time.Minute
	}
	if cfg.AudienceInterval <= 0 {
		cfg.AudienceInterval = 30 * time.Second
	}
	if cfg.RetryMin <= 0 {
		cfg.RetryMin = time.Second
	}
	if cfg.RetryMax <= 0 {
		cfg.RetryMax = 5 * time.Minute
	}
	ctx, cancel := context.WithCancel(context.Background())
	e := &Engine{
		cfg: cfg, log: cfg.Logger, ns: cfg.Store.Namespace(Namespace),
		me: cfg.Identity.AccountID(), owner: OwnerKey(cfg.Identity), mediaSecret: MediaSecret(cfg.Identity),
		ctx: ctx, cancel: cancel,
		follows: map[e2ee.AccountID]*follow{}, topics: map[string]topicInfo{}, catching: map[string]time.Time{}, keyReqs: map[e2ee.AccountID]time.Time{},
		topicLim:  netkit.NewLimiter[string](cfg.Now, DefaultTopicFramesPerMinute/60.0, DefaultTopicBurst, 1<<12),
		wakeInbox: make(chan struct{}, 1), wakeOutbox: make(chan struct{}, 1), wakeBackfill: make(chan struct{}, 1),
		wakeCatchUp: make(chan struct{}, 1), wakeAudience: make(chan struct{}, 1),
		events:   make(chan Event, 256),
		audience: Audience{All: true},
	}
	e.seq.Store(uint64(time.Now().UnixNano()))
	if err := e.load(ctx); err != nil {
		cancel()
		return nil, err
	}
	e.joinAll()
	// The start's backfill covers the topics joined now: catch-up rounds
	// are for the ones joined later (new keys, rotations).
	clear(e.catching)
	select {
	case <-e.wakeCatchUp:
	default:
	}
	conns, err := cfg.Host.EventBus().Subscribe(new(event.EvtPeerConnectednessChanged))
	if err != nil {
		cancel()
		return nil, fmt.Errorf("moments: watch connections: %w", err)
	}
	e.wg.Go(func() { e.watchRelays(conns) })
	e.wg.Go(e.eventLoop)
	e.wg.Go(e.inboxLoop)
	e.wg.Go(e.outboxLoop)
	e.wg.Go(e.maintainLoop)
	return e, nil
}

// Close stops the engine and leaves its topics. It does not close the
// router or the store. It is safe to call more than once.
func (e *Engine) Close() error {
	e.closeOnce.Do(func() {
		e.cancel()
		e.joinMu.Lock() // a joinAll under way finishes first; later ones do nothing
		e.topicMu.Lock()
		topics := e.topics
		e.topics = map[string]topicInfo{}
		e.topicMu.Unlock()
		for t := range topics {
			e.cfg.Router.Leave(t)
		}
		e.joinMu.Unlock()
		e.wg.Wait()
	})
	return nil
}

func wake(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

func (e *Engine) emit(ev Event) {
	if e.cfg.OnEvent == nil {
		return
	}
	select {
	case e.events <- ev:
	default:
		e.log.Debug("moments event dropped: subscriber slow")
	}
}

func (e *Engine) eventLoop() {
	for {
		select {
		case <-e.ctx.Done():
			return
		case ev := <-e.events:
			e.cfg.OnEvent(ev)
		}
	}
}

// joinAll joins the topics of the own feed and of the followed feeds, and
// leaves the ones past their grace window. Joining a topic (a new key, a
// rotation) starts its catch-up: what was published on it before the mesh
// took us in is on the relays.
func (e *Engine) joinAll() {
	e.joinMu.Lock()
	defer e.joinMu.Unlock()
	if e.ctx.Err() != nil {
		return // closed: its topics are left
	}
	now := e.cfg.Now()
	want := map[string]topicInfo{}
	e.mu.Lock()
	if o := e.own; o != nil {
		want[o.cur.topic] = e.ownInfo(o.cur)
		for _, p := range o.previous {
			if now.Sub(p.retired) < EpochGrace {
				want[p.topic] = e.ownInfo(p.epochKeys)
			}
		}
	}
	for _, f := range e.follows {
		for _, ep := range f.epochs {
			if ep.retired.IsZero() || now.Sub(ep.retired) < EpochGrace {
				want[ep.topic] = topicInfo{author: f.author, epoch: ep.epoch, audience: ep.audience,
					keys: feedKeys{owner: f.owner, audience: ep.audience.Public().(ed25519.PublicKey)}}
			}
		}
	}
	e.mu.Unlock()
	e.topicMu.Lock()
	var leave []string
	for t := range e.topics {
		if _, ok := want[t]; !ok {
			leave = append(leave, t)
			delete(e.topics, t)
		}
	}
	for t, ti := range want {
		e.topics[t] = ti
	}
	e.topicMu.Unlock()
	for _, t := range leave {
		e.cfg.Router.Leave(t)
	}
	var joined []string
	for t := range want {
		was := e.cfg.Router.Joined(t)
		if err := e.cfg.Router.Join(t, e.validate, e.deliver); err != nil {
			if !errors.Is(err, ErrClosed) {
				e.log.Warn("join a moments topic", "err", err)
			}
			continue
		}
		if !was {
			joined = append(joined, t)
		}
	}
	if len(joined) > 0 {
		until := now.Add(CatchUpWindow)
		e.catchMu.Lock()
		for _, t := range joined {
			e.catching[t] = until
		}
		e.catchMu.Unlock()
		wake(e.wakeCatchUp)
	}
}

func (e *Engine) ownInfo(k epochKeys) topicInfo {
	return topicInfo{author: e.me, own: true, epoch: k.epoch, audience: k.audience,
		keys: feedKeys{owner: e.owner.Public().(ed25519.PublicKey), audience: k.audience.Public().(ed25519.PublicKey)}}
}

func (e *Engine) topicInfo(topic string) (topicInfo, bool) {
	e.topicMu.RLock()
	defer e.topicMu.RUnlock()
	ti, ok := e.topics[topic]
	return ti, ok
}

// errBlocked: a frame of a blocked author; ignored.
var errBlocked = errors.New("moments: blocked author")

// validate is every joined topic's gossipsub validator.
func (e *Engine) validate(topic string, _ peer.ID, data []byte) error {
	ti, ok := e.topicInfo(topic)
	if !ok {
		return ErrUnknownTopic
	}
	if !ti.own && e.cfg.Contacts.Blocked(ti.author) {
		return errBlocked
	}
	if _, err := checkFrame(data, topic, ti.keys, e.cfg.Now(), MaxGossipAge); err != nil {
		return err
	}
	if ok, _ := e.topicLim.Take(topic); !ok {
		return ErrRateLimited
	}
	return nil
}

// deliver applies a frame a topic delivered.
func (e *Engine) deliver(topic string, _ peer.ID, data []byte) {
	e.receive(topic, data, MaxGossipAge+time.Minute)
}

// CatchUpWindow is how long after joining a topic (a friend's new key,
// our own rotation) the engine keeps backfilling that topic, RetryMin
// apart and doubling. A frame published around the join can reach the
// relays after the first backfill, while gossip no longer brings it to a
// peer the mesh took in late: the catch-up rounds fetch it.
const CatchUpWindow = 2 * time.Minute

// maintainLoop keeps the audience, relay connections, topics and backfill
// up to date.
func (e *Engine) maintainLoop() {
	e.syncAudience(e.ctx)
	e.connectRelays(e.ctx)
	aud := time.NewTicker(e.cfg.AudienceInterval)
	defer aud.Stop()
	bf := time.NewTicker(e.cfg.BackfillInterval)
	defer bf.Stop()
	// retry is the backfill's backoff, armed while a backfill failed.
	retry := time.NewTimer(e.cfg.RetryMax)
	retry.Stop()
	defer retry.Stop()
	var delay time.Duration
	backfill := func() {
		if e.backfillAll(e.ctx) {
			delay = 0
			retry.Stop()
			return
		}
		delay = e.backoff(delay)
		retry.Reset(delay)
	}
	// catch paces the catch-up rounds of the topics joined lately.
	catch := time.NewTimer(e.cfg.RetryMax)
	catch.Stop()
	defer catch.Stop()
	var catchDelay time.Duration
	catchUp := func() {
		now := e.cfg.Now()
		only := map[string]bool{}
		e.catchMu.Lock()
		for t, until := range e.catching {
			only[t] = true
			if !now.Before(until) {
				delete(e.catching, t) // its last round
			}
		}
		more := len(e.catching) > 0
		e.catchMu.Unlock()
		if len(only) == 0 {
			return
		}
		complete := e.backfillTopics(e.ctx, only)
		if more {
			catchDelay = e.backoff(catchDelay)
			catch.Reset(catchDelay)
			return
		}
		catchDelay = 0
		if !complete {
			wake(e.wakeBackfill) // retried from there
		}
	}
	backfill()
	for {
		select {
		case <-e.ctx.Done():
			return
		case <-aud.C:
			e.syncAudience(e.ctx)
			e.connectRelays(e.ctx)
			e.joinAll()
		case <-e.wakeAudience:
			e.syncAudience(e.ctx)
		case <-bf.C:
			backfill()
		case <-e.wakeBackfill:
			backfill()
		case <-e.wakeCatchUp:
			catchDelay = 0
			catchUp()
		case <-catch.C:
			catchUp()
		case <-retry.C:
			backfill()
		case <-e.cfg.Router.inbound:
			// Gossipsub dropped a frame on its way in: fetch it from the
			// relays rather than wait for the next round.
			backfill()
		}
	}
}

// relaysOf returns the home relays of author's feed.
func (e *Engine) relaysOf(author e2ee.AccountID) []peer.AddrInfo {
	if author == e.me {
		return e.cfg.HomeRelays()
	}
	rec, ok := e.cfg.Contacts.Contact(author)
	if !ok {
		return nil
	}
	return rec.Relays()
}

// connectRelays keeps connections to the home relays of every followed
// feed: gossip reaches us through them.
func (e *Engine) connectRelays(ctx context.Context) {
	e.mu.Lock()
	authors := []e2ee.AccountID{e.me}
	for a := range e.follows {
		authors = append(authors, a)
	}
	e.mu.Unlock()
	seen := map[peer.ID]bool{}
	h := e.cfg.Host
	for _, a := range authors {
		for _, r := range e.relaysOf(a) {
			if seen[r.ID] {
				continue
			}
			seen[r.ID] = true
			h.ConnManager().Protect(r.ID, "kinmesh-moments")
			if h.Network().Connectedness(r.ID) == network.Connected {
				continue
			}
			h.Peerstore().AddAddrs(r.ID, r.Addrs, peerstore.TempAddrTTL)
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			if err := h.Connect(cctx, r); err != nil {
				e.log.Debug("connect to a feed's relay", "relay", r.ID, "err", err)
			}
			cancel()
		}
	}
}

// watchRelays backfills whenever a relay of a followed feed (or of our
// own) connects: what was kept while we were away arrives at once.
func (e *Engine) watchRelays(sub event.Subscription) {
	defer sub.Close()
	for {
		select {
		case <-e.ctx.Done():
			return
		case ev, ok := <-sub.Out():
			if !ok {
				return
			}
			c := ev.(event.EvtPeerConnectednessChanged)
			if c.Connectedness == network.Connected && e.isFeedRelay(c.Peer) {
				wake(e.wakeBackfill)
			}
		}
	}
}

func (e *Engine) isFeedRelay(p peer.ID) bool {
	e.mu.Lock()
	authors := []e2ee.AccountID{e.me}
	for a := range e.follows {
		authors = append(authors, a)
	}
	e.mu.Unlock()
	for _, a := range authors {
		for _, r := range e.relaysOf(a) {
			if r.ID == p {
				return true
			}
		}
	}
	return false
}

// backoff doubles d within the configured bounds.
func (e *Engine) backoff(d time.Duration) time.Duration {
	if d <= 0 {
		return e.cfg.RetryMin
	}
	return min(2*d, e.cfg.RetryMax)
}

func (e *Engine) nextSeq() string { return fmt.Sprintf("%020d", e.seq.Add(1)) }

// currentTopic returns the own feed's current topic ("" before the first
// key).
func (e *Engine) currentTopic() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.own == nil {
		return ""
	}
	return e.own.cur.topic
}
