package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kinmesh/kinmesh/bootstrap"
	"github.com/kinmesh/kinmesh/node"
)

// BenchmarkIdleNode runs three subjects side by side, each its own process,
// connected to the same 3 relays (in this process) for KINMESH_BENCH_IDLE
// (default 60s):
//
//   - node: the `kinmesh node` daemon, built from ./cmd/kinmesh now, the
//     way `make build` builds it: what users run;
//   - raw: the baseline, testdata/rawhost built now, a plain go-libp2p host
//     with kinmesh's transports holding a reservation on each relay, in a
//     binary with go-libp2p and little else;
//   - lib: the node package running in this test binary (an app embedding
//     the node), only for what the daemon can't report: heap and
//     goroutines.
//
// Once every subject holds its reservations, the idle window starts; the
// figures are read from /proc at its end (rss, anon, file, pss, ws: MB;
// cpu: % of one core over the window; wakeups: context switches per
// second; ws is the memory the process touched during the window, from
// smaps' Referenced after clear_refs). Ratios are node over raw. Run with
// -benchtime 1x.
func BenchmarkIdleNode(b *testing.B) {
	idle := 60 * time.Second
	if s := os.Getenv(idleEnv); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			b.Fatalf("%s=%q: %v", idleEnv, s, err)
		}
		idle = d
	}
	ctx, cancel := context.WithTimeout(context.Background(), idle+10*time.Minute)
	defer cancel()
	dir := b.TempDir()
	kinmesh := build(ctx, b, dir, "github.com/kinmesh/kinmesh/cmd/kinmesh")
	rawhost := build(ctx, b, dir, "./testdata/rawhost")
	const nRelays = 3
	relays := startRelays(ctx, b, dir, nRelays)
	b.ResetTimer()

	for i := range b.N {
		run := filepath.Join(dir, fmt.Sprint("run", i))
		subjects := []*subject{
			start(b, "node", kinmesh, append([]string{"node", "--data", filepath.Join(run, "node"), "--api", "127.0.0.1:0",
				"--listen", "/ip4/127.0.0.1/tcp/0", "--listen", "/ip4/127.0.0.1/udp/0/quic-v1"}, prefixEach("--bootstrap", relays)...), nil),
			start(b, "raw", rawhost, []string{"-relays", strings.Join(relays, ",")}, nil),
			start(b, "lib", os.Args[0], []string{"-test.run=^$"}, []string{childEnv + "=lib", relaysEnv + "=" + strings.Join(relays, ","), dataEnv + "=" + filepath.Join(run, "lib")}),
		}
		for _, s := range subjects {
			defer s.stop()
		}
		for _, s := range subjects {
			var err error
			if s.name == "node" {
				err = s.awaitDaemon(ctx, filepath.Join(run, "node"), nRelays)
			} else {
				_, err = s.await(ctx, "ready")
			}
			if err != nil {
				b.Fatalf("%s: %v", s.name, err)
			}
		}
		for _, s := range subjects {
			if err := s.begin(); err != nil {
				b.Fatalf("%s: %v", s.name, err)
			}
		}
		t := time.NewTimer(idle)
		select {
		case <-t.C:
		case <-ctx.Done():
			b.Fatal(ctx.Err())
		}
		got := map[string]footprint{}
		for _, s := range subjects {
			fp, err := s.end(ctx)
			if err != nil {
				b.Fatalf("%s: %v", s.name, err)
			}
			got[s.name] = fp
		}
		nd, raw, lib := got["node"], got["raw"], got["lib"]
		nd.HeapKiB, nd.Goroutines = lib.HeapKiB, lib.Goroutines
		report(b, nd, raw)
		b.Logf("idle %v\n%s", idle, table(map[string]footprint{"node": nd, "raw": raw, "lib": lib}))
	}
}

