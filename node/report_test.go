package node

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	relayv2 "github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/relay"

	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/protocols/mailbox"
	"github.com/kinmesh/kinmesh/protocols/message"
	"github.com/kinmesh/kinmesh/protocols/netkit"
	"github.com/kinmesh/kinmesh/protocols/prekeys"
	"github.com/kinmesh/kinmesh/protocols/report"
	"github.com/kinmesh/kinmesh/storage"
)

var discardLog = slog.New(slog.DiscardHandler)

// miniRelay is the part of a bootstrap relay these tests need (node never
// links bootstrap): a host with circuit relay, mailbox, prekeys and report
// services on a real store.
type miniRelay struct {
	h      host.Host
	report *report.Service
}

func startMiniRelay(t *testing.T, opts ...report.Option) *miniRelay {
	t.Helper()
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableMetrics(), libp2p.ForceReachabilityPublic())
	if err != nil {
		t.Fatal(err)
	}
	st, err := storage.Open(t.TempDir(), storage.WithProfile(storage.ProfileRelay), storage.WithLogger(discardLog))
	if err != nil {
		t.Fatal(err)
	}
	rl, err := relayv2.New(h)
	if err != nil {
		t.Fatal(err)
	}
	mb, err := mailbox.NewService(h, st, mailbox.WithLogger(discardLog))
	if err != nil {
		t.Fatal(err)
	}
	pk, err := prekeys.NewService(h, st, prekeys.WithLogger(discardLog))
	if err != nil {
		t.Fatal(err)
	}
	rs, err := report.NewService(h, st, append([]report.Option{report.WithLogger(discardLog)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		rs.Close()
		pk.Close()
		mb.Close()
		rl.Close()
		h.Close()
		st.Close()
	})
	return &miniRelay{h: h, report: rs}
}

func (r *miniRelay) addrs() []string { return netkit.P2PAddrs(r.h.ID(), r.h.Addrs()) }

