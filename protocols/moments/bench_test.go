package moments

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"math"
	mrand "math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Propagation benchmarks: how long a moment takes to reach every node of
// a network, on moments' router (its validators, message ids, scoring,
// flood publishing) against raw gossipsub with its defaults, on the same
// topology in the same run, messages interleaved so both see the same
// machine load.

// topology returns the edges of a connected random graph on n nodes: a
// ring plus extra random links, degree about d.
func topology(n, d int, seed uint64) [][2]int {
	rng := mrand.New(mrand.NewPCG(seed, seed))
	seen := map[[2]int]bool{}
	var edges [][2]int
	add := func(a, b int) {
		if a == b {
			return
		}
		if a > b {
			a, b = b, a
		}
		if !seen[[2]int{a, b}] {
			seen[[2]int{a, b}] = true
			edges = append(edges, [2]int{a, b})
		}
	}
	for i := range n {
		add(i, (i+1)%n)
	}
	for range n * (d - 2) / 2 {
		add(rng.IntN(n), rng.IntN(n))
	}
	return edges
}

// propNet is one network under test: a publish function and what each
// node received when.
type propNet struct {
	name    string
	n       int
	publish func(ctx context.Context, data []byte) error
	close   func()

	mu     sync.Mutex
	sent   map[[32]byte]time.Time
	got    map[[32]byte]int
	lat    []time.Duration
	record map[[32]byte]bool
	done   map[[32]byte]chan struct{}
}

func newPropNet(name string, n int) *propNet {
	return &propNet{name: name, n: n, sent: map[[32]byte]time.Time{}, got: map[[32]byte]int{},
		record: map[[32]byte]bool{}, done: map[[32]byte]chan struct{}{}}
}

// deliver records a delivery at a node other than the publisher.
func (p *propNet) deliver(data []byte) {
	now := time.Now()
	k := sha256.Sum256(data)
	p.mu.Lock()
	defer p.mu.Unlock()
	t0, ok := p.sent[k]
	if !ok {
		return
	}
	if p.record[k] {
		p.lat = append(p.lat, now.Sub(t0))
	}
	p.got[k]++
	if p.got[k] == p.n-1 {
		close(p.done[k])
	}
}

// send publishes data and waits until every other node has it.
func (p *propNet) send(ctx context.Context, data []byte, record bool) error {
	k := sha256.Sum256(data)
	done := make(chan struct{})
	p.mu.Lock()
	p.sent[k] = time.Now()
	p.record[k] = record
	p.done[k] = done
	p.mu.Unlock()
	if err := p.publish(ctx, data); err != nil {
		return err
	}
	select {
	case <-ctx.Done():
		p.mu.Lock()
		defer p.mu.Unlock()
		return fmt.Errorf("%s: message reached %d of %d nodes: %w", p.name, p.got[k], p.n-1, ctx.Err())
	case <-done:
		return nil
	}
}

func percentile(ds []time.Duration, q float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	return s[min(len(s)-1, int(math.Ceil(q*float64(len(s))))-1)]
}

