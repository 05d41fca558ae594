package moments

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	pubsubpb "github.com/libp2p/go-libp2p-pubsub/pb"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// Router is the gossipsub router moments travel on, configured the same
// way on relays and devices:
//
//   - flood publishing: a frame's author sends it to every peer on the
//     topic (in a family's feed, a handful), not only its mesh, so it
//     leaves at once even before the mesh forms;
//   - no pubsub author, sequence number or signature (StrictNoSign): a
//     message names no peer; frames carry their own signatures, checked by
//     per-topic validators;
//   - message ids are SHA-256 of the data, so the same frame from several
//     paths (gossip, a relay's republication) is one message;
//   - peer scoring on: a peer whose frames fail validation (malformed,
//     oversized, forged) loses score, past GossipThreshold it gets no
//     gossip, past GraylistThreshold its RPCs are ignored; IP colocation is
//     not scored (families share a home NAT);
//   - queues sized for bursts (validation 1024, outbound 256 per peer,
//     subscriber 256), and every drop counted and reported (OnDrop), so
//     the caller can repair it: nothing is dropped silently;
//   - incoming subscriptions only for moments topics, at most 512 per RPC.
type Router struct {
	h   host.Host
	ps  *pubsub.PubSub
	cfg routerConfig
	log *slog.Logger
	tr  tracer

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	topics map[string]*joined
	closed bool

	scoreMu sync.Mutex
	scores  map[peer.ID]float64

	drops   [4]atomic.Uint64 // outbound, validation queue, throttled, subscriber
	inbound chan struct{}    // signalled on every inbound drop (the engine backfills)

	closeOnce sync.Once
}

type joined struct {
	t      *pubsub.Topic
	sub    *pubsub.Subscription
	cancel context.CancelFunc
	done   chan struct{}
}

// Validator judges a frame on a topic: nil accepts it; an error for which
// the frame's sender is to blame (ErrMalformed, ErrTooLarge, ErrSignature)
// rejects it and costs the forwarding peer score; any other error ignores
// it.
type Validator func(topic string, from peer.ID, data []byte) error

// Deliver receives the frames a topic's validator accepted, our own
// publications included, one topic at a time in arrival order.
type Deliver func(topic string, from peer.ID, data []byte)

// RouterOption configures NewRouter.
type RouterOption func(*routerConfig) error

type routerConfig struct {
	logger        *slog.Logger
	tracer        MetricsTracer
	validateQueue int
	outboundQueue int
	subBuffer     int
	onDrop        func(topic string, inbound bool)
	params        *pubsub.GossipSubParams
}

func defaultRouterConfig() routerConfig {
	return routerConfig{validateQueue: 1024, outboundQueue: 256, subBuffer: 256}
}

// WithRouterLogger sets the router's logger (default slog.Default()).
func WithRouterLogger(l *slog.Logger) RouterOption {
	return func(c *routerConfig) error {
		if l == nil {
			return errors.New("moments: nil logger")
		}
		c.logger = l
		return nil
	}
}

// WithRouterMetrics sets the tracer that counts drops and validations.
func WithRouterMetrics(t MetricsTracer) RouterOption {
	return func(c *routerConfig) error {
		c.tracer = t
		return nil
	}
}

// WithQueues sizes gossipsub's validation queue, each peer's outbound
// queue and each subscription's buffer (defaults 1024, 256, 256).
func WithQueues(validate, outbound, subscriber int) RouterOption {
	return func(c *routerConfig) error {
		if validate <= 0 || outbound <= 0 || subscriber <= 0 {
			return errors.New("moments: queue sizes must be positive")
		}
		c.validateQueue, c.outboundQueue, c.subBuffer = validate, outbound, subscriber
		return nil
	}
}

// WithOnDrop sets a function called whenever gossipsub drops a moments
// message: inbound (our validation queue or subscriber overflowed) or
// outbound (a peer's queue overflowed). f is called from gossipsub's event
// loop and must not block. An Engine on the router backfills after every
// inbound drop without it.
func WithOnDrop(f func(topic string, inbound bool)) RouterOption {
	return func(c *routerConfig) error {
		c.onDrop = f
		return nil
	}
}

