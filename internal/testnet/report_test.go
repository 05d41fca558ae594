package testnet

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/kinmesh/kinmesh/bootstrap"
	"github.com/kinmesh/kinmesh/node"
	"github.com/kinmesh/kinmesh/protocols/message"
)

// TestReportReachesHomeRelays: a report with a disclosed message and a
// support request reach both home relays, whose operators read them on
// the ops endpoint; nothing else of the conversation goes.
func TestReportReachesHomeRelays(t *testing.T) {
	n := startNet(t, Config{Relays: 2, Devices: 2, RelayHTTP: true})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	a, b := contactsPair(t, ctx, n)
	for _, text := range []string{"send me money now", "happy birthday grandma"} {
		if _, err := b.Node().Send(ctx, a.AccountID(), text); err != nil {
			t.Fatal(err)
		}
	}
	ms, err := WaitMessages(ctx, a, b.AccountID(), func(ms []message.Message) bool {
		return HasText(ms, "send me money now", "") && HasText(ms, "happy birthday grandma", "")
	})
	if err != nil {
		t.Fatal(err)
	}
	var scam string
	for _, m := range ms {
		if m.Text == "send me money now" {
			scam = m.ID
		}
	}
	res, err := a.Node().Report(ctx, node.ReportRequest{Account: b.AccountID(), Reason: "scam", Text: "asks for money", Messages: []string{scam}})
	if err != nil {
		t.Fatalf("Report: %v", err)
	}
	if res.Accepted != 2 {
		t.Fatalf("report accepted by %d relays, want 2: %+v", res.Accepted, res.Relays)
	}
	if _, err := a.Node().Feedback(ctx, node.FeedbackRequest{Kind: "support", Text: "how do I add my son?", IncludeDiagnostics: true}); err != nil {
		t.Fatalf("Feedback: %v", err)
	}
	for _, r := range n.Relays {
		base := "http://" + r.Relay().HTTPAddr()
		var reports, feedback bootstrap.QueuePage
		getOps(t, base+"/reports", &reports)
		getOps(t, base+"/feedback", &feedback)
		if len(reports.Items) != 1 || string(reports.Items[0].Reporter) != a.AccountID() || string(reports.Items[0].Reported) != b.AccountID() {
			t.Fatalf("%s lists reports %+v", r.Name, reports.Items)
		}
		it := reports.Items[0]
		if it.Reason.String() != "scam" || len(it.Messages) != 1 || it.Messages[0].Text != "send me money now" {
			t.Fatalf("%s: report %+v", r.Name, it)
		}
		if len(feedback.Items) != 1 || feedback.Items[0].Kind.String() != "support" || len(feedback.Items[0].Diagnostics) != 0 {
			t.Fatalf("%s lists feedback %+v; want the support request, without diagnostics (no consent)", r.Name, feedback.Items)
		}
		raw, _ := json.Marshal(reports)
		if strings.Contains(string(raw), "happy birthday grandma") {
			t.Fatalf("%s got a message the user did not disclose", r.Name)
		}
	}
}

func getOps(t *testing.T, url string, out any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d", url, resp.StatusCode)
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		t.Fatal(err)
	}
}

// TestSocialDemoSteps runs the demo steps of demo_social.go where the
// demo runs them: after accounts, invites, consent and block.
func TestSocialDemoSteps(t *testing.T) {
	n := startNet(t, Config{Relays: 2, Devices: 3})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	for _, s := range []struct {
		name string
		run  func(context.Context, *Network) (string, error)
	}{
		{"accounts", stepAccounts}, {"invites", stepInvites}, {"consent", stepConsent}, {"block", stepBlock},
		{"presence", stepPresence}, {"report", stepReport}, {"feedback", stepFeedback},
	} {
		detail, err := s.run(ctx, n)
		if err != nil {
			t.Fatalf("step %s: %v", s.name, err)
		}
		t.Logf("%s: %s", s.name, detail)
	}
}
