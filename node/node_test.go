package node

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, leakIgnores()...)
}

// leakIgnores lists goroutines that libraries start once per process and
// never stop; they are not ours to leak.
func leakIgnores() []goleak.Option {
	return []goleak.Option{
		goleak.IgnoreTopFunction("github.com/ipfs/go-log/v2/writer.(*MirrorWriter).logRoutine"),
		goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"),
		goleak.IgnoreAnyFunction("github.com/libp2p/go-libp2p/p2p/transport/quicreuse.(*reuse).gc"),
	}
}

func startNode(t testing.TB, cfg Config) *Node {
	t.Helper()
	if cfg.DataDir == "" {
		cfg.DataDir = filepath.Join(t.TempDir(), "node")
	}
	if cfg.Listen == nil {
		cfg.Listen = []string{"/ip4/127.0.0.1/tcp/0"}
	}
	n, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := n.Start(ctx); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { _ = n.Close() })
	return n
}

func TestConfigErrors(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"no data dir", Config{}, "no data directory"},
		{"bad listen", Config{DataDir: "x", Listen: []string{"tcp:4001"}}, "listen address"},
		{"bootstrap without peer id", Config{DataDir: "x", Bootstrap: []string{"/ip4/127.0.0.1/tcp/4001"}}, "/p2p/<peer id>"},
		{"bootstrap garbage", Config{DataDir: "x", Bootstrap: []string{"relay.example"}}, "peer address"},
		{"api not loopback", Config{DataDir: "x", API: "0.0.0.0:7777"}, "not on loopback"},
		{"api public ip", Config{DataDir: "x", API: "198.18.0.1:7777"}, "not on loopback"},
		{"api no port", Config{DataDir: "x", API: "127.0.0.1"}, "API address"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.cfg)
			if !errors.Is(err, ErrConfig) {
				t.Fatalf("got %v, want ErrConfig", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %q, want it to mention %q", err, tt.want)
			}
		})
	}
}

func TestAPIAuth(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "node")
	n := startNode(t, Config{DataDir: dir, API: "127.0.0.1:0"})
	tok, err := os.ReadFile(filepath.Join(dir, TokenFile))
	if err != nil {
		t.Fatalf("token file: %v", err)
	}
	if fi, _ := os.Stat(filepath.Join(dir, TokenFile)); fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file mode %v, want 0600", fi.Mode().Perm())
	}
	addr, err := os.ReadFile(filepath.Join(dir, AddrFile))
	if err != nil || strings.TrimSpace(string(addr)) != n.APIAddr() {
		t.Fatalf("api.addr = %q (%v), want %q", addr, err, n.APIAddr())
	}
	tests := []struct {
		name   string
		auth   string
		path   string
		status int
		code   string
	}{
		{"no token", "", "/v1/node", 401, "unauthorized"},
		{"wrong token", "Bearer " + strings.Repeat("0", 64), "/v1/node", 401, "unauthorized"},
		{"not bearer", "Basic " + strings.TrimSpace(string(tok)), "/v1/node", 401, "unauthorized"},
		{"good token", "Bearer " + strings.TrimSpace(string(tok)), "/v1/node", 200, ""},
		{"unknown path", "Bearer " + strings.TrimSpace(string(tok)), "/v1/nope", 404, "not_found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", "http://"+n.APIAddr()+tt.path, nil)
			if tt.auth != "" {
				req.Header.Set("Authorization", tt.auth)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tt.status)
			}
			if tt.code != "" {
				var e apiError
				if err := json.NewDecoder(resp.Body).Decode(&e); err != nil {
					t.Fatalf("decode error body: %v", err)
				}
				if e.Error.Code != tt.code || e.Error.Message == "" {
					t.Fatalf("error %+v, want code %q with a message", e.Error, tt.code)
				}
				return
			}
			var st Status
			if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
				t.Fatal(err)
			}
			if st.PeerID != n.ID().String() || len(st.Addrs) == 0 || st.Relays == nil {
				t.Fatalf("got %+v, want peer id %s, addrs and a relays list", st, n.ID())
			}
		})
	}
	http.DefaultClient.CloseIdleConnections()
}

func TestRestartKeepsIdentityAndToken(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "node")
	n1 := startNode(t, Config{DataDir: dir, API: "127.0.0.1:0"})
	id := n1.ID()
	tok1, _ := os.ReadFile(filepath.Join(dir, TokenFile))
	if err := n1.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, AddrFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("api.addr still there after Close: %v", err)
	}
	n2 := startNode(t, Config{DataDir: dir, API: "127.0.0.1:0"})
	if n2.ID() != id {
		t.Fatalf("peer id after restart %s, want %s", n2.ID(), id)
	}
	tok2, _ := os.ReadFile(filepath.Join(dir, TokenFile))
	if string(tok1) != string(tok2) {
		t.Fatal("API token changed across restart")
	}
}

func TestPassphraseStore(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "node")
	n := startNode(t, Config{DataDir: dir, Passphrase: []byte("correct horse")})
	id := n.ID()
	n.Close()
	if _, err := os.Stat(filepath.Join(dir, "store.key")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a passphrase store must keep no key file: %v", err)
	}
	bad, _ := New(Config{DataDir: dir, Passphrase: []byte("wrong"), Listen: []string{"/ip4/127.0.0.1/tcp/0"}})
	if err := bad.Start(context.Background()); err == nil || !strings.Contains(err.Error(), "wrong key or passphrase") {
		t.Fatalf("wrong passphrase: got %v, want a wrong-passphrase error", err)
	}
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("a failed start must not remove an existing data dir: %v", err)
	}
	n2 := startNode(t, Config{DataDir: dir, Passphrase: []byte("correct horse")})
	if n2.ID() != id {
		t.Fatalf("peer id %s, want %s", n2.ID(), id)
	}
}

func TestFailedFirstStartLeavesNothing(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	dir := filepath.Join(t.TempDir(), "node")
	n, err := New(Config{DataDir: dir, API: busy.Addr().String(), Listen: []string{"/ip4/127.0.0.1/tcp/0"}})
	if err != nil {
		t.Fatal(err)
	}
	err = n.Start(context.Background())
	if err == nil || !strings.Contains(err.Error(), "port in use") {
		t.Fatalf("got %v, want a port-in-use error", err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("data dir left behind after a failed first start: %v", err)
	}
	if err := n.Close(); err != nil {
		t.Fatalf("Close after failed Start: %v", err)
	}
}

func TestCloseTwice(t *testing.T) {
	n := startNode(t, Config{API: "127.0.0.1:0"})
	if err := n.Close(); err != nil {
		t.Fatalf("first Close: %v", err)
	}
	if err := n.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestCloseLeaksNothing(t *testing.T) {
	before := goleak.IgnoreCurrent()
	n := startNode(t, Config{API: "127.0.0.1:0", Bootstrap: []string{"/ip4/127.0.0.1/tcp/9/p2p/12D3KooWBv6vZccfxqaiJgMwAzQFNxg6EeK6BxfAuVXGhGzSMu2y"}})
	if err := n.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	goleak.VerifyNone(t, append(leakIgnores(), before)...)
}
