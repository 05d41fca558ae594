package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/kinmesh/kinmesh/node"
	"github.com/kinmesh/kinmesh/protocols/message"
)

// Client verbs for the privacy rights: export, delete, block, location,
// settings and consent.

func runExport(ctx context.Context, args []string, stdout, _ io.Writer) error {
	fs := newFlags("export", "export --data DIR > kinmesh-export.json\n\nWrites everything the node holds of the account as one JSON document (docs/export.md).", stdout)
	client := clientFlags(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	c, err := client()
	if err != nil {
		return err
	}
	var e json.RawMessage
	if err := c.do(ctx, http.MethodGet, "/v1/export", nil, &e); err != nil {
		return err
	}
	_, err = fmt.Fprintln(stdout, string(e))
	return err
}

func runBlock(ctx context.Context, args []string, stdout, _ io.Writer) error {
	fs := newFlags("block", "block --data DIR [ACCOUNT | --list | --remove ACCOUNT]\n\nBlocks an account (its messages, calls, moments and presence are dropped), lists blocks, or lifts one.", stdout)
	client := clientFlags(fs)
	list := fs.Bool("list", false, "list blocked accounts")
	remove := fs.String("remove", "", "unblock this account")
	var target string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		target, args = args[0], args[1:]
	}
	if err := parse(fs, args); err != nil {
		return err
	}
	c, err := client()
	if err != nil {
		return err
	}
	switch {
	case *remove != "":
		if err := c.do(ctx, http.MethodDelete, "/v1/blocks/"+url.PathEscape(*remove), nil, nil); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "unblocked %s\n", *remove)
	case target != "":
		var out struct{ Block node.Block }
		if err := c.do(ctx, http.MethodPost, "/v1/blocks", map[string]string{"contact": target}, &out); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "blocked %s\n", out.Block.Contact)
	case *list:
		var out struct{ Blocks []node.Block }
		if err := c.do(ctx, http.MethodGet, "/v1/blocks", nil, &out); err != nil {
			return err
		}
		for _, b := range out.Blocks {
			fmt.Fprintf(stdout, "%s  since %s\n", b.Contact, b.BlockedAt.Local().Format("2006-01-02 15:04"))
		}
	default:
		return fmt.Errorf("%w: kinmesh block ACCOUNT, --list or --remove ACCOUNT", errUsage)
	}
	return nil
}

func runLocation(ctx context.Context, args []string, stdout, _ io.Writer) error {
	fs := newFlags("location", `location --data DIR [--to ID … --lat LAT --lon LON [--minutes M] | --to ID … --stop]

Without --to: shows the positions contacts share with you now. With it:
shares your position with those contacts for M minutes (default 15), or
stops sharing.`, stdout)
	client := clientFlags(fs)
	var to listFlag
	fs.Var(&to, "to", "contact to share with (repeatable)")
	lat := fs.Float64("lat", 0, "latitude")
	lon := fs.Float64("lon", 0, "longitude")
	acc := fs.Float64("accuracy", 0, "accuracy in metres")
	minutes := fs.Float64("minutes", 0, "how long the contacts may see it (default 15, at most 480)")
	stop := fs.Bool("stop", false, "stop sharing with these contacts")
	if err := parse(fs, args); err != nil {
		return err
	}
	c, err := client()
	if err != nil {
		return err
	}
	if len(to) == 0 {
		var out struct{ Locations []message.Location }
		if err := c.do(ctx, http.MethodGet, "/v1/locations", nil, &out); err != nil {
			return err
		}
		for _, l := range out.Locations {
			fmt.Fprintf(stdout, "%s  %.5f,%.5f ±%.0fm  until %s\n", l.From, l.Lat, l.Lon, l.AccuracyM, l.ExpiresAt.Local().Format("15:04"))
		}
		return nil
	}
	body := map[string]any{"to": []string(to), "lat": *lat, "lon": *lon, "accuracy_m": *acc, "minutes": *minutes, "stop": *stop}
	var out map[string]any
	if err := c.do(ctx, http.MethodPost, "/v1/location", body, &out); err != nil {
		return err
	}
	if *stop {
		fmt.Fprintf(stdout, "stopped sharing with %d contacts\n", len(to))
	} else {
		fmt.Fprintf(stdout, "shared with %d contacts until %v\n", len(to), out["expires_at"])
	}
	return nil
}

func runSettings(ctx context.Context, args []string, stdout, _ io.Writer) error {
	fs := newFlags("settings", `settings --data DIR [--diagnostics on|off] [--call-quality on|off] [--accept-policy VERSION]

Shows or changes optional data collection (off by default, and off while a
new privacy policy is not accepted), and accepts a new policy version.`, stdout)
	client := clientFlags(fs)
	diag := fs.String("diagnostics", "", "share diagnostics with feedback: on or off")
	callq := fs.String("call-quality", "", "share call-quality statistics: on or off")
	accept := fs.String("accept-policy", "", "accept this privacy policy version (see kinmesh policy)")
	if err := parse(fs, args); err != nil {
		return err
	}
	onOff := func(name, v string) (*bool, error) {
		switch v {
		case "":
			return nil, nil
		case "on":
			b := true
			return &b, nil
		case "off":
			b := false
			return &b, nil
		}
		return nil, fmt.Errorf("%w: --%s takes on or off", errUsage, name)
	}
	d, err := onOff("diagnostics", *diag)
	if err != nil {
		return err
	}
	q, err := onOff("call-quality", *callq)
	if err != nil {
		return err
	}
	c, err := client()
	if err != nil {
		return err
	}
	var v node.SettingsView
	if *accept != "" {
		if err := c.do(ctx, http.MethodPost, "/v1/policy/accept", map[string]string{"version": *accept}, &v); err != nil {
			return err
		}
	}
	if d != nil || q != nil {
		body := map[string]*bool{"diagnostics_sharing": d, "call_quality_sharing": q}
		if err := c.do(ctx, http.MethodPost, "/v1/settings", body, &v); err != nil {
			return err
		}
	} else if err := c.do(ctx, http.MethodGet, "/v1/settings", nil, &v); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "diagnostics sharing   %v (in effect: %v)\ncall-quality sharing  %v (in effect: %v)\npolicy                accepted %s, current %s\n",
		v.Settings.DiagnosticsSharing, v.Effective.DiagnosticsSharing, v.Settings.CallQualitySharing, v.Effective.CallQualitySharing,
		v.Policy.Accepted, v.Policy.Current)
	if v.Policy.NeedsAcceptance {
		fmt.Fprintf(stdout, "a new privacy policy needs your acceptance: kinmesh policy, then kinmesh settings --accept-policy %s\n", v.Policy.Current)
	}
	return nil
}

// deleteAccount is `kinmesh account delete`.
func deleteAccount(ctx context.Context, c *apiClient, stdout io.Writer) error {
	var d node.Deletion
	if err := c.do(ctx, http.MethodDelete, "/v1/account", nil, &d); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "account deleted from this device")
	for _, r := range d.Relays {
		state := "purged"
		if !r.Confirmed {
			state = "not confirmed yet (the node retries): " + r.Error
		}
		kind := "relay"
		if r.Former {
			kind = "former relay" // no home any more, but it held data
		}
		fmt.Fprintf(stdout, "  %s %s: %s\n", kind, r.Relay, state)
	}
	return nil
}
