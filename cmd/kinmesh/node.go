package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/kinmesh/kinmesh/node"
)

const nodeSynopsis = `node --data DIR --bootstrap MULTIADDR... [--api HOST:PORT] [--listen MULTIADDR]...

Runs a device node as a daemon: it keeps connected to its relays (holding a
circuit-relay reservation on each) and serves the local HTTP API on loopback.
API requests need "Authorization: Bearer <token>" with the token from
DIR/api.token (created on first start, kept across restarts). Set
KINMESH_PASSPHRASE (or --passphrase-file) to encrypt the store under a
passphrase instead of a key file. See docs/api.md.`

func runNode(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("node", nodeSynopsis, stdout)
	var (
		data     = fs.String("data", "", "data directory (required)")
		api      = fs.String("api", "127.0.0.1:7777", "local API host:port, loopback only (port 0 picks a free one)")
		passFile = fs.String("passphrase-file", "", "file holding the store passphrase (default: $KINMESH_PASSPHRASE, or a key file)")
		listen   listFlag
		boot     listFlag
	)
	fs.Var(&listen, "listen", "multiaddr to listen on (repeatable; default TCP and QUIC on all interfaces, random ports)")
	fs.Var(&boot, "bootstrap", "relay multiaddr ending in /p2p/<id> (repeatable)")
	var labPublic prefixFlag
	fs.Var(&labPublic, labPublicFlag, "lab setting, testbeds only: a range inside 198.18.0.0/15 that counts as public (repeatable)")
	hideFlags(fs, nodeSynopsis, stdout, labPublicFlag)
	logger := logFlags(fs, stderr)
	if err := parse(fs, args); err != nil {
		return err
	}
	log, err := logger()
	if err != nil {
		return err
	}
	pass := []byte(os.Getenv("KINMESH_PASSPHRASE"))
	if *passFile != "" {
		b, err := os.ReadFile(*passFile)
		if err != nil {
			return fmt.Errorf("read passphrase: %w", err)
		}
		pass = []byte(strings.TrimRight(string(b), "\r\n"))
	}
	n, err := node.New(node.Config{
		DataDir:    *data,
		Passphrase: pass,
		Listen:     listen,
		Bootstrap:  boot,
		API:        *api,
		Logger:     log,

		LabPublicCIDRs: labPublic,
	})
	if err != nil {
		return err
	}
	if err := n.Start(ctx); err != nil {
		return err
	}
	if len(boot) == 0 {
		log.Warn("no --bootstrap relays: this node will reach no one")
	}
	if len(labPublic) > 0 {
		log.Warn("lab setting on: hole punching treats these lab ranges as public; never use it outside a testbed", "lab_public_cidrs", labPublic.String())
	}
	fmt.Fprintf(stdout, "node %s\n  local API http://%s (token in %s)\n", n.ID(), n.APIAddr(), *data+"/"+node.TokenFile)
	trimmer := time.AfterFunc(trimFirst, func() { trimLoop(ctx, log) })
	defer trimmer.Stop()
	<-ctx.Done()
	log.Info("shutting down")
	return n.Close()
}

// The daemon releases its start-up pages (trimStartupPages) once it has
// settled, trimFirst after start, and again every trimEvery: a phone-sized
// footprint while idle (docs/decisions.md, "Idle footprint").
const (
	trimFirst = 30 * time.Second
	trimEvery = 10 * time.Minute
)

func trimLoop(ctx context.Context, log *slog.Logger) {
	t := time.NewTicker(trimEvery)
	defer t.Stop()
	for {
		n, err := trimStartupPages()
		if err != nil {
			log.Warn("trim start-up pages", "err", err)
			return
		}
		log.Debug("trimmed start-up pages", "mapped_bytes", n)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
