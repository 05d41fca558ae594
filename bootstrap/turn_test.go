package bootstrap

import (
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	pturn "github.com/pion/turn/v5"

	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/protocols/pionlog"
	"github.com/kinmesh/kinmesh/protocols/turn"
)

func TestTURNConfig(t *testing.T) {
	path := filepath.Join(t.TempDir(), "relay.toml")
	os.WriteFile(path, []byte(`
data = "/var/lib/kinmesh"
turn_listen = "0.0.0.0:3479"
turn_public_ip = "198.51.100.7"
turn_no_tcp = true
turn_threads = 2
turn_relay_port_min = 50000
turn_relay_port_max = 50999
turn_credential_ttl = "20m"
turn_account_allocations = 4
turn_account_bandwidth = 100000
turn_max_allocations = 99
turn_peer_allocations = 3
turn_peer_bandwidth = 50000
turn_ip_allocations = 30
turn_ip_bandwidth = 400000
turn_allow_peers = ["127.0.0.0/8", "198.18.0.0/15", "192.0.2.1"]
`), 0o600)
	c, err := LoadConfigFile(path)
	if err != nil {
		t.Fatalf("LoadConfigFile: %v", err)
	}
	if c.TURNListen != "0.0.0.0:3479" || c.TURNPublicIP != "198.51.100.7" || !c.TURNNoTCP || c.TURNThreads != 2 ||
		c.TURNRelayPortMin != 50000 || c.TURNRelayPortMax != 50999 || time.Duration(c.TURNCredentialTTL) != 20*time.Minute ||
		c.TURNAccountAllocations != 4 || c.TURNAccountBandwidth != 100000 || c.TURNMaxAllocations != 99 ||
		c.TURNPeerAllocations != 3 || c.TURNPeerBandwidth != 50000 || c.TURNIPAllocations != 30 || c.TURNIPBandwidth != 400000 ||
		strings.Join(c.TURNAllowPeers, " ") != "127.0.0.0/8 198.18.0.0/15 192.0.2.1" {
		t.Fatalf("TURN settings not read: %+v", c)
	}

	for _, tt := range []struct {
		name             string
		listen, announce []string
		wantListen       string
		wantPublic       string
	}{
		{"tests: loopback, port 0", []string{"/ip4/127.0.0.1/tcp/0"}, nil, "127.0.0.1:0", "127.0.0.1"},
		{"a public listen address", []string{"/ip4/198.51.100.7/tcp/4001"}, nil, "198.51.100.7:3478", "198.51.100.7"},
		{"behind a port forward", []string{"/ip4/0.0.0.0/tcp/4001"}, []string{"/ip4/203.0.113.9/tcp/4001"}, "0.0.0.0:3478", "203.0.113.9"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d := Config{DataDir: "x", Listen: tt.listen, Announce: tt.announce}
			if err := d.applyDefaults(); err != nil {
				t.Fatal(err)
			}
			if d.TURNListen != tt.wantListen || d.TURNPublicIP != tt.wantPublic {
				t.Fatalf("listen %q public %q, want %q %q", d.TURNListen, d.TURNPublicIP, tt.wantListen, tt.wantPublic)
			}
			if d.TURNAccountAllocations != turn.DefaultAccountAllocations || d.TURNAccountBandwidth != turn.DefaultAccountBandwidth ||
				d.TURNPeerAllocations != turn.DefaultPeerAllocations || d.TURNPeerBandwidth != turn.DefaultPeerBandwidth ||
				d.TURNIPAllocations != turn.DefaultIPAllocations || d.TURNIPBandwidth != turn.DefaultIPBandwidth || len(d.TURNAllowPeers) != 0 ||
				d.TURNMaxAllocations != turn.DefaultMaxAllocations || time.Duration(d.TURNCredentialTTL) != turn.DefaultCredentialTTL {
				t.Fatalf("defaults not applied: %+v", d)
			}
		})
	}
	for _, bad := range []Config{
		{DataDir: "x", TURNRelayPortMin: 6000, TURNRelayPortMax: 5000},
		{DataDir: "x", TURNListen: "nowhere"},
		{DataDir: "x", TURNPublicIP: "0.0.0.0"},
		{DataDir: "x", TURNAccountAllocations: -1},
		{DataDir: "x", TURNPeerAllocations: -1},
		{DataDir: "x", TURNIPBandwidth: -1},
		{DataDir: "x", TURNAllowPeers: []string{"localhost"}},
	} {
		if _, err := New(bad); !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "turn_") {
			t.Errorf("%+v: got %v, want ErrConfig naming the turn setting", bad, err)
		}
	}
}