// WithGossipSubParams replaces gossipsub's parameters (default
// pubsub.DefaultGossipSubParams), for tests and benchmarks.
func WithGossipSubParams(p pubsub.GossipSubParams) RouterOption {
	return func(c *routerConfig) error {
		c.params = &p
		return nil
	}
}

// Score thresholds: one rejected frame (-100 in its topic) stops gossip
// to and from the peer and publishing to it; a second graylists it.
var scoreThresholds = pubsub.PeerScoreThresholds{
	GossipThreshold:             -50,
	PublishThreshold:            -80,
	GraylistThreshold:           -300,
	AcceptPXThreshold:           100,
	OpportunisticGraftThreshold: 2,
}

func scoreParams() *pubsub.PeerScoreParams {
	return &pubsub.PeerScoreParams{
		Topics:                    map[string]*pubsub.TopicScoreParams{},
		TopicScoreCap:             100,
		AppSpecificScore:          func(peer.ID) float64 { return 0 },
		AppSpecificWeight:         1,
		IPColocationFactorWeight:  0,
		BehaviourPenaltyWeight:    -10,
		BehaviourPenaltyThreshold: 6,
		BehaviourPenaltyDecay:     pubsub.ScoreParameterDecay(10 * time.Minute),
		DecayInterval:             time.Second,
		DecayToZero:               0.01,
		RetainScore:               10 * time.Minute,
	}
}

// topicScoreParams rewards time in the mesh and first deliveries a little
// and punishes invalid frames hard. Mesh delivery rates are not scored: a
// family's feed is quiet for hours, which must not look like a bad peer.
func topicScoreParams() *pubsub.TopicScoreParams {
	return &pubsub.TopicScoreParams{
		TopicWeight:                    1,
		TimeInMeshWeight:               0.01,
		TimeInMeshQuantum:              time.Second,
		TimeInMeshCap:                  300,
		FirstMessageDeliveriesWeight:   1,
		FirstMessageDeliveriesDecay:    pubsub.ScoreParameterDecay(time.Hour),
		FirstMessageDeliveriesCap:      20,
		InvalidMessageDeliveriesWeight: -100,
		InvalidMessageDeliveriesDecay:  pubsub.ScoreParameterDecay(time.Hour),
	}
}

// messageID is a frame's id: SHA-256 of the data.
func messageID(m *pubsubpb.Message) string {
	h := sha256.Sum256(m.GetData())
	return string(h[:])
}

// NewRouter starts gossipsub on h for moments. Close stops it.
//
// Defaults (see the RouterOption functions): slog.Default(); no metrics;
// queues of 1024 (validation), 256 (outbound, per peer) and 256 (per
// subscription); gossipsub's default parameters; seen-message cache of
// MaxGossipAge + MaxClockSkew, so a replay inside the freshness window is
// a duplicate.
func NewRouter(h host.Host, opts ...RouterOption) (*Router, error) {
	if h == nil {
		return nil, errors.New("moments: NewRouter needs a host")
	}
	cfg := defaultRouterConfig()
	for _, o := range opts {
		if err := o(&cfg); err != nil {
			return nil, err
		}
	}
	if cfg.logger == nil {
		cfg.logger = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &Router{
		h: h, cfg: cfg, log: cfg.logger.With("component", "moments-router"), tr: tracer{cfg.tracer},
		ctx: ctx, cancel: cancel, topics: map[string]*joined{}, scores: map[peer.ID]float64{},
		inbound: make(chan struct{}, 1),
	}
	psOpts := []pubsub.Option{
		pubsub.WithMessageSignaturePolicy(pubsub.StrictNoSign),
		pubsub.WithNoAuthor(),
		pubsub.WithMessageIdFn(messageID),
		pubsub.WithPeerScore(scoreParams(), &scoreThresholds),
		pubsub.WithPeerScoreInspect(pubsub.PeerScoreInspectFn(r.inspect), time.Second),
		pubsub.WithValidateQueueSize(cfg.validateQueue),
		pubsub.WithPeerOutboundQueueSize(cfg.outboundQueue),
		pubsub.WithMaxMessageSize(1 << 20),
		pubsub.WithSeenMessagesTTL(MaxGossipAge + MaxClockSkew),
		pubsub.WithSubscriptionFilter(pubsub.WrapLimitSubscriptionFilter(topicFilter{}, 512)),
		pubsub.WithRawTracer(dropTracer{r}),
		pubsub.WithPeerExchange(false),
		pubsub.WithFloodPublish(true),
		pubsub.WithLogger(slog.New(slog.DiscardHandler)),
	}
	if cfg.params != nil {
		psOpts = append(psOpts, pubsub.WithGossipSubParams(*cfg.params))
	}
	ps, err := pubsub.NewGossipSub(ctx, h, psOpts...)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("moments: start gossipsub: %w", err)
	}
	r.ps = ps
	return r, nil
}