// footprint is one subject's figures over the idle window.
type footprint struct {
	RSSKiB, AnonKiB, FileKiB, PSSKiB, WSKiB int64
	CPUPercent                              float64
	Wakeups                                 float64 // context switches per second
	HeapKiB                                 int64   `json:"heap_kib"`   // in-use heap after a GC (lib, raw)
	Goroutines                              int     `json:"goroutines"` // (lib, raw)
}

func report(b *testing.B, nd, raw footprint) {
	mb := func(kib int64) float64 { return float64(kib) / 1024 }
	ratio := func(a, b float64) float64 {
		if b == 0 {
			return 0
		}
		return a / b
	}
	for _, m := range []struct {
		name string
		v    float64
	}{
		{"node-rss-MB", mb(nd.RSSKiB)}, {"node-anon-MB", mb(nd.AnonKiB)}, {"node-file-MB", mb(nd.FileKiB)},
		{"node-pss-MB", mb(nd.PSSKiB)}, {"node-ws-MB", mb(nd.WSKiB)}, {"node-heap-MB", mb(nd.HeapKiB)},
		{"node-goroutines", float64(nd.Goroutines)}, {"node-cpu-%", nd.CPUPercent}, {"node-wakeups/s", nd.Wakeups},
		{"raw-rss-MB", mb(raw.RSSKiB)}, {"raw-anon-MB", mb(raw.AnonKiB)}, {"raw-pss-MB", mb(raw.PSSKiB)},
		{"raw-cpu-%", raw.CPUPercent}, {"raw-wakeups/s", raw.Wakeups},
		{"rss-x-vs-raw", ratio(float64(nd.RSSKiB), float64(raw.RSSKiB))},
		{"anon-x-vs-raw", ratio(float64(nd.AnonKiB), float64(raw.AnonKiB))},
		{"pss-x-vs-raw", ratio(float64(nd.PSSKiB), float64(raw.PSSKiB))},
		{"ws-x-vs-raw", ratio(float64(nd.WSKiB), float64(raw.WSKiB))},
		{"heap-x-vs-raw", ratio(float64(nd.HeapKiB), float64(raw.HeapKiB))},
		{"goroutines-x-vs-raw", ratio(float64(nd.Goroutines), float64(raw.Goroutines))},
		{"wakeups-x-vs-raw", ratio(nd.Wakeups, raw.Wakeups)},
	} {
		b.ReportMetric(m.v, m.name)
	}
}

func table(fps map[string]footprint) string {
	var buf bytes.Buffer
	fmt.Fprintf(&buf, "%-5s %7s %7s %7s %7s %7s %7s %5s %6s %8s\n", "", "rss", "anon", "file", "pss", "ws", "heap", "gor", "cpu%", "wakeup/s")
	for _, name := range []string{"node", "raw", "lib"} {
		fp := fps[name]
		mb := func(kib int64) string { return fmt.Sprintf("%.1fMB", float64(kib)/1024) }
		fmt.Fprintf(&buf, "%-5s %7s %7s %7s %7s %7s %7s %5d %6.2f %8.1f\n", name,
			mb(fp.RSSKiB), mb(fp.AnonKiB), mb(fp.FileKiB), mb(fp.PSSKiB), mb(fp.WSKiB), mb(fp.HeapKiB), fp.Goroutines, fp.CPUPercent, fp.Wakeups)
	}
	return buf.String()
}

// build builds the main package pkg into dir as `make build` builds
// kinmesh (a static binary: CGO_ENABLED=0), and returns its path.
func build(ctx context.Context, b testing.TB, dir, pkg string) string {
	b.Helper()
	out := filepath.Join(dir, filepath.Base(pkg))
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if msg, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("go build %s: %v\n%s", pkg, err, msg)
	}
	return out
}

