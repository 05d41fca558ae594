package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/debug"
	"time"

	"github.com/kinmesh/kinmesh/bootstrap"
)

const relaySynopsis = `relay --data DIR [--listen MULTIADDR]... [--http HOST:PORT] [--bootstrap MULTIADDR]... [--config FILE]

Runs a bootstrap relay: circuit relay v2 for devices behind NAT, the kinmesh
DHT in server mode, AutoNAT service, and an ops endpoint (GET /healthz,
GET /metrics). Settings come from --config (TOML), then KINMESH_RELAY_*
environment variables, then flags; later ones win. SIGINT/SIGTERM stop it
gracefully. See docs/operator-guide.md.

The operator reads what users sent with "kinmesh relay reports" and
"kinmesh relay feedback" (--help on each).`

func runRelay(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && (args[0] == "reports" || args[0] == "feedback") {
		return runRelayQueue(ctx, args[0], args[1:], stdout) // relay_reports.go
	}
	fs := newFlags("relay", relaySynopsis, stdout)
	var (
		configPath = fs.String("config", "", "TOML config file (see docs/operator-guide.md)")
		data       = fs.String("data", "", "data directory (required)")
		http       = fs.String("http", "127.0.0.1:8080", "ops endpoint host:port for /healthz and /metrics; empty to disable")
		listen     listFlag
		announce   listFlag
		boot       listFlag
	)
	fs.Var(&listen, "listen", "multiaddr to listen on (repeatable; default /ip4/0.0.0.0/tcp/4001 and /ip4/0.0.0.0/udp/4001/quic-v1)")
	fs.Var(&announce, "announce", "multiaddr to advertise instead of the listen addresses (repeatable)")
	fs.Var(&boot, "bootstrap", "fellow relay multiaddr ending in /p2p/<id> (repeatable)")
	logger := logFlags(fs, stderr)
	if err := parse(fs, args); err != nil {
		return err
	}
	log, err := logger()
	if err != nil {
		return err
	}

	var cfg bootstrap.Config
	if *configPath != "" {
		if cfg, err = bootstrap.LoadConfigFile(*configPath); err != nil {
			return err
		}
	}
	if err := cfg.ApplyEnv(os.Getenv); err != nil {
		return err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	setGoMemoryLimit(cfg.GoMemoryLimit, log)
	if set["data"] {
		cfg.DataDir = *data
	}
	if set["http"] || cfg.HTTP == "" && *configPath == "" {
		cfg.HTTP = *http
	}
	if set["listen"] {
		cfg.Listen = listen
	}
	if set["announce"] {
		cfg.Announce = announce
	}
	if set["bootstrap"] {
		cfg.Bootstrap = boot
	}
	cfg.Logger = log

	r, err := bootstrap.New(cfg)
	if err != nil {
		return err
	}
	if err := r.Start(ctx); err != nil {
		return err
	}
	h := r.Health()
	fmt.Fprintf(stdout, "relay %s\n", h.PeerID)
	for _, a := range h.Addrs {
		fmt.Fprintf(stdout, "  listening on %s\n", a)
	}
	if a := r.HTTPAddr(); a != "" {
		fmt.Fprintf(stdout, "  ops endpoint http://%s/healthz and /metrics\n", a)
	}
	// Like the node daemon, the relay releases its start-up pages (about
	// 30 MB of a relay's RSS otherwise).
	trimmer := time.AfterFunc(trimFirst, func() { trimLoop(ctx, log) })
	defer trimmer.Stop()
	<-ctx.Done()
	log.Info("shutting down")
	return r.Close()
}

// setGoMemoryLimit applies the relay's soft memory limit (go_memory_limit;
// 0 is bootstrap.DefaultGoMemoryLimit, -1 none) unless the operator set
// GOMEMLIMIT, which wins.
func setGoMemoryLimit(limit int64, log *slog.Logger) {
	if os.Getenv("GOMEMLIMIT") != "" || limit < 0 {
		return
	}
	if limit == 0 {
		limit = bootstrap.DefaultGoMemoryLimit
	}
	debug.SetMemoryLimit(limit)
	log.Debug("Go memory limit", "bytes", limit)
}
