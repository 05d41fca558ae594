package bootstrap

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p"
	dht "github.com/libp2p/go-libp2p-kad-dht"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	"github.com/libp2p/go-libp2p/p2p/net/connmgr"
	relayv2 "github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/relay"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/kinmesh/kinmesh/protocols/backup"
	"github.com/kinmesh/kinmesh/protocols/contact"
	"github.com/kinmesh/kinmesh/protocols/discovery"
	"github.com/kinmesh/kinmesh/protocols/mailbox"
	"github.com/kinmesh/kinmesh/protocols/netkit"
	"github.com/kinmesh/kinmesh/protocols/prekeys"
	"github.com/kinmesh/kinmesh/protocols/report"
	"github.com/kinmesh/kinmesh/protocols/turn"
	"github.com/kinmesh/kinmesh/storage"
)

// Relay is a running bootstrap relay. Create it with New, run it with
// Start, stop it with Close.
type Relay struct {
	cfg   Config
	log   *slog.Logger
	start time.Time

	store *storage.Store
	host  host.Host
	relay *relayv2.Relay
	dht   *dht.IpfsDHT
	// dhtStore holds the DHT's value records, bounded (dhtstore.go).
	dhtStore *capStore
	keeper   *netkit.Keeper
	mailbox  *mailbox.Service
	metrics  *metrics
	prekeys  *prekeys.Service
	turn     *turn.Server
	report   *report.Service

	discovery *discovery.Service
	sms       discovery.SMSGateway
	backup    *backup.Service // backup.go
	moments   *relayMoments   // moments.go

	httpSrv *http.Server
	httpLn  net.Listener

	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

// New checks cfg and applies its defaults (see Config). It opens nothing:
// Start does.
func New(cfg Config) (*Relay, error) {
	if err := cfg.applyDefaults(); err != nil {
		return nil, err
	}
	if _, err := netkit.ParseListen(cfg.Listen); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	if _, err := netkit.ParseListen(cfg.Announce); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	if _, err := netkit.ParsePeers(cfg.Bootstrap); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	return &Relay{cfg: cfg, log: cfg.Logger}, nil
}

// Start opens the store, starts the libp2p host with the circuit relay
// service, the DHT in server mode and AutoNAT service, connects to the
// fellow relays and serves the ops endpoint. On error everything opened so
// far is closed again.
func (r *Relay) Start(ctx context.Context) (err error) {
	// A first start that fails leaves no half-made data directory behind.
	_, statErr := os.Stat(r.cfg.DataDir)
	fresh := errors.Is(statErr, os.ErrNotExist)
	if r.cfg.HTTP != "" {
		if err := r.listenHTTP(); err != nil {
			return err
		}
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, r.Close())
			if fresh {
				_ = os.RemoveAll(r.cfg.DataDir)
			}
		}
	}()
	r.start = time.Now()
	r.store, err = storage.Open(r.cfg.DataDir, storage.WithLogger(r.log), storage.WithProfile(storage.ProfileRelay), storage.WithClock(r.cfg.Now),
		storage.WithMinFree(uint64(max(r.cfg.MinFreeDisk, 0))))
	if err != nil {
		return fmt.Errorf("open relay store: %w", err)
	}
	key, err := netkit.HostKey(ctx, r.store.Namespace("relay"))
	if err != nil {
		return err
	}
	r.metrics = newMetrics(r.cfg.Registry)
	r.metrics.watchDisk(r.cfg.Registry, r.store)
	if err := r.startHost(key); err != nil {
		return err
	}
	if err := r.startServices(ctx); err != nil {
		return err
	}
	if r.cfg.HTTP != "" {
		if err := r.serveHTTP(); err != nil {
			return err
		}
	}
	r.log.Info("relay started", "peer_id", r.host.ID(), "addrs", r.Addrs())
	return nil
}

