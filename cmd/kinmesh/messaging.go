package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/kinmesh/kinmesh/node"
	"github.com/kinmesh/kinmesh/protocols/message"
)

// Client verbs for accounts, contacts, messages and groups. Each is a thin
// call to the daemon's local API (docs/api.md).

func runAccount(ctx context.Context, args []string, stdout, _ io.Writer) error {
	fs := newFlags("account", `account [--data DIR] [create --name NAME --birth-date YYYY-MM-DD [--country CC] [--accept-policy VERSION] | delete --yes]

Without a verb: shows the account. "create" creates one (accepting the
privacy policy: read it first with "kinmesh policy"). "delete --yes"
deletes it: from this device, and from every home relay.`, stdout)
	client := clientFlags(fs)
	var (
		name    = fs.String("name", "", "profile name (create)")
		born    = fs.String("birth-date", "", "birth date YYYY-MM-DD (create)")
		country = fs.String("country", "", "two-letter country code (create, optional)")
		gender  = fs.String("gender", "", "gender (create, optional)")
		accept  = fs.String("accept-policy", "", "the policy version you accept (create; see kinmesh policy)")
		consent = fs.Bool("parental-consent", false, "a parent consents (EU users aged 13-15)")
	)
	yes := fs.Bool("yes", false, "confirm account deletion")
	create := len(args) > 0 && args[0] == "create"
	del := len(args) > 0 && args[0] == "delete"
	if create || del {
		args = args[1:]
	}
	if err := parse(fs, args); err != nil {
		return err
	}
	c, err := client()
	if err != nil {
		return err
	}
	if del {
		if !*yes {
			return fmt.Errorf("%w: deleting the account can't be undone: add --yes", errUsage)
		}
		return deleteAccount(ctx, c, stdout)
	}
	var out struct {
		Account node.Account `json:"account"`
	}
	if create {
		err = c.do(ctx, http.MethodPost, "/v1/account", node.NewAccount{
			Name: *name, BirthDate: *born, Country: *country, Gender: *gender,
			AcceptPolicy: *accept, ParentalConsent: *consent,
		}, &out)
	} else {
		err = c.do(ctx, http.MethodGet, "/v1/account", nil, &out)
	}
	if err != nil {
		return err
	}
	a := out.Account
	fmt.Fprintf(stdout, "account     %s\nname        %s\nfingerprint %s\nhome relays %d\n", a.ID, a.Name, a.Fingerprint, len(a.HomeRelays))
	return nil
}

func runPolicy(ctx context.Context, args []string, stdout, _ io.Writer) error {
	fs := newFlags("policy", "policy --data DIR\n\nPrints the privacy policy the node ships and its version.", stdout)
	client := clientFlags(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	c, err := client()
	if err != nil {
		return err
	}
	var p struct{ Version, Text string }
	if err := c.do(ctx, http.MethodGet, "/v1/policy", nil, &p); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s\n(version %s: accept it with --accept-policy %s)\n", p.Text, p.Version, p.Version)
	return nil
}

func runInvite(ctx context.Context, args []string, stdout, _ io.Writer) error {
	fs := newFlags("invite", "invite --data DIR [--uri]\n\nPrints this account's invite: hand it to someone so they can add you.", stdout)
	client := clientFlags(fs)
	uri := fs.Bool("uri", false, "print the kinmesh://invite/… URI form (for QR codes)")
	if err := parse(fs, args); err != nil {
		return err
	}
	c, err := client()
	if err != nil {
		return err
	}
	var inv struct{ Invite, URI string }
	if err := c.do(ctx, http.MethodGet, "/v1/invite", nil, &inv); err != nil {
		return err
	}
	if *uri {
		fmt.Fprintln(stdout, inv.URI)
	} else {
		fmt.Fprintln(stdout, inv.Invite)
	}
	return nil
}

func runContacts(ctx context.Context, args []string, stdout, _ io.Writer) error {
	fs := newFlags("contacts", "contacts --data DIR [add INVITE | remove ID]\n\nLists contacts, adds one from an invite, or removes one (no more presence\nor moments for them; conversations stay; see kinmesh block to drop what\nthey send).", stdout)
	client := clientFlags(fs)
	var invite, remove string
	if len(args) >= 2 && args[0] == "add" {
		invite, args = args[1], args[2:]
	} else if len(args) >= 2 && args[0] == "remove" {
		remove, args = args[1], args[2:]
	}
	if err := parse(fs, args); err != nil {
		return err
	}
	c, err := client()
	if err != nil {
		return err
	}
	if remove != "" {
		if err := c.do(ctx, http.MethodDelete, "/v1/contacts/"+url.PathEscape(remove), nil, nil); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "removed %s\n", remove)
		return nil
	}
	if invite != "" {
		var out struct{ Contact node.Contact }
		if err := c.do(ctx, http.MethodPost, "/v1/contacts", map[string]string{"invite": invite}, &out); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "added %s (%s)\n", out.Contact.Name, out.Contact.ID)
		return nil
	}
	var out struct{ Contacts []node.Contact }
	if err := c.do(ctx, http.MethodGet, "/v1/contacts", nil, &out); err != nil {
		return err
	}
	for _, ct := range out.Contacts {
		fmt.Fprintf(stdout, "%-20s %s  %s\n", ct.Name, ct.ID, ct.Source)
	}
	return nil
}

