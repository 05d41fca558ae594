package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// binary is the kinmesh binary built once for the process tests.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "kinmesh-bin-")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "kinmesh")
	out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput()
	if err != nil {
		os.Stderr.Write(out)
		panic("build kinmesh: " + err.Error())
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// proc is a kinmesh process under test.
type proc struct {
	cmd    *exec.Cmd
	lines  chan string
	stderr *bytes.Buffer
	done   chan error
}

func startProc(t *testing.T, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(binary, args...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, lines: make(chan string, 100), stderr: &bytes.Buffer{}, done: make(chan error, 1)}
	cmd.Stderr = p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
	}()
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.done
	})
	return p
}

// await reads stdout lines until one matches re, returning the submatch.
func (p *proc) await(t *testing.T, re *regexp.Regexp) string {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case l, ok := <-p.lines:
			if !ok {
				t.Fatalf("process exited before printing %v; stderr:\n%s", re, p.stderr)
			}
			if m := re.FindStringSubmatch(l); m != nil {
				return m[1]
			}
		case <-timeout:
			t.Fatalf("no line matching %v; stderr:\n%s", re, p.stderr)
		}
	}
}

// stop sends SIGTERM and expects a clean exit.
func (p *proc) stop(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-p.done:
		p.done <- err
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v; stderr:\n%s", err, p.stderr)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no exit within 20s of SIGTERM")
	}
}

func getJSON(t *testing.T, url, token string, out any) int {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("GET %s: %v in %q", url, err, b)
		}
	}
	return resp.StatusCode
}

// TestRelayAndDaemonProcesses runs a relay and a device daemon from the
// built binary, as an operator and a user would.
func TestRelayAndDaemonProcesses(t *testing.T) {
	dir := t.TempDir()
	relay := startProc(t, "relay", "--data", filepath.Join(dir, "relay"),
		"--listen", "/ip4/127.0.0.1/tcp/0", "--listen", "/ip4/127.0.0.1/udp/0/quic-v1", "--http", "127.0.0.1:0")
	ops := relay.await(t, regexp.MustCompile(`ops endpoint http://(\S+)/healthz`))

	var health struct {
		PeerID string   `json:"peer_id"`
		Addrs  []string `json:"addrs"`
		Counts map[string]int
	}
	if code := getJSON(t, "http://"+ops+"/healthz", "", &health); code != 200 {
		t.Fatalf("/healthz: %d", code)
	}
	if health.PeerID == "" || len(health.Addrs) < 2 || health.Counts == nil {
		t.Fatalf("/healthz = %+v", health)
	}

	data := filepath.Join(dir, "node")
	args := []string{"node", "--data", data, "--api", "127.0.0.1:0", "--listen", "/ip4/127.0.0.1/tcp/0"}
	for _, a := range health.Addrs {
		args = append(args, "--bootstrap", a)
	}
	daemon := startProc(t, args...)
	api := daemon.await(t, regexp.MustCompile(`local API http://(\S+) `))
	tok, err := os.ReadFile(filepath.Join(data, "api.token"))
	if err != nil {
		t.Fatal(err)
	}
	token := strings.TrimSpace(string(tok))

	var e struct{ Error struct{ Code string } }
	if code := getJSON(t, "http://"+api+"/v1/node", "", &e); code != 401 || e.Error.Code != "unauthorized" {
		t.Fatalf("/v1/node without token: %d %+v, want 401 unauthorized", code, e)
	}
	// The daemon reserves a slot on the relay; wait for it, reading the
	// relay's own count.
	deadline := time.Now().Add(30 * time.Second)
	for {
		var st struct {
			PeerID string `json:"peer_id"`
			Relays []struct {
				PeerID    string `json:"peer_id"`
				Connected bool   `json:"connected"`
				Reserved  bool   `json:"reserved"`
			}
		}
		if code := getJSON(t, "http://"+api+"/v1/node", token, &st); code != 200 {
			t.Fatalf("/v1/node with token: %d", code)
		}
		if len(st.Relays) != 1 || st.Relays[0].PeerID != health.PeerID {
			t.Fatalf("/v1/node relays = %+v, want the one relay", st.Relays)
		}
		if st.Relays[0].Connected && st.Relays[0].Reserved {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("daemon never reserved a slot on the relay: %+v", st)
		}
		waitBriefly(ops)
	}

	var out bytes.Buffer
	if code := run(context.Background(), []string{"status", "--data", data}, &out, io.Discard); code != 0 || !strings.Contains(out.String(), "connected, reserved") {
		t.Fatalf("kinmesh status: exit %d, output:\n%s", code, out.String())
	}

	daemon.stop(t)
	if _, err := os.Stat(filepath.Join(data, "api.addr")); !os.IsNotExist(err) {
		t.Fatalf("api.addr left after shutdown: %v", err)
	}
	relay.stop(t)
}