// Join subscribes to topic, judging its frames with validate and handing
// the accepted ones to deliver. Joining a topic twice changes nothing.
func (r *Router) Join(topic string, validate Validator, deliver Deliver) error {
	if !validTopic(topic) {
		return fmt.Errorf("moments: join %q: %w", topic, ErrMalformed)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return ErrClosed
	}
	if _, ok := r.topics[topic]; ok {
		return nil
	}
	err := r.ps.RegisterTopicValidator(topic, func(_ context.Context, from peer.ID, m *pubsub.Message) pubsub.ValidationResult {
		err := validate(topic, from, m.GetData())
		switch {
		case err == nil:
			r.tr.validated("accept", "ok")
			return pubsub.ValidationAccept
		case rejects(err):
			r.tr.validated("reject", reason(err))
			return pubsub.ValidationReject
		default:
			r.tr.validated("ignore", reason(err))
			return pubsub.ValidationIgnore
		}
	})
	if err != nil {
		return fmt.Errorf("moments: validator for %s: %w", topic, err)
	}
	t, err := r.ps.Join(topic)
	if err != nil {
		_ = r.ps.UnregisterTopicValidator(topic)
		return fmt.Errorf("moments: join %s: %w", topic, err)
	}
	if err := t.SetScoreParams(topicScoreParams()); err != nil {
		r.log.Warn("topic score parameters", "err", err)
	}
	sub, err := t.Subscribe(pubsub.WithBufferSize(r.cfg.subBuffer))
	if err != nil {
		_ = t.Close()
		_ = r.ps.UnregisterTopicValidator(topic)
		return fmt.Errorf("moments: subscribe %s: %w", topic, err)
	}
	ctx, cancel := context.WithCancel(r.ctx)
	j := &joined{t: t, sub: sub, cancel: cancel, done: make(chan struct{})}
	r.topics[topic] = j
	r.wg.Go(func() {
		defer close(j.done)
		for {
			m, err := sub.Next(ctx)
			if err != nil {
				return
			}
			deliver(topic, m.ReceivedFrom, m.GetData())
		}
	})
	return nil
}

// Leave unsubscribes from topic.
func (r *Router) Leave(topic string) {
	r.mu.Lock()
	j, ok := r.topics[topic]
	delete(r.topics, topic)
	r.mu.Unlock()
	if !ok {
		return
	}
	r.leave(topic, j)
}

func (r *Router) leave(topic string, j *joined) {
	j.sub.Cancel()
	j.cancel()
	<-j.done
	_ = r.ps.UnregisterTopicValidator(topic)
	_ = j.t.Close()
}

// Joined reports whether the router is subscribed to topic.
func (r *Router) Joined(topic string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.topics[topic]
	return ok
}

// Publish validates data with the topic's validator and sends it to the
// topic's peers. It fails if the topic is not joined or the frame does not
// validate; it never drops silently: a full outbound queue is reported to
// OnDrop and counted.
func (r *Router) Publish(ctx context.Context, topic string, data []byte) error {
	r.mu.Lock()
	j, ok := r.topics[topic]
	r.mu.Unlock()
	if !ok {
		return fmt.Errorf("moments: publish on %s: %w", topic, ErrUnknownTopic)
	}
	if err := j.t.Publish(ctx, data); err != nil {
		return fmt.Errorf("moments: publish on %s: %w", topic, err)
	}
	return nil
}

// Peers returns the peers subscribed to topic that the router is
// connected to.
func (r *Router) Peers(topic string) []peer.ID { return r.ps.ListPeers(topic) }

// Score returns the gossipsub score of p, as of the last second.
func (r *Router) Score(p peer.ID) float64 {
	r.scoreMu.Lock()
	defer r.scoreMu.Unlock()
	return r.scores[p]
}