// startRelays starts n relays in this process, each keeping connected to
// the ones before it, and returns all their addresses.
func startRelays(ctx context.Context, b *testing.B, dir string, n int) []string {
	b.Helper()
	var addrs []string
	for i := range n {
		r, err := bootstrap.New(bootstrap.Config{
			DataDir:   filepath.Join(dir, fmt.Sprint("relay", i)),
			Listen:    []string{"/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1"},
			Bootstrap: addrs,
			Logger:    slog.New(slog.DiscardHandler),
			// Every subject dials from 127.0.0.1.
			MaxReservationsPerIP: 64,
		})
		if err != nil {
			b.Fatal(err)
		}
		if err := r.Start(ctx); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = r.Close() })
		addrs = append(addrs, r.Addrs()...)
	}
	return addrs
}

func prefixEach(flag string, vs []string) []string {
	var out []string
	for _, v := range vs {
		out = append(out, flag, v)
	}
	return out
}

// subject is one process under measurement.
type subject struct {
	name   string
	cmd    *exec.Cmd
	lines  chan string
	stderr *bytes.Buffer
	exited chan struct{} // closed when the process has exited; err is then set
	err    error
	t0     sample
}

func start(b *testing.B, name, bin string, args, env []string) *subject {
	b.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	s := &subject{name: name, cmd: cmd, lines: make(chan string, 16), stderr: &bytes.Buffer{}, exited: make(chan struct{})}
	cmd.Stderr = s.stderr
	if err := cmd.Start(); err != nil {
		b.Fatalf("%s: %v", name, err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			s.lines <- sc.Text()
		}
		close(s.lines)
	}()
	go func() {
		s.err = cmd.Wait()
		close(s.exited)
	}()
	return s
}

// await reads stdout until a line starting with prefix.
func (s *subject) await(ctx context.Context, prefix string) (string, error) {
	for {
		select {
		case l, ok := <-s.lines:
			if !ok { // stdout closed: the process is exiting
				<-s.exited
				return "", fmt.Errorf("exited (%v) before printing %q: %s", s.err, prefix, s.stderr.String())
			}
			if strings.HasPrefix(l, prefix) {
				return l, nil
			}
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
}

// awaitDaemon waits until the daemon's local API reports a reservation on
// each of its n relays.
func (s *subject) awaitDaemon(ctx context.Context, data string, n int) error {
	if _, err := s.await(ctx, "node "); err != nil {
		return err
	}
	addr, err := os.ReadFile(filepath.Join(data, node.AddrFile))
	if err != nil {
		return err
	}
	token, err := os.ReadFile(filepath.Join(data, node.TokenFile))
	if err != nil {
		return err
	}
	// No keep-alive: an idle API connection would sit in the daemon.
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		req, err := http.NewRequestWithContext(ctx, "GET", "http://"+strings.TrimSpace(string(addr))+"/v1/node", nil)
		if err != nil {
			return err
		}
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		var st struct {
			Relays []struct{ Reserved bool } `json:"relays"`
		}
		err = json.NewDecoder(resp.Body).Decode(&st)
		resp.Body.Close()
		if err != nil {
			return fmt.Errorf("GET /v1/node: %w", err)
		}
		reserved := 0
		for _, r := range st.Relays {
			if r.Reserved {
				reserved++
			}
		}
		if reserved == n {
			return nil
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return fmt.Errorf("%d of %d relays reserved: %w", reserved, n, ctx.Err())
		case <-s.exited:
			return fmt.Errorf("exited: %v: %s", s.err, s.stderr.String())
		}
	}
}

// begin starts the idle window: it takes the CPU and context-switch
// counts and clears the referenced bits of every page.
func (s *subject) begin() error {
	var err error
	if s.t0, err = takeSample(s.cmd.Process.Pid); err != nil {
		return err
	}
	return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", s.cmd.Process.Pid), []byte("1"), 0)
}

// end closes the idle window and reads the footprint; lib and raw then
// report heap and goroutines when sent SIGUSR1.
func (s *subject) end(ctx context.Context) (footprint, error) {
	pid := s.cmd.Process.Pid
	t1, err := takeSample(pid)
	if err != nil {
		return footprint{}, err
	}
	var fp footprint
	status, err := procFields(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return fp, err
	}
	rollup, err := procFields(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return fp, err
	}
	fp.RSSKiB, fp.AnonKiB, fp.FileKiB = status["VmRSS"], status["RssAnon"], status["RssFile"]+status["RssShmem"]
	fp.PSSKiB, fp.WSKiB = rollup["Pss"], rollup["Referenced"]
	secs := t1.at.Sub(s.t0.at).Seconds()
	fp.CPUPercent = 100 * float64(t1.ticks-s.t0.ticks) / clockTicks / secs
	fp.Wakeups = float64(t1.switches-s.t0.switches) / secs
	if s.name == "node" {
		return fp, nil
	}
	if err := s.cmd.Process.Signal(syscall.SIGUSR1); err != nil {
		return fp, err
	}
	l, err := s.await(ctx, "{")
	if err != nil {
		return fp, err
	}
	return fp, json.Unmarshal([]byte(l), &fp)
}

func (s *subject) stop() {
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(30 * time.Second)
	defer t.Stop()
	select {
	case <-s.exited:
	case <-t.C:
		_ = s.cmd.Process.Kill()
		<-s.exited
	}
}

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat
// (100 on every Linux architecture Go supports).
const clockTicks = 100

type sample struct {
	at       time.Time
	ticks    int64 // utime + stime, in clock ticks
	switches int64 // voluntary + involuntary context switches, all threads
}

func takeSample(pid int) (sample, error) {
	s := sample{at: time.Now()}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return s, err
	}
	// Fields after the command name, which is in parentheses.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 13 {
		return s, fmt.Errorf("short /proc/%d/stat", pid)
	}
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	s.ticks = utime + stime
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", pid))
	if err != nil {
		return s, err
	}
	for _, t := range tasks {
		st, err := procFields(t)
		if errors.Is(err, os.ErrNotExist) {
			continue // the thread exited
		}
		if err != nil {
			return s, err
		}
		s.switches += st["voluntary_ctxt_switches"] + st["nonvoluntary_ctxt_switches"]
	}
	return s, nil
}

