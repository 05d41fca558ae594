package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/kinmesh/kinmesh/node"
	"github.com/kinmesh/kinmesh/protocols/report"
)

// Client verbs for reports, feedback, presence and diagnostics: thin
// calls to the daemon's local API (docs/api.md).

// reportCommands are the verbs of this file, for commands().
func reportCommands() []command {
	return []command{
		{"report", "report an account to your home relays' operators", runReport},
		{"feedback", "send feedback or a support request to your relays' operators", runFeedback},
		{"presence", "see who is online, or change who sees you", runPresence},
		{"diagnostics", "show what the node knows about its own health", runDiagnostics},
	}
}

// parseMixed parses flags that may come before, between or after
// positional arguments, and returns the positional ones.
func parseMixed(fs *flag.FlagSet, args []string) ([]string, error) {
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

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func short(id string) string {
	if len(id) > 16 {
		return id[:16] + "…"
	}
	return id
}

func printSubmission(w io.Writer, what string, s node.Submission) {
	fmt.Fprintf(w, "%s sent to %d of %d home relays (id %s)\n", what, s.Accepted, len(s.Relays), s.ID)
	for _, r := range s.Relays {
		if r.Accepted {
			fmt.Fprintf(w, "  %s  accepted  item %s\n", short(r.Relay), r.ItemID)
		} else {
			fmt.Fprintf(w, "  %s  refused   %s\n", short(r.Relay), r.Error)
		}
	}
}

func runReport(ctx context.Context, args []string, stdout, _ io.Writer) error {
	fs := newFlags("report", `report --data DIR ACCOUNT --reason REASON [--text TEXT] [--message ID]...

Reports an account to the operators of your home relays, signed by your
account. Only the messages you name with --message (ids from
kinmesh inbox --json) are disclosed, as your device shows them; nothing
else of the conversation is sent. Reasons: `+strings.Join(report.Reasons(), ", ")+`.`, stdout)
	client := clientFlags(fs)
	reason := fs.String("reason", "", "why: "+strings.Join(report.Reasons(), ", "))
	text := fs.String("text", "", "what happened, in your words")
	asJSON := fs.Bool("json", false, "print the raw JSON")
	var msgs listFlag
	fs.Var(&msgs, "message", "id of a message to disclose (repeatable)")
	pos, err := parseMixed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || *reason == "" {
		return fmt.Errorf("%w: kinmesh report ACCOUNT --reason REASON [--message ID]", errUsage)
	}
	c, err := client()
	if err != nil {
		return err
	}
	var out struct {
		Report node.Submission `json:"report"`
	}
	req := node.ReportRequest{Account: pos[0], Reason: *reason, Text: *text, Messages: msgs}
	if err := c.do(ctx, http.MethodPost, "/v1/reports", req, &out); err != nil {
		return err
	}
	if *asJSON {
		return printJSON(stdout, out)
	}
	printSubmission(stdout, fmt.Sprintf("report (%d messages disclosed)", out.Report.DisclosedMessages), out.Report)
	return nil
}

func runFeedback(ctx context.Context, args []string, stdout, _ io.Writer) error {
	fs := newFlags("feedback", `feedback --data DIR [--support] [--diagnostics] TEXT…

Sends feedback (or, with --support, a support request) to the operators of
your home relays. --diagnostics attaches the node's diagnostics record
(kinmesh diagnostics shows it) only if you also turned diagnostics sharing
on (kinmesh settings --diagnostics on).`, stdout)
	client := clientFlags(fs)
	support := fs.Bool("support", false, "a support request rather than feedback")
	diag := fs.Bool("diagnostics", false, "attach diagnostics (needs diagnostics sharing on)")
	asJSON := fs.Bool("json", false, "print the raw JSON")
	pos, err := parseMixed(fs, args)
	if err != nil {
		return err
	}
	text := strings.Join(pos, " ")
	if strings.TrimSpace(text) == "" {
		return fmt.Errorf("%w: kinmesh feedback TEXT…", errUsage)
	}
	c, err := client()
	if err != nil {
		return err
	}
	kind := "feedback"
	if *support {
		kind = "support"
	}
	var out struct {
		Feedback node.Submission `json:"feedback"`
	}
	if err := c.do(ctx, http.MethodPost, "/v1/feedback", node.FeedbackRequest{Kind: kind, Text: text, IncludeDiagnostics: *diag}, &out); err != nil {
		return err
	}
	if *asJSON {
		return printJSON(stdout, out)
	}
	printSubmission(stdout, kind, out.Feedback)
	switch {
	case out.Feedback.DiagnosticsAttached:
		fmt.Fprintln(stdout, "diagnostics attached")
	case *diag:
		fmt.Fprintln(stdout, "diagnostics NOT attached: diagnostics sharing is off (kinmesh settings --diagnostics on)")
	}
	return nil
}

func runPresence(ctx context.Context, args []string, stdout, _ io.Writer) error {
	fs := newFlags("presence", `presence --data DIR [share contacts|nobody | announce]

Lists your contacts' presence (online, last seen). "share nobody" stops
sending yours — and, as in mainstream messengers, you then see no one's;
"share contacts" sends it again. "announce" tells your contacts you are
online now.`, stdout)
	client := clientFlags(fs)
	asJSON := fs.Bool("json", false, "print the raw JSON")
	pos, err := parseMixed(fs, args)
	if err != nil {
		return err
	}
	c, err := client()
	if err != nil {
		return err
	}
	switch {
	case len(pos) == 2 && pos[0] == "share":
		var out struct{ Share string }
		if err := c.do(ctx, http.MethodPost, "/v1/settings/presence", map[string]string{"share": pos[1]}, &out); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "presence shared with: %s\n", out.Share)
		return nil
	case len(pos) == 1 && pos[0] == "announce":
		var out struct {
			Announce struct{ Sent, Unreachable int }
		}
		if err := c.do(ctx, http.MethodPost, "/v1/presence/announce", nil, &out); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "told %d contacts you are online (%d unreachable)\n", out.Announce.Sent, out.Announce.Unreachable)
		return nil
	case len(pos) != 0:
		return fmt.Errorf("%w: kinmesh presence [share contacts|nobody | announce]", errUsage)
	}
	var v node.PresenceView
	if err := c.do(ctx, http.MethodGet, "/v1/presence", nil, &v); err != nil {
		return err
	}
	if *asJSON {
		return printJSON(stdout, v)
	}
	fmt.Fprintf(stdout, "you share your presence with: %s\n", v.Share)
	if v.Share == node.PresenceNobody {
		fmt.Fprintln(stdout, "(so you see no one's; kinmesh presence share contacts to change)")
	}
	for _, p := range v.Contacts {
		state := "—"
		switch {
		case p.Online:
			state = "online"
		case p.LastSeen != nil:
			state = "last seen " + p.LastSeen.Local().Format(time.DateTime)
		}
		fmt.Fprintf(stdout, "%-20s %s  %s\n", p.Name, short(p.ID), state)
	}
	return nil
}

