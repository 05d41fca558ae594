package moments

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"

	"github.com/kinmesh/kinmesh/protocols/blobs"
	"github.com/kinmesh/kinmesh/protocols/moments/pb"
	"github.com/kinmesh/kinmesh/protocols/netkit"
	"github.com/kinmesh/kinmesh/protocols/wire"
	"github.com/kinmesh/kinmesh/storage"
)

// MediaDeleter deletes blobs on deletion proofs: the relay's blob service
// (blobs.Service.DeleteSigned).
type MediaDeleter interface {
	DeleteSigned(ctx context.Context, id blobs.BlobID, sig []byte) error
}

// Service is the relay side of moments: it keeps the frames of the feeds
// registered with it (from their topics and from Keep requests), serves
// them to the feeds' audiences page by page, acts on tombstones and
// withdrawals, and purges whole feeds. Create it with NewService; Close
// stops it.
type Service struct {
	h      host.Host
	local  peer.ID
	store  *storage.Store
	ns     *storage.Namespace
	router *Router
	media  MediaDeleter
	cfg    config
	log    *slog.Logger
	tr     tracer

	reqLim   *netkit.Limiter[string] // per peer
	topicLim *netkit.Limiter[string] // per topic

	seed  maphash.Seed
	locks [64]sync.Mutex // per feed, striped: every change of a feed

	mu       sync.Mutex // guards feeds, topics, totals and dropping
	feeds    map[string]*feedState
	topics   map[string]topicRef
	items    uint64
	bytes    uint64
	dropping map[string]bool // epoch drops under way, by marker key

	ctx       context.Context // cancelled by Close
	cancel    context.CancelFunc
	streams   netkit.Streams
	wg        sync.WaitGroup // the janitor
	closeOnce sync.Once
}

// feedState is a feed as the relay holds it in memory (its record, "f/" F).
// Its fields change under the feed's lock and mu together.
type feedState struct {
	key     string // F = Opaque(owner key)
	owner   ed25519.PublicKey
	epochs  []epochState
	nextSeq uint64
	items   uint64
	bytes   uint64
}

type epochState struct {
	topic      string
	audience   ed25519.PublicKey
	registered time.Time
	index      uint32
}

type topicRef struct {
	feed  string
	epoch uint32
}

// Store keys, in the "moments" namespace, with F = Opaque(owner key),
// T = Opaque(topic), P and I = Opaque(moment id) and Opaque(item id):
//
//	"f/" F                              pb.Feed: owner key, epochs, counters
//	"t/" T                              F: which feed a topic belongs to
//	"i/" F "/" %04x(epoch) "/" %016x(seq) pb.Stored: a kept frame
//	"x/" F "/" P "/" I                  the key of an item of moment P (the moment, its reactions and withdrawals)
//	"r/" F "/" I                        the key of reaction I, or "-" once withdrawn
//	"n/" F "/" P                        uvarint: reactions and withdrawals kept for moment P
//	"d/" F "/" P                        moment P was deleted (TTL MarkerTTL)
//	"m/" F "/" M                        blob id: a medium of a moment the relay no longer holds (its epoch dropped), for Purge to report
//	"z/" F "/" %04x(epoch)              an epoch dropped beyond WithMaxEpochs whose frames are still to delete
//
// Tombstones are kept as items with TTL MarkerTTL, so friends that
// backfill later still learn of them. A withdrawal takes its reaction's
// place (item, index entry, count) and goes with its moment. (Relays
// before withdrawals were counted kept them, and their "r/" markers, with
// TTL MarkerTTL, outside the index.)
const (
	keyFeed      = "f/"
	keyTopic     = "t/"
	keyItem      = "i/"
	keyIndex     = "x/"
	keyReaction  = "r/"
	keyCount     = "n/"
	keyDeleted   = "d/"
	keyMedia     = "m/"
	keyDropping  = "z/"
	withdrawnVal = "-"
)

