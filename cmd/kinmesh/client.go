package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/kinmesh/kinmesh/node"
)

// apiClient talks to a running daemon's local API.
type apiClient struct {
	base  string
	token string
	http  *http.Client
}

// clientFlags adds --data / --api / --token to a client verb and returns a
// function building the client once the flags are parsed.
func clientFlags(fs *flag.FlagSet) func() (*apiClient, error) {
	data := fs.String("data", os.Getenv("KINMESH_DATA"), "the daemon's data directory (reads api.addr and api.token); default $KINMESH_DATA")
	api := fs.String("api", "", "the daemon's API host:port (default: from --data)")
	token := fs.String("token", "", "the API token (default: from --data)")
	return func() (*apiClient, error) {
		c := &apiClient{http: &http.Client{Timeout: 60 * time.Second}}
		addr, tok := *api, *token
		if *data != "" {
			if addr == "" {
				b, err := os.ReadFile(filepath.Join(*data, node.AddrFile))
				if err != nil {
					return nil, fmt.Errorf("no running daemon found in %s (%v); start one with `kinmesh node --data %s`", *data, err, *data)
				}
				addr = strings.TrimSpace(string(b))
			}
			if tok == "" {
				b, err := os.ReadFile(filepath.Join(*data, node.TokenFile))
				if err != nil {
					return nil, fmt.Errorf("read API token: %w", err)
				}
				tok = strings.TrimSpace(string(b))
			}
		}
		if addr == "" || tok == "" {
			return nil, fmt.Errorf("%w: say which daemon: --data DIR (or --api HOST:PORT and --token T)", errUsage)
		}
		c.base, c.token = "http://"+addr, tok
		return c, nil
	}
}

// do sends a request and decodes the JSON response into out. API errors
// come back as "<code>: <message>".
func (c *apiClient) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("reach the daemon at %s: %w (is `kinmesh node` running?)", c.base, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode >= 300 {
		var e struct {
			Error struct{ Code, Message string } `json:"error"`
		}
		if json.Unmarshal(b, &e) == nil && e.Error.Code != "" {
			return fmt.Errorf("%s: %s", e.Error.Code, e.Error.Message)
		}
		return fmt.Errorf("%s %s: HTTP %d", method, path, resp.StatusCode)
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(b, out)
}

func runStatus(ctx context.Context, args []string, stdout, _ io.Writer) error {
	fs := newFlags("status", "status --data DIR | --api HOST:PORT --token T\n\nShows a running node's peer id, addresses and relays.", stdout)
	client := clientFlags(fs)
	asJSON := fs.Bool("json", false, "print the raw JSON")
	if err := parse(fs, args); err != nil {
		return err
	}
	c, err := client()
	if err != nil {
		return err
	}
	var st node.Status
	if err := c.do(ctx, http.MethodGet, "/v1/node", nil, &st); err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	}
	fmt.Fprintf(stdout, "peer id  %s\n", st.PeerID)
	for _, a := range st.Addrs {
		fmt.Fprintf(stdout, "addr     %s\n", a)
	}
	for _, r := range st.Relays {
		state := "down"
		switch {
		case r.Reserved:
			state = "connected, reserved"
		case r.Connected:
			state = "connected"
		}
		if r.LastError != "" && !r.Connected {
			state += " (" + r.LastError + ")"
		}
		fmt.Fprintf(stdout, "relay    %s  %s\n", r.PeerID, state)
	}
	return nil
}
