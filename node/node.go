package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p"
	dht "github.com/libp2p/go-libp2p-kad-dht"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/routing"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	"github.com/libp2p/go-libp2p/p2p/net/connmgr"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/client"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/kinmesh/kinmesh/protocols/contact"
	"github.com/kinmesh/kinmesh/protocols/message"
	"github.com/kinmesh/kinmesh/protocols/netkit"
	"github.com/kinmesh/kinmesh/storage"
)

// Phone-sized limits for the libp2p host.
const (
	maxMemory   = 96 << 20 // resource manager memory budget
	maxFDs      = 256
	connLow     = 32 // connection manager trims down to this…
	connHigh    = 64 // …once above this
	renewMargin = 2 * time.Minute
)

// ErrNotStarted is returned by methods that need a started node.
var ErrNotStarted = errors.New("node: not started (call Start first)")

// Node is an embedded kinmesh node. Create it with New, run it with Start,
// stop it with Close.
type Node struct {
	cfg Config
	log *slog.Logger

	mu      sync.Mutex
	started bool
	start   time.Time

	store   *storage.Store
	host    host.Host
	dht     *dht.IpfsDHT
	keeper  *netkit.Keeper
	relays  []peer.AddrInfo
	emitter event.Emitter

	rsvMu        sync.Mutex
	reservations map[peer.ID]time.Time // relay → reservation expiry
	downSince    map[peer.ID]time.Time // relay → when its link went down (cfg.Now)

	hp holePunching // DCUtR hole punching and its tracker (peers.go, lab.go)

	api *apiServer

	// acctMu guards the account and what hangs off it.
	acctMu   sync.Mutex
	acct     *account
	contacts *contactBook
	msg      *message.Service
	events   *eventHub

	// purgers are extra purges features add to account deletion (e.g.
	// the discovery directory), run per relay holding account data.
	purgers []purger
	// formerWake wakes the purge of home relays a move replaced (former.go).
	formerWake chan struct{}
	// entryWake wakes the upkeep of the phone directory entry's record
	// (phone.go).
	entryWake chan struct{}
	// publishWake wakes the publication of the account's record in the
	// DHT (dht.go).
	publishWake chan struct{}

	// phoneMu serializes phone verification and discovery syncs (phone.go,
	// discovery.go).
	phoneMu sync.Mutex

	// social is presence, reports and diagnostics (presence.go).
	social social

	// calls is the calls service (calls.go).
	calls callsState

	recovery recoveryState // account recovery backups (recovery.go)
	photo    photoState    // profile photo changes (photo.go)

	mom momentsState // the moments engine and its router (moments.go)

	bg     sync.WaitGroup // background work (DHT publishing)
	bgStop context.CancelFunc
	bgCtx  context.Context

	closeOnce sync.Once
	closeErr  error
}

// New checks cfg and applies its defaults (see Config). It opens nothing:
// Start does.
func New(cfg Config) (*Node, error) {
	if err := cfg.applyDefaults(); err != nil {
		return nil, err
	}
	relays, _ := netkit.ParsePeers(cfg.Bootstrap)
	bgCtx, bgStop := context.WithCancel(context.Background())
	return &Node{
		cfg:          cfg,
		log:          cfg.Logger,
		relays:       relays,
		reservations: map[peer.ID]time.Time{},
		downSince:    map[peer.ID]time.Time{},
		events:       newEventHub(),
		formerWake:   make(chan struct{}, 1),
		entryWake:    make(chan struct{}, 1),
		publishWake:  make(chan struct{}, 1),
		bgCtx:        bgCtx,
		bgStop:       bgStop,
	}, nil
}