func (r *Relay) startHost(key crypto.PrivKey) error {
	listen, _ := netkit.ParseListen(r.cfg.Listen)
	announce, _ := netkit.ParseListen(r.cfg.Announce)

	limits := rcmgr.DefaultLimits
	libp2p.SetDefaultServiceLimits(&limits)
	scaled := limits.Scale(r.cfg.MaxMemory, r.cfg.MaxConns*2)
	// Connections are what a relay serves; size them from MaxConns rather
	// than from memory, so the connection manager trims before the resource
	// manager refuses.
	conns := rcmgr.LimitVal(r.cfg.MaxConns + r.cfg.MaxConns/4)
	partial := rcmgr.PartialLimitConfig{
		System:    rcmgr.ResourceLimits{Conns: conns, ConnsInbound: conns, ConnsOutbound: conns, FD: conns},
		Transient: rcmgr.ResourceLimits{Conns: conns / 4, ConnsInbound: conns / 4, ConnsOutbound: conns / 4},
	}
	rm, err := rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(partial.Build(scaled)))
	if err != nil {
		return fmt.Errorf("relay resource manager: %w", err)
	}
	cm, err := connmgr.NewConnManager(r.cfg.MaxConns*3/4, r.cfg.MaxConns, connmgr.WithGracePeriod(time.Minute))
	if err != nil {
		return fmt.Errorf("relay connection manager: %w", err)
	}
	opts := []libp2p.Option{
		libp2p.Identity(key),
		libp2p.ListenAddrs(listen...),
		netkit.Transports(),
		libp2p.ResourceManager(rm),
		libp2p.ConnectionManager(cm),
		libp2p.PrometheusRegisterer(r.cfg.Registry),
		libp2p.UserAgent("kinmesh-relay/" + netkit.Version),
		// A relay is meant to be publicly reachable; don't wait for AutoNAT
		// to agree before serving.
		libp2p.ForceReachabilityPublic(),
		libp2p.EnableNATService(),
		libp2p.EnableAutoNATv2(),
		// The relay serves circuits (below); it never needs to use one.
		libp2p.DisableRelay(),
	}
	if len(announce) > 0 {
		opts = append(opts, libp2p.AddrsFactory(func([]ma.Multiaddr) []ma.Multiaddr { return announce }))
	}
	h, err := libp2p.New(opts...)
	if err != nil {
		return fmt.Errorf("start relay host on %v: %w (is the port in use? pick another with --listen)", r.cfg.Listen, err)
	}
	r.host = h
	return nil
}

func (r *Relay) startServices(ctx context.Context) error {
	var err error
	res := relayv2.DefaultResources()
	res.Limit = &relayv2.RelayLimit{Duration: time.Duration(r.cfg.CircuitDuration), Data: r.cfg.CircuitBytes}
	res.ReservationTTL = time.Duration(r.cfg.ReservationTTL)
	res.MaxReservations = r.cfg.MaxReservations
	res.MaxReservationsPerIP = r.cfg.MaxReservationsPerIP
	res.MaxReservationsPerASN = max(res.MaxReservationsPerASN, r.cfg.MaxReservationsPerIP)
	res.MaxCircuits = r.cfg.MaxCircuits
	r.relay, err = relayv2.New(r.host,
		relayv2.WithResources(res),
		relayv2.WithMetricsTracer(r.metrics.relayTracer(r.cfg.Registry)),
	)
	if err != nil {
		return fmt.Errorf("start circuit relay service: %w", err)
	}
	peers, _ := netkit.ParsePeers(r.cfg.Bootstrap)
	r.dhtStore = newCapStore(r.cfg.DHTMaxBytes, r.log.With("component", "dht"))
	r.metrics.watchDHT(r.cfg.Registry, r.dhtStore)
	r.dht, err = dht.New(r.host,
		dht.Mode(dht.ModeServer),
		dht.ProtocolPrefix(netkit.DHTPrefix),
		dht.BootstrapPeers(peers...),
		// The signed contact records devices publish (/kmc/<account>):
		// without a validator for the namespace a server refuses to
		// store or serve them.
		dht.NamespacedValidator(contact.DHTNamespace, contact.Validator{}),
		dht.ValueDatastore(r.dhtStore),
		dht.DisableProviders(), // nothing in kinmesh provides content
	)
	if err != nil {
		return fmt.Errorf("start dht: %w", err)
	}
	r.keeper, err = netkit.NewKeeper(r.host, peers, netkit.KeeperConfig{})
	if err != nil {
		return fmt.Errorf("keep fellow relays: %w", err)
	}
	r.mailbox, err = mailbox.NewService(r.host, r.store,
		mailbox.WithClock(r.cfg.Now),
		mailbox.WithMailboxQuota(r.cfg.MailboxMaxItems, r.cfg.MailboxMaxBytes),
		mailbox.WithDepositorRate(r.cfg.MailboxDepositsPerMinute, r.cfg.MailboxDepositBytesPerMinute),
		mailbox.WithSourceDepositRate(uint64(r.cfg.MailboxIPDepositBytesPerHour), uint64(r.cfg.MailboxIPDepositBurst)),
		mailbox.WithSourceRegistrationRate(uint64(r.cfg.MailboxIPRegistrationsPerHour), uint64(r.cfg.MailboxIPRegistrationBurst)),
		mailbox.WithLogger(r.log),
		mailbox.WithMetricsTracer(r.metrics.mailboxTracer(r.cfg.Registry)),
	)
	if err != nil {
		return fmt.Errorf("start mailbox service: %w", err)
	}
	if err := r.startPrekeys(); err != nil {
		return err
	}
	if err := r.startTURN(ctx); err != nil {
		return err
	}
	if err := r.startReport(); err != nil {
		return err
	}
	if err := r.startDiscovery(); err != nil {
		return err
	}
	if err := r.startBackup(); err != nil { // backup.go: needs discovery
		return err
	}
	if err := r.startMoments(); err != nil { // moments.go
		return err
	}
	return nil
}