func runSend(ctx context.Context, args []string, stdout, _ io.Writer) error {
	fs := newFlags("send", "send --data DIR --to ID TEXT…\n\nSends a message to a contact or group (id from kinmesh contacts / groups).", stdout)
	client := clientFlags(fs)
	to := fs.String("to", "", "contact account id or group id")
	if err := parseWithArgs(fs, args); err != nil {
		return err
	}
	text := strings.Join(fs.Args(), " ")
	if *to == "" || text == "" {
		return fmt.Errorf("%w: kinmesh send --to ID TEXT", errUsage)
	}
	c, err := client()
	if err != nil {
		return err
	}
	var out struct{ Message message.Message }
	if err := c.do(ctx, http.MethodPost, "/v1/messages", map[string]string{"to": *to, "text": text}, &out); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s %s\n", out.Message.ID, out.Message.State)
	return nil
}

func runInbox(ctx context.Context, args []string, stdout, _ io.Writer) error {
	fs := newFlags("inbox", "inbox --data DIR --with ID [--read]\n\nShows the conversation with a contact or group, oldest first.", stdout)
	client := clientFlags(fs)
	with := fs.String("with", "", "contact account id or group id")
	read := fs.Bool("read", false, "mark the conversation read (sends read receipts)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *with == "" {
		return fmt.Errorf("%w: kinmesh inbox --with ID", errUsage)
	}
	c, err := client()
	if err != nil {
		return err
	}
	var out struct{ Messages []message.Message }
	if err := c.do(ctx, http.MethodGet, "/v1/messages?with="+url.QueryEscape(*with), nil, &out); err != nil {
		return err
	}
	for _, m := range out.Messages {
		printMessage(stdout, m)
	}
	if *read {
		return c.do(ctx, http.MethodPost, "/v1/read", map[string]string{"with": *with}, nil)
	}
	return nil
}

func printMessage(w io.Writer, m message.Message) {
	dir := "→"
	if m.Incoming {
		dir = "←"
	}
	state := string(m.State)
	if m.State == message.StateQueued && m.Queued > 0 { // 1:1 only; a group message's is per member
		state = fmt.Sprintf("queued on %d relays", m.Queued)
	}
	from := m.From
	if len(from) > 12 {
		from = from[:12] + "…"
	}
	fmt.Fprintf(w, "%s %s %s %-13s [%s] %s\n", m.SentAt.Local().Format(time.DateTime), dir, from, "", state, m.Text)
}

