package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/kinmesh/kinmesh/protocols/moments"
)

// TestMomentsVerbUsage: kinmesh moments refuses unknown verbs and missing
// arguments before reaching a daemon.
func TestMomentsVerbUsage(t *testing.T) {
	api := []string{"--api", "127.0.0.1:1", "--token", "tok"}
	for _, tt := range []struct {
		name string
		args []string
	}{
		{"unknown verb", []string{"frobnicate"}},
		{"post nothing", []string{"post"}},
		{"like nothing", []string{"like"}},
		{"comment without text", []string{"comment", "abc"}},
		{"media without --out", []string{"media", "abc", "0"}},
		{"bad flag", []string{"feed", "--nope"}},
	} {
		if err := runMoments(context.Background(), append(tt.args, api...), io.Discard, io.Discard); !errors.Is(err, errUsage) {
			t.Errorf("%s: %v, want a usage error", tt.name, err)
		}
	}
}

// TestCLIMoments drives real daemons (a relay, two devices) through the
// moments verbs: rosa posts a photo, mia sees it in her feed, fetches
// the photo, likes and comments; rosa sees both and deletes the moment,
// which leaves mia's feed.
func TestCLIMoments(t *testing.T) {
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
	for _, name := range []string{"rosa", "mia"} {
		cli(t, "account", "create", "--data", data[name], "--name", name, "--birth-date", "1950-04-02", "--accept-policy", policy[1])
	}
	for _, pair := range [][2]string{{"rosa", "mia"}, {"mia", "rosa"}} {
		inv := strings.TrimSpace(cli(t, "invite", "--data", data[pair[0]]))
		cli(t, "contacts", "add", inv, "--data", data[pair[1]])
	}

	photo := make([]byte, 50<<10)
	_, _ = rand.Read(photo)
	photoFile := filepath.Join(dir, "lunch.jpg")
	if err := os.WriteFile(photoFile, photo, 0o600); err != nil {
		t.Fatal(err)
	}
	out := cli(t, "moments", "post", "Sunday", "lunch", "--media", photoFile, "--data", data["rosa"])
	m := regexp.MustCompile(`moment (\S+) posted \(1 media\)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("moments post: %s", out)
	}
	id := m[1]

	deadline := time.Now().Add(60 * time.Second)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	until := func(what string, cond func() bool) {
		t.Helper()
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			<-tick.C
		}
	}
	show := func(name string) (moments.Moment, bool) {
		var r struct{ Moments []moments.Moment }
		if err := json.Unmarshal([]byte(cli(t, "moments", "feed", "--json", "--data", data[name])), &r); err != nil {
			t.Fatalf("moments feed --json: %v", err)
		}
		for _, x := range r.Moments {
			if x.ID == id {
				return x, true
			}
		}
		return moments.Moment{}, false
	}
	until("rosa's moment in mia's feed", func() bool { _, ok := show("mia"); return ok })
	if out := cli(t, "moments", "--data", data["mia"]); !strings.Contains(out, `"Sunday lunch" (0 likes, 0 comments, 1 media)`) {
		t.Fatalf("mia's feed:\n%s", out)
	}
	got := filepath.Join(dir, "got.jpg")
	if out := cli(t, "moments", "media", id, "0", "--out", got, "--data", data["mia"]); !strings.Contains(out, "image/jpeg") {
		t.Fatalf("moments media: %s", out)
	}
	if b, err := os.ReadFile(got); err != nil || !bytes.Equal(b, photo) {
		t.Fatalf("the fetched photo differs (%v)", err)
	}
	cli(t, "moments", "like", id, "--data", data["mia"])
	cli(t, "moments", "comment", id, "what", "a", "table", "--data", data["mia"])
	until("mia's like and comment at rosa's", func() bool {
		x, ok := show("rosa")
		return ok && len(x.Likes) == 1 && len(x.Comments) == 1 && x.Comments[0].Text == "what a table"
	})
	if out := cli(t, "moments", "show", id, "--data", data["rosa"]); !strings.Contains(out, "♥ mia") || !strings.Contains(out, "mia: what a table") {
		t.Fatalf("moments show:\n%s", out)
	}
	cli(t, "moments", "unlike", id, "--data", data["mia"])
	var errb bytes.Buffer
	if code := run(context.Background(), []string{"moments", "delete", id, "--data", data["mia"]}, io.Discard, &errb); code == 0 || !strings.Contains(errb.String(), "not_author") {
		t.Fatalf("mia deleting rosa's moment: exit %d, %s", code, errb.String())
	}
	if out := cli(t, "moments", "delete", id, "--data", data["rosa"]); !strings.Contains(out, "deleted") {
		t.Fatalf("moments delete: %s", out)
	}
	until("the moment gone from mia's feed", func() bool { _, ok := show("mia"); return !ok })
}