// Close stops the relay: the ops endpoint first, then the services and the
// host, then the store. It is safe to call more than once.
func (r *Relay) Close() error {
	r.closeOnce.Do(func() {
		var errs []error
		if r.httpSrv != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			errs = append(errs, r.httpSrv.Shutdown(ctx))
			cancel()
		} else if r.httpLn != nil {
			errs = append(errs, r.httpLn.Close())
		}
		errs = append(errs, r.closeMoments()) // moments.go
		if r.mailbox != nil {
			errs = append(errs, r.mailbox.Close())
		}
		if r.keeper != nil {
			errs = append(errs, r.keeper.Close())
		}
		if r.dht != nil {
			errs = append(errs, r.dht.Close())
		}
		if r.relay != nil {
			errs = append(errs, r.relay.Close())
		}
		if r.prekeys != nil {
			errs = append(errs, r.prekeys.Close())
		}
		if r.turn != nil {
			errs = append(errs, r.turn.Close())
		}
		if r.report != nil {
			errs = append(errs, r.report.Close())
		}
		if r.backup != nil { // before discovery, which it reads
			errs = append(errs, r.backup.Close())
		}
		if r.discovery != nil {
			errs = append(errs, r.discovery.Close())
		}
		if r.host != nil {
			errs = append(errs, r.host.Close())
		}
		r.wg.Wait()
		if r.store != nil {
			errs = append(errs, r.store.Close())
		}
		r.closeErr = errors.Join(errs...)
	})
	return r.closeErr
}

// Host returns the relay's libp2p host.
func (r *Relay) Host() host.Host { return r.host }

// ID returns the relay's peer id.
func (r *Relay) ID() peer.ID { return r.host.ID() }

// Mailbox returns the relay's mailbox service.
func (r *Relay) Mailbox() *mailbox.Service { return r.mailbox }

// Store returns the relay's store, for the protocol services it runs.
func (r *Relay) Store() *storage.Store { return r.store }

// Addrs returns the relay's addresses as full multiaddrs ending in
// /p2p/<peer id>, ready to pass to a node's --bootstrap.
func (r *Relay) Addrs() []string { return netkit.P2PAddrs(r.host.ID(), r.host.Addrs()) }

// AddrInfo returns the relay as a dialable peer.
func (r *Relay) AddrInfo() peer.AddrInfo {
	return peer.AddrInfo{ID: r.host.ID(), Addrs: r.host.Addrs()}
}
