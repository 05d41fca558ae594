package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/kinmesh/kinmesh/protocols/calls"
)

// TestCLICalls drives real daemons (a relay with its TURN server, two
// devices) through the call verbs a user types: kinmesh watch shows the
// call ring, kinmesh answer takes it, kinmesh calls shows its path and
// statistics, kinmesh hangup ends it on both sides; a relay-only call
// (--force-relay) goes through the relay's TURN; a blocked caller never
// rings.
func TestCLICalls(t *testing.T) {
	dir := t.TempDir()
	relay := startProc(t, "relay", "--data", filepath.Join(dir, "relay"),
		"--listen", "/ip4/127.0.0.1/tcp/0", "--http", "127.0.0.1:0")
	ops := relay.await(t, regexp.MustCompile(`ops endpoint http://(\S+)/healthz`))
	var health struct{ Addrs []string }
	getJSON(t, "http://"+ops+"/healthz", "", &health)

	data := map[string]string{}
	for _, name := range []string{"ada", "ben"} {
		data[name] = filepath.Join(dir, name)
		args := []string{"node", "--data", data[name], "--api", "127.0.0.1:0", "--listen", "/ip4/127.0.0.1/tcp/0"}
		for _, a := range health.Addrs {
			args = append(args, "--bootstrap", a)
		}
		p := startProc(t, args...)
		p.await(t, regexp.MustCompile(`local API (http://\S+)`))
	}
	policy := regexp.MustCompile(`accept-policy (\S+)\)`).FindStringSubmatch(cli(t, "policy", "--data", data["ada"]))
	if policy == nil {
		t.Fatal("kinmesh policy printed no version")
	}
	ids := map[string]string{}
	for _, name := range []string{"ada", "ben"} {
		out := cli(t, "account", "create", "--data", data[name], "--name", name, "--birth-date", "1980-05-05", "--accept-policy", policy[1])
		ids[name] = regexp.MustCompile(`account\s+(\S+)`).FindStringSubmatch(out)[1]
	}
	for _, pair := range [][2]string{{"ada", "ben"}, {"ben", "ada"}} {
		inv := strings.TrimSpace(cli(t, "invite", "--data", data[pair[0]]))
		cli(t, "contacts", "add", inv, "--data", data[pair[1]])
	}

	// ben watches his events.
	watched := watch(t, data["ben"])

	deadline := time.Now().Add(60 * time.Second)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	// until polls cond until it holds, failing at the deadline. ada's
	// latest view of her call, if any, goes in the failure.
	var adaSaw string
	until := func(what string, cond func() bool) {
		t.Helper()
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s; ada's call: %s; ben's watch:\n%s", what, adaSaw, watched.String())
			}
			<-tick.C
		}
	}
	show := func(name, id string) calls.Info {
		t.Helper()
		var r struct{ Call calls.Info }
		if err := json.Unmarshal([]byte(cli(t, "calls", id, "--json", "--data", data[name])), &r); err != nil {
			t.Fatalf("kinmesh calls %s --json: %v", id, err)
		}
		return r.Call
	}

	// hold: ada calls ben; his watch shows it ring; he answers; once both
	// are connected and ben has two seconds of ada's video, hanger hangs
	// up. It returns both sides' calls as they ended.
	hold := func(extra []string, hanger string) (out, in calls.Info) {
		t.Helper()
		var placed struct{ Call calls.Info }
		if err := json.Unmarshal([]byte(cli(t, append([]string{"call", ids["ben"], "--json", "--data", data["ada"]}, extra...)...)), &placed); err != nil {
			t.Fatal(err)
		}
		if placed.Call.ID == "" || placed.Call.State != calls.StateRinging {
			t.Fatalf("kinmesh call: %+v", placed.Call)
		}
		ringRe := regexp.MustCompile(`call\.ringing\s+(\S+) in from ` + ids["ada"])
		var inID string
		until("ben's watch to show the call ringing", func() bool {
			a := show("ada", placed.Call.ID)
			adaSaw = fmt.Sprintf("%s (%s, path %q)", a.State, a.Reason, a.Path)
			for _, m := range ringRe.FindAllStringSubmatch(watched.String(), -1) {
				if show("ben", m[1]).State == calls.StateRinging {
					inID = m[1]
				}
			}
			return inID != ""
		})
		if out := cli(t, "answer", inID, "--data", data["ben"]); !strings.Contains(out, "call "+inID+" connecting") {
			t.Fatalf("kinmesh answer: %s", out)
		}
		until("both sides connected, with two seconds of video at ben's", func() bool {
			in = show("ben", inID)
			return show("ada", placed.Call.ID).State == calls.StateConnected && in.State == calls.StateConnected &&
				in.Stats != nil && in.Stats.FramesReceived >= 30
		})
		if !regexp.MustCompile(`call\.connected\s+` + inID + ` in from ` + ids["ada"]).MatchString(watched.String()) {
			t.Errorf("ben's watch does not show the call connected:\n%s", watched.String())
		}
		hangID := map[string]string{"ada": placed.Call.ID, "ben": inID}[hanger]
		if out := cli(t, "hangup", hangID, "--data", data[hanger]); !strings.Contains(out, "ended (hangup)") {
			t.Fatalf("kinmesh hangup: %s", out)
		}
		until("both sides ended", func() bool {
			out, in = show("ada", placed.Call.ID), show("ben", inID)
			return out.State.Final() && in.State.Final()
		})
		return out, in
	}

	out, in := hold(nil, "ben")
	if out.State != calls.StateEnded || out.Reason != calls.ReasonRemoteHangup || in.Reason != calls.ReasonHangup {
		t.Errorf("ends: ada %s (%s), ben %s (%s)", out.State, out.Reason, in.State, in.Reason)
	}
	if out.Path != calls.PathDirect || in.Stats == nil || in.Stats.Codec != "opus,vp8" || in.Stats.Width != 320 || in.Stats.RTTMS <= 0 {
		t.Errorf("direct call: ada's path %q, ben's stats %+v", out.Path, in.Stats)
	}
	text := cli(t, "calls", in.ID, "--data", data["ben"])
	for _, want := range []string{"state      ended", "path       direct", "codec opus,vp8", "video 320x240"} {
		if !strings.Contains(text, want) {
			t.Errorf("kinmesh calls %s lacks %q:\n%s", in.ID, want, text)
		}
	}
	if !regexp.MustCompile(`call\.ended\s+` + in.ID + ` in from ` + ids["ada"] + ` via direct \(hangup\)`).MatchString(watched.String()) {
		t.Errorf("ben's watch does not show the call ended:\n%s", watched.String())
	}

	// Relay-only: the media crosses the relay's TURN server.
	out, in = hold([]string{"--force-relay"}, "ada")
	if out.Path != calls.PathRelay || out.LocalCandidate != "relay" || !out.ForceRelay || in.RemoteCandidate != "relay" {
		t.Errorf("relay-only call: ada %s (%s ↔ %s, force relay %v), ben sees %s", out.Path, out.LocalCandidate, out.RemoteCandidate, out.ForceRelay, in.RemoteCandidate)
	}
	if out.Reason != calls.ReasonHangup || in.Reason != calls.ReasonRemoteHangup {
		t.Errorf("ends: ada %s, ben %s", out.Reason, in.Reason)
	}
	var metrics string
	until("the relay's /metrics to count relayed media", func() bool {
		metrics = getText(t, "http://"+ops+"/metrics")
		return regexp.MustCompile(`kinmesh_turn_relayed_packets_total\{direction="to_peer"\} [1-9]\d\d`).MatchString(metrics)
	})
	if list := cli(t, "calls", "--data", data["ada"]); strings.Count(list, " out ") != 2 || !strings.Contains(list, "relay") {
		t.Errorf("ada's calls:\n%s", list)
	}

	// ben blocks ada: her call fails "unavailable" and never rings
	// (kinmesh call --follow prints the states until the call is over).
	cli(t, "block", ids["ada"], "--data", data["ben"])
	followed := cli(t, "call", ids["ben"], "--follow", "--data", data["ada"])
	m := regexp.MustCompile(`(?m)^call (\S+) ringing\n(?:.*\n)*call (\S+) failed \(unavailable\)$`).FindStringSubmatch(followed)
	if m == nil || m[1] != m[2] {
		t.Fatalf("kinmesh call --follow to a contact who blocked us:\n%s", followed)
	}
	if blocked := show("ada", m[1]); blocked.State != calls.StateFailed || blocked.Reason != calls.ReasonUnavailable {
		t.Errorf("blocked caller's call: %s (%s)", blocked.State, blocked.Reason)
	}
	if n := strings.Count(watched.String(), "call.ringing"); n != 2 {
		t.Errorf("ben's watch shows %d calls ringing, want the 2 before the block:\n%s", n, watched.String())
	}
	if list := cli(t, "calls", "--json", "--data", data["ben"]); strings.Count(list, `"direction": "in"`) != 2 {
		t.Errorf("ben lists calls beyond the 2 before the block:\n%s", list)
	}
}

// getText GETs url and returns the body.
func getText(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
