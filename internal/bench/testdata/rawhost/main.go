// Command rawhost is the baseline of BenchmarkIdleNode: a plain go-libp2p
// host with kinmesh's transports (TCP and QUIC, Noise, yamux) that connects
// to the relays given on the command line, takes a circuit-relay v2
// reservation on each, prints "ready" and idles until SIGINT or SIGTERM;
// on SIGUSR1 it prints its heap and goroutine count as a JSON line.
//
// It imports no kinmesh package, so its binary holds go-libp2p and little
// else: the benchmark builds it at run time and compares the kinmesh node
// daemon's footprint with this one's.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/client"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
	quic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"
)

func main() {
	relays := flag.String("relays", "", "comma-separated relay multiaddrs ending in /p2p/<id>")
	flag.Parse()
	if err := run(*relays); err != nil {
		fmt.Fprintln(os.Stderr, "rawhost:", err)
		os.Exit(1)
	}
}

func run(relays string) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	h, err := libp2p.New(
		libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1"),
		libp2p.Transport(tcp.NewTCPTransport),
		libp2p.Transport(quic.NewTransport),
		libp2p.Security(noise.ID, noise.New),
		libp2p.Muxer(yamux.ID, yamux.DefaultTransport),
		libp2p.DisableMetrics(),
	)
	if err != nil {
		return err
	}
	defer h.Close()
	var addrs []ma.Multiaddr
	for _, s := range strings.Split(relays, ",") {
		a, err := ma.NewMultiaddr(s)
		if err != nil {
			return fmt.Errorf("relay %q: %w", s, err)
		}
		addrs = append(addrs, a)
	}
	infos, err := peer.AddrInfosFromP2pAddrs(addrs...)
	if err != nil {
		return err
	}
	for _, ai := range infos {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err = h.Connect(cctx, ai)
		if err == nil {
			_, err = client.Reserve(cctx, h, ai)
		}
		cancel()
		if err != nil {
			return fmt.Errorf("relay %s: %w", ai.ID, err)
		}
	}
	fmt.Println("ready")
	// The benchmark reads what only the process itself can see with
	// SIGUSR1, and stops the host with SIGTERM.
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-usr1:
			runtime.GC()
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			if err := json.NewEncoder(os.Stdout).Encode(map[string]any{
				"heap_kib":   ms.HeapInuse / 1024,
				"goroutines": runtime.NumGoroutine(),
			}); err != nil {
				return err
			}
		}
	}
}
