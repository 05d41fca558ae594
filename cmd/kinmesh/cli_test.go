package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// cli runs a client verb in-process against a daemon and returns stdout.
func cli(t *testing.T, args ...string) string {
	t.Helper()
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if code := run(ctx, args, &out, &errb); code != 0 {
		t.Fatalf("kinmesh %s: exit %d: %s", strings.Join(args, " "), code, errb.String())
	}
	return out.String()
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// watch runs kinmesh watch on the daemon of dataDir until the test ends,
// and returns once it is subscribed (its "watching" line on stderr), so
// that it misses no event after that.
func watch(t *testing.T, dataDir string) *syncBuffer {
	t.Helper()
	var out, status syncBuffer
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() { done <- run(ctx, []string{"watch", "--data", dataDir}, &out, &status) }()
	t.Cleanup(func() { stop(); <-done })
	deadline := time.NewTimer(30 * time.Second)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !strings.Contains(status.String(), "watching") {
		select {
		case code := <-done:
			done <- code
			t.Fatalf("kinmesh watch exited (%d): %s", code, status.String())
		case <-deadline.C:
			t.Fatalf("kinmesh watch never subscribed: %s", status.String())
		case <-tick.C:
		}
	}
	return &out
}

// TestCLI drives two daemons through the client verbs a user types:
// accounts, invites, contacts, send, watch, inbox, groups, block,
// location, settings, export and account deletion.
func TestCLI(t *testing.T) {
	dir := t.TempDir()
	relay := startProc(t, "relay", "--data", filepath.Join(dir, "relay"),
		"--listen", "/ip4/127.0.0.1/tcp/0", "--http", "127.0.0.1:0")
	ops := relay.await(t, regexp.MustCompile(`ops endpoint http://(\S+)/healthz`))
	var health struct{ Addrs []string }
	getJSON(t, "http://"+ops+"/healthz", "", &health)

	data := map[string]string{}
	for _, name := range []string{"rosa", "mia"} {
		data[name] = filepath.Join(dir, name)
		args := []string{"node", "--data", data[name], "--api", "127.0.0.1:0", "--listen", "/ip4/127.0.0.1/tcp/0"}
		for _, a := range health.Addrs {
			args = append(args, "--bootstrap", a)
		}
		p := startProc(t, args...)
		p.await(t, regexp.MustCompile(`local API (http://\S+)`))
	}
	policy := regexp.MustCompile(`accept-policy (\S+)\)`).FindStringSubmatch(cli(t, "policy", "--data", data["rosa"]))
	if policy == nil {
		t.Fatal("kinmesh policy printed no version")
	}
	ids := map[string]string{}
	for name, birth := range map[string]string{"rosa": "1950-04-02", "mia": "2010-01-15"} {
		out := cli(t, "account", "create", "--data", data[name], "--name", name, "--birth-date", birth, "--country", "US", "--accept-policy", policy[1])
		ids[name] = regexp.MustCompile(`account\s+(\S+)`).FindStringSubmatch(out)[1]
	}
	var errb bytes.Buffer
	if code := run(context.Background(), []string{"account", "create", "--data", filepath.Join(dir, "nobody"), "--name", "x"}, io.Discard, &errb); code == 0 {
		t.Fatal("account create without a daemon succeeded")
	}
	for _, pair := range [][2]string{{"rosa", "mia"}, {"mia", "rosa"}} {
		inv := strings.TrimSpace(cli(t, "invite", "--data", data[pair[0]]))
		if !strings.HasPrefix(inv, "kinmesh:") {
			t.Fatalf("invite %q", inv)
		}
		cli(t, "contacts", "add", inv, "--data", data[pair[1]])
	}
	if out := cli(t, "contacts", "--data", data["rosa"]); !strings.Contains(out, ids["mia"]) {
		t.Fatalf("rosa's contacts:\n%s", out)
	}

	// mia watches; rosa sends; the event shows up in mia's watch.
	watched := watch(t, data["mia"])
	cli(t, "send", "--data", data["rosa"], "--to", ids["mia"], "lunch", "on", "Sunday?")
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(watched.String(), "lunch on Sunday?") {
		if time.Now().After(deadline) {
			t.Fatalf("kinmesh watch never showed the message:\n%s", watched.String())
		}
		cli(t, "status", "--data", data["mia"]) // a round trip to the daemon paces the wait
	}
	if out := cli(t, "inbox", "--data", data["mia"], "--with", ids["rosa"], "--read"); !strings.Contains(out, "lunch on Sunday?") {
		t.Fatalf("mia's inbox:\n%s", out)
	}
	for !strings.Contains(cli(t, "inbox", "--data", data["rosa"], "--with", ids["mia"]), "[read]") {
		if time.Now().After(deadline) {
			t.Fatal("rosa never saw her message read")
		}
	}

	out := cli(t, "groups", "create", "Family", ids["mia"], "--data", data["rosa"])
	gid := strings.Fields(out)[0]
	cli(t, "send", "--data", data["rosa"], "--to", gid, "family", "dinner")
	if out := cli(t, "groups", "--data", data["rosa"]); !strings.Contains(out, "Family") {
		t.Fatalf("groups:\n%s", out)
	}
	if out := cli(t, "groups", "rename", gid, "Family 🏡", "--data", data["rosa"]); !strings.Contains(out, `"Family 🏡" 2 members`) {
		t.Fatalf("groups rename: %s", out)
	}
	deadline = time.Now().Add(30 * time.Second)
	for !strings.Contains(cli(t, "groups", "--data", data["mia"]), "Family 🏡") {
		if time.Now().After(deadline) {
			t.Fatal("mia never saw the group renamed")
		}
	}
	if out := cli(t, "location", "--data", data["rosa"], "--to", ids["mia"], "--lat", "38.72", "--lon", "-9.14"); !strings.Contains(out, "shared with 1") {
		t.Fatalf("location: %s", out)
	}
	if out := cli(t, "settings", "--data", data["rosa"], "--diagnostics", "on"); !strings.Contains(out, "diagnostics sharing   true (in effect: true)") {
		t.Fatalf("settings:\n%s", out)
	}
	cli(t, "block", ids["mia"], "--data", data["rosa"])
	if out := cli(t, "block", "--list", "--data", data["rosa"]); !strings.Contains(out, ids["mia"]) {
		t.Fatalf("blocks: %s", out)
	}
	cli(t, "block", "--remove", ids["mia"], "--data", data["rosa"])

	var export struct {
		Format   string
		Account  struct{ ID string }
		Messages []struct{ Text string }
	}
	if err := json.Unmarshal([]byte(cli(t, "export", "--data", data["rosa"])), &export); err != nil {
		t.Fatalf("export is not JSON: %v", err)
	}
	if export.Format != "kinmesh-export" || export.Account.ID != ids["rosa"] || len(export.Messages) < 2 {
		t.Fatalf("export: %+v", export)
	}
	if out := cli(t, "contacts", "remove", ids["mia"], "--data", data["rosa"]); !strings.Contains(out, "removed") {
		t.Fatalf("contacts remove: %s", out)
	}
	// They share a group: mia stays, as a group member, not a friend.
	if out := cli(t, "contacts", "--data", data["rosa"]); !regexp.MustCompile(ids["mia"] + `\s+group`).MatchString(out) {
		t.Fatalf("rosa's contacts after removing mia:\n%s", out)
	}
	errb.Reset()
	if code := run(context.Background(), []string{"contacts", "remove", "nobody", "--data", data["rosa"]}, io.Discard, &errb); code == 0 || !strings.Contains(errb.String(), "unknown_contact") {
		t.Fatalf("removing an unknown contact: exit %d %s", code, errb.String())
	}
	// rosa, the admin, leaves: the group goes on with mia as its admin.
	if out := cli(t, "groups", "leave", gid, "--data", data["rosa"]); !strings.Contains(out, "left") {
		t.Fatalf("groups leave: %s", out)
	}
	deadline = time.Now().Add(30 * time.Second)
	for !strings.Contains(cli(t, "groups", "--data", data["mia"]), "1 members") {
		if time.Now().After(deadline) {
			t.Fatal("mia never saw rosa leave")
		}
	}
	if out := cli(t, "groups", "rename", gid, "Mia's", "--data", data["mia"]); !strings.Contains(out, `"Mia's" 1 members`) {
		t.Fatalf("the new admin renaming: %s", out)
	}
	errb.Reset()
	if code := run(context.Background(), []string{"groups", "rename", gid, "Rosa's", "--data", data["rosa"]}, io.Discard, &errb); code == 0 || !strings.Contains(errb.String(), "not_group_admin_or_member") {
		t.Fatalf("renaming a group one left: exit %d %s", code, errb.String())
	}
	errb.Reset()
	if code := run(context.Background(), []string{"account", "delete", "--data", data["mia"]}, io.Discard, &errb); code != 2 || !strings.Contains(errb.String(), "--yes") {
		t.Fatalf("delete without --yes: exit %d %s", code, errb.String())
	}
	if out := cli(t, "account", "delete", "--yes", "--data", data["mia"]); !strings.Contains(out, "purged") {
		t.Fatalf("account delete:\n%s", out)
	}
	errb.Reset()
	if code := run(context.Background(), []string{"account", "--data", data["mia"]}, io.Discard, &errb); code == 0 || !strings.Contains(errb.String(), "no_account") {
		t.Fatalf("account after deletion: exit %d %s", code, errb.String())
	}
}