// NewService starts keeping moments on h: it serves /kinmesh/moments/1.0.0
// and joins (on router) the topics of the feeds registered in st's
// "moments" namespace. media deletes a moment's blobs when its tombstone
// arrives (nil: media are left to their uploader). st and router must
// outlive the Service: close the Service first.
//
// Defaults (see the Option functions): the real clock; slog.Default(); no
// metrics; DefaultMaxFeeds feeds of at most DefaultFeedMaxItems frames and
// DefaultFeedMaxBytes bytes each; DefaultReactionsPerMoment reactions per
// moment; per peer DefaultRequestsPerMinute requests a minute (bursts of
// DefaultRequestBurst); per topic DefaultTopicFramesPerMinute frames a
// minute (bursts of DefaultTopicBurst); DefaultMaxEpochs topics per feed;
// 30 s per request stream.
func NewService(h host.Host, st *storage.Store, router *Router, media MediaDeleter, opts ...Option) (*Service, error) {
	if h == nil || st == nil || router == nil {
		return nil, errors.New("moments: NewService needs a host, a store and a router")
	}
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
		h: h, local: h.ID(), store: st, ns: st.Namespace(Namespace), router: router, media: media,
		cfg: cfg, log: cfg.logger.With("component", "moments"), tr: tracer{cfg.tracer},
		reqLim:   netkit.NewLimiter[string](cfg.now, cfg.reqRate, cfg.reqBurst, cfg.maxTracked),
		topicLim: netkit.NewLimiter[string](cfg.now, cfg.topicRate, cfg.topicB, cfg.maxTracked),
		seed:     maphash.MakeSeed(),
		feeds:    map[string]*feedState{}, topics: map[string]topicRef{}, dropping: map[string]bool{},
		ctx: ctx, cancel: cancel,
	}
	if err := s.load(ctx); err != nil {
		cancel()
		return nil, err
	}
	s.joinLive()
	s.report()
	h.SetStreamHandler(ID, s.handle)
	s.wg.Go(s.janitor)
	return s, nil
}

// load reads every feed record.
func (s *Service) load(ctx context.Context) error {
	return s.ns.List(ctx, storage.ListOptions{Prefix: keyFeed}, func(k string, v []byte) error {
		fs, err := decodeFeed(strings.TrimPrefix(k, keyFeed), v)
		if err != nil {
			s.log.Warn("skipping a malformed feed record", "err", err)
			return nil
		}
		s.feeds[fs.key] = fs
		for _, e := range fs.epochs {
			s.topics[e.topic] = topicRef{feed: fs.key, epoch: e.index}
		}
		s.items += fs.items
		s.bytes += fs.bytes
		return nil
	})
}

// Close stops serving and leaves the feeds' topics. It does not close the
// store or the router. It is safe to call more than once.
func (s *Service) Close() error {
	s.closeOnce.Do(func() {
		s.streams.Close()
		s.h.RemoveStreamHandler(ID)
		s.cancel()
		s.streams.Wait()
		s.wg.Wait()
		s.mu.Lock()
		topics := make([]string, 0, len(s.topics))
		for t := range s.topics {
			topics = append(topics, t)
		}
		s.mu.Unlock()
		for _, t := range topics {
			s.router.Leave(t)
		}
	})
	return nil
}

// Stats returns how many feeds, frames and frame bytes the relay keeps.
func (s *Service) Stats() (feeds int, items, bytes uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.feeds), s.items, s.bytes
}

func (s *Service) report() {
	f, i, b := s.Stats()
	s.tr.kept(f, i, b)
}

func (s *Service) lock(feed string) *sync.Mutex {
	return &s.locks[maphash.String(s.seed, feed)%uint64(len(s.locks))]
}

// live reports whether epoch i of fs is still listened to: the newest, or
// one whose successor is younger than EpochGrace.
func live(fs *feedState, i int, now time.Time) bool {
	return i == len(fs.epochs)-1 || now.Sub(fs.epochs[i+1].registered) < EpochGrace
}

// joinLive joins the live topics and leaves the others.
func (s *Service) joinLive() {
	now := s.cfg.now()
	var join, leave []string
	s.mu.Lock()
	for _, fs := range s.feeds {
		for i, e := range fs.epochs {
			if live(fs, i, now) {
				join = append(join, e.topic)
			} else {
				leave = append(leave, e.topic)
			}
		}
	}
	s.mu.Unlock()
	for _, t := range leave {
		s.router.Leave(t)
	}
	for _, t := range join {
		if err := s.router.Join(t, s.validate, s.onGossip); err != nil {
			s.log.Warn("join a feed's topic", "err", err)
		}
	}
}

// janitor leaves topics past their grace window, and finishes epoch drops
// a failure or a restart cut short.
func (s *Service) janitor() {
	t := time.NewTicker(s.cfg.janitor)
	defer t.Stop()
	s.resumeDrops()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
			s.joinLive()
			s.resumeDrops()
		}
	}
}

// keysOf returns the keys that verify topic's frames, and whether the
// topic is live (frames are kept only on live topics; backfill serves all).
func (s *Service) keysOf(topic string) (ref topicRef, keys feedKeys, isLive, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ref, ok = s.topics[topic]
	if !ok {
		return ref, feedKeys{}, false, false
	}
	fs, ok := s.feeds[ref.feed]
	if !ok {
		return ref, feedKeys{}, false, false // a feed purged under us: an unknown topic
	}
	for i, e := range fs.epochs {
		if e.index == ref.epoch && e.topic == topic {
			return ref, feedKeys{owner: fs.owner, audience: e.audience}, live(fs, i, s.cfg.now()), true
		}
	}
	return ref, feedKeys{}, false, false
}

