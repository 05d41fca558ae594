package bootstrap

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, leakIgnores()...)
}

func leakIgnores() []goleak.Option {
	return []goleak.Option{
		goleak.IgnoreTopFunction("github.com/ipfs/go-log/v2/writer.(*MirrorWriter).logRoutine"),
		goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"),
	}
}

func startRelay(t *testing.T, cfg Config) *Relay {
	t.Helper()
	if cfg.DataDir == "" {
		cfg.DataDir = filepath.Join(t.TempDir(), "relay")
	}
	if cfg.Listen == nil {
		cfg.Listen = []string{"/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1"}
	}
	r, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := r.Start(ctx); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

// clientHost starts a libp2p host on loopback that knows r's addresses,
// closed when the test ends.
func clientHost(t *testing.T, r *Relay) host.Host {
	t.Helper()
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableMetrics())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Close() })
	h.Peerstore().AddAddrs(r.ID(), r.AddrInfo().Addrs, peerstore.PermanentAddrTTL)
	return h
}

func TestConfigFile(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "relay.toml")
	os.WriteFile(good, []byte(`
data = "/var/lib/kinmesh"
listen = ["/ip4/0.0.0.0/tcp/4001"]
http = "127.0.0.1:9090"
circuit_duration = "90s"
max_reservations_per_ip = 4
`), 0o600)
	c, err := LoadConfigFile(good)
	if err != nil {
		t.Fatalf("LoadConfigFile: %v", err)
	}
	if c.DataDir != "/var/lib/kinmesh" || c.HTTP != "127.0.0.1:9090" || time.Duration(c.CircuitDuration) != 90*time.Second || c.MaxReservationsPerIP != 4 {
		t.Fatalf("got %+v", c)
	}
	env := map[string]string{"KINMESH_RELAY_HTTP": "127.0.0.1:9191", "KINMESH_RELAY_LISTEN": "/ip4/0.0.0.0/tcp/1, /ip4/0.0.0.0/tcp/2"}
	if err := c.ApplyEnv(func(k string) string { return env[k] }); err != nil {
		t.Fatal(err)
	}
	if c.HTTP != "127.0.0.1:9191" || len(c.Listen) != 2 || c.Listen[1] != "/ip4/0.0.0.0/tcp/2" {
		t.Fatalf("env not applied: %+v", c)
	}

	typo := filepath.Join(dir, "typo.toml")
	os.WriteFile(typo, []byte("datadir = \"/x\"\n"), 0o600)
	if _, err := LoadConfigFile(typo); !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "datadir") {
		t.Fatalf("unknown key: got %v, want ErrConfig naming it", err)
	}
	if _, err := LoadConfigFile(filepath.Join(dir, "missing.toml")); !errors.Is(err, ErrConfig) {
		t.Fatalf("missing file: got %v, want ErrConfig", err)
	}
}

func TestNewErrors(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"no data dir", Config{}, "no data directory"},
		{"bad listen", Config{DataDir: "x", Listen: []string{"0.0.0.0:4001"}}, "listen address"},
		{"bad bootstrap", Config{DataDir: "x", Bootstrap: []string{"/ip4/127.0.0.1/tcp/1"}}, "/p2p/<peer id>"},
		{"negative limit", Config{DataDir: "x", MaxCircuits: -1}, "max_circuits"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.cfg)
			if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want ErrConfig mentioning %q", err, tt.want)
			}
		})
	}
}

func TestOpsEndpoint(t *testing.T) {
	r := startRelay(t, Config{HTTP: "127.0.0.1:0"})
	get := func(path string) (*http.Response, []byte) {
		resp, err := http.Get("http://" + r.HTTPAddr() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, b
	}
	resp, body := get("/healthz")
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("healthz: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	var h Health
	if err := json.Unmarshal(body, &h); err != nil {
		t.Fatal(err)
	}
	if h.PeerID != r.ID().String() || len(h.Addrs) == 0 {
		t.Fatalf("healthz %+v, want peer id %s and addrs", h, r.ID())
	}
	for _, a := range h.Addrs {
		if !strings.HasSuffix(a, "/p2p/"+h.PeerID) {
			t.Fatalf("addr %s does not end in /p2p/<peer_id>", a)
		}
	}
	resp, body = get("/metrics")
	if resp.StatusCode != 200 {
		t.Fatalf("metrics: %d", resp.StatusCode)
	}
	for _, want := range []string{"kinmesh_relay_reservations", "kinmesh_relay_circuits", "go_goroutines", "libp2p_"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	http.DefaultClient.CloseIdleConnections()
}

func TestPortInUse(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	dir := filepath.Join(t.TempDir(), "relay")
	r, err := New(Config{DataDir: dir, Listen: []string{"/ip4/127.0.0.1/tcp/0"}, HTTP: busy.Addr().String()})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Start(context.Background()); err == nil || !strings.Contains(err.Error(), "port in use") {
		t.Fatalf("got %v, want a port-in-use error", err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("data dir left behind after a failed first start: %v", err)
	}
}

func TestRestartKeepsPeerID(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "relay")
	r := startRelay(t, Config{DataDir: dir})
	id := r.ID()
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if got := startRelay(t, Config{DataDir: dir}).ID(); got != id {
		t.Fatalf("peer id %s after restart, want %s", got, id)
	}
}

func TestFellowRelaysConnect(t *testing.T) {
	a := startRelay(t, Config{})
	b := startRelay(t, Config{Bootstrap: a.Addrs()})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		changed := b.keeper.Changed()
		if b.Health().Counts.Relays == 1 {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatal("relay b never connected to relay a")
		case <-changed:
		}
	}
}

func TestShutdownLeaksNothing(t *testing.T) {
	before := goleak.IgnoreCurrent()
	r := startRelay(t, Config{HTTP: "127.0.0.1:0"})
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	goleak.VerifyNone(t, append(leakIgnores(), before)...)
}