func runDiagnostics(ctx context.Context, args []string, stdout, _ io.Writer) error {
	fs := newFlags("diagnostics", `diagnostics --data DIR [--json]

Shows the node's diagnostics record: versions, relay links, message
states, recent errors. It stays on this device unless you send it with
feedback (kinmesh feedback --diagnostics) and have diagnostics sharing on.`, stdout)
	client := clientFlags(fs)
	asJSON := fs.Bool("json", false, "print the raw JSON")
	if err := parse(fs, args); err != nil {
		return err
	}
	c, err := client()
	if err != nil {
		return err
	}
	var out struct {
		Diagnostics node.Diagnostics `json:"diagnostics"`
		Sharing     bool             `json:"sharing"`
	}
	if err := c.do(ctx, http.MethodGet, "/v1/diagnostics", nil, &out); err != nil {
		return err
	}
	if *asJSON {
		return printJSON(stdout, out)
	}
	d := out.Diagnostics
	fmt.Fprintf(stdout, "version     %s (%s, %s), up %s\n", d.Version, d.Go, d.Platform, time.Duration(d.UptimeSeconds)*time.Second)
	for _, r := range d.Relays {
		state := "down"
		switch {
		case r.Reserved:
			state = "connected, reserved"
		case r.Connected:
			state = "connected"
		}
		fmt.Fprintf(stdout, "relay       %s  %s\n", short(r.PeerID), state)
	}
	for _, m := range d.Mailbox {
		state := "open"
		if !m.Connected {
			state = "closed"
		}
		fmt.Fprintf(stdout, "mailbox     %s  %s\n", short(m.Relay), state)
	}
	fmt.Fprintf(stdout, "peers       %d direct, %d relayed\n", d.Peers.Direct, d.Peers.Relayed)
	fmt.Fprintf(stdout, "contacts    %d, groups %d\n", d.Contacts, d.Groups)
	for st, n := range d.Messages {
		fmt.Fprintf(stdout, "messages    %-9s %d\n", st, n)
	}
	if d.Presence != nil {
		fmt.Fprintf(stdout, "presence    %d sent, %d unreachable, %d taken\n", d.Presence.Sent, d.Presence.Unreachable, d.Presence.Accepted)
	}
	for _, e := range d.RecentErrors {
		fmt.Fprintf(stdout, "error       %s  %s: %s\n", e.At.Local().Format(time.DateTime), e.Where, e.Error)
	}
	if out.Sharing {
		fmt.Fprintln(stdout, "sharing     on: kinmesh feedback --diagnostics attaches this record")
	} else {
		fmt.Fprintln(stdout, "sharing     off: this record stays on this device")
	}
	return nil
}
