package bootstrap

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/protocols/report"
)

func TestReportConfig(t *testing.T) {
	path := filepath.Join(t.TempDir(), "relay.toml")
	os.WriteFile(path, []byte(`
data = "/var/lib/kinmesh"
report_retention = "240h"
reports_per_day = 5
feedback_per_day = 3
report_max_items = 100
report_max_bytes = 10485760
feedback_max_items = 50
feedback_max_bytes = 5242880
report_urgent_reserve = 30
report_peer_share = 4
report_ip_share = 12
`), 0o600)
	c, err := LoadConfigFile(path)
	if err != nil {
		t.Fatalf("LoadConfigFile: %v", err)
	}
	if c.ReportRetention != Duration(240*time.Hour) || c.ReportsPerDay != 5 || c.FeedbackPerDay != 3 || c.ReportMaxItems != 100 || c.ReportMaxBytes != 10<<20 ||
		c.FeedbackMaxItems != 50 || c.FeedbackMaxBytes != 5<<20 || c.ReportUrgentReserve != 30 || c.ReportPeerShare != 4 || c.ReportIPShare != 12 {
		t.Fatalf("report settings %+v", c)
	}
	d := Config{DataDir: "x"}
	if err := d.applyDefaults(); err != nil {
		t.Fatal(err)
	}
	if d.ReportRetention != Duration(report.DefaultRetention) || d.ReportsPerDay != report.DefaultReportsPerDay || d.ReportMaxBytes != report.DefaultMaxBytes ||
		d.FeedbackMaxItems != report.DefaultFeedbackMaxItems || d.FeedbackMaxBytes != report.DefaultFeedbackMaxBytes ||
		d.ReportUrgentReserve != report.DefaultUrgentReserve || d.ReportPeerShare != report.DefaultPeerShare || d.ReportIPShare != report.DefaultIPShare {
		t.Fatalf("defaults not applied: %+v", d)
	}
	for _, bad := range []Config{
		{DataDir: "x", ReportsPerDay: -1},
		{DataDir: "x", ReportMaxBytes: 100},
		{DataDir: "x", FeedbackMaxBytes: 100},
		{DataDir: "x", ReportPeerShare: 101},
		{DataDir: "x", ReportUrgentReserve: 95},
		{DataDir: "x", ReportRetention: Duration(time.Minute)},
	} {
		if _, err := New(bad); !errors.Is(err, ErrConfig) {
			t.Fatalf("New(%+v): %v, want ErrConfig", bad, err)
		}
	}
}

// TestRelayServesReports: a relay queues signed reports and feedback and
// serves them to its operator on the loopback ops endpoint only.
func TestRelayServesReports(t *testing.T) {
	r := startRelay(t, Config{HTTP: "127.0.0.1:0"})
	h := clientHost(t, r)
	c, err := report.NewClient(h)
	if err != nil {
		t.Fatal(err)
	}
	alice, err := e2ee.NewIdentity(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	mallory, err := e2ee.NewIdentity(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rec, err := c.Submit(ctx, r.ID(), alice, report.Submission{
		Kind: report.KindReport, ID: report.SubmissionID(), CreatedAt: time.Now(),
		Reported: mallory.AccountID(), Reason: report.ReasonSpam, Text: "buy my stuff",
	})
	if err != nil {
		t.Fatalf("Submit report: %v", err)
	}
	if _, err := c.Submit(ctx, r.ID(), alice, report.Submission{
		Kind: report.KindFeedback, ID: report.SubmissionID(), CreatedAt: time.Now(), Text: "works great",
	}); err != nil {
		t.Fatalf("Submit feedback: %v", err)
	}

	base := "http://" + r.HTTPAddr()
	var page QueuePage
	if code := opsGet(t, base+"/reports", &page); code != http.StatusOK {
		t.Fatalf("GET /reports: %d", code)
	}
	if len(page.Items) != 1 || page.Items[0].ID != rec.ID || page.Items[0].Reporter != alice.AccountID() || page.Items[0].Reported != mallory.AccountID() || page.Items[0].Text != "buy my stuff" {
		t.Fatalf("GET /reports = %+v", page)
	}
	if code := opsGet(t, base+"/feedback", &page); code != http.StatusOK || len(page.Items) != 1 || page.Items[0].Kind != report.KindFeedback {
		t.Fatalf("GET /feedback: %d %+v", code, page)
	}
	var one struct{ Item report.Item }
	if code := opsGet(t, base+"/reports/"+rec.ID, &one); code != http.StatusOK || one.Item.ID != rec.ID {
		t.Fatalf("GET /reports/%s: %d %+v", rec.ID, code, one)
	}
	if code := opsGet(t, base+"/reports?limit=0", nil); code != http.StatusBadRequest {
		t.Fatalf("GET ?limit=0: %d, want 400", code)
	}

	// Not from the operator: proxied, another Host (DNS rebinding), or a
	// POST without the operator header.
	for _, tc := range []struct {
		name, method, path string
		header             http.Header
		host               string
	}{
		{"proxied", "GET", "/reports", http.Header{"X-Forwarded-For": {"203.0.113.9"}}, ""},
		{"forwarded", "GET", "/feedback", http.Header{"Forwarded": {"for=203.0.113.9"}}, ""},
		{"rebound host", "GET", "/reports", nil, "evil.example:8080"},
		{"post without header", "POST", "/reports/" + rec.ID + "/done", nil, ""},
	} {
		req, _ := http.NewRequest(tc.method, base+tc.path, nil)
		for k, v := range tc.header {
			req.Header[k] = v
		}
		if tc.host != "" {
			req.Host = tc.host
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("%s: %d, want 403", tc.name, resp.StatusCode)
		}
	}

	if code := opsPost(t, base+"/reports/"+rec.ID+"/done"); code != http.StatusOK {
		t.Fatalf("POST done: %d", code)
	}
	if code := opsPost(t, base+"/reports/"+rec.ID+"/done"); code != http.StatusNotFound {
		t.Fatalf("second POST done: %d, want 404", code)
	}
	if code := opsGet(t, base+"/reports", &page); code != http.StatusOK || len(page.Items) != 0 {
		t.Fatalf("after done: %d %+v", code, page)
	}
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, m := range []string{`kinmesh_report_submissions_total{kind="report",result="ok"} 1`, `kinmesh_report_done_total{queue="reports"} 1`} {
		if !strings.Contains(string(b), m) {
			t.Errorf("/metrics lacks %s", m)
		}
	}
}

func opsGet(t *testing.T, url string, out any) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if out != nil && resp.StatusCode == http.StatusOK {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			t.Fatal(err)
		}
	}
	return resp.StatusCode
}

func opsPost(t *testing.T, url string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url, nil)
	req.Header.Set(OperatorHeader, "1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}