// connect links hosts along edges.
func connect(ctx context.Context, hosts []host.Host, edges [][2]int) error {
	var wg sync.WaitGroup
	errs := make(chan error, len(edges))
	sem := make(chan struct{}, 16)
	for _, e := range edges {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			b := hosts[e[1]]
			if err := hosts[e[0]].Connect(ctx, peer.AddrInfo{ID: b.ID(), Addrs: b.Addrs()}); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// rawGossipNet runs raw gossipsub (defaults) on hosts.
func rawGossipNet(hosts []host.Host, topic string) (*propNet, error) {
	p := newPropNet("gossipsub", len(hosts))
	ctx, cancel := context.WithCancel(context.Background())
	var topics []*pubsub.Topic
	var subs []*pubsub.Subscription
	var wg sync.WaitGroup
	for _, h := range hosts {
		ps, err := pubsub.NewGossipSub(ctx, h)
		if err != nil {
			cancel()
			return nil, err
		}
		t, err := ps.Join(topic)
		if err != nil {
			cancel()
			return nil, err
		}
		sub, err := t.Subscribe()
		if err != nil {
			cancel()
			return nil, err
		}
		topics, subs = append(topics, t), append(subs, sub)
		self := h.ID()
		wg.Go(func() {
			for {
				m, err := sub.Next(ctx)
				if err != nil {
					return
				}
				if m.ReceivedFrom != self {
					p.deliver(m.GetData())
				}
			}
		})
	}
	p.publish = func(ctx context.Context, data []byte) error { return topics[0].Publish(ctx, data) }
	p.close = func() {
		for i := range subs {
			subs[i].Cancel()
			_ = topics[i].Close()
		}
		cancel()
		wg.Wait()
	}
	return p, nil
}

// momentsNet runs moments' router on hosts, every node validating frames
// as relays and devices do.
func momentsNet(hosts []host.Host, secret [32]byte) (*propNet, epochKeys, error) {
	ep := deriveEpoch(1, secret)
	keys := feedKeys{owner: fuzzOwner.Public().(ed25519.PublicKey), audience: ep.audience.Public().(ed25519.PublicKey)}
	p := newPropNet("moments", len(hosts))
	var routers []*Router
	for i, h := range hosts {
		r, err := NewRouter(h, WithRouterLogger(discard))
		if err != nil {
			return nil, ep, err
		}
		routers = append(routers, r)
		validate := func(topic string, _ peer.ID, data []byte) error {
			_, err := checkFrame(data, topic, keys, time.Now(), MaxGossipAge)
			return err
		}
		deliver := func(_ string, _ peer.ID, data []byte) {
			if i != 0 {
				p.deliver(data)
			}
		}
		if err := r.Join(ep.topic, validate, deliver); err != nil {
			return nil, ep, err
		}
	}
	p.publish = func(ctx context.Context, data []byte) error { return routers[0].Publish(ctx, ep.topic, data) }
	p.close = func() {
		for _, r := range routers {
			_ = r.Close()
		}
	}
	return p, ep, nil
}

// momentFrame returns a signed post frame of about 1 KiB, as a moment
// with a photo travels.
func momentFrame(topic string) []byte {
	id := newItemID()
	sealed := make([]byte, 900)
	_, _ = rand.Read(sealed)
	var media [32]byte
	_, _ = rand.Read(media[:])
	raw, err := encodeFrame(topic, &frame{kind: KindPost, item: id, post: id, created: time.Now(), wrappedKey: sealed[:120], sealed: sealed, media: nil}, fuzzOwner)
	if err != nil {
		panic(err)
	}
	return raw
}

// runPropagation builds both networks on the same topology and measures
// msgs messages each, interleaved; it returns p50 and p99 of every
// delivery to every node but the publisher.
func runPropagation(tb testing.TB, ctx context.Context, mkHost func(i int) host.Host, n, msgs int) (base, ours [2]time.Duration) {
	edges := topology(n, 6, 42)
	build := func() []host.Host {
		hs := make([]host.Host, n)
		for i := range n {
			hs[i] = mkHost(i)
		}
		if err := connect(ctx, hs, edges); err != nil {
			tb.Fatal(err)
		}
		return hs
	}
	hsBase, hsOurs := build(), build()
	defer func() {
		for _, h := range append(hsBase, hsOurs...) {
			_ = h.Close()
		}
	}()
	var secret [32]byte
	_, _ = rand.Read(secret[:])
	bn, err := rawGossipNet(hsBase, TopicName(secret))
	if err != nil {
		tb.Fatal(err)
	}
	defer bn.close()
	mn, ep, err := momentsNet(hsOurs, secret)
	if err != nil {
		tb.Fatal(err)
	}
	defer mn.close()
	payload := func() []byte {
		b := make([]byte, 1100)
		_, _ = rand.Read(b)
		return b
	}
	// Warm up until a message reaches everyone: the meshes form in the
	// first heartbeats (raw gossipsub publishes only to its mesh, so its
	// first messages go nowhere).
	for _, w := range []struct {
		p   *propNet
		msg func() []byte
	}{{bn, payload}, {mn, func() []byte { return momentFrame(ep.topic) }}} {
		for ok, tries := 0, 0; ok < 3; tries++ {
			if tries > 40 {
				tb.Fatalf("%s: the mesh never formed", w.p.name)
			}
			wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			if w.p.send(wctx, w.msg(), false) == nil {
				ok++
			}
			cancel()
		}
	}
	for i := range msgs {
		type job struct {
			p   *propNet
			msg []byte
		}
		round := []job{{bn, payload()}, {mn, momentFrame(ep.topic)}}
		if i%2 == 1 { // alternate who goes first: neither always follows the other's GC
			round[0], round[1] = round[1], round[0]
		}
		for _, s := range round {
			sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			err := s.p.send(sctx, s.msg, true)
			cancel()
			if err != nil {
				tb.Fatal(err)
			}
		}
	}
	return [2]time.Duration{percentile(bn.lat, .5), percentile(bn.lat, .99)},
		[2]time.Duration{percentile(mn.lat, .5), percentile(mn.lat, .99)}
}

// BenchmarkPropagation100: a moment to 100 in-process nodes on loopback
// (random graph of degree about 6), moments' router against raw
// gossipsub on the same topology. Reports p50 and p99 of both in ms and
// their ratios (goal: at most 1.2).
func BenchmarkPropagation100(b *testing.B) {
	ctx := context.Background()
	for range b.N {
		base, ours := runPropagation(b, ctx, func(int) host.Host { return newHost(b, newKey(b)) }, 100, 30)
		ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
		b.ReportMetric(ms(base[0]), "gossipsub-p50-ms")
		b.ReportMetric(ms(base[1]), "gossipsub-p99-ms")
		b.ReportMetric(ms(ours[0]), "moments-p50-ms")
		b.ReportMetric(ms(ours[1]), "moments-p99-ms")
		b.ReportMetric(ms(ours[0])/ms(base[0]), "p50-ratio")
		b.ReportMetric(ms(ours[1])/ms(base[1]), "p99-ratio")
	}
}