func (r *Router) inspect(m map[peer.ID]float64) {
	r.scoreMu.Lock()
	r.scores = m
	r.scoreMu.Unlock()
}

// Drops counts the moments messages gossipsub dropped, by Drop* reason.
type Drops struct {
	Outbound, ValidationQueue, ValidationThrottled, SubscriberSlow uint64
}

// Drops returns how many moments messages gossipsub has dropped.
func (r *Router) Drops() Drops {
	return Drops{r.drops[0].Load(), r.drops[1].Load(), r.drops[2].Load(), r.drops[3].Load()}
}

// Close leaves every topic and stops gossipsub. It is safe to call more
// than once.
func (r *Router) Close() error {
	r.closeOnce.Do(func() {
		r.mu.Lock()
		r.closed = true
		topics := r.topics
		r.topics = map[string]*joined{}
		r.mu.Unlock()
		for t, j := range topics {
			r.leave(t, j)
		}
		r.cancel()
		r.wg.Wait()
	})
	return nil
}

func (r *Router) drop(i int, reason, topic string, inbound bool) {
	r.drops[i].Add(1)
	r.tr.dropped(reason)
	if inbound {
		wake(r.inbound)
	}
	if r.cfg.onDrop != nil {
		r.cfg.onDrop(topic, inbound)
	}
}

// reason names the check an error failed, for metrics.
func reason(err error) string {
	for _, e := range []struct {
		err  error
		name string
	}{
		{ErrMalformed, "malformed"}, {ErrTooLarge, "too_large"}, {ErrSignature, "signature"},
		{ErrStale, "stale"}, {ErrUnknownTopic, "unknown_topic"}, {ErrRateLimited, "rate"},
		{ErrDeleted, "deleted"}, {ErrQuota, "quota"},
	} {
		if errors.Is(err, e.err) {
			return e.name
		}
	}
	return "other"
}

// topicFilter admits moments topics only.
type topicFilter struct{}

func (topicFilter) CanSubscribe(topic string) bool { return strings.HasPrefix(topic, TopicPrefix) }

func (topicFilter) FilterIncomingSubscriptions(_ peer.ID, subs []*pubsubpb.RPC_SubOpts) ([]*pubsubpb.RPC_SubOpts, error) {
	return pubsub.FilterSubscriptions(subs, func(t string) bool { return validTopic(t) }), nil
}

// dropTracer watches gossipsub for dropped moments messages. Its methods
// run on gossipsub's event loop: they only count and signal.
type dropTracer struct{ r *Router }

func (t dropTracer) DropRPC(rpc *pubsub.RPC, _ peer.ID) {
	for _, m := range rpc.GetPublish() {
		if strings.HasPrefix(m.GetTopic(), TopicPrefix) {
			t.r.drop(0, DropOutboundQueue, m.GetTopic(), false)
		}
	}
}

func (t dropTracer) RejectMessage(m *pubsub.Message, why string) {
	switch why {
	case pubsub.RejectValidationQueueFull:
		t.r.drop(1, DropValidationQueue, m.GetTopic(), true)
	case pubsub.RejectValidationThrottled:
		t.r.drop(2, DropValidationThrottled, m.GetTopic(), true)
	}
}

func (t dropTracer) UndeliverableMessage(m *pubsub.Message) {
	t.r.drop(3, DropSubscriberSlow, m.GetTopic(), true)
}

func (dropTracer) Join(string)                                          {}
func (dropTracer) Leave(string)                                         {}
func (dropTracer) Graft(peer.ID, string)                                {}
func (dropTracer) Prune(peer.ID, string)                                {}
func (dropTracer) ValidateMessage(*pubsub.Message)                      {}
func (dropTracer) DeliverMessage(*pubsub.Message)                       {}
func (dropTracer) DuplicateMessage(*pubsub.Message)                     {}
func (dropTracer) ThrottlePeer(peer.ID)                                 {}
func (dropTracer) RecvRPC(*pubsub.RPC)                                  {}
func (dropTracer) SendRPC(*pubsub.RPC, peer.ID)                         {}
func (dropTracer) SendRPCCompleted(*pubsub.RPC, peer.ID, time.Duration) {}
func (dropTracer) OnNewOutboundStream(peer.ID, protocol.ID)             {}
func (dropTracer) OnClosedOutboundStream(peer.ID)                       {}
