package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/kinmesh/kinmesh/node"
)

const peersSynopsis = `peers --data DIR [--json]

Shows the peers a running node is connected to and how: "direct", or
"relay" (only through a relay circuit), with the latest hole punch (DCUtR)
result. See GET /v1/node/peers in docs/api.md.`

func runPeers(ctx context.Context, args []string, stdout, _ io.Writer) error {
	fs := newFlags("peers", peersSynopsis, stdout)
	client := clientFlags(fs)
	asJSON := fs.Bool("json", false, "print the raw JSON")
	if err := parse(fs, args); err != nil {
		return err
	}
	c, err := client()
	if err != nil {
		return err
	}
	var pl node.PeerList
	if err := c.do(ctx, http.MethodGet, "/v1/node/peers", nil, &pl); err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(pl)
	}
	hp := "off (no public address of its own known yet)"
	if pl.HolePunching {
		hp = "on"
	}
	fmt.Fprintf(stdout, "hole punching  %s\n", hp)
	for _, a := range pl.ObservedAddrs {
		fmt.Fprintf(stdout, "observed as    %s\n", a)
	}
	for _, p := range pl.Peers {
		line := fmt.Sprintf("%-9s %s", p.Path, p.PeerID)
		if h := p.HolePunch; h != nil {
			line += fmt.Sprintf("  hole punch %s after %d attempt(s)", h.Result, h.Attempts)
			if h.Error != "" {
				line += ": " + h.Error
			}
		}
		fmt.Fprintln(stdout, line)
		for _, cn := range p.Conns {
			kind := "direct"
			if cn.Relayed {
				kind = "relayed"
			}
			if cn.Limited {
				kind += ", limited"
			}
			fmt.Fprintf(stdout, "  %-8s %s (%s, open %s)\n", cn.Direction, cn.Addr, kind, time.Since(cn.Opened).Round(time.Second))
		}
	}
	return nil
}

// labPublicFlag is the node's lab setting (node.Config.LabPublicCIDRs),
// hidden from --help: it is for network-namespace testbeds only.
const labPublicFlag = "lab-public-cidr"

// prefixFlag is a repeatable CIDR flag.
type prefixFlag []netip.Prefix

func (p *prefixFlag) String() string {
	s := make([]string, len(*p))
	for i, v := range *p {
		s[i] = v.String()
	}
	return strings.Join(s, ",")
}

func (p *prefixFlag) Set(v string) error {
	pr, err := netip.ParsePrefix(strings.TrimSpace(v))
	if err != nil {
		return fmt.Errorf("want a CIDR range such as 198.18.0.0/16: %v", err)
	}
	*p = append(*p, pr.Masked())
	return nil
}

// hideFlags leaves the named flags out of fs's --help.
func hideFlags(fs *flag.FlagSet, synopsis string, stdout io.Writer, hidden ...string) {
	fs.Usage = func() {
		shown := flag.NewFlagSet(fs.Name(), flag.ContinueOnError)
		fs.VisitAll(func(f *flag.Flag) {
			if !slices.Contains(hidden, f.Name) {
				shown.Var(f.Value, f.Name, f.Usage)
			}
		})
		shown.SetOutput(stdout)
		fmt.Fprintf(stdout, "Usage: kinmesh %s\n\n", synopsis)
		shown.PrintDefaults()
	}
}
