package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/kinmesh/kinmesh/internal/testnet"
)

const testnetSynopsis = `testnet [--relays N] [--devices M] [--data DIR] [--for DURATION]

Runs a whole kinmesh network on this machine (loopback only): N bootstrap
relays and M devices, each with its own data directory, then a scripted demo
of every feature, then a live status table until Ctrl-C. With --for, runs the
demo unattended, keeps the network up for DURATION, prints a summary and
exits non-zero if any demo step failed.`

func runTestnet(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("testnet", testnetSynopsis, stdout)
	var (
		relays  = fs.Int("relays", 3, "number of bootstrap relays")
		devices = fs.Int("devices", 4, "number of devices")
		data    = fs.String("data", "", "keep every member's data under DIR (default: a temporary directory, removed on exit)")
		dur     = fs.Duration("for", 0, "run unattended: demo, stay up this long, print a summary, exit")
		step    = fs.Duration("step-timeout", 60*time.Second, "time limit for each demo step")
	)
	logger := logFlags(fs, stderr)
	if err := fs.Set("log-level", "warn"); err != nil {
		return err
	}
	if err := parse(fs, args); err != nil {
		return err
	}
	log, err := logger()
	if err != nil {
		return err
	}
	if *relays < 1 || *devices < 0 {
		return fmt.Errorf("%w: need --relays ≥ 1 and --devices ≥ 0", errUsage)
	}
	start := time.Now()
	fmt.Fprintf(stdout, "starting %d relays and %d devices on loopback…\n", *relays, *devices)
	startCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	net, err := testnet.Start(startCtx, testnet.Config{
		Relays: *relays, Devices: *devices, DataDir: *data, Logger: log, RelayHTTP: true,
	})
	cancel()
	if err != nil {
		return err
	}
	defer net.Close()
	fmt.Fprintf(stdout, "network up in %s (data in %s)\n\n", time.Since(start).Round(time.Millisecond), net.Dir())
	for _, r := range net.Relays {
		fmt.Fprintf(stdout, "%-9s %s  ops http://%s/healthz\n", r.Name, r.Addrs()[0], r.Relay().HTTPAddr())
	}
	for _, d := range net.Devices {
		fmt.Fprintf(stdout, "%-9s API http://%s  (kinmesh status --data %s)\n", d.Name, d.Node().APIAddr(), d.Dir)
	}
	fmt.Fprintln(stdout)

	fmt.Fprintln(stdout, "demo:")
	var demo strings.Builder
	results := net.RunDemo(ctx, *step, func(r testnet.Result) {
		mark := "ok  "
		if r.Err != nil {
			mark = "FAIL"
		}
		line := fmt.Sprintf("  [%s] %s (%s)\n", mark, r.Step, r.Duration.Round(time.Millisecond))
		if r.Err != nil {
			line += fmt.Sprintf("         %v\n", r.Err)
		} else if r.Detail != "" {
			line += fmt.Sprintf("         %s\n", r.Detail)
		}
		demo.WriteString(line)
		fmt.Fprint(stdout, line)
	})
	fmt.Fprintln(stdout)

	if *dur > 0 {
		t := time.NewTimer(*dur)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
		net.WriteTable(stdout)
		return summary(stdout, results)
	}
	live(ctx, stdout, net, demo.String())
	return summary(stdout, results)
}

// live redraws the status table every second until ctx ends: in place on
// a terminal, every 5 s otherwise.
func live(ctx context.Context, w io.Writer, net *testnet.Network, demo string) {
	tty := false
	if f, ok := w.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			tty = true
		}
	}
	every := 5 * time.Second
	if tty {
		every = time.Second
	}
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		if tty {
			fmt.Fprint(w, "\x1b[H\x1b[2J")
			fmt.Fprintf(w, "kinmesh testnet — %s — Ctrl-C to stop\n\ndemo:\n%s\n", time.Now().Format(time.TimeOnly), demo)
		}
		net.WriteTable(w)
		fmt.Fprintln(w)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func summary(w io.Writer, results []testnet.Result) error {
	failed := 0
	for _, r := range results {
		if r.Err != nil {
			failed++
		}
	}
	fmt.Fprintf(w, "demo: %d of %d steps passed\n", len(results)-failed, len(results))
	if failed > 0 {
		return errors.New("demo failed; see the steps marked FAIL above")
	}
	return nil
}