// validate is every kept topic's gossipsub validator.
func (s *Service) validate(topic string, _ peer.ID, data []byte) error {
	_, keys, isLive, ok := s.keysOf(topic)
	if !ok {
		return ErrUnknownTopic
	}
	if !isLive {
		return fmt.Errorf("topic rotated away: %w", ErrStale)
	}
	if _, err := checkFrame(data, topic, keys, s.cfg.now(), MaxGossipAge); err != nil {
		return err
	}
	if ok, _ := s.topicLim.Take(topic); !ok {
		return ErrRateLimited
	}
	return nil
}

// onGossip keeps a frame a topic delivered.
func (s *Service) onGossip(topic string, _ peer.ID, data []byte) {
	ref, keys, isLive, ok := s.keysOf(topic)
	if !ok || !isLive {
		return
	}
	f, err := checkFrame(data, topic, keys, s.cfg.now(), MaxGossipAge+time.Minute)
	if err != nil {
		return
	}
	if _, err := s.keep(s.ctx, topic, ref, data, f, false); err != nil && !errors.Is(err, ErrDeleted) {
		s.log.Debug("keep a gossiped frame", "kind", f.kind, "err", err)
	}
}

func (s *Service) handle(st network.Stream) {
	s.streams.Handle(s.ctx, st, ServiceName, s.log, s.serve)
}

// serve answers the one request a stream carries.
func (s *Service) serve(ctx context.Context, st netkit.Stream, scope netkit.MemScope, remote peer.ID) error {
	if err := st.SetDeadline(time.Now().Add(s.cfg.timeout)); err != nil {
		return err
	}
	if scope != nil {
		if err := scope.ReserveMemory(maxRequestFrame, network.ReservationPriorityMedium); err != nil {
			return s.reply(st, "unknown", response{code: CodeUnavailable})
		}
		defer scope.ReleaseMemory(maxRequestFrame)
	}
	b, err := wire.NewReader(st).ReadBytes(maxRequestFrame)
	if err != nil {
		if errors.Is(err, wire.ErrTooLarge) {
			return s.reply(st, "unknown", response{code: CodeTooLarge})
		}
		return err
	}
	req, code := decodeRequest(b)
	if code != CodeOK {
		return s.reply(st, req.kind.String(), response{code: code})
	}
	if ok, wait := s.reqLim.Take(string(remote)); !ok {
		return s.reply(st, req.kind.String(), response{code: CodeRateLimited, retryAfter: wait})
	}
	var r response
	switch req.kind {
	case reqRegister:
		r = s.register(ctx, req)
	case reqKeep:
		r = s.keepRequest(ctx, req)
	case reqBackfill:
		r = s.backfill(ctx, req, remote)
	case reqPurge:
		r = s.purge(ctx, req, remote)
	}
	return s.reply(st, req.kind.String(), r)
}

func (s *Service) reply(st netkit.Stream, op string, r response) error {
	s.tr.request(op, r.code)
	return wire.Write(st, encodeResponse(r), maxResponseFrame)
}

// fresh reports whether a signed request's time is close to ours.
func (s *Service) fresh(t time.Time) bool {
	now := s.cfg.now()
	return t.After(now.Add(-RequestMaxSkew)) && t.Before(now.Add(RequestMaxSkew))
}

// register adds a topic to a feed (creating the feed) and joins it. The
// topic must be the one the audience key names, and both the owner key
// and the audience key must sign: only a holder of the epoch's keys can
// register its topic, so one who learned the name (gossipsub
// subscriptions are plain) can't take it first and lock the author out.
func (s *Service) register(ctx context.Context, req request) response {
	msg := registerMessage(s.local, req.owner, req.topic, req.audience, req.time)
	if !s.fresh(req.time) || req.topic != TopicOf(req.audience) ||
		!ed25519.Verify(req.owner, msg, req.sig) || !ed25519.Verify(req.audience, msg, req.audSig) {
		return response{code: CodeUnauthorized}
	}
	fk := s.ns.Opaque(req.owner)
	code, dropped := s.addEpoch(ctx, fk, req)
	// Topics are left only without the feed's lock: a topic's delivery
	// may be waiting for it. The drop outlives the request (the janitor
	// finishes one cut short).
	for _, e := range dropped {
		s.router.Leave(e.topic)
		if err := s.dropEpoch(s.ctx, fk, e.index); err != nil {
			s.log.Warn("register: drop the oldest epoch", "err", err)
		}
	}
	if code == CodeOK {
		s.joinLive()
		s.report()
	}
	return response{code: code}
}

