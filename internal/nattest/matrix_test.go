package nattest

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestNATMatrix builds the lab (two homes of every NAT type, two relays),
// runs every pair of NAT types through RunPair, prints the matrix and, with
// KINMESH_NAT_MATRIX_OUT=<file>, writes it there (make test-nat:
// docs/nat-matrix.md). It needs root, iproute2 and iptables, and runs only
// when KINMESH_NAT=1 (make test-nat sets it): it takes minutes and the
// whole machine's network stack, which `go test ./...` on a shared
// machine should not.
func TestNATMatrix(t *testing.T) {
	if os.Getenv("KINMESH_NAT") != "1" {
		t.Skip("NAT matrix: run it with `make test-nat` (KINMESH_NAT=1; needs root, iproute2, iptables)")
	}
	if why := Capable(); why != "" {
		t.Skip(why)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	begin := time.Now()

	bin, err := BuildBinary(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var homes []NAT
	for _, n := range NATs {
		homes = append(homes, n, n)
	}
	lab, err := New(ctx, Config{Binary: bin, Dir: t.TempDir(), Homes: homes, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, p := range lab.procs {
				t.Logf("--- %s log (tail):\n%s", p.Name, p.Tail(30))
			}
		}
		if err := lab.Close(); err != nil {
			t.Errorf("tear down: %v", err)
		}
	})
	if err := lab.StartRelays(ctx); err != nil {
		t.Fatal(err)
	}
	if err := lab.StartDevices(ctx, 60*time.Second); err != nil {
		t.Fatal(err)
	}
	setup := time.Since(begin)
	t.Logf("lab ready in %v", setup.Round(time.Millisecond))

	pairs, err := lab.Pairs()
	if err != nil {
		t.Fatal(err)
	}
	var results []PairResult
	for _, p := range pairs {
		r := RunPair(ctx, p[0], p[1], Timeouts{})
		t.Logf("%-9s → %-9s expected %-6s got %-6s first conn %v, direct after %v via %v, hole punch %s, messages %v / %v, took %v, err %v",
			r.A.NAT, r.B.NAT, r.Expected, r.Path, r.FirstConn.Round(time.Millisecond), r.DirectAfter.Round(time.Millisecond), r.DirectVia,
			r.HolePunch, r.MsgAB.Round(time.Millisecond), r.MsgBA.Round(time.Millisecond), r.Settle.Round(time.Millisecond), r.Err)
		t.Logf("%-9s → %-9s call: expected %-6s got %-6s (%s ↔ %s) setup %v, rang after %v, B received %+v, err %v",
			r.A.NAT, r.B.NAT, r.Call.Expected, r.Call.Path, r.Call.Local, r.Call.Remote, r.Call.Setup, r.Call.Ring.Round(time.Millisecond), r.Call.Stats, r.Call.Err)
		results = append(results, r)
	}
	rep := Report{Results: results, Setup: setup, Total: time.Since(begin), Machine: machine()}
	var table bytes.Buffer
	WriteTable(&table, results)
	t.Logf("NAT matrix:\n%s", table.String())
	if out := os.Getenv("KINMESH_NAT_MATRIX_OUT"); out != "" {
		var doc bytes.Buffer
		rep.WriteMarkdown(&doc)
		if err := os.WriteFile(out, doc.Bytes(), 0o644); err != nil {
			t.Errorf("write %s: %v", out, err)
		}
	}
	for _, r := range results {
		switch {
		case r.Err != nil:
			t.Errorf("%s (%s) – %s (%s): %v", r.A.Name, r.A.NAT, r.B.Name, r.B.NAT, r.Err)
		case !r.Connected:
			t.Errorf("%s – %s: never connected", r.A.NAT, r.B.NAT)
		case r.Path != r.Expected:
			t.Errorf("%s – %s: ended %s, want %s (hole punch: %s)", r.A.NAT, r.B.NAT, r.Path, r.Expected, r.HolePunch)
		case r.Call.Err != nil:
			t.Errorf("%s – %s call: %v", r.A.NAT, r.B.NAT, r.Call.Err)
		case r.Call.Path != r.Call.Expected:
			t.Errorf("%s – %s call: path %s (%s ↔ %s), want %s", r.A.NAT, r.B.NAT, r.Call.Path, r.Call.Local, r.Call.Remote, r.Call.Expected)
		case !r.OK():
			t.Errorf("%s – %s: messages %v / %v, call %+v", r.A.NAT, r.B.NAT, r.MsgAB, r.MsgBA, r.Call)
		case r.Call.Path == PathDirect && (reflexive(r.Call.Local) || reflexive(r.Call.Remote)) && r.Call.Setup >= reflexiveSetup:
			// protocols/calls takes a working reflexive pair at once;
			// with pion's wait for a better one, setup took 650 ms.
			t.Errorf("%s – %s call: set up in %v through NATs (%s ↔ %s), want under %v: the caller waited for a better pair", r.A.NAT, r.B.NAT, r.Call.Setup, r.Call.Local, r.Call.Remote, reflexiveSetup)
		}
	}
}

// reflexiveSetup bounds the setup of a call whose pair is direct through
// NATs: about 30 ms in the lab, 650 ms with pion's 0.5 s wait.
const reflexiveSetup = 400 * time.Millisecond

func reflexive(candidate string) bool { return candidate == "srflx" || candidate == "prflx" }

// machine names the kernel and iptables version for the report.
func machine() string {
	var parts []string
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		parts = append(parts, "Linux "+strings.TrimSpace(string(b)))
	}
	if out, err := exec.Command("iptables", "--version").Output(); err == nil {
		parts = append(parts, strings.TrimSpace(string(out)))
	}
	return strings.Join(parts, ", ") + "."
}