// procFields reads "Name: value [kB]" lines.
func procFields(path string) (map[string]int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	out := map[string]int64{}
	for _, l := range strings.Split(string(b), "\n") {
		name, rest, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		if f := strings.Fields(rest); len(f) > 0 {
			if v, err := strconv.ParseInt(f[0], 10, 64); err == nil {
				out[name] = v
			}
		}
	}
	return out, nil
}

// The lib subject is this test binary run as a child process.
const (
	childEnv  = "KINMESH_BENCH_CHILD" // "lib"
	relaysEnv = "KINMESH_BENCH_RELAYS"
	dataEnv   = "KINMESH_BENCH_DATA"
	idleEnv   = "KINMESH_BENCH_IDLE" // idle window, default 60s
)

func TestMain(m *testing.M) {
	switch os.Getenv(childEnv) {
	case "":
		os.Exit(m.Run())
	case "lib":
		if err := runLib(os.Getenv(relaysEnv), os.Getenv(dataEnv), os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "bench lib:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
}

// runLib runs a node in this process, prints "ready" once it holds a
// reservation on every relay, reports heap and goroutines on SIGUSR1 and
// stops on SIGTERM.
func runLib(relays, dir string, stdout io.Writer) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	n, err := node.New(node.Config{DataDir: dir, Bootstrap: strings.Split(relays, ","),
		Listen: []string{"/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1"}})
	if err != nil {
		return err
	}
	if err := n.Start(ctx); err != nil {
		return err
	}
	defer n.Close()
	if err := n.WaitRelays(ctx, len(n.Status().Relays)); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "ready")
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-usr1:
			runtime.GC()
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			if err := json.NewEncoder(stdout).Encode(map[string]any{"heap_kib": ms.HeapInuse / 1024, "goroutines": runtime.NumGoroutine()}); err != nil {
				return err
			}
		}
	}
}
