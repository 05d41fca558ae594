// Command kinmesh is the one kinmesh binary: a device daemon (`node`), a
// bootstrap relay (`relay`), a whole local network (`testnet`), and client
// verbs that talk to a running daemon's local API. It only parses flags and
// wires the libraries (node, bootstrap, internal/testnet) together.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/libp2p/go-libp2p/gologshim"
)

// command is one subcommand.
type command struct {
	name    string
	summary string
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

func commands() []command {
	cmds := []command{
		{"node", "run a device node daemon with its local API", runNode},
		{"relay", "run a bootstrap relay", runRelay},
		{"testnet", "run a whole network (relays and devices) on this machine", runTestnet},
		{"status", "show a running node's status (GET /v1/node)", runStatus},
		{"peers", "show a running node's connected peers, direct or relayed", runPeers},
		{"policy", "show the privacy policy a node ships", runPolicy},
		{"account", "show or create the account (kinmesh account create …)", runAccount},
		{"invite", "print this account's invite for a contact", runInvite},
		{"contacts", "list contacts, or add one from an invite", runContacts},
		{"send", "send a message to a contact or group", runSend},
		{"inbox", "show a conversation", runInbox},
		{"watch", "print events as they happen", runWatch},
		{"groups", "list, create and change groups", runGroups},
		{"block", "block or unblock an account, or list blocks", runBlock},
		{"location", "share your location with contacts, or see theirs", runLocation},
		{"settings", "optional data collection and policy consent", runSettings},
		{"export", "write everything the node holds as JSON", runExport},
	}
	cmds = append(cmds, phoneCommands()...)
	cmds = append(cmds, reportCommands()...)
	cmds = append(cmds, callsCommands()...)
	cmds = append(cmds, recoveryCommands()...)
	cmds = append(cmds, momentsCommands()...)
	cmds = append(cmds, command{"version", "print the version", runVersion})
	return cmds
}

// errUsage marks errors caused by bad command-line use (exit status 2).
var errUsage = errors.New("usage")

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		usage(stdout)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	for _, c := range commands() {
		if c.name != args[0] {
			continue
		}
		err := c.run(ctx, args[1:], stdout, stderr)
		switch {
		case err == nil, errors.Is(err, flag.ErrHelp):
			return 0
		case errors.Is(err, errUsage):
			fmt.Fprintf(stderr, "kinmesh %s: %v\n", c.name, err)
			return 2
		default:
			fmt.Fprintf(stderr, "kinmesh %s: %v\n", c.name, err)
			return 1
		}
	}
	fmt.Fprintf(stderr, "kinmesh: unknown command %q; run `kinmesh help` for the list\n", args[0])
	return 2
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "kinmesh — a private family messenger with no central server")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Usage: kinmesh <command> [flags]   (kinmesh <command> --help for its flags)")
	fmt.Fprintln(w)
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-12s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Try the whole network on this machine: kinmesh testnet")
}

// newFlags returns a flag set that reports errors as usage errors and
// prints help to stdout.
func newFlags(name, synopsis string, stdout io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {
		fs.SetOutput(stdout)
		fmt.Fprintf(stdout, "Usage: kinmesh %s\n\n", synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// parse parses args, turning flag errors into usage errors; arguments
// left over are an error.
func parse(fs *flag.FlagSet, args []string) error {
	if err := parseWithArgs(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected argument %q (see kinmesh %s --help)", errUsage, fs.Arg(0), fs.Name())
	}
	return nil
}

// parseWithArgs parses args, turning flag errors into usage errors, and
// leaves positional arguments in fs.Args().
func parseWithArgs(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %v (see kinmesh %s --help)", errUsage, err, fs.Name())
	}
	return nil
}

// listFlag is a flag that may repeat: --listen A --listen B.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error {
	*l = append(*l, v)
	return nil
}

// logFlags adds --log-level and returns a function building the logger.
func logFlags(fs *flag.FlagSet, stderr io.Writer) func() (*slog.Logger, error) {
	level := fs.String("log-level", "info", "log level: debug, info, warn, error")
	return func() (*slog.Logger, error) {
		var l slog.Level
		if err := l.UnmarshalText([]byte(*level)); err != nil {
			return nil, fmt.Errorf("%w: --log-level %q: want debug, info, warn or error", errUsage, *level)
		}
		h := slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: l})
		// libp2p logs through its own shim; send it to the same place, but
		// only its errors unless debugging: its warnings are mostly routine
		// churn (a peer hung up mid-identify) that would alarm a user.
		libp2pLevel := slog.LevelError
		if l <= slog.LevelDebug {
			libp2pLevel = slog.LevelDebug
		}
		gologshim.SetDefaultHandler(shutdownNoiseFilter{slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: libp2pLevel})})
		return slog.New(h), nil
	}
}

// shutdownNoiseFilter drops libp2p's reports that a listener it is
// closing was closed: routine when a process stops (or a start fails and
// unwinds), and alarming on a user's terminal.
type shutdownNoiseFilter struct{ slog.Handler }

func (f shutdownNoiseFilter) Handle(ctx context.Context, r slog.Record) error {
	noise := false
	r.Attrs(func(a slog.Attr) bool {
		v := a.Value.String()
		if strings.Contains(v, "listener closed") || strings.Contains(v, "use of closed network connection") {
			noise = true
			return false
		}
		return true
	})
	if noise {
		return nil
	}
	return f.Handler.Handle(ctx, r)
}

func (f shutdownNoiseFilter) WithAttrs(as []slog.Attr) slog.Handler {
	return shutdownNoiseFilter{f.Handler.WithAttrs(as)}
}

func (f shutdownNoiseFilter) WithGroup(name string) slog.Handler {
	return shutdownNoiseFilter{f.Handler.WithGroup(name)}
}
