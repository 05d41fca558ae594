// Package testnet runs a whole kinmesh network in one process: N bootstrap
// relays and M device nodes on loopback, each with its own data directory,
// real libp2p hosts and real stores. `kinmesh testnet` drives it; tests use
// it to get a ready network in one call.
//
// Start brings the relays up first (each keeping connections to the ones
// before it, so they form one DHT), then the devices (each bootstrapped to
// every relay, with its local API on 127.0.0.1:0), and waits until every
// device holds a reservation on every relay. The demo (demo.go) then runs
// scripted steps against the running network; the status table shows who
// is connected to whom.
package testnet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/kinmesh/kinmesh/bootstrap"
	"github.com/kinmesh/kinmesh/node"
	"github.com/kinmesh/kinmesh/storage"
)

// Config sizes the network.
type Config struct {
	Relays  int // default 3
	Devices int // default 4
	// DataDir keeps every member's data under DataDir/<name>; default a
	// temporary directory removed by Close.
	DataDir string
	Logger  *slog.Logger
	// RelayHTTP serves each relay's ops endpoint on 127.0.0.1:0.
	RelayHTTP bool
	// Now, if set, is every member's clock (tests move it to check
	// expiry); default time.Now.
	Now func() time.Time
	// Relay, if set, adjusts each relay's configuration before it starts
	// (benchmarks raise the mailbox quotas).
	Relay func(*bootstrap.Config)
}

// Network is a running testnet.
type Network struct {
	cfg     Config
	dir     string
	tempDir bool
	log     *slog.Logger
	start   time.Time

	Relays  []*Relay
	Devices []*Device
}

// Relay is one relay of the testnet. Stop and Start restart it on the
// same addresses with the same data, as an operator restarting it would.
type Relay struct {
	Name string
	Dir  string
	cfg  bootstrap.Config
	mu   sync.Mutex
	r    *bootstrap.Relay
	info peer.AddrInfo
	addr []string
}

// Relay returns the running relay, or nil while it is stopped.
func (r *Relay) Relay() *bootstrap.Relay {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.r
}

// AddrInfo returns the relay's peer id and addresses (also while stopped).
func (r *Relay) AddrInfo() peer.AddrInfo { return r.info }

// Addrs returns the relay's full multiaddrs (also while stopped).
func (r *Relay) Addrs() []string { return r.addr }

// Start starts the relay (again, after Stop).
func (r *Relay) Start(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.r != nil {
		return nil
	}
	br, err := bootstrap.New(r.cfg)
	if err != nil {
		return fmt.Errorf("testnet %s: %w", r.Name, err)
	}
	if err := br.Start(ctx); err != nil {
		return fmt.Errorf("testnet %s: %w", r.Name, err)
	}
	r.r = br
	if r.info.ID == "" {
		// Restarts listen where the first start did, so devices find the
		// relay again at the address they know.
		r.info = br.AddrInfo()
		r.addr = br.Addrs()
		r.cfg.Listen = nil
		for _, a := range r.info.Addrs {
			r.cfg.Listen = append(r.cfg.Listen, a.String())
		}
	}
	return nil
}

// Stop stops the relay, keeping its data.
func (r *Relay) Stop() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.r == nil {
		return nil
	}
	err := r.r.Close()
	r.r = nil
	return err
}

// Device is one device node of the testnet.
type Device struct {
	Name string
	Dir  string
	cfg  node.Config
	mu   sync.Mutex
	node *node.Node
}

// Node returns the device's running node, or nil while it is stopped.
func (d *Device) Node() *node.Node {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.node
}

// Start builds and starts the network and waits until it is ready.
func Start(ctx context.Context, cfg Config) (_ *Network, err error) {
	if cfg.Relays == 0 {
		cfg.Relays = 3
	}
	if cfg.Devices == 0 {
		cfg.Devices = 4
	}
	if cfg.Relays < 1 || cfg.Devices < 0 {
		return nil, fmt.Errorf("testnet: need at least 1 relay and 0 devices, got %d and %d", cfg.Relays, cfg.Devices)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	n := &Network{cfg: cfg, log: cfg.Logger, dir: cfg.DataDir, start: time.Now()}
	if n.dir == "" {
		if n.dir, err = os.MkdirTemp("", "kinmesh-testnet-"); err != nil {
			return nil, fmt.Errorf("testnet: %w", err)
		}
		n.tempDir = true
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, n.Close())
		}
	}()
	var relayAddrs []string
	for i := range cfg.Relays {
		r, err := n.startRelay(ctx, fmt.Sprintf("relay-%d", i+1), relayAddrs)
		if err != nil {
			return nil, err
		}
		relayAddrs = append(relayAddrs, r.Addrs()...)
	}
	for i := range cfg.Devices {
		d := &Device{Name: fmt.Sprintf("device-%d", i+1)}
		d.Dir = filepath.Join(n.dir, d.Name)
		d.cfg = node.Config{
			DataDir:   d.Dir,
			Listen:    []string{"/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1"},
			Bootstrap: relayAddrs,
			API:       "127.0.0.1:0",
			Logger:    n.log.With("member", d.Name),
			Now:       cfg.Now,
		}
		n.Devices = append(n.Devices, d)
		if err := d.Start(ctx); err != nil {
			return nil, err
		}
	}
	if err := n.WaitReady(ctx); err != nil {
		return nil, err
	}
	return n, nil
}

