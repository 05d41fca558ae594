package testnet

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kinmesh/kinmesh/node"
	"github.com/kinmesh/kinmesh/protocols/message"
)

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// kinmeshBinary builds cmd/kinmesh once per test process.
func kinmeshBinary(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "kinmesh-testnet-bin-")
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "kinmesh")
		out, err := exec.Command("go", "build", "-o", binPath, "github.com/kinmesh/kinmesh/cmd/kinmesh").CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// procRelay is a relay running as its own process, so a test can SIGKILL it.
type procRelay struct {
	cmd   *exec.Cmd
	addrs []string
	done  chan struct{}
}

var addrLine = regexp.MustCompile(`listening on (\S+)`)

func startProcRelay(t *testing.T, dir string) *procRelay {
	t.Helper()
	cmd := exec.Command(kinmeshBinary(t), "relay", "--data", dir, "--http", "",
		"--listen", "/ip4/127.0.0.1/tcp/0", "--log-level", "warn")
	cmd.Env = append(os.Environ(), "KINMESH_RELAY_MAX_RESERVATIONS_PER_IP=64")
	// Killed with the test process too, should it die before its cleanup.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r := &procRelay{cmd: cmd, done: make(chan struct{})}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if m := addrLine.FindStringSubmatch(sc.Text()); m != nil {
				r.addrs = append(r.addrs, m[1])
				if len(r.addrs) == 1 {
					close(ready)
				}
			}
		}
	}()
	go func() { _ = cmd.Wait(); close(r.done) }()
	t.Cleanup(r.kill)
	select {
	case <-ready:
	case <-r.done:
		t.Fatal("relay process exited before listening")
	case <-time.After(30 * time.Second):
		t.Fatal("relay process did not start")
	}
	return r
}

func (r *procRelay) kill() {
	_ = r.cmd.Process.Kill()
	<-r.done
}

// TestBurstSurvivesRelaySIGKILL: while the recipient is offline, a burst
// of 1,000 messages goes to its three home relays; one relay is SIGKILLed
// in the middle. The recipient comes back and gets all 1,000 exactly once,
// in order, from the two survivors; the sender sees every one delivered.
func TestBurstSurvivesRelaySIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs relay processes")
	}
	dir := t.TempDir()
	var relays []*procRelay
	var boot []string
	for i := range 3 {
		r := startProcRelay(t, filepath.Join(dir, fmt.Sprintf("relay-%d", i+1)))
		relays = append(relays, r)
		boot = append(boot, r.addrs...)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	var devs []*Device
	for _, name := range []string{"sender", "recipient"} {
		d := &Device{Name: name, Dir: filepath.Join(dir, name)}
		d.cfg = node.Config{DataDir: d.Dir, Listen: []string{"/ip4/127.0.0.1/tcp/0"}, Bootstrap: boot, RetryMin: 100 * time.Millisecond}
		if os.Getenv("KINMESH_TEST_DEBUG") != "" {
			d.cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("dev", name)
		}
		if err := d.Start(ctx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = d.Stop() })
		if err := d.Node().WaitRelays(ctx, 3); err != nil {
			t.Fatal(err)
		}
		if _, err := d.CreateAccount(ctx, name); err != nil {
			t.Fatal(err)
		}
		devs = append(devs, d)
	}
	a, b := devs[0], devs[1]
	if err := Introduce(ctx, a, b); err != nil {
		t.Fatal(err)
	}
	bID := b.AccountID()
	if err := b.Stop(); err != nil {
		t.Fatal(err)
	}
	const total = 1000
	start := time.Now()
	for i := range total {
		if i == total/3 {
			relays[1].kill() // SIGKILL, mid-burst
		}
		if _, err := a.Node().Send(ctx, bID, fmt.Sprintf("burst %04d", i)); err != nil {
			t.Fatalf("Send %d: %v", i, err)
		}
	}
	// Everything is held by the two surviving relays before b returns.
	if ms, err := WaitMessages(ctx, a, bID, func(ms []message.Message) bool {
		for _, m := range ms {
			if m.State != message.StateQueued || m.Queued < 2 {
				return false
			}
		}
		return len(ms) == total
	}); err != nil {
		states := map[string]int{}
		for _, m := range ms {
			states[fmt.Sprintf("%s/%d", m.State, m.Queued)]++
		}
		t.Fatalf("sender's states %v: %v", states, err)
	}
	t.Logf("burst queued on the survivors after %s", time.Since(start))
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	got, err := WaitMessages(ctx, b, a.AccountID(), func(ms []message.Message) bool { return len(ms) >= total })
	if err != nil {
		t.Fatalf("recipient has %d of %d: %v", len(got), total, err)
	}
	seen := map[string]bool{}
	for i, m := range got {
		if want := fmt.Sprintf("burst %04d", i); m.Text != want {
			t.Fatalf("message %d is %q, want %q", i, m.Text, want)
		}
		if seen[m.ID] {
			t.Fatalf("message %s twice", m.ID)
		}
		seen[m.ID] = true
	}
	if len(got) != total {
		t.Fatalf("recipient has %d messages, want exactly %d", len(got), total)
	}
	t.Logf("all received after %s", time.Since(start))
	if ms, err := WaitMessages(ctx, a, bID, func(ms []message.Message) bool {
		for _, m := range ms {
			if m.State != message.StateDelivered {
				return false
			}
		}
		return true
	}); err != nil {
		states := map[message.State]int{}
		for _, m := range ms {
			states[m.State]++
		}
		t.Fatalf("sender's states %v: %v", states, err)
	}
	t.Logf("all delivered after %s", time.Since(start))
	if !strings.Contains(fmt.Sprint(relays[1].cmd.ProcessState), "killed") {
		t.Fatalf("relay 2 was not SIGKILLed: %v", relays[1].cmd.ProcessState)
	}
}