// addEpoch records a registered topic, creating the feed if need be. It
// returns the epochs dropped beyond WithMaxEpochs.
func (s *Service) addEpoch(ctx context.Context, fk string, req request) (Code, []epochState) {
	l := s.lock(fk)
	l.Lock()
	defer l.Unlock()
	s.mu.Lock()
	fs, exists := s.feeds[fk]
	ref, taken := s.topics[req.topic]
	full := len(s.feeds) >= s.cfg.maxFeeds
	var cp feedState
	if exists {
		cp = *fs
		cp.epochs = append([]epochState(nil), fs.epochs...)
	}
	s.mu.Unlock()
	switch {
	case taken && ref.feed != fk:
		return CodeUnauthorized, nil
	case taken:
		return CodeOK, nil // registered before
	case !exists && full:
		return CodeQuota, nil
	case !exists:
		cp = feedState{key: fk, owner: req.owner, nextSeq: 1}
	}
	idx := uint32(0)
	if n := len(cp.epochs); n > 0 {
		idx = cp.epochs[n-1].index + 1
	}
	cp.epochs = append(cp.epochs, epochState{topic: req.topic, audience: req.audience, registered: s.cfg.now(), index: idx})
	var dropped []epochState
	if len(cp.epochs) > s.cfg.maxEpochs {
		dropped = cp.epochs[:len(cp.epochs)-s.cfg.maxEpochs]
		cp.epochs = cp.epochs[len(cp.epochs)-s.cfg.maxEpochs:]
	}
	b := s.store.NewBatch()
	_ = b.Put(s.ns, keyFeed+fk, cp.encode())
	_ = b.Put(s.ns, keyTopic+s.ns.Opaque([]byte(req.topic)), []byte(fk))
	for _, e := range dropped {
		_ = b.Delete(s.ns, keyTopic+s.ns.Opaque([]byte(e.topic)))
		_ = b.Put(s.ns, dropKey(fk, e.index), nil)
	}
	if err := b.Commit(ctx); err != nil {
		s.log.Warn("register: store", "err", err)
		return CodeUnavailable, nil
	}
	s.mu.Lock()
	s.feeds[fk] = &cp
	s.topics[req.topic] = topicRef{feed: fk, epoch: idx}
	for _, e := range dropped {
		delete(s.topics, e.topic)
	}
	s.mu.Unlock()
	return CodeOK, dropped
}

// keepRequest keeps the frames of a Keep request and republishes each
// new one on its topic, so friends whose gossip missed it get it now.
func (s *Service) keepRequest(ctx context.Context, req request) response {
	ref, keys, isLive, ok := s.keysOf(req.topic)
	if !ok {
		return response{code: CodeNotFound}
	}
	if !isLive {
		return response{code: CodeUnauthorized} // rotated away: the audience changed
	}
	now := s.cfg.now()
	r := response{code: CodeOK, codes: make([]Code, len(req.frames))}
	for i, raw := range req.frames {
		f, err := checkFrame(raw, req.topic, keys, now, MaxKeepAge)
		if err == nil {
			if ok, _ := s.topicLim.Take(req.topic); !ok {
				err = ErrRateLimited
			}
		}
		var fresh bool
		if err == nil {
			fresh, err = s.keep(ctx, req.topic, ref, raw, f, true)
		}
		r.codes[i] = CodeOf(err)
		if err != nil {
			continue
		}
		if fresh && s.router.Joined(req.topic) && now.Sub(f.created) < MaxGossipAge {
			if err := s.router.Publish(ctx, req.topic, raw); err != nil {
				s.log.Debug("republish a kept frame", "err", err)
			}
		}
	}
	return r
}