// turnRelay starts a relay and returns it with credentials it issued over
// libp2p to a new account.
func turnRelay(t *testing.T, cfg Config) (*Relay, turn.Credentials) {
	t.Helper()
	cfg.HTTP = "127.0.0.1:0"
	r := startRelay(t, cfg)
	if r.TURN() == nil {
		t.Fatal("the relay runs no TURN server")
	}
	h := clientHost(t, r)
	id, err := e2ee.NewIdentity(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	c, err := turn.NewClient(h, id)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cr, err := c.Credentials(ctx, r.ID())
	if err != nil {
		t.Fatalf("Credentials: %v", err)
	}
	return r, cr
}

// allocate makes a TURN allocation on the relay's UDP port.
func allocate(t *testing.T, r *Relay, user, pass string) (net.PacketConn, error) {
	t.Helper()
	_, relay, err := allocateWith(t, r, user, pass)
	return relay, err
}

// allocateWith is allocate, also returning the TURN client.
func allocateWith(t *testing.T, r *Relay, user, pass string) (*pturn.Client, net.PacketConn, error) {
	t.Helper()
	conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := r.TURN().UDPAddr().String()
	c, err := pturn.NewClient(&pturn.ClientConfig{
		STUNServerAddr: addr, TURNServerAddr: addr, Conn: conn, Username: user, Password: pass,
		Realm: turn.Realm, RTO: 200 * time.Millisecond, LoggerFactory: pionlog.Factory(nil),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Listen(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		_ = conn.Close()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	relay, err := c.AllocateWithContext(ctx)
	if err == nil {
		t.Cleanup(func() { _ = relay.Close() }) // before the client's: ends its refresh timers
	}
	return c, relay, err
}

func metricsText(t *testing.T, r *Relay) string {
	t.Helper()
	resp, err := http.Get("http://" + r.HTTPAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// wantMetrics fails for each of wants that r's /metrics lacks.
func wantMetrics(t *testing.T, r *Relay, wants ...string) {
	t.Helper()
	body := metricsText(t, r)
	http.DefaultClient.CloseIdleConnections()
	for _, want := range wants {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

// metric returns the value of the sample whose line starts with name.
func metric(t *testing.T, text, name string) float64 {
	t.Helper()
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, name+" ") {
			v, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimPrefix(line, name)), 64)
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
	}
	return -1
}

// TestTURNRelayQuota: the relay's TURN takes credentials it issued over
// libp2p, refuses bad ones, holds the account's allocation cap, and
// counts it all on /metrics.
func TestTURNRelayQuota(t *testing.T) {
	r, cr := turnRelay(t, Config{TURNAccountAllocations: 2})
	for i := range 2 {
		if _, err := allocate(t, r, cr.Username, cr.Password); err != nil {
			t.Fatalf("allocation %d: %v", i, err)
		}
	}
	for range 3 {
		if _, err := allocate(t, r, cr.Username, cr.Password); err == nil {
			t.Fatal("an allocation beyond the account's cap succeeded")
		}
	}
	if _, err := allocate(t, r, cr.Username, "bm90IHRoZSBwYXNzd29yZA=="); err == nil {
		t.Fatal("an allocation with a wrong password succeeded")
	}
	m := metricsText(t, r)
	for name, want := range map[string]float64{
		`kinmesh_turn_allocations`:                                       2,
		`kinmesh_turn_accounts`:                                          1,
		`kinmesh_turn_allocation_requests_total{result="opened"}`:        2,
		`kinmesh_turn_allocation_requests_total{result="account_quota"}`: 3,
		`kinmesh_turn_credentials_total{result="ok"}`:                    1,
		`kinmesh_turn_account_allocations_limit`:                         2,
		`kinmesh_turn_account_bandwidth_limit_bytes`:                     float64(turn.DefaultAccountBandwidth),
		`kinmesh_turn_allocations_limit`:                                 float64(turn.DefaultMaxAllocations),
	} {
		if got := metric(t, m, name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	if got := metric(t, m, `kinmesh_turn_auth_total{result="bad_password"}`); got < 1 {
		t.Errorf("bad passwords counted %v, want at least 1", got)
	}
}

// TestTURNRelayBandwidthCap: an account relaying faster than its cap
// has the excess dropped, and /metrics counts both.
func TestTURNRelayBandwidthCap(t *testing.T) {
	r, cr := turnRelay(t, Config{TURNAccountBandwidth: 10_000, TURNAllowPeers: []string{"127.0.0.0/8"}})
	relay, err := allocate(t, r, cr.Username, cr.Password)
	if err != nil {
		t.Fatal(err)
	}
	peer, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	pkt := make([]byte, 1000)
	for range 50 { // 50 kB at once against 10 kB/s
		if _, err := relay.WriteTo(pkt, peer.LocalAddr()); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var m string
	for {
		m = metricsText(t, r)
		sent := metric(t, m, `kinmesh_turn_relayed_bytes_total{direction="to_peer"}`) + metric(t, m, `kinmesh_turn_dropped_bytes_total{direction="to_peer"}`)
		if sent >= 50_000 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("relayed + dropped %v bytes, want all 50,000 counted:\n%s", sent, m)
		}
		<-tick.C
	}
	relayed, dropped := metric(t, m, `kinmesh_turn_relayed_bytes_total{direction="to_peer"}`), metric(t, m, `kinmesh_turn_dropped_bytes_total{direction="to_peer"}`)
	if relayed > 12_000 || dropped < 38_000 {
		t.Errorf("/metrics: relayed %v, dropped %v bytes: want at most ~10 kB through", relayed, dropped)
	}
	if got := metric(t, m, `kinmesh_turn_account_bandwidth_limit_bytes`); got != 10_000 {
		t.Errorf("kinmesh_turn_account_bandwidth_limit_bytes = %v, want 10000", got)
	}
}

var uclientTotals = regexp.MustCompile(`tot_send_msgs=(\d+).*tot_recv_msgs=(\d+)|Total lost packets (\d+)`)

// TestTURNRelayCoturn: coturn's client (turnutils_uclient, a TURN client
// nobody here wrote; .ci/run installs coturn) relays through the relay's
// TURN with credentials issued over libp2p, over UDP and TCP.
func TestTURNRelayCoturn(t *testing.T) {
	bin, err := exec.LookPath("turnutils_uclient")
	if err != nil {
		t.Skip("turnutils_uclient not found: apt-get install -y coturn (the CI installs it)")
	}
	r, cr := turnRelay(t, Config{})
	udp := r.TURN().UDPAddr()
	for _, tcp := range []bool{false, true} {
		args := []string{"-c", "-y", "-m", "2", "-n", "10", "-u", cr.Username, "-w", cr.Password, "-p", strconv.Itoa(int(udp.Port()))}
		if tcp {
			args = append([]string{"-t"}, args...)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		out, err := exec.CommandContext(ctx, bin, append(args, udp.Addr().String())...).CombinedOutput()
		cancel()
		if err != nil {
			t.Fatalf("turnutils_uclient (tcp %v): %v\n%s", tcp, err, out)
		}
		sent, recv, lost := -1, -1, -1
		for _, m := range uclientTotals.FindAllStringSubmatch(string(out), -1) {
			if m[1] != "" {
				sent, _ = strconv.Atoi(m[1])
				recv, _ = strconv.Atoi(m[2])
			} else {
				lost, _ = strconv.Atoi(m[3])
			}
		}
		if sent < 20 || recv < 20 || lost != 0 {
			t.Fatalf("uclient (tcp %v): sent %d, received %d, lost %d:\n%s", tcp, sent, recv, lost, out)
		}
	}
	m := metricsText(t, r)
	if got := metric(t, m, `kinmesh_turn_relayed_packets_total{direction="to_peer"}`); got < 40 {
		t.Errorf("relayed packets to peers %v, want at least 40", got)
	}
}

// turnClient makes an allocation on the relay's UDP port and returns the
// pion client holding it.
func turnClient(t *testing.T, r *Relay, cr turn.Credentials) *pturn.Client {
	t.Helper()
	c, _, err := allocateWith(t, r, cr.Username, cr.Password)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestTURNRelayPeerPolicy: by default the relay's TURN server grants no
// permission for a private address (nothing is sent: the permission is
// all that is asked), and counts the refusal on /metrics;
// turn_allow_peers lets the operator allow a range.
func TestTURNRelayPeerPolicy(t *testing.T) {
	private := &net.UDPAddr{IP: net.ParseIP("10.0.0.5"), Port: 9}
	for _, tt := range []struct {
		name  string
		allow []string
		ok    bool
	}{
		{"default", nil, false},
		{"turn_allow_peers", []string{"10.0.0.0/8"}, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r, cr := turnRelay(t, Config{TURNAllowPeers: tt.allow})
			err := turnClient(t, r, cr).CreatePermission(private)
			if (err == nil) != tt.ok {
				t.Fatalf("permission for %v: got %v, want granted %v", private, err, tt.ok)
			}
			refused := metric(t, metricsText(t, r), "kinmesh_turn_peer_refused_total")
			if want := map[bool]float64{true: 0, false: 1}[tt.ok]; refused != want {
				t.Errorf("kinmesh_turn_peer_refused_total = %v, want %v", refused, want)
			}
		})
	}
}

// TestTURNRelayPeerQuota: turn_peer_allocations caps what one device's
// credentials hold, below its account's cap, and /metrics says why.
func TestTURNRelayPeerQuota(t *testing.T) {
	r, cr := turnRelay(t, Config{TURNAccountAllocations: 4, TURNPeerAllocations: 1})
	if _, err := allocate(t, r, cr.Username, cr.Password); err != nil {
		t.Fatal(err)
	}
	if _, err := allocate(t, r, cr.Username, cr.Password); err == nil {
		t.Fatal("an allocation beyond the peer's cap succeeded")
	}
	if got := metric(t, metricsText(t, r), `kinmesh_turn_allocation_requests_total{result="peer_quota"}`); got != 1 {
		t.Errorf(`allocation_requests_total{result="peer_quota"} = %v, want 1`, got)
	}
}