// Start opens the store, starts the libp2p host (TCP and QUIC, Noise,
// yamux, hole punching, the kinmesh DHT in client mode), keeps the node
// connected to its bootstrap relays with a circuit-relay reservation on
// each, and serves the local API if configured. It returns once the host
// is listening; relay connections come up in the background (see
// WaitRelays). On error everything opened so far is closed again.
func (n *Node) Start(ctx context.Context) (err error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.started {
		return errors.New("node: already started")
	}
	n.started = true
	// A first start that fails leaves no half-made data directory behind.
	_, statErr := os.Stat(n.cfg.DataDir)
	fresh := errors.Is(statErr, os.ErrNotExist)
	defer func() {
		if err != nil {
			err = errors.Join(err, n.Close())
			if fresh {
				_ = os.RemoveAll(n.cfg.DataDir)
			}
		}
	}()
	n.start = n.cfg.Now()
	// Writes that make a promise (a message sent or received) commit
	// synced batches; the rest needn't wait for the disk.
	opts := []storage.Option{storage.WithLogger(n.log), storage.WithProfile(storage.ProfileDevice), storage.WithClock(n.cfg.Now), storage.WithSyncWrites(false)}
	if len(n.cfg.Passphrase) > 0 {
		opts = append(opts, storage.WithPassphrase(n.cfg.Passphrase))
	}
	n.store, err = storage.Open(n.cfg.DataDir, opts...)
	if err != nil {
		return fmt.Errorf("open node store: %w", err)
	}
	key, err := netkit.HostKey(ctx, n.store.Namespace("node"))
	if err != nil {
		return err
	}
	if err := n.startHost(key); err != nil {
		return err
	}
	n.keeper, err = netkit.NewKeeper(n.host, n.relays, netkit.KeeperConfig{
		MinBackoff: n.cfg.RelayBackoff,
		OnConnect:  n.reserve,
	})
	if err != nil {
		return fmt.Errorf("keep relays: %w", err)
	}
	n.bg.Go(n.watchRelays)
	n.bg.Go(n.homesLoop)
	// Purges of every feature, registered before the retry loops start
	// so a purge left pending by a deleted account (no account loaded)
	// still covers them: reports and directory (presence.go, phone.go),
	// backups (recovery.go). Moments and photos are purged with the job's
	// blob ids (delete.go). A relay a move replaced gets the reports
	// purge at once; its directory entry and backup go once the account
	// no longer uses them there (former.go), or with the account.
	n.purgers = append(n.purgers, purger{n.purgeReports, true}, purger{n.purgeDiscovery, false}, purger{n.purgeBackup, false})
	n.bg.Go(n.purgeLoop)
	if n.acct, err = n.loadAccount(ctx); err != nil {
		return err
	}
	if n.acct != nil {
		n.acctMu.Lock()
		err = n.startMessaging(nil)
		n.acctMu.Unlock()
		if err != nil {
			return err
		}
	}
	n.bg.Go(n.formerLoop) // reads n.acct: after it is loaded
	n.bg.Go(n.entryLoop)
	n.bg.Go(n.publishLoop)
	n.bg.Go(n.refreshAtStart) // reads the contacts: after the account is loaded
	if n.cfg.API != "" {
		if n.api, err = startAPI(n, n.cfg.API); err != nil {
			return err
		}
	}
	n.log.Info("node started", "peer_id", n.host.ID(), "relays", len(n.relays))
	return nil
}

func (n *Node) startHost(key crypto.PrivKey) error {
	listen, _ := netkit.ParseListen(n.cfg.Listen)
	limits := rcmgr.DefaultLimits
	libp2p.SetDefaultServiceLimits(&limits)
	rm, err := rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(limits.Scale(maxMemory, maxFDs)))
	if err != nil {
		return fmt.Errorf("node resource manager: %w", err)
	}
	cm, err := connmgr.NewConnManager(connLow, connHigh, connmgr.WithGracePeriod(time.Minute))
	if err != nil {
		return fmt.Errorf("node connection manager: %w", err)
	}
	relayIDs := make([]peer.AddrInfo, len(n.relays))
	copy(relayIDs, n.relays)
	opts := []libp2p.Option{
		libp2p.Identity(key),
		libp2p.ListenAddrs(listen...),
		netkit.Transports(),
		libp2p.ResourceManager(rm),
		libp2p.ConnectionManager(cm),
		libp2p.UserAgent("kinmesh-node/" + netkit.Version),
		libp2p.AddrsFactory(n.withCircuitAddrs),
		libp2p.Routing(func(h host.Host) (routing.PeerRouting, error) {
			d, err := dht.New(h,
				dht.Mode(dht.ModeClient),
				dht.ProtocolPrefix(netkit.DHTPrefix),
				dht.BootstrapPeers(relayIDs...),
				// A device's routing table is its relays, the kinmesh
				// DHT's servers: with fewer than 10 peers it would be
				// refreshed (lookups to every relay) every 2 minutes
				// forever. Lookups start from the relays either way.
				dht.DisableAutoRefresh(),
				dht.NamespacedValidator(contact.DHTNamespace, contact.Validator{}),
			)
			n.dht = d
			return d, err
		}),
	}
	opts = append(opts, n.hp.hostOptions(&n.cfg)...)
	if n.cfg.Registry != nil {
		opts = append(opts, libp2p.PrometheusRegisterer(n.cfg.Registry))
	} else {
		opts = append(opts, libp2p.DisableMetrics())
	}
	h, err := libp2p.New(opts...)
	if err != nil {
		return fmt.Errorf("start node host on %v: %w (is the port in use?)", n.cfg.Listen, err)
	}
	n.host = h
	if err := n.hp.startLab(&n.cfg); err != nil {
		return err
	}
	n.emitter, err = h.EventBus().Emitter(new(event.EvtAutoRelayAddrsUpdated))
	if err != nil {
		return fmt.Errorf("node event emitter: %w", err)
	}
	return nil
}

