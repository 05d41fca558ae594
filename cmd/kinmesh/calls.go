package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/kinmesh/kinmesh/protocols/calls"
)

// Client verbs for calls: thin calls to the daemon's local API
// (docs/api.md, "Calls"). The daemon plays its built-in test clips as a
// call's media (a tone and a test pattern).

// callsCommands are the verbs of this file, for commands().
func callsCommands() []command {
	return []command{
		{"call", "call a contact (the daemon plays test clips as media)", runCall},
		{"answer", "answer an incoming call", runAnswer},
		{"hangup", "hang up, decline or cancel a call", runHangup},
		{"calls", "list calls, or show one with its quality statistics", runCalls},
	}
}

// callArgs parses flags that may come before or after the positional
// arguments, and returns the positional ones.
func callArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, fmt.Errorf("%w: %v (see kinmesh %s --help)", errUsage, err, fs.Name())
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos, args = append(pos, args[0]), args[1:]
	}
}

type callReply struct {
	Call calls.Info `json:"call"`
}

func runCall(ctx context.Context, args []string, stdout, _ io.Writer) error {
	fs := newFlags("call", `call CONTACT_ID [--force-relay] [--follow] --data DIR

Calls a contact. The daemon rings the contact's device and, once they
answer, sends its test clips. Prints the call's id (for kinmesh hangup and
kinmesh calls). --follow prints the call's states until it ends (Ctrl-C
hangs up). --force-relay sends the call through a relay (TURN), so the
contact never learns this device's IP address.`, stdout)
	client := clientFlags(fs)
	relay := fs.Bool("force-relay", false, "relay-only: hide this device's IP address from the contact")
	follow := fs.Bool("follow", false, "print the call's states until it ends; Ctrl-C hangs up")
	asJSON := fs.Bool("json", false, "print the call as JSON")
	pos, err := callArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return fmt.Errorf("%w: say whom to call: kinmesh call CONTACT_ID", errUsage)
	}
	c, err := client()
	if err != nil {
		return err
	}
	var out callReply
	if err := c.do(ctx, http.MethodPost, "/v1/calls", map[string]any{"to": pos[0], "force_relay": *relay}, &out); err != nil {
		return err
	}
	if *asJSON {
		return writeCallJSON(stdout, out.Call)
	}
	fmt.Fprintf(stdout, "call %s %s\n", out.Call.ID, out.Call.State)
	if *follow {
		return followCall(ctx, c, out.Call.ID, out.Call.State, stdout)
	}
	return nil
}

// followCall prints the call's state changes until it ends; if ctx ends
// first (Ctrl-C), it hangs up.
func followCall(ctx context.Context, c *apiClient, id string, last calls.State, stdout io.Writer) error {
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			hctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := c.do(hctx, http.MethodDelete, "/v1/calls/"+url.PathEscape(id), nil, nil); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "call %s hung up\n", id)
			return nil
		case <-tick.C:
		}
		var out callReply
		if err := c.do(ctx, http.MethodGet, "/v1/calls/"+url.PathEscape(id), nil, &out); err != nil {
			if ctx.Err() != nil {
				continue
			}
			return err
		}
		i := out.Call
		if i.State != last {
			last = i.State
			line := fmt.Sprintf("call %s %s", i.ID, i.State)
			if i.Path != "" {
				line += " via " + i.Path
			}
			if i.Reason != "" {
				line += " (" + i.Reason + ")"
			}
			fmt.Fprintln(stdout, line)
		}
		if i.State.Final() {
			writeCallStats(stdout, i)
			return nil
		}
	}
}

func runAnswer(ctx context.Context, args []string, stdout, _ io.Writer) error {
	fs := newFlags("answer", "answer CALL_ID [--force-relay] [--follow] --data DIR\n\nAnswers an incoming call (see kinmesh calls for its id).", stdout)
	client := clientFlags(fs)
	relay := fs.Bool("force-relay", false, "relay-only: hide this device's IP address from the caller")
	follow := fs.Bool("follow", false, "print the call's states until it ends; Ctrl-C hangs up")
	pos, err := callArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return fmt.Errorf("%w: say which call: kinmesh answer CALL_ID", errUsage)
	}
	c, err := client()
	if err != nil {
		return err
	}
	var out callReply
	if err := c.do(ctx, http.MethodPost, "/v1/calls/"+url.PathEscape(pos[0])+"/accept", map[string]any{"force_relay": *relay}, &out); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "call %s %s\n", out.Call.ID, out.Call.State)
	if *follow {
		return followCall(ctx, c, out.Call.ID, out.Call.State, stdout)
	}
	return nil
}