// waitBriefly blocks on one round trip to the relay's ops endpoint: a
// condition-paced wait that yields to the processes without a fixed sleep.
func waitBriefly(ops string) {
	resp, err := http.Get("http://" + ops + "/healthz")
	if err == nil {
		resp.Body.Close()
	}
}

func TestBadInvocations(t *testing.T) {
	dir := t.TempDir()
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	readonly := filepath.Join(dir, "ro")
	os.Mkdir(readonly, 0o500)
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no command", nil, 2, ""},
		{"unknown command", []string{"frobnicate"}, 2, "unknown command"},
		{"unknown flag", []string{"relay", "--frob"}, 2, "flag provided but not defined"},
		{"extra argument", []string{"version", "extra"}, 2, "unexpected argument"},
		{"relay without data", []string{"relay", "--http", ""}, 1, "no data directory"},
		{"node without data", []string{"node"}, 1, "no data directory"},
		{"malformed listen", []string{"relay", "--data", filepath.Join(dir, "r1"), "--listen", "tcp/4001"}, 1, "listen address"},
		{"malformed bootstrap", []string{"node", "--data", filepath.Join(dir, "n1"), "--bootstrap", "/ip4/127.0.0.1/tcp/1"}, 1, "/p2p/<peer id>"},
		{"api not loopback", []string{"node", "--data", filepath.Join(dir, "n2"), "--api", "0.0.0.0:0"}, 1, "not on loopback"},
		{"api port in use", []string{"node", "--data", filepath.Join(dir, "n3"), "--api", busy.Addr().String(), "--listen", "/ip4/127.0.0.1/tcp/0"}, 1, "port in use"},
		{"ops port in use", []string{"relay", "--data", filepath.Join(dir, "r2"), "--http", busy.Addr().String(), "--listen", "/ip4/127.0.0.1/tcp/0"}, 1, "port in use"},
		{"bad log level", []string{"node", "--log-level", "loud"}, 2, "--log-level"},
		{"status without daemon", []string{"status", "--data", filepath.Join(dir, "none")}, 1, "no running daemon"},
		{"relay config missing", []string{"relay", "--config", filepath.Join(dir, "nope.toml")}, 1, "nope.toml"},
	}
	if os.Geteuid() != 0 { // root writes anywhere
		tests = append(tests, struct {
			name string
			args []string
			code int
			want string
		}{"unwritable data dir", []string{"node", "--data", filepath.Join(readonly, "n"), "--api", "127.0.0.1:0"}, 1, "permission denied"})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(context.Background(), tt.args, &stdout, &stderr)
			if code != tt.code {
				t.Fatalf("exit %d, want %d; stderr: %s", code, tt.code, stderr.String())
			}
			if tt.want == "" {
				return
			}
			msg := stderr.String()
			if strings.Count(strings.TrimSpace(msg), "\n") != 0 || !strings.Contains(msg, tt.want) {
				t.Fatalf("stderr %q, want one line mentioning %q", msg, tt.want)
			}
		})
	}
	for _, d := range []string{"r1", "r2", "n1", "n2", "n3"} {
		if _, err := os.Stat(filepath.Join(dir, d)); !os.IsNotExist(err) {
			t.Errorf("failed start left %s behind", d)
		}
	}
}

func TestHelp(t *testing.T) {
	for _, c := range commands() {
		var out bytes.Buffer
		if code := run(context.Background(), []string{c.name, "--help"}, &out, io.Discard); code != 0 {
			t.Errorf("%s --help: exit %d", c.name, code)
		}
		if !strings.Contains(out.String(), "Usage: kinmesh "+c.name) {
			t.Errorf("%s --help lacks a usage line:\n%s", c.name, out.String())
		}
	}
}
