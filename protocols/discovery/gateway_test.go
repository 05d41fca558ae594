package discovery

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func TestConsoleGateway(t *testing.T) {
	var out bytes.Buffer
	g := NewConsoleGateway(ConsoleWriter(&out))
	n := mustNumber(t, "+351912345678")
	if err := g.Send(context.Background(), n, codeText("042042", 10*time.Minute)); err != nil {
		t.Fatal(err)
	}
	if c, ok := g.LastCode(n); !ok || c != "042042" {
		t.Fatalf("LastCode = %q, %v", c, ok)
	}
	if _, ok := g.LastCode(mustNumber(t, "+351912345679")); ok {
		t.Fatal("a code for a number never texted")
	}
	line := out.String()
	if !strings.Contains(line, "042042") || !strings.Contains(line, "…78") || strings.Contains(line, "912345678") {
		t.Fatalf("console line %q: want the code and the masked number only", line)
	}
	// Memory is bounded.
	for i := range maxConsoleKept + 10 {
		_ = g.Send(context.Background(), mustNumber(t, fmt.Sprintf("+44200%06d", i)), "x")
	}
	if len(g.last) > maxConsoleKept || len(g.order) > maxConsoleKept {
		t.Fatalf("console keeps %d texts, cap %d", len(g.last), maxConsoleKept)
	}
}

func TestWebhookGateway(t *testing.T) {
	var (
		mu     sync.Mutex
		got    map[string]string
		auth   string
		status = http.StatusAccepted
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		auth = r.Header.Get("Authorization")
		if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json" {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		body, _ := io.ReadAll(r.Body)
		got = nil
		_ = json.Unmarshal(body, &got)
		w.WriteHeader(status)
		_, _ = w.Write([]byte(`{"error":"cannot deliver to +351912345678"}`))
	}))
	defer srv.Close()
	defer srv.Client().CloseIdleConnections()
	g, err := NewWebhookGateway(srv.URL+"/sms", "s3cret", WebhookHTTPClient(srv.Client()))
	if err != nil {
		t.Fatal(err)
	}
	n := mustNumber(t, "+351912345678")
	if err := g.Send(context.Background(), n, "123456 is your code"); err != nil {
		t.Fatalf("Send: %v", err)
	}
	mu.Lock()
	if got["to"] != "+351912345678" || got["text"] != "123456 is your code" || len(got) != 2 || auth != "Bearer s3cret" {
		t.Fatalf("provider got %v with %q", got, auth)
	}
	status = http.StatusInternalServerError
	mu.Unlock()
	err = g.Send(context.Background(), n, "x")
	if !errors.Is(err, ErrGateway) || !strings.Contains(err.Error(), "500") || strings.Contains(err.Error(), "912345678") {
		t.Fatalf("provider failure: %v; want ErrGateway naming the status, not the number", err)
	}

	// Timeouts.
	release := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	defer slow.Close()
	defer close(release)
	gs, err := NewWebhookGateway(slow.URL, "", WebhookTimeout(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	if err := gs.Send(context.Background(), n, "x"); !errors.Is(err, ErrGateway) || strings.Contains(err.Error(), "912345678") {
		t.Fatalf("slow provider: %v", err)
	}
	gs.client.CloseIdleConnections()

	for _, bad := range []string{"http://sms.example.com/send", "ftp://x/y", "not a url", "https://", "http://10.0.0.1/x"} {
		if _, err := NewWebhookGateway(bad, "t"); err == nil {
			t.Errorf("NewWebhookGateway(%q) accepted", bad)
		}
	}
	if _, err := NewWebhookGateway("https://sms.example.com/send", "a\nb"); err == nil {
		t.Error("token with a line break accepted")
	}
	for _, ok := range []string{"https://sms.example.com/send", "http://127.0.0.1:9000/sms", "http://localhost/sms", "http://[::1]:80/"} {
		if _, err := NewWebhookGateway(ok, "t"); err != nil {
			t.Errorf("NewWebhookGateway(%q): %v", ok, err)
		}
	}
}

// failingGateway refuses every text.
type failingGateway struct{}

func (failingGateway) Send(context.Context, Number, string) error {
	return errors.New("provider down")
}

// TestSMSFailure: a gateway failure is ErrSMSFailed and leaves nothing
// pending; the metrics count it.
func TestSMSFailure(t *testing.T) {
	clk := newClock()
	reg := prometheus.NewRegistry()
	r := startRelay(t, clk, WithMetricsTracer(NewMetricsTracer(reg)))
	r.Stop()
	r.gw = nil
	st, svc := r.reopen(t, failingGateway{})
	c := newClient(t, r)
	a := newAccount(t, "a")
	_, err := c.RequestCode(testCtx(t), r.ID(), a.id, mustNumber(t, "+351912345678"))
	wantCode(t, err, ErrSMSFailed)
	s, err := c.Status(testCtx(t), r.ID(), a.id)
	if err != nil || s.Pending {
		t.Fatalf("status %+v, %v; want nothing pending", s, err)
	}
	if v := metricValue(t, reg, "kinmesh_discovery_sms_total", "result", "failed"); v != 1 {
		t.Fatalf("sms failed counter %v, want 1", v)
	}
	_ = svc.Close()
	_ = st.Close()
}

func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	r := startRelay(t, nil, WithMetricsTracer(NewMetricsTracer(reg)))
	c := newClient(t, r)
	a := newAccount(t, "a")
	verify(t, c, r, a, mustNumber(t, "+351912345678"))
	if _, err := c.Evaluate(testCtx(t), r.ID(), a.id, r.svc.PublicKey(), []Number{mustNumber(t, "+351912345679"), mustNumber(t, "+351912345670")}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.List(testCtx(t), r.ID(), Listing{}, 10); err != nil {
		t.Fatal(err)
	}
	_, _ = c.VerifyCode(testCtx(t), r.ID(), a.id, "123456", a.record)
	for _, m := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"kinmesh_discovery_entries", nil, 1},
		{"kinmesh_discovery_evaluated_total", nil, 2},
		{"kinmesh_discovery_requests_total", []string{"op", "evaluate", "result", "ok"}, 1},
		{"kinmesh_discovery_requests_total", []string{"op", "list", "result", "ok"}, 1},
		{"kinmesh_discovery_requests_total", []string{"op", "send_code", "result", "ok"}, 1},
		{"kinmesh_discovery_requests_total", []string{"op", "verify_code", "result", "ok"}, 1},
		{"kinmesh_discovery_requests_total", []string{"op", "verify_code", "result", "no_code"}, 1},
		{"kinmesh_discovery_sms_total", []string{"result", "ok"}, 1},
	} {
		if v := metricValue(t, reg, m.name, m.labels...); v != m.want {
			t.Errorf("%s%v = %v, want %v", m.name, m.labels, v, m.want)
		}
	}
}

// metricValue returns the value of the metric name whose labels include
// the pairs given (name, value, …), summed over the matching series.
func metricValue(t testing.TB, reg *prometheus.Registry, name string, pairs ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(pairs); i += 2 {
				found := false
				for _, l := range m.GetLabel() {
					if l.GetName() == pairs[i] && l.GetValue() == pairs[i+1] {
						found = true
					}
				}
				if !found {
					continue series
				}
			}
			switch {
			case m.GetCounter() != nil:
				sum += m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				sum += m.GetGauge().GetValue()
			}
		}
	}
	return sum
}