func runHangup(ctx context.Context, args []string, stdout, _ io.Writer) error {
	fs := newFlags("hangup", "hangup CALL_ID --data DIR\n\nHangs up a call, declines one that rings, or cancels one you placed.", stdout)
	client := clientFlags(fs)
	pos, err := callArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return fmt.Errorf("%w: say which call: kinmesh hangup CALL_ID", errUsage)
	}
	c, err := client()
	if err != nil {
		return err
	}
	var out callReply
	if err := c.do(ctx, http.MethodDelete, "/v1/calls/"+url.PathEscape(pos[0]), nil, &out); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "call %s %s", out.Call.ID, out.Call.State)
	if out.Call.Reason != "" {
		fmt.Fprintf(stdout, " (%s)", out.Call.Reason)
	}
	fmt.Fprintln(stdout)
	return nil
}

func runCalls(ctx context.Context, args []string, stdout, _ io.Writer) error {
	fs := newFlags("calls", `calls [CALL_ID] [--json] --data DIR

Lists calls, newest first: id, direction, state, contact, path and how
long they lasted. With a call id, shows that call with its quality
statistics.`, stdout)
	client := clientFlags(fs)
	asJSON := fs.Bool("json", false, "print the raw JSON")
	pos, err := callArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 1 {
		return fmt.Errorf("%w: at most one call id", errUsage)
	}
	c, err := client()
	if err != nil {
		return err
	}
	if len(pos) == 1 {
		var out callReply
		if err := c.do(ctx, http.MethodGet, "/v1/calls/"+url.PathEscape(pos[0]), nil, &out); err != nil {
			return err
		}
		if *asJSON {
			return writeCallJSON(stdout, out.Call)
		}
		writeCall(stdout, out.Call)
		return nil
	}
	var out struct {
		Calls []calls.Info `json:"calls"`
	}
	if err := c.do(ctx, http.MethodGet, "/v1/calls", nil, &out); err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	}
	if len(out.Calls) == 0 {
		fmt.Fprintln(stdout, "no calls")
		return nil
	}
	for _, i := range out.Calls {
		path := i.Path
		if path == "" {
			path = "-"
		}
		state := string(i.State)
		if i.Reason != "" {
			state += " (" + i.Reason + ")"
		}
		fmt.Fprintf(stdout, "%s  %-3s  %-24s  %-16s  %-6s  %s\n", i.ID, i.Direction, state, shortID(i.Peer), path, time.Duration(i.DurationS*float64(time.Second)).Round(time.Second))
	}
	return nil
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12] + "…"
	}
	return id
}

func writeCallJSON(w io.Writer, i calls.Info) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(callReply{Call: i})
}

// writeCall prints one call and its statistics.
func writeCall(w io.Writer, i calls.Info) {
	fmt.Fprintf(w, "call       %s\ncontact    %s\ndirection  %s\nstate      %s\n", i.ID, i.Peer, i.Direction, i.State)
	if i.Reason != "" {
		fmt.Fprintf(w, "reason     %s\n", i.Reason)
	}
	if i.Path != "" {
		fmt.Fprintf(w, "path       %s (%s ↔ %s candidates)\n", i.Path, i.LocalCandidate, i.RemoteCandidate)
	}
	if i.ForceRelay {
		fmt.Fprintln(w, "relay-only yes")
	}
	fmt.Fprintf(w, "started    %s\n", i.StartedAt.Format(time.RFC3339))
	if i.SetupMS > 0 {
		fmt.Fprintf(w, "setup      %d ms\n", i.SetupMS)
	}
	fmt.Fprintf(w, "duration   %s\n", time.Duration(i.DurationS*float64(time.Second)).Round(100*time.Millisecond))
	writeCallStats(w, i)
}

func writeCallStats(w io.Writer, i calls.Info) {
	s := i.Stats
	if s == nil {
		return
	}
	var b strings.Builder
	fmt.Fprintf(&b, "stats      rtt %.1f ms, jitter %.1f ms, lost %d of %d packets, codec %s", s.RTTMS, s.JitterMS, s.PacketsLost, s.PacketsReceived+s.PacketsLost, s.Codec)
	if s.FramesReceived > 0 {
		fmt.Fprintf(&b, ", video %dx%d at %.1f fps", s.Width, s.Height, s.FPS)
	}
	fmt.Fprintln(w, b.String())
}

// printCallEvent prints a call.<state> event of kinmesh watch (data is
// the event's JSON): the call's id first, to pass to kinmesh answer or
// hangup.
func printCallEvent(w io.Writer, typ, data string) {
	var e struct {
		Call calls.Info `json:"call"`
	}
	if json.Unmarshal([]byte(data), &e) != nil {
		return
	}
	i := e.Call
	line := fmt.Sprintf("%-15s %s %s", typ, i.ID, i.Direction)
	switch i.Direction {
	case calls.DirectionIn:
		line += " from " + i.Peer
	case calls.DirectionOut:
		line += " to " + i.Peer
	}
	if i.Path != "" {
		line += " via " + i.Path
	}
	if i.Reason != "" {
		line += " (" + i.Reason + ")"
	}
	fmt.Fprintln(w, line)
}
