package mailbox

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/kinmesh/kinmesh/protocols/netkit"
	"github.com/kinmesh/kinmesh/storage"
)

// childDirEnv makes the test binary run a relay on the store in that
// directory instead of the tests (see TestMain): the durability test
// starts it as a separate process so it can SIGKILL it.
const childDirEnv = "KINMESH_MAILBOX_TEST_RELAY_DIR"

// runChildRelay runs a relay host with the mailbox service on dir,
// prints "ADDR <multiaddr>" and serves until killed.
func runChildRelay(dir string) int {
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "child relay:", err)
		return 1
	}
	st, err := storage.Open(dir, storage.WithProfile(storage.ProfileRelay))
	if err != nil {
		return fail(err)
	}
	key, err := netkit.HostKey(context.Background(), st.Namespace("relay"))
	if err != nil {
		return fail(err)
	}
	h, err := libp2p.New(libp2p.Identity(key), netkit.Transports(), libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableMetrics())
	if err != nil {
		return fail(err)
	}
	if _, err := NewService(h, st); err != nil {
		return fail(err)
	}
	fmt.Printf("ADDR %s/p2p/%s\n", h.Addrs()[0], h.ID())
	select {} // until SIGKILL
}

// childRelay is a relay running in another process.
type childRelay struct {
	cmd  *exec.Cmd
	info peer.AddrInfo
}

func startChildRelay(t *testing.T, dir string) *childRelay {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childDirEnv+"="+dir)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &childRelay{cmd: cmd}
	t.Cleanup(c.kill)
	line := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if s, ok := strings.CutPrefix(sc.Text(), "ADDR "); ok {
				line <- s
				break
			}
		}
		close(line)
	}()
	var addr string
	select {
	case addr = <-line:
	case <-testCtx(t).Done():
		t.Fatal("child relay did not start in 30s")
	}
	if addr == "" {
		t.Fatal("child relay exited before printing its address")
	}
	info, err := peer.AddrInfoFromP2pAddr(ma.StringCast(addr))
	if err != nil {
		t.Fatalf("child address %q: %v", addr, err)
	}
	c.info = *info
	return c
}

// kill sends SIGKILL: no shutdown code runs in the child.
func (c *childRelay) kill() {
	if c.cmd.ProcessState == nil {
		_ = c.cmd.Process.Kill()
		_ = c.cmd.Wait()
	}
}

// TestDepositSurvivesSIGKILL: an acknowledged deposit is on disk. The relay
// process is killed right after the ack, with no chance to flush anything,
// and the restarted relay still has the envelope.
func TestDepositSurvivesSIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("starts relay processes")
	}
	dir := filepath.Join(t.TempDir(), "relay")
	child := startChildRelay(t, dir)
	h := newHost(t)
	c, err := NewClient(h)
	if err != nil {
		t.Fatal(err)
	}
	k := newKey(t)
	envs := envelopes(4, 1500, "durable")
	h.Peerstore().AddAddrs(child.info.ID, child.info.Addrs, peerstore.PermanentAddrTTL)
	reg, err := c.Open(testCtx(t), child.info.ID, k) // registers the mailbox
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	_ = reg.Close()
	res, err := c.Deposit(testCtx(t), child.info.ID, k.ID(), envs[:3])
	if err != nil || res[0].Err != nil || res[1].Err != nil || res[2].Err != nil {
		t.Fatalf("Deposit: %v %v", res, err)
	}
	child.kill() // right after the ack

	child = startChildRelay(t, dir)
	if child.info.ID == "" {
		t.Fatal("no peer id")
	}
	h.Peerstore().ClearAddrs(child.info.ID)
	h.Peerstore().AddAddrs(child.info.ID, child.info.Addrs, peerstore.PermanentAddrTTL)
	// The old connection died with the old process.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = h.Network().ClosePeer(child.info.ID)
	// The registration survived too: a deposit before the owner is back
	// is taken.
	res, err = c.Deposit(ctx, child.info.ID, k.ID(), envs[3:])
	if err != nil || res[0].Err != nil {
		t.Fatalf("Deposit on the restarted relay: %v %v", res, err)
	}
	s, err := c.Open(ctx, child.info.ID, k)
	if err != nil {
		t.Fatalf("Open on the restarted relay: %v", err)
	}
	defer s.Close()
	items, _, err := s.Fetch(ctx, 0, 0)
	if err != nil {
		t.Fatalf("Fetch: %v", err)
	}
	if len(items) != len(envs) {
		t.Fatalf("restarted relay holds %d items, want %d", len(items), len(envs))
	}
	for i, it := range items {
		if !bytes.Equal(it.Envelope, envs[i]) {
			t.Fatalf("item %d differs after restart", i)
		}
	}
}