// reserve takes (or renews) a circuit-relay reservation on a relay the
// keeper just connected to, and returns when to renew it.
func (n *Node) reserve(ctx context.Context, relay peer.AddrInfo) (time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	rsv, err := client.Reserve(ctx, n.host, relay)
	if err != nil {
		n.setReservation(relay.ID, time.Time{})
		return time.Time{}, fmt.Errorf("reserve a slot on relay %s: %w", relay.ID, err)
	}
	n.setReservation(relay.ID, rsv.Expiration)
	margin := min(renewMargin, time.Until(rsv.Expiration)/2)
	return rsv.Expiration.Add(-margin), nil
}

func (n *Node) setReservation(relay peer.ID, exp time.Time) {
	n.rsvMu.Lock()
	if exp.IsZero() {
		delete(n.reservations, relay)
	} else {
		n.reservations[relay] = exp
	}
	addrs := n.circuitAddrsLocked()
	n.rsvMu.Unlock()
	// Tell the host's address manager to recompute its addresses.
	_ = n.emitter.Emit(event.EvtAutoRelayAddrsUpdated{RelayAddrs: addrs})
}

// circuitAddrsLocked returns <relay addr>/p2p/<relay>/p2p-circuit for every
// relay holding a live reservation for this node.
func (n *Node) circuitAddrsLocked() []ma.Multiaddr {
	var out []ma.Multiaddr
	now := time.Now()
	for _, r := range n.relays {
		exp, ok := n.reservations[r.ID]
		if !ok || now.After(exp) {
			continue
		}
		circuit := ma.StringCast("/p2p/" + r.ID.String() + "/p2p-circuit")
		for _, a := range r.Addrs {
			out = append(out, a.Encapsulate(circuit))
		}
	}
	return out
}

// withCircuitAddrs is the host's address factory: the listen addresses
// plus the circuit addresses of current reservations.
func (n *Node) withCircuitAddrs(addrs []ma.Multiaddr) []ma.Multiaddr {
	n.rsvMu.Lock()
	circuits := n.circuitAddrsLocked()
	n.rsvMu.Unlock()
	addrs = slices.DeleteFunc(slices.Clone(addrs), isCircuit)
	return append(addrs, circuits...)
}

func isCircuit(a ma.Multiaddr) bool {
	_, err := a.ValueForProtocol(ma.P_CIRCUIT)
	return err == nil
}

// Close stops the node: API, relay keeping, host, then the store. It is
// safe to call more than once, and after a failed Start.
func (n *Node) Close() error {
	n.closeOnce.Do(func() {
		var errs []error
		if n.api != nil {
			errs = append(errs, n.api.close())
		}
		errs = append(errs, n.stopSocial(false)) // "offline" to contacts while relays are up
		errs = append(errs, n.stopCalls())       // hang-ups reach the other side while relays are up
		errs = append(errs, n.stopMoments(true))
		n.bgStop()
		n.bg.Wait()
		if n.msg != nil {
			errs = append(errs, n.msg.Close())
		}
		if n.keeper != nil {
			errs = append(errs, n.keeper.Close())
		}
		if n.emitter != nil {
			errs = append(errs, n.emitter.Close())
		}
		if n.dht != nil {
			errs = append(errs, n.dht.Close())
		}
		errs = append(errs, n.hp.close())
		if n.host != nil {
			errs = append(errs, n.host.Close())
		}
		if n.store != nil {
			errs = append(errs, n.store.Close())
		}
		n.closeErr = errors.Join(errs...)
	})
	return n.closeErr
}

// Host returns the node's libp2p host (nil before Start).
func (n *Node) Host() host.Host { return n.host }

// ID returns the node's peer id. It is not the account identity.
func (n *Node) ID() peer.ID { return n.host.ID() }

// Store returns the node's encrypted store.
func (n *Node) Store() *storage.Store { return n.store }