func (r *miniRelay) items(t *testing.T, q report.Queue) []report.Item {
	t.Helper()
	items, err := r.report.List(context.Background(), q, report.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return items
}

// startFamily starts two nodes on the relays with accounts that are each
// other's contacts.
func startFamily(t *testing.T, relays ...*miniRelay) (alice, bob *Node) {
	t.Helper()
	var boot []string
	for _, r := range relays {
		boot = append(boot, r.addrs()[0])
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var ns []*Node
	for _, name := range []string{"alice", "bob"} {
		n := startNode(t, Config{DataDir: filepath.Join(t.TempDir(), name), Bootstrap: boot, API: "127.0.0.1:0", RelayBackoff: 50 * time.Millisecond})
		if _, err := n.CreateAccount(ctx, NewAccount{Name: name, BirthDate: "1970-01-01", AcceptPolicy: PolicyVersion}); err != nil {
			t.Fatal(err)
		}
		if err := n.WaitRelays(ctx, len(relays)); err != nil {
			t.Fatal(err)
		}
		ns = append(ns, n)
	}
	for _, pair := range [][2]*Node{{ns[0], ns[1]}, {ns[1], ns[0]}} {
		inv, err := pair[0].Invite()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := pair[1].AddContact(ctx, inv.String()); err != nil {
			t.Fatal(err)
		}
	}
	return ns[0], ns[1]
}

// socialAPI serves the node's report and presence routes behind its real
// token check, until api_v1.go registers them.
func socialAPI(t *testing.T, n *Node) string {
	t.Helper()
	mux := http.NewServeMux()
	n.api.reportRoutes(mux)
	n.api.presenceRoutes(mux)
	srv := httptest.NewServer(n.api.auth(mux))
	t.Cleanup(srv.Close)
	return srv.URL
}

func call(t *testing.T, n *Node, base, method, path string, body, out any) int {
	t.Helper()
	var rd bytes.Buffer
	if body != nil {
		_ = json.NewEncoder(&rd).Encode(body)
	}
	req, _ := http.NewRequest(method, base+path, &rd)
	req.Header.Set("Authorization", "Bearer "+string(n.api.token))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if out != nil {
		_ = json.NewDecoder(resp.Body).Decode(out)
	}
	return resp.StatusCode
}

// receive waits until n holds a message with text from `from`.
func receive(t *testing.T, n *Node, from, text string) message.Message {
	t.Helper()
	events, stop := n.Subscribe()
	defer stop()
	timeout := time.After(30 * time.Second)
	for {
		ms, err := n.Messages(context.Background(), from)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range ms {
			if m.Text == text && m.Incoming {
				return m
			}
		}
		select {
		case <-events:
		case <-timeout:
			t.Fatalf("no message %q from %s", text, from)
		}
	}
}

// TestReportDisclosesOnlyChosenMessages: a report reaches both home
// relays with exactly the messages the user picked, and the API refuses
// what it must.
func TestReportDisclosesOnlyChosenMessages(t *testing.T) {
	r1, r2 := startMiniRelay(t), startMiniRelay(t)
	alice, bob := startFamily(t, r1, r2)
	ctx := context.Background()
	aliceID, bobID := mustAccount(t, alice).ID, mustAccount(t, bob).ID
	for _, text := range []string{"you will regret this", "unrelated family news"} {
		if _, err := bob.Send(ctx, aliceID, text); err != nil {
			t.Fatal(err)
		}
	}
	threat := receive(t, alice, bobID, "you will regret this")
	receive(t, alice, bobID, "unrelated family news")
	base := socialAPI(t, alice)

	var out struct{ Report Submission }
	if code := call(t, alice, base, "POST", "/v1/reports", ReportRequest{Account: bobID, Reason: "harassment", Text: "he threatens me", Messages: []string{threat.ID}}, &out); code != http.StatusCreated {
		t.Fatalf("POST /v1/reports: %d", code)
	}
	if out.Report.Accepted != 2 || len(out.Report.Relays) != 2 || out.Report.DisclosedMessages != 1 {
		t.Fatalf("report result %+v, want 2 relays accepting, 1 message", out.Report)
	}
	for _, r := range []*miniRelay{r1, r2} {
		items := r.items(t, report.QueueReports)
		if len(items) != 1 {
			t.Fatalf("relay holds %d reports, want 1", len(items))
		}
		it := items[0]
		if it.Reporter != e2ee.AccountID(aliceID) || it.Reported != e2ee.AccountID(bobID) || it.Reason != report.ReasonHarassment || it.Text != "he threatens me" {
			t.Fatalf("relay item %+v", it)
		}
		if len(it.Messages) != 1 || it.Messages[0].ID != threat.ID || it.Messages[0].Text != threat.Text || it.Messages[0].From != e2ee.AccountID(bobID) {
			t.Fatalf("disclosed %+v, want only %q", it.Messages, threat.Text)
		}
		b, _ := json.Marshal(it)
		if strings.Contains(string(b), "unrelated family news") {
			t.Fatal("a message the user did not pick reached the relay")
		}
	}

	stranger, _ := e2ee.NewIdentity(rand.Reader)
	tests := []struct {
		name   string
		req    ReportRequest
		status int
		code   string
	}{
		{"unknown message", ReportRequest{Account: bobID, Reason: "spam", Messages: []string{"nope"}}, 404, "unknown_message"},
		{"message from another conversation", ReportRequest{Account: string(stranger.AccountID()), Reason: "spam", Messages: []string{threat.ID}}, 422, "message_not_in_conversation"},
		{"self", ReportRequest{Account: aliceID, Reason: "spam"}, 422, "invalid_report"},
		{"bad reason", ReportRequest{Account: bobID, Reason: "rude"}, 422, "invalid_report"},
		{"bad account", ReportRequest{Account: "bob", Reason: "spam"}, 422, "invalid_report"},
		{"text too long", ReportRequest{Account: bobID, Reason: "spam", Text: strings.Repeat("x", report.MaxTextLen+1)}, 422, "invalid_report"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var e apiError
			if code := call(t, alice, base, "POST", "/v1/reports", tt.req, &e); code != tt.status || e.Error.Code != tt.code {
				t.Fatalf("got %d %q (%s), want %d %q", code, e.Error.Code, e.Error.Message, tt.status, tt.code)
			}
		})
	}
	if n := len(r1.items(t, report.QueueReports)); n != 1 {
		t.Fatalf("refused reports reached the relay: %d items", n)
	}

	// Deleting the account withdraws its reports from every relay.
	if _, err := alice.DeleteAccount(ctx); err != nil {
		t.Fatal(err)
	}
	for _, r := range []*miniRelay{r1, r2} {
		if items := r.items(t, report.QueueReports); len(items) != 0 {
			t.Fatalf("after account deletion the relay still holds %+v", items)
		}
	}
}

func mustAccount(t *testing.T, n *Node) *Account {
	t.Helper()
	a, err := n.Account()
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// TestFeedbackDiagnosticsNeedConsent: diagnostics go with feedback only
// when the user asks and has consented; never otherwise.
func TestFeedbackDiagnosticsNeedConsent(t *testing.T) {
	r := startMiniRelay(t)
	alice, _ := startFamily(t, r)
	base := socialAPI(t, alice)
	send := func(req FeedbackRequest) Submission {
		t.Helper()
		var out struct{ Feedback Submission }
		if code := call(t, alice, base, "POST", "/v1/feedback", req, &out); code != http.StatusCreated {
			t.Fatalf("POST /v1/feedback: %d", code)
		}
		return out.Feedback
	}
	if res := send(FeedbackRequest{Text: "asked, no consent", IncludeDiagnostics: true}); res.DiagnosticsAttached || res.Accepted != 1 {
		t.Fatalf("without consent: %+v", res)
	}
	yes := true
	if _, err := alice.UpdateSettings(context.Background(), &yes, nil); err != nil {
		t.Fatal(err)
	}
	if res := send(FeedbackRequest{Kind: "support", Text: "consent, not asked"}); res.DiagnosticsAttached {
		t.Fatalf("not asked: %+v", res)
	}
	if res := send(FeedbackRequest{Kind: "support", Text: "asked with consent", IncludeDiagnostics: true}); !res.DiagnosticsAttached {
		t.Fatalf("asked with consent: %+v", res)
	}
	items := r.items(t, report.QueueFeedback)
	if len(items) != 3 {
		t.Fatalf("relay holds %d feedback items, want 3", len(items))
	}
	for _, it := range items {
		has := len(it.Diagnostics) > 0
		if want := it.Text == "asked with consent"; has != want {
			t.Fatalf("item %q carries diagnostics: %v, want %v", it.Text, has, want)
		}
	}
	var d Diagnostics
	if err := json.Unmarshal(items[2].Diagnostics, &d); err != nil || d.Version == "" || len(d.Relays) != 1 {
		t.Fatalf("attached diagnostics %s: %v", items[2].Diagnostics, err)
	}
	var e apiError
	if code := call(t, alice, base, "POST", "/v1/feedback", FeedbackRequest{Text: " "}, &e); code != 422 || e.Error.Code != "invalid_feedback" {
		t.Fatalf("empty feedback: %d %q", code, e.Error.Code)
	}
	if code := call(t, alice, base, "POST", "/v1/feedback", FeedbackRequest{Kind: "praise", Text: "x"}, &e); code != 422 || e.Error.Code != "invalid_feedback" {
		t.Fatalf("bad kind: %d %q", code, e.Error.Code)
	}
}

// TestDiagnosticsNameNoOne: the diagnostics record shows the node's health
// and nothing that identifies the user or a contact.
func TestDiagnosticsNameNoOne(t *testing.T) {
	r := startMiniRelay(t)
	alice, bob := startFamily(t, r)
	if _, err := bob.Send(context.Background(), mustAccount(t, alice).ID, "secret words"); err != nil {
		t.Fatal(err)
	}
	receive(t, alice, mustAccount(t, bob).ID, "secret words")
	base := socialAPI(t, alice)
	var out struct {
		Diagnostics Diagnostics
		Sharing     bool
	}
	if code := call(t, alice, base, "GET", "/v1/diagnostics", nil, &out); code != http.StatusOK {
		t.Fatalf("GET /v1/diagnostics: %d", code)
	}
	d := out.Diagnostics
	if out.Sharing || d.Version == "" || len(d.Relays) != 1 || !d.Relays[0].Connected || d.Messages["received"] != 1 || d.Contacts != 1 || d.Presence == nil {
		t.Fatalf("diagnostics %+v (sharing %v)", d, out.Sharing)
	}
	b, _ := json.Marshal(out)
	for _, secret := range []string{mustAccount(t, alice).ID, mustAccount(t, bob).ID, "alice", "bob", "secret words", alice.ID().String(), bob.ID().String()} {
		if strings.Contains(string(b), secret) {
			t.Errorf("diagnostics contain %q", secret)
		}
	}
}

// TestReportQuotaAndUnreachable: every relay's refusal comes back as a
// typed error with each relay's answer.
func TestReportQuotaAndUnreachable(t *testing.T) {
	r := startMiniRelay(t, report.WithDailyQuota(1, 1))
	alice, bob := startFamily(t, r)
	base := socialAPI(t, alice)
	req := ReportRequest{Account: mustAccount(t, bob).ID, Reason: "spam"}
	if code := call(t, alice, base, "POST", "/v1/reports", req, nil); code != http.StatusCreated {
		t.Fatalf("first report: %d", code)
	}
	var e apiError
	if code := call(t, alice, base, "POST", "/v1/reports", req, &e); code != http.StatusTooManyRequests || e.Error.Code != "quota_exceeded" {
		t.Fatalf("second report: %d %q, want 429 quota_exceeded", code, e.Error.Code)
	}
	r.report.Close()
	_, err := alice.Report(context.Background(), req)
	var se *SubmissionError
	if !errors.As(err, &se) || len(se.Result.Relays) != 1 || se.Result.Relays[0].Accepted {
		t.Fatalf("report to a relay without the service: %v", err)
	}
}

// TestPresenceSettingAPI: the setting is validated, stored and applied.
func TestPresenceSettingAPI(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "node")
	n := startNode(t, Config{DataDir: dir, API: "127.0.0.1:0"})
	base := socialAPI(t, n)
	var e apiError
	if code := call(t, n, base, "GET", "/v1/presence", nil, &e); code != http.StatusConflict || e.Error.Code != "no_account" {
		t.Fatalf("presence without an account: %d %q", code, e.Error.Code)
	}
	if _, err := n.CreateAccount(context.Background(), NewAccount{Name: "Rosa", BirthDate: "1950-04-02", AcceptPolicy: PolicyVersion}); err != nil {
		t.Fatal(err)
	}
	var v PresenceView
	if code := call(t, n, base, "GET", "/v1/presence", nil, &v); code != http.StatusOK || v.Share != PresenceContacts || v.Contacts == nil {
		t.Fatalf("GET /v1/presence: %d %+v", code, v)
	}
	if code := call(t, n, base, "POST", "/v1/settings/presence", map[string]string{"share": "everyone"}, &e); code != 422 || e.Error.Code != "invalid_setting" {
		t.Fatalf("bad setting: %d %q", code, e.Error.Code)
	}
	var s struct{ Share string }
	if code := call(t, n, base, "POST", "/v1/settings/presence", map[string]string{"share": "nobody"}, &s); code != http.StatusOK || s.Share != PresenceNobody {
		t.Fatalf("set nobody: %d %+v", code, s)
	}
	n.Close()
	n = startNode(t, Config{DataDir: dir})
	if got := n.presenceSetting(); got != PresenceNobody {
		t.Fatalf("after restart the setting is %q, want nobody", got)
	}
	if r, err := n.AnnouncePresence(context.Background()); err != nil || r.Sent != 0 {
		t.Fatalf("announce with nobody: %+v %v", r, err)
	}
}

// TestPresenceExport: the export part holds the setting and last seen.
func TestPresenceExport(t *testing.T) {
	r := startMiniRelay(t)
	alice, bob := startFamily(t, r)
	if _, err := bob.AnnouncePresence(context.Background()); err != nil {
		t.Fatal(err)
	}
	e := alice.presenceExport()
	if e.Share != PresenceContacts || len(e.Contacts) != 1 || e.Contacts[0].ID != mustAccount(t, bob).ID || e.Contacts[0].LastSeen == nil {
		t.Fatalf("presence export %+v", e)
	}
}