// keep stores one verified frame of topic and acts on it. It reports
// whether the frame was new. sync commits to disk before returning (Keep
// requests are answered only once their frames are durable).
func (s *Service) keep(ctx context.Context, topic string, ref topicRef, raw []byte, f *frame, sync bool) (bool, error) {
	if len(raw) > frameCap(f.kind) {
		return false, fmt.Errorf("%s frame of %d bytes (at most %d): %w", f.kind, len(raw), frameCap(f.kind), ErrTooLarge)
	}
	l := s.lock(ref.feed)
	l.Lock()
	defer l.Unlock()
	// The topic may have been dropped or its feed purged since ref was
	// read: check again under the feed's lock.
	s.mu.Lock()
	fs, ok := s.feeds[ref.feed]
	var cp feedState
	if ok && s.topics[topic] == ref {
		cp = *fs
	} else {
		ok = false
	}
	s.mu.Unlock()
	if !ok {
		return false, ErrUnknownTopic
	}
	F := ref.feed
	P := s.ns.Opaque(f.post[:])
	I := s.ns.Opaque(f.item[:])
	has := func(k string) (bool, error) { return s.ns.Has(ctx, k) }
	commit := func(b *storage.Batch) error {
		if sync {
			return b.Commit(ctx)
		}
		return b.CommitUnsynced(ctx)
	}
	deleted, err := has(keyDeleted + F + "/" + P)
	if err != nil {
		return false, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	switch f.kind {
	case KindPost, KindReaction:
		if deleted {
			return false, ErrDeleted
		}
		if s.store.LowOnSpace() {
			// Below the operator's free-space floor: nothing new, while
			// withdrawals and tombstones, which free space, go on.
			return false, fmt.Errorf("relay disk nearly full: %w", ErrUnavailable)
		}
		dupKey := keyIndex + F + "/" + P + "/" + I
		itemsCap, bytesCap := s.cfg.feedItems, s.cfg.feedBytes
		if f.kind == KindReaction {
			v, err := s.ns.Get(ctx, keyReaction+F+"/"+I)
			switch {
			case err == nil && string(v) == withdrawnVal:
				return false, ErrDeleted
			case err == nil:
				return false, nil
			case !errors.Is(err, storage.ErrNotFound):
				return false, fmt.Errorf("%w: %w", ErrUnavailable, err)
			}
			// Only reactions to a moment the relay holds: the moment's
			// own index entry (a post's item is its moment id).
			if held, err := has(keyIndex + F + "/" + P + "/" + P); err != nil {
				return false, fmt.Errorf("%w: %w", ErrUnavailable, err)
			} else if !held {
				return false, ErrNotHeld
			}
			itemsCap, bytesCap = reactionShare(itemsCap), reactionShare(bytesCap)
		} else if dup, err := has(dupKey); err != nil || dup {
			return false, err
		}
		if cp.items+1 > itemsCap || cp.bytes+uint64(len(raw)) > bytesCap {
			return false, ErrQuota
		}
		b := s.store.NewBatch()
		var count uint64
		if f.kind == KindReaction {
			if count, err = s.count(ctx, F, P); err != nil {
				return false, err
			}
			if count >= uint64(s.cfg.reactionsPerPost) {
				return false, ErrQuota
			}
			_ = b.Put(s.ns, keyCount+F+"/"+P, encodeCount(count+1))
		}
		ik := itemKey(F, ref.epoch, cp.nextSeq)
		st := &pb.Stored{Seq: cp.nextSeq, Epoch: ref.epoch, Frame: raw, Kind: pb.Kind(f.kind), Post: f.post[:], Item: f.item[:], KeptMs: s.cfg.now().UnixMilli(), Counted: true}
		for _, m := range f.media {
			st.Media = append(st.Media, m[:])
		}
		_ = b.Put(s.ns, ik, marshal(st))
		_ = b.Put(s.ns, dupKey, []byte(ik))
		if f.kind == KindReaction {
			_ = b.Put(s.ns, keyReaction+F+"/"+I, []byte(ik))
		}
		cp.nextSeq++
		cp.items++
		cp.bytes += uint64(len(raw))
		_ = b.Put(s.ns, keyFeed+F, cp.encode())
		if err := commit(b); err != nil {
			return false, fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		s.setCounters(&cp, 1, int64(len(raw)))
		return true, nil
	case KindWithdraw:
		if deleted {
			return false, ErrDeleted // the moment went, and its reactions with it
		}
		return s.withdraw(ctx, ref, &cp, raw, f, P, I, commit)
	case KindTombstone:
		return s.tombstone(ctx, ref, &cp, raw, f, P, deleted, commit)
	}
	return false, ErrMalformed
}

// Per-kind caps on the frames the relay keeps. A frame's signed bytes
// can't be trimmed and protobuf carries unknown fields, so padding would
// otherwise be kept as sent (a withdrawal or tombstone of 16 KiB). Each
// cap is several times what this version writes: a comment of 1 KiB with
// the longest name (~1.8 KiB), a withdrawal (~210 bytes), a tombstone
// with 9 media proofs (~1 KiB).
const (
	maxReactionFrame  = 4 << 10
	maxWithdrawFrame  = 512
	maxTombstoneFrame = 2 << 10
)

// frameCap returns the largest frame of kind k the relay keeps.
func frameCap(k Kind) int {
	switch k {
	case KindReaction:
		return maxReactionFrame
	case KindWithdraw:
		return maxWithdrawFrame
	case KindTombstone:
		return maxTombstoneFrame
	}
	return MaxFrameSize
}

// reactionShare is the part of a feed's quota (items or bytes) that
// friends' reactions and withdrawals may fill: three quarters, so a
// friend flooding the feed can't stop its author from posting.
func reactionShare(quota uint64) uint64 { return quota - quota/4 }

// withdraw replaces a reaction the relay holds by its withdrawal, on the
// proof of the reaction's delete key. The withdrawal takes the
// reaction's place: in the moment's index and reaction count (so it goes
// with the moment, and a moment's reactions and withdrawals together stay
// under WithReactionsPerMoment) and in the feed's counters, within the
// reactions' share. A withdrawal of a reaction the relay does not hold is
// refused (ErrNotHeld): it would be kept for nothing, and cost nothing.
func (s *Service) withdraw(ctx context.Context, ref topicRef, cp *feedState, raw []byte, f *frame, P, I string, commit func(*storage.Batch) error) (bool, error) {
	F := ref.feed
	rk := keyReaction + F + "/" + I
	v, err := s.ns.Get(ctx, rk)
	switch {
	case errors.Is(err, storage.ErrNotFound):
		return false, ErrNotHeld
	case err != nil:
		return false, fmt.Errorf("%w: %w", ErrUnavailable, err)
	case string(v) == withdrawnVal:
		return false, nil
	}
	old, err := s.ns.Get(ctx, string(v))
	if err != nil && !errors.Is(err, storage.ErrNotFound) {
		return false, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	var freedItems, freed int64
	if err == nil {
		var st pb.Stored
		if proto.Unmarshal(old, &st) == nil {
			of, perr := parseFrame(st.GetFrame())
			if perr != nil || !bytes.Equal(of.deleteKey, f.deleteKey) {
				return false, fmt.Errorf("withdrawal by another key: %w", ErrSignature)
			}
			if counted(&st) {
				freedItems, freed = 1, int64(len(st.GetFrame()))
			}
		}
	}
	items := cp.items - min(uint64(freedItems), cp.items) + 1
	size := cp.bytes - min(uint64(freed), cp.bytes) + uint64(len(raw))
	if items > reactionShare(s.cfg.feedItems) || size > reactionShare(s.cfg.feedBytes) {
		return false, ErrQuota
	}
	ik := itemKey(F, ref.epoch, cp.nextSeq)
	b := s.store.NewBatch()
	_ = b.Delete(s.ns, string(v))
	_ = b.Put(s.ns, ik, marshal(&pb.Stored{
		Seq: cp.nextSeq, Epoch: ref.epoch, Frame: raw, Kind: pb.Kind(f.kind), Post: f.post[:], Item: f.item[:], KeptMs: s.cfg.now().UnixMilli(), Counted: true,
	}))
	_ = b.Put(s.ns, keyIndex+F+"/"+P+"/"+I, []byte(ik))
	_ = b.Put(s.ns, rk, []byte(withdrawnVal))
	cp.nextSeq++
	cp.items, cp.bytes = items, size
	_ = b.Put(s.ns, keyFeed+F, cp.encode())
	if err := commit(b); err != nil {
		return false, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	s.setCounters(cp, 1-freedItems, int64(len(raw))-freed)
	return true, nil
}

// tombstone deletes a moment with its reactions and media, and keeps the
// tombstone for friends that backfill later. The marker that refuses the
// moment's replays is committed first, with the tombstone; a tombstone
// that arrives again (deleted: the marker is there) does the deletions
// again, so one that failed partway is finished by its retry. It reports
// whether the tombstone was new.
func (s *Service) tombstone(ctx context.Context, ref topicRef, cp *feedState, raw []byte, f *frame, P string, deleted bool, commit func(*storage.Batch) error) (bool, error) {
	F := ref.feed
	if !deleted {
		b := s.store.NewBatch()
		_ = b.PutTTL(s.ns, keyDeleted+F+"/"+P, nil, MarkerTTL)
		_ = b.PutTTL(s.ns, itemKey(F, ref.epoch, cp.nextSeq), marshal(&pb.Stored{
			Seq: cp.nextSeq, Epoch: ref.epoch, Frame: raw, Kind: pb.Kind(f.kind), Post: f.post[:], Item: f.item[:], KeptMs: s.cfg.now().UnixMilli(),
		}), MarkerTTL)
		cp.nextSeq++
		_ = b.Put(s.ns, keyFeed+F, cp.encode())
		if err := commit(b); err != nil {
			return false, fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		s.setCounters(cp, 0, 0)
	}
	if err := s.removeMoment(ctx, cp, P, commit, nil); err != nil {
		return false, err
	}
	if err := s.deleteMedia(ctx, F, f.proofs); err != nil {
		return false, err
	}
	return !deleted, nil
}

// setCounters publishes a feed's new counters (cp) and moves the totals.
func (s *Service) setCounters(cp *feedState, dItems, dBytes int64) {
	s.mu.Lock()
	if fs, ok := s.feeds[cp.key]; ok {
		fs.nextSeq, fs.items, fs.bytes = cp.nextSeq, cp.items, cp.bytes
	}
	s.items = uint64(int64(s.items) + dItems)
	s.bytes = uint64(int64(s.bytes) + dBytes)
	s.mu.Unlock()
	s.report()
}

func (s *Service) count(ctx context.Context, F, P string) (uint64, error) {
	v, err := s.ns.Get(ctx, keyCount+F+"/"+P)
	if errors.Is(err, storage.ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return decodeCount(v), nil
}

// backfill serves a page of a topic's kept frames after a seq.
func (s *Service) backfill(ctx context.Context, req request, remote peer.ID) response {
	ref, keys, _, ok := s.keysOf(req.topic)
	if !ok {
		return response{code: CodeNotFound}
	}
	if !s.fresh(req.time) || !ed25519.Verify(keys.audience, backfillMessage(s.local, remote, req.topic, req.after, req.time), req.sig) {
		return response{code: CodeUnauthorized}
	}
	prefix := fmt.Sprintf("%s%s/%04x/", keyItem, ref.feed, ref.epoch)
	r := response{code: CodeOK}
	size := 0
	err := s.ns.List(ctx, storage.ListOptions{Prefix: prefix, StartAfter: fmt.Sprintf("%s%016x", prefix, req.after), Limit: req.limit + 1}, func(_ string, v []byte) error {
		var st pb.Stored
		if proto.Unmarshal(v, &st) != nil {
			return nil
		}
		if len(r.items) == req.limit || size+len(st.GetFrame()) > maxPageBytes {
			r.more = true
			return errStop
		}
		r.items = append(r.items, keptItem{seq: st.GetSeq(), frame: st.GetFrame()})
		size += len(st.GetFrame())
		return nil
	})
	if err != nil && !errors.Is(err, errStop) {
		s.log.Warn("backfill: list", "err", err)
		return response{code: CodeUnavailable}
	}
	return r
}

var errStop = errors.New("stop")

// purge deletes a whole feed and reports the media its moments had (and
// those of its dropped epochs), for the owner to delete with its proofs.
// The relay keeps the list of those media ids until the owner confirms
// them (a Purge with confirmed ids), or for MarkerTTL once the feed is
// gone: a Purge whose answer was lost gets them again when retried. The
// list is served in pages of MaxPurgeMedia, after media_after.
func (s *Service) purge(ctx context.Context, req request, remote peer.ID) response {
	if !s.fresh(req.time) || !ed25519.Verify(req.owner, purgeMessage(s.local, remote, req.owner, req.time), req.sig) {
		return response{code: CodeUnauthorized}
	}
	fk := s.ns.Opaque(req.owner)
	// The feed's topics are read under its lock, which Register takes
	// too: a topic registered during the purge would outlive its feed.
	l := s.lock(fk)
	l.Lock()
	s.mu.Lock()
	fs, ok := s.feeds[fk]
	var topics []string
	if ok {
		for _, e := range fs.epochs {
			topics = append(topics, e.topic)
		}
	}
	s.mu.Unlock()
	r, err := s.purgeLocked(ctx, fk, fs, topics, req)
	l.Unlock()
	if err != nil {
		s.log.Warn("purge", "err", err)
		return response{code: CodeUnavailable}
	}
	// Leave only without the feed's lock: a topic's delivery may be
	// waiting for it (and finds no feed once it has it). A topic
	// registered again since is kept.
	for _, t := range topics {
		s.mu.Lock()
		_, again := s.topics[t]
		s.mu.Unlock()
		if !again {
			s.router.Leave(t)
		}
	}
	return r
}

// purgeLocked deletes the feed fk (if fs is not nil), forgets the media
// req confirms and returns the page of media ids req asks for. Called
// with the feed's lock held.
func (s *Service) purgeLocked(ctx context.Context, fk string, fs *feedState, topics []string, req request) (response, error) {
	r := response{code: CodeOK}
	if fs != nil {
		n, err := s.purgeFeed(ctx, fk, fs, topics)
		if err != nil {
			return response{}, err
		}
		r.deleted = n
	}
	for c := range slices.Chunk(req.confirmed, 512) {
		b := s.store.NewBatch()
		for _, id := range c {
			_ = b.Delete(s.ns, listedKey(s.ns, fk, id[:]))
		}
		if err := b.Commit(ctx); err != nil {
			return response{}, fmt.Errorf("forget confirmed media: %w", err)
		}
	}
	opts := storage.ListOptions{Prefix: keyMedia + fk + "/", Limit: MaxPurgeMedia + 1}
	if req.mediaAfter != nil {
		opts.StartAfter = listedKey(s.ns, fk, req.mediaAfter[:])
	}
	err := s.ns.List(ctx, opts, func(_ string, v []byte) error {
		id, err := blobs.BlobIDFromBytes(v)
		if err != nil {
			return nil
		}
		if len(r.media) == MaxPurgeMedia {
			r.more = true
			return errStop
		}
		r.media = append(r.media, id)
		return nil
	})
	if err != nil && !errors.Is(err, errStop) {
		return response{}, fmt.Errorf("list media: %w", err)
	}
	return r, nil
}

// purgeFeed deletes the feed fk, whose topics are topics, and returns how
// many frames it held. Its posts' media go on the feed's media list in
// the batches that delete the posts, and the whole list then expires
// after MarkerTTL unless confirmed sooner. It can fail partway and be
// done again. Called with the feed's lock held.
func (s *Service) purgeFeed(ctx context.Context, fk string, fs *feedState, topics []string) (int, error) {
	n, err := s.deletePrefix(ctx, keyItem+fk+"/", func(b *storage.Batch, v []byte) {
		var st pb.Stored
		if proto.Unmarshal(v, &st) != nil || st.GetKind() != pb.Kind_KIND_POST {
			return
		}
		for _, m := range st.GetMedia() {
			if _, err := blobs.BlobIDFromBytes(m); err == nil {
				_ = b.PutTTL(s.ns, listedKey(s.ns, fk, m), m, MarkerTTL)
			}
		}
	})
	if err != nil {
		return 0, fmt.Errorf("delete frames: %w", err)
	}
	for _, p := range []string{keyIndex, keyReaction, keyCount, keyDeleted, keyDropping} {
		if _, err := s.deletePrefix(ctx, p+fk+"/", nil); err != nil {
			return 0, fmt.Errorf("delete %s keys: %w", p, err)
		}
	}
	if err := s.expireMedia(ctx, fk); err != nil {
		return 0, err
	}
	b := s.store.NewBatch()
	_ = b.Delete(s.ns, keyFeed+fk)
	for _, t := range topics {
		_ = b.Delete(s.ns, keyTopic+s.ns.Opaque([]byte(t)))
	}
	if err := b.Commit(ctx); err != nil {
		return 0, fmt.Errorf("delete the feed: %w", err)
	}
	s.mu.Lock()
	s.items -= min(s.items, fs.items)
	s.bytes -= min(s.bytes, fs.bytes)
	delete(s.feeds, fk)
	for _, t := range topics {
		delete(s.topics, t)
	}
	s.mu.Unlock()
	s.report()
	return n, nil
}

// expireMedia gives every medium on feed fk's list (those of dropped
// epochs were kept for as long as the feed) MarkerTTL to be confirmed.
func (s *Service) expireMedia(ctx context.Context, fk string) error {
	prefix := keyMedia + fk + "/"
	after := ""
	for {
		b := s.store.NewBatch()
		n := 0
		err := s.ns.List(ctx, storage.ListOptions{Prefix: prefix, StartAfter: after, Limit: 512}, func(k string, v []byte) error {
			_ = b.PutTTL(s.ns, k, v, MarkerTTL)
			after = k
			n++
			return nil
		})
		if err == nil && n > 0 {
			err = b.Commit(ctx)
		}
		if err != nil {
			return fmt.Errorf("expire the media list: %w", err)
		}
		if n == 0 {
			return nil
		}
	}
}

// deletePrefix deletes every key under prefix, in batches, calling each
// with each value and the batch that deletes it first; it returns how many
// it deleted.
func (s *Service) deletePrefix(ctx context.Context, prefix string, each func(*storage.Batch, []byte)) (int, error) {
	n := 0
	for {
		var keys []string
		b := s.store.NewBatch()
		err := s.ns.List(ctx, storage.ListOptions{Prefix: prefix, Limit: 256}, func(k string, v []byte) error {
			keys = append(keys, k)
			if each != nil {
				each(b, v)
			}
			return nil
		})
		if err != nil {
			return n, err
		}
		if len(keys) == 0 {
			return n, nil
		}
		for _, k := range keys {
			_ = b.Delete(s.ns, k)
		}
		if err := b.Commit(ctx); err != nil {
			return n, err
		}
		n += len(keys)
	}
}

func itemKey(feed string, epoch uint32, seq uint64) string {
	return fmt.Sprintf("%s%s/%04x/%016x", keyItem, feed, epoch, seq)
}

func (fs *feedState) encode() []byte {
	m := &pb.Feed{OwnerKey: fs.owner, NextSeq: fs.nextSeq, Items: fs.items, Bytes: fs.bytes}
	for _, e := range fs.epochs {
		m.Epochs = append(m.Epochs, &pb.Epoch{Topic: e.topic, AudienceKey: e.audience, RegisteredMs: e.registered.UnixMilli(), Index: e.index})
	}
	return marshal(m)
}

func decodeFeed(key string, b []byte) (*feedState, error) {
	var m pb.Feed
	if err := proto.Unmarshal(b, &m); err != nil || len(m.GetOwnerKey()) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("feed record: %w", ErrMalformed)
	}
	fs := &feedState{key: key, owner: m.GetOwnerKey(), nextSeq: max(1, m.GetNextSeq()), items: m.GetItems(), bytes: m.GetBytes()}
	for _, e := range m.GetEpochs() {
		if !validTopic(e.GetTopic()) || len(e.GetAudienceKey()) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("feed record epoch: %w", ErrMalformed)
		}
		fs.epochs = append(fs.epochs, epochState{topic: e.GetTopic(), audience: e.GetAudienceKey(), registered: time.UnixMilli(e.GetRegisteredMs()), index: e.GetIndex()})
	}
	return fs, nil
}

func encodeCount(n uint64) []byte { return marshal(&pb.Item{Seq: n}) }

func decodeCount(b []byte) uint64 {
	var m pb.Item
	_ = proto.Unmarshal(b, &m)
	return m.GetSeq()
}

func marshal(m proto.Message) []byte {
	b, err := proto.Marshal(m)
	if err != nil {
		panic("moments: marshal: " + err.Error())
	}
	return b
}