func runWatch(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("watch", "watch --data DIR [--json]\n\nPrints events (new messages, state changes, group changes, calls) as they happen, until Ctrl-C.", stdout)
	client := clientFlags(fs)
	asJSON := fs.Bool("json", false, "print each event's raw JSON")
	if err := parse(fs, args); err != nil {
		return err
	}
	c, err := client()
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+"/v1/events", nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	resp, err := (&http.Client{}).Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("reach the daemon at %s: %w", c.base, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET /v1/events: HTTP %d", resp.StatusCode)
	}
	// The daemon answers once we are subscribed: from here on no event is
	// missed.
	fmt.Fprintln(stderr, "watching; Ctrl-C to stop")
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		if *asJSON {
			fmt.Fprintln(stdout, data)
			continue
		}
		var e message.Event
		if json.Unmarshal([]byte(data), &e) != nil {
			continue
		}
		switch {
		case e.Message != nil:
			fmt.Fprintf(stdout, "%-7s ", e.Type)
			printMessage(stdout, *e.Message)
		case e.Group != nil:
			fmt.Fprintf(stdout, "group   %s %q %d members\n", e.Group.ID, e.Group.Name, len(e.Group.Members))
		case e.Call != nil:
			printCallEvent(stdout, e.Type, data) // calls.go
		}
	}
	if err := sc.Err(); err != nil && ctx.Err() == nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

func runGroups(ctx context.Context, args []string, stdout, _ io.Writer) error {
	fs := newFlags("groups", `groups --data DIR [create NAME MEMBER… | add GROUP MEMBER… | remove GROUP MEMBER… | rename GROUP NAME | leave GROUP]

Lists groups, creates one with contacts as members, changes members or
the name (the group's admin only), or leaves one (an admin hands the group
to the member who has been in it longest).`, stdout)
	client := clientFlags(fs)
	var verb string
	var rest []string
	if len(args) > 0 && slices.Contains([]string{"create", "add", "remove", "rename", "leave"}, args[0]) {
		verb = args[0]
		i := 1
		for i < len(args) && !strings.HasPrefix(args[i], "-") {
			i++
		}
		rest, args = args[1:i], args[i:]
	}
	if err := parse(fs, args); err != nil {
		return err
	}
	switch {
	case verb == "leave" && len(rest) != 1:
		return fmt.Errorf("%w: kinmesh groups leave needs a group", errUsage)
	case verb == "rename" && len(rest) != 2:
		return fmt.Errorf("%w: kinmesh groups rename needs a group and one name (quote it)", errUsage)
	case verb != "" && verb != "leave" && len(rest) < 2:
		return fmt.Errorf("%w: kinmesh groups %s needs a group (or name) and members", errUsage, verb)
	}
	c, err := client()
	if err != nil {
		return err
	}
	var out struct{ Group message.Group }
	switch verb {
	case "create":
		err = c.do(ctx, http.MethodPost, "/v1/groups", map[string]any{"name": rest[0], "members": rest[1:]}, &out)
	case "add":
		err = c.do(ctx, http.MethodPost, "/v1/groups/"+url.PathEscape(rest[0])+"/members", map[string]any{"add": rest[1:]}, &out)
	case "remove":
		err = c.do(ctx, http.MethodPost, "/v1/groups/"+url.PathEscape(rest[0])+"/members", map[string]any{"remove": rest[1:]}, &out)
	case "rename":
		err = c.do(ctx, http.MethodPatch, "/v1/groups/"+url.PathEscape(rest[0]), map[string]any{"name": rest[1]}, &out)
	case "leave":
		err = c.do(ctx, http.MethodPost, "/v1/groups/"+url.PathEscape(rest[0])+"/leave", nil, &out)
	default:
		var list struct{ Groups []message.Group }
		if err := c.do(ctx, http.MethodGet, "/v1/groups", nil, &list); err != nil {
			return err
		}
		for _, g := range list.Groups {
			left := ""
			if g.Left {
				left = " (left)"
			}
			fmt.Fprintf(stdout, "%s %-20s %d members%s\n", g.ID, g.Name, len(g.Members), left)
		}
		return nil
	}
	if err != nil {
		return err
	}
	if out.Group.Left {
		fmt.Fprintf(stdout, "%s %q left\n", out.Group.ID, out.Group.Name)
		return nil
	}
	fmt.Fprintf(stdout, "%s %q %d members\n", out.Group.ID, out.Group.Name, len(out.Group.Members))
	return nil
}
