package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/client"

	"github.com/kinmesh/kinmesh/internal/testnet"
	"github.com/kinmesh/kinmesh/node"
	"github.com/kinmesh/kinmesh/protocols/netkit"
)

// The idle benchmark runs its subjects as child processes of the test
// binary, so each one's RSS and CPU are its own.
const (
	childEnv  = "KINMESH_BENCH_CHILD" // "node" or "rawhost"
	relaysEnv = "KINMESH_BENCH_RELAYS"
	idleEnv   = "KINMESH_BENCH_IDLE" // idle time, default 60s
)

// footprint is what a child reports after idling.
type footprint struct {
	RSSKiB     int64   `json:"rss_kib"`
	Goroutines int     `json:"goroutines"`
	HeapKiB    uint64  `json:"heap_kib"`
	CPUPercent float64 `json:"cpu_percent"` // over the idle window
}

func TestMain(m *testing.M) {
	switch os.Getenv(childEnv) {
	case "":
		os.Exit(m.Run())
	case "node", "rawhost":
		if err := runChild(os.Getenv(childEnv)); err != nil {
			fmt.Fprintln(os.Stderr, "bench child:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
}

func runChild(kind string) error {
	relays := strings.Split(os.Getenv(relaysEnv), ",")
	idle, err := time.ParseDuration(os.Getenv(idleEnv))
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), idle+time.Minute)
	defer cancel()
	switch kind {
	case "node":
		dir, err := os.MkdirTemp("", "kinmesh-bench-node-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		n, err := node.New(node.Config{DataDir: dir, Bootstrap: relays, Listen: []string{"/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1"}})
		if err != nil {
			return err
		}
		if err := n.Start(ctx); err != nil {
			return err
		}
		defer n.Close()
		if err := n.WaitRelays(ctx, 3); err != nil {
			return err
		}
	case "rawhost":
		// The baseline: a plain go-libp2p host with the same transports,
		// connected to the same relays, holding the same reservations.
		h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1"), netkit.Transports(), libp2p.DisableMetrics())
		if err != nil {
			return err
		}
		defer h.Close()
		peers, err := netkit.ParsePeers(relays)
		if err != nil {
			return err
		}
		for _, p := range peers {
			if err := h.Connect(ctx, p); err != nil {
				return err
			}
			if _, err := client.Reserve(ctx, h, p); err != nil {
				return err
			}
		}
	}
	runtime.GC()
	cpu0 := cpuTime()
	fmt.Println("ready")
	t := time.NewTimer(idle)
	<-t.C
	cpu := cpuTime() - cpu0
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return json.NewEncoder(os.Stdout).Encode(footprint{
		RSSKiB:     rssKiB(),
		Goroutines: runtime.NumGoroutine(),
		HeapKiB:    ms.HeapInuse / 1024,
		CPUPercent: 100 * cpu.Seconds() / idle.Seconds(),
	})
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func rssKiB() int64 {
	b, _ := os.ReadFile("/proc/self/status")
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			v, _ := strconv.ParseInt(f[1], 10, 64)
			return v
		}
	}
	return 0
}

// BenchmarkIdleNode: the footprint of an idle device node connected to its
// 3 relays for KINMESH_BENCH_IDLE (default 60s), against a raw go-libp2p
// host doing the same (connections and reservations), both measured side
// by side in the same run. Run with -benchtime 1x.
func BenchmarkIdleNode(b *testing.B) {
	idle := os.Getenv(idleEnv)
	if idle == "" {
		idle = "60s"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	net, err := testnet.Start(ctx, testnet.Config{Relays: 3, Devices: 0, DataDir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer net.Close()
	var relays []string
	for _, r := range net.Relays {
		relays = append(relays, r.Addrs()...)
	}
	for range b.N {
		results := map[string]chan footprint{"node": make(chan footprint, 1), "rawhost": make(chan footprint, 1)}
		errs := make(chan error, 2)
		for kind, ch := range results {
			go func() {
				fp, err := child(ctx, kind, relays, idle)
				if err != nil {
					errs <- fmt.Errorf("%s: %w", kind, err)
					return
				}
				ch <- fp
			}()
		}
		var got = map[string]footprint{}
		for kind, ch := range results {
			select {
			case fp := <-ch:
				got[kind] = fp
			case err := <-errs:
				b.Fatal(err)
			}
		}
		nd, raw := got["node"], got["rawhost"]
		b.ReportMetric(float64(nd.RSSKiB)/1024, "node-rss-MB")
		b.ReportMetric(float64(raw.RSSKiB)/1024, "raw-rss-MB")
		b.ReportMetric(float64(nd.RSSKiB)/float64(raw.RSSKiB), "rss-x-vs-raw")
		b.ReportMetric(float64(nd.Goroutines), "node-goroutines")
		b.ReportMetric(float64(nd.Goroutines)/float64(raw.Goroutines), "goroutines-x-vs-raw")
		b.ReportMetric(nd.CPUPercent, "node-cpu-%")
		b.ReportMetric(raw.CPUPercent, "raw-cpu-%")
		b.Logf("node %+v, raw host %+v (idle %s)", nd, raw, idle)
	}
}

func child(ctx context.Context, kind string, relays []string, idle string) (footprint, error) {
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+kind, relaysEnv+"="+strings.Join(relays, ","), idleEnv+"="+idle)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return footprint{}, err
	}
	if err := cmd.Start(); err != nil {
		return footprint{}, err
	}
	defer cmd.Wait()
	var fp footprint
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "{") {
			if err := json.Unmarshal(sc.Bytes(), &fp); err != nil {
				return fp, err
			}
			return fp, nil
		}
	}
	return fp, fmt.Errorf("child exited without a report")
}
