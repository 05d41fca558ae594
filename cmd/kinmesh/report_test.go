package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/peerstore"

	"github.com/kinmesh/kinmesh/bootstrap"
	"github.com/kinmesh/kinmesh/node"
	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/protocols/report"
)

func startTestRelay(t *testing.T) *bootstrap.Relay {
	t.Helper()
	r, err := bootstrap.New(bootstrap.Config{
		DataDir: filepath.Join(t.TempDir(), "relay"), Listen: []string{"/ip4/127.0.0.1/tcp/0"}, HTTP: "127.0.0.1:0",
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := r.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

// runCLI runs a kinmesh command line in-process: this file's verbs
// directly (they work before main.go lists them), the rest through run.
func runCLI(t *testing.T, args ...string) (string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	for _, c := range reportCommands() {
		if c.name != args[0] {
			continue
		}
		err := c.run(context.Background(), args[1:], &out, &errb)
		switch {
		case err == nil:
			return out.String(), 0
		case errors.Is(err, errUsage):
			return out.String() + err.Error(), 2
		default:
			return out.String() + err.Error(), 1
		}
	}
	code := run(context.Background(), args, &out, &errb)
	return out.String() + errb.String(), code
}

// TestRelayReportsCLI: the operator lists, shows and clears the queues
// with `kinmesh relay reports|feedback`.
func TestRelayReportsCLI(t *testing.T) {
	r := startTestRelay(t)
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableMetrics())
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	h.Peerstore().AddAddrs(r.ID(), r.AddrInfo().Addrs, peerstore.PermanentAddrTTL)
	c, err := report.NewClient(h)
	if err != nil {
		t.Fatal(err)
	}
	alice, _ := e2ee.NewIdentity(rand.Reader)
	mallory, _ := e2ee.NewIdentity(rand.Reader)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rec, err := c.Submit(ctx, r.ID(), alice, report.Submission{
		Kind: report.KindReport, ID: report.SubmissionID(), CreatedAt: time.Now(),
		Reported: mallory.AccountID(), Reason: report.ReasonScam, Text: "wants my bank details",
		Messages: []report.DisclosedMessage{{ID: "m1", From: mallory.AccountID(), SentAt: time.Now(), Text: "send the PIN"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Submit(ctx, r.ID(), alice, report.Submission{
		Kind: report.KindSupport, ID: report.SubmissionID(), CreatedAt: time.Now(), Text: "can't add my son",
		Diagnostics: json.RawMessage(`{"version":"x"}`),
	}); err != nil {
		t.Fatal(err)
	}
	ops := r.HTTPAddr()

	out, code := runCLI(t, "relay", "reports", "--http", ops)
	for _, want := range []string{"#" + rec.ID, "scam", string(alice.AccountID()), string(mallory.AccountID()), "wants my bank details", "send the PIN", "1 disclosed", "kinmesh relay reports done ID"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Fatalf("kinmesh relay reports: exit %d, output lacks %q:\n%s", code, want, out)
		}
	}
	out, code = runCLI(t, "relay", "reports", "--json", "--http", ops)
	var page bootstrap.QueuePage
	if code != 0 || json.Unmarshal([]byte(out), &page) != nil || len(page.Items) != 1 {
		t.Fatalf("kinmesh relay reports --json: exit %d:\n%s", code, out)
	}
	out, code = runCLI(t, "relay", "feedback", "--http", ops)
	if code != 0 || !strings.Contains(out, "support") || !strings.Contains(out, "can't add my son") || !strings.Contains(out, "diagnostics attached") {
		t.Fatalf("kinmesh relay feedback: exit %d:\n%s", code, out)
	}
	fb := r.Reports()
	items, _ := fb.List(ctx, report.QueueFeedback, report.ListOptions{})
	out, code = runCLI(t, "relay", "feedback", "show", items[0].ID, "--http", ops)
	if code != 0 || !strings.Contains(out, `"version": "x"`) {
		t.Fatalf("kinmesh relay feedback show: exit %d:\n%s", code, out)
	}
	out, code = runCLI(t, "relay", "reports", "done", rec.ID, "--http", ops)
	if code != 0 || !strings.Contains(out, "marked done") {
		t.Fatalf("kinmesh relay reports done: exit %d:\n%s", code, out)
	}
	out, code = runCLI(t, "relay", "reports", "done", rec.ID, "--http", ops)
	if code != 1 || !strings.Contains(out, "not_found") {
		t.Fatalf("second done: exit %d:\n%s", code, out)
	}
	if out, code = runCLI(t, "relay", "reports", "--http", ops); code != 0 || !strings.Contains(out, "no reports waiting") {
		t.Fatalf("after done: exit %d:\n%s", code, out)
	}
	if out, code = runCLI(t, "relay", "reports", "frobnicate", "--http", ops); code != 2 {
		t.Fatalf("bad subcommand: exit %d:\n%s", code, out)
	}
}

// TestReportVerbs: `kinmesh report`, `feedback`, `presence` and
// `diagnostics` against a running daemon.
func TestReportVerbs(t *testing.T) {
	r := startTestRelay(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var nodes []*node.Node
	var dirs []string
	for _, name := range []string{"alice", "bob"} {
		dir := filepath.Join(t.TempDir(), name)
		n, err := node.New(node.Config{DataDir: dir, Listen: []string{"/ip4/127.0.0.1/tcp/0"}, Bootstrap: r.Addrs(), API: "127.0.0.1:0"})
		if err != nil {
			t.Fatal(err)
		}
		if err := n.Start(ctx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = n.Close() })
		if _, err := n.CreateAccount(ctx, node.NewAccount{Name: name, BirthDate: "1970-01-01", AcceptPolicy: node.PolicyVersion}); err != nil {
			t.Fatal(err)
		}
		if err := n.WaitRelays(ctx, 1); err != nil {
			t.Fatal(err)
		}
		nodes, dirs = append(nodes, n), append(dirs, dir)
	}
	alice, bob := nodes[0], nodes[1]
	for _, p := range [][2]*node.Node{{alice, bob}, {bob, alice}} {
		inv, _ := p[0].Invite()
		if _, err := p[1].AddContact(ctx, inv.String()); err != nil {
			t.Fatal(err)
		}
	}
	aliceAcct, _ := alice.Account()
	bobAcct, _ := bob.Account()

	out, code := runCLI(t, "diagnostics", "--data", dirs[0])
	if code != 0 && strings.Contains(out, "not_found") {
		t.Skip("the daemon does not serve /v1/diagnostics yet: register reportRoutes and presenceRoutes in node/api_v1.go")
	}
	if code != 0 || !strings.Contains(out, "version") || !strings.Contains(out, "sharing     off") {
		t.Fatalf("kinmesh diagnostics: exit %d:\n%s", code, out)
	}
	out, code = runCLI(t, "report", "--data", dirs[0], bobAcct.ID, "--reason", "spam", "--text", "adverts all day")
	if code != 0 || !strings.Contains(out, "sent to 1 of 1 home relays") {
		t.Fatalf("kinmesh report: exit %d:\n%s", code, out)
	}
	if out, code = runCLI(t, "report", "--data", dirs[0], bobAcct.ID); code != 2 {
		t.Fatalf("kinmesh report without --reason: exit %d:\n%s", code, out)
	}
	out, code = runCLI(t, "feedback", "--data", dirs[0], "--diagnostics", "love", "it")
	if code != 0 || !strings.Contains(out, "diagnostics NOT attached") {
		t.Fatalf("kinmesh feedback: exit %d:\n%s", code, out)
	}
	out, code = runCLI(t, "presence", "--data", dirs[0], "share", "nobody")
	if code != 0 || !strings.Contains(out, "nobody") {
		t.Fatalf("kinmesh presence share: exit %d:\n%s", code, out)
	}
	out, code = runCLI(t, "presence", "--data", dirs[0])
	if code != 0 || !strings.Contains(out, "you see no one's") || !strings.Contains(out, "bob") {
		t.Fatalf("kinmesh presence: exit %d:\n%s", code, out)
	}
	items, _ := r.Reports().List(ctx, report.QueueReports, report.ListOptions{})
	if len(items) != 1 || string(items[0].Reporter) != aliceAcct.ID {
		t.Fatalf("relay queue %+v", items)
	}
	out, _ = runCLI(t, "relay", "reports", "--http", r.HTTPAddr())
	if !strings.Contains(out, "adverts all day") {
		t.Fatalf("kinmesh relay reports:\n%s", out)
	}
}
