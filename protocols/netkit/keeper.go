package netkit

import (
	"context"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/host/eventbus"
)

// keeperTag protects kept connections from the connection manager.
const keeperTag = "kinmesh-keeper"

// KeeperConfig tunes a Keeper. Zero fields take the defaults listed.
type KeeperConfig struct {
	// MinBackoff is the first wait after a failed dial (default 500ms); it
	// doubles per failure up to MaxBackoff (default 30s), with ±20% jitter.
	MinBackoff, MaxBackoff time.Duration
	// DialTimeout bounds one dial attempt (default 10s).
	DialTimeout time.Duration
	// OnConnect, if set, runs after every (re)connection, e.g. to reserve a
	// relay slot. It returns when to run it again while still connected
	// (zero: never). An error counts as a failure and backs off.
	OnConnect func(ctx context.Context, p peer.AddrInfo) (renewAt time.Time, err error)
}

// PeerState is a kept peer's state, for status displays and tests.
type PeerState struct {
	ID        peer.ID
	Connected bool
	// Ready is true once OnConnect succeeded on the current connection (or
	// as soon as connected when there is no OnConnect).
	Ready bool
	// RenewAt is when OnConnect runs again (e.g. reservation expiry margin).
	RenewAt time.Time
	// LastErr is the last dial or OnConnect error, cleared on success.
	LastErr  string
	Failures int
}

// Keeper keeps a host connected to a fixed set of peers (a device to its
// relays, a relay to its fellow relays): it dials each, re-dials with
// exponential backoff when the connection goes away, runs OnConnect after
// every connection and again at the time OnConnect asks for, and protects
// the connections from the connection manager.
type Keeper struct {
	h      host.Host
	cfg    KeeperConfig
	cancel context.CancelFunc
	wg     sync.WaitGroup
	sub    event.Subscription

	mu      sync.Mutex
	state   map[peer.ID]*PeerState
	wake    map[peer.ID]chan struct{}
	changed chan struct{} // closed and replaced on every state change
	once    sync.Once
}

// NewKeeper starts keeping h connected to peers. Close stops it.
func NewKeeper(h host.Host, peers []peer.AddrInfo, cfg KeeperConfig) (*Keeper, error) {
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 500 * time.Millisecond
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 30 * time.Second
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 10 * time.Second
	}
	sub, err := h.EventBus().Subscribe(new(event.EvtPeerConnectednessChanged), eventbus.Name("kinmesh keeper"))
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	k := &Keeper{
		h: h, cfg: cfg, cancel: cancel, sub: sub,
		state:   map[peer.ID]*PeerState{},
		wake:    map[peer.ID]chan struct{}{},
		changed: make(chan struct{}),
	}
	for _, p := range peers {
		if p.ID == h.ID() {
			continue
		}
		k.state[p.ID] = &PeerState{ID: p.ID}
		k.wake[p.ID] = make(chan struct{}, 1)
		h.ConnManager().Protect(p.ID, keeperTag)
	}
	k.wg.Go(func() { k.watch(ctx) })
	for _, p := range peers {
		if p.ID == h.ID() {
			continue
		}
		k.wg.Go(func() { k.keep(ctx, p) })
	}
	return k, nil
}

// watch wakes a peer's loop when its connection goes away.
func (k *Keeper) watch(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case e, ok := <-k.sub.Out():
			if !ok {
				return
			}
			ev := e.(event.EvtPeerConnectednessChanged)
			if ev.Connectedness == network.Connected {
				continue
			}
			k.mu.Lock()
			w, ok := k.wake[ev.Peer]
			k.mu.Unlock()
			if ok {
				select {
				case w <- struct{}{}:
				default:
				}
			}
		}
	}
}

func (k *Keeper) keep(ctx context.Context, p peer.AddrInfo) {
	k.mu.Lock()
	wake := k.wake[p.ID]
	k.mu.Unlock()
	backoff := k.cfg.MinBackoff
	for ctx.Err() == nil {
		err := k.connect(ctx, p)
		var renewAt time.Time
		if err == nil && k.cfg.OnConnect != nil {
			renewAt, err = k.cfg.OnConnect(ctx, p)
		}
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			k.update(p.ID, func(s *PeerState) {
				s.Connected = k.h.Network().Connectedness(p.ID) == network.Connected
				s.Ready = false
				s.LastErr = err.Error()
				s.Failures++
			})
			if !sleep(ctx, jitter(backoff)) {
				return
			}
			backoff = min(2*backoff, k.cfg.MaxBackoff)
			continue
		}
		backoff = k.cfg.MinBackoff
		k.update(p.ID, func(s *PeerState) {
			s.Connected, s.Ready, s.RenewAt, s.LastErr = true, true, renewAt, ""
		})
		if !k.await(ctx, p.ID, wake, renewAt) {
			return
		}
	}
}

// await waits until the peer's connection drops or renewAt comes due. It
// returns false when ctx ends.
func (k *Keeper) await(ctx context.Context, id peer.ID, wake <-chan struct{}, renewAt time.Time) bool {
	var renew <-chan time.Time
	if !renewAt.IsZero() {
		t := time.NewTimer(time.Until(renewAt))
		defer t.Stop()
		renew = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return false
		case <-renew:
			return true
		case <-wake:
			if k.h.Network().Connectedness(id) != network.Connected {
				k.update(id, func(s *PeerState) { s.Connected, s.Ready = false, false })
				return true
			}
		}
	}
}

func (k *Keeper) connect(ctx context.Context, p peer.AddrInfo) error {
	if k.h.Network().Connectedness(p.ID) == network.Connected {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, k.cfg.DialTimeout)
	defer cancel()
	// A direct connection: forget any backoff the swarm keeps from a
	// previous failure, the keeper does its own.
	return k.h.Connect(network.WithForceDirectDial(ctx, "kinmesh keeper"), p)
}

func (k *Keeper) update(id peer.ID, f func(*PeerState)) {
	k.mu.Lock()
	defer k.mu.Unlock()
	f(k.state[id])
	close(k.changed)
	k.changed = make(chan struct{})
}

// State returns every kept peer's state, in no particular order.
func (k *Keeper) State() []PeerState {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := make([]PeerState, 0, len(k.state))
	for _, s := range k.state {
		out = append(out, *s)
	}
	return out
}

// Changed returns a channel closed at the next state change, so callers
// can wait on conditions instead of polling.
func (k *Keeper) Changed() <-chan struct{} {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.changed
}

// Close stops keeping and unprotects the connections; it does not close
// them. It is safe to call more than once.
func (k *Keeper) Close() error {
	k.once.Do(func() {
		k.cancel()
		k.sub.Close()
		k.wg.Wait()
		for id := range k.state {
			k.h.ConnManager().Unprotect(id, keeperTag)
		}
	})
	return nil
}

func jitter(d time.Duration) time.Duration {
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