func (n *Network) startRelay(ctx context.Context, name string, fellows []string) (*Relay, error) {
	r := &Relay{Name: name, Dir: filepath.Join(n.dir, name)}
	r.cfg = bootstrap.Config{
		DataDir:   r.Dir,
		Listen:    []string{"/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1"},
		Bootstrap: fellows,
		Logger:    n.log.With("member", name),
		Now:       n.cfg.Now,
		// Every device of the testnet comes from 127.0.0.1.
		MaxReservationsPerIP: 1024,
		// Devices' candidates, and other relays' TURN allocations, are on
		// loopback, which a relay's TURN server refuses by default.
		TURNAllowPeers: []string{"127.0.0.0/8"},
		// Any free port, on restarts too (whose listen addresses are
		// fixed, which would make it default to 3478): devices get the
		// TURN server's address with their credentials.
		TURNListen: "127.0.0.1:0",
	}
	if n.cfg.RelayHTTP {
		r.cfg.HTTP = "127.0.0.1:0"
	}
	if n.cfg.Relay != nil {
		n.cfg.Relay(&r.cfg)
	}
	if err := r.Start(ctx); err != nil {
		return nil, err
	}
	n.Relays = append(n.Relays, r)
	return r, nil
}

// Start starts the device's node (again, after Stop), keeping its data.
func (d *Device) Start(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.node != nil {
		return nil
	}
	nd, err := node.New(d.cfg)
	if err != nil {
		return fmt.Errorf("testnet %s: %w", d.Name, err)
	}
	if err := nd.Start(ctx); err != nil {
		return fmt.Errorf("testnet %s: %w", d.Name, err)
	}
	d.node = nd
	return nil
}

// Stop stops the device's node, keeping its data for a later Start.
func (d *Device) Stop() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.node == nil {
		return nil
	}
	err := d.node.Close()
	d.node = nil
	return err
}

// WaitReady waits until every running device holds a reservation on every
// running relay.
func (n *Network) WaitReady(ctx context.Context) error {
	running := 0
	for _, r := range n.Relays {
		if r.Relay() != nil {
			running++
		}
	}
	for _, d := range n.Devices {
		nd := d.Node()
		if nd == nil {
			continue
		}
		if err := nd.WaitRelays(ctx, running); err != nil {
			return fmt.Errorf("testnet: %s did not reach all %d relays: %w", d.Name, running, err)
		}
	}
	return nil
}

// Dir is the directory holding every member's data.
func (n *Network) Dir() string { return n.dir }

// Close stops every device, then every relay, and removes the data
// directory if it was temporary. Safe to call more than once.
func (n *Network) Close() error {
	// Devices stop side by side (a stop waits out its presence beacons and
	// its engine's last writes): a 256-device network took minutes one by
	// one.
	errs := make([]error, len(n.Devices))
	slots := make(chan struct{}, 16)
	var wg sync.WaitGroup
	for i, d := range n.Devices {
		slots <- struct{}{}
		wg.Go(func() {
			defer func() { <-slots }()
			errs[i] = d.Stop()
		})
	}
	wg.Wait()
	for i := len(n.Relays) - 1; i >= 0; i-- {
		errs = append(errs, n.Relays[i].Stop())
	}
	if n.tempDir {
		errs = append(errs, os.RemoveAll(n.dir))
		n.tempDir = false
	}
	return errors.Join(errs...)
}

// MailboxItems counts the envelopes the relay holds in all mailboxes.
func (r *Relay) MailboxItems(ctx context.Context) (int, error) {
	rl := r.Relay()
	if rl == nil {
		return 0, fmt.Errorf("%s is stopped", r.Name)
	}
	n := 0
	err := rl.Store().Namespace("mailbox").List(ctx, storage.ListOptions{}, func(k string, _ []byte) error {
		if !strings.HasSuffix(k, ".m") {
			n++
		}
		return nil
	})
	return n, err
}
