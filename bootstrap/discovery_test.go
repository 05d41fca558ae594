package bootstrap

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kinmesh/kinmesh/protocols/contact/contacttest"
	"github.com/kinmesh/kinmesh/protocols/discovery"
)

func TestDiscoveryConfig(t *testing.T) {
	path := filepath.Join(t.TempDir(), "relay.toml")
	os.WriteFile(path, []byte(`
data = "/var/lib/kinmesh"
sms_webhook_url = "https://sms.example.com/send"
sms_webhook_token_file = "/etc/kinmesh/sms.token"
phone_sends_per_day = 4
phone_send_burst = 2
phone_number_sends_per_day = 6
phone_number_send_burst = 1
phone_sms_per_hour = 7
phone_sms_per_day = 70
discovery_evaluations_per_day = 500
discovery_evaluation_burst = 1500
discovery_max_entries = 1000
discovery_allow_unverified = true
`), 0o600)
	c, err := LoadConfigFile(path)
	if err != nil {
		t.Fatalf("LoadConfigFile: %v", err)
	}
	if err := c.applyDiscoveryDefaults(); err != nil {
		t.Fatal(err)
	}
	got := [...]int{c.PhoneSendsPerDay, c.PhoneSendBurst, c.PhoneNumberSendsPerDay, c.PhoneNumberSendBurst, c.PhoneSMSPerHour, c.PhoneSMSPerDay, c.DiscoveryEvaluationsPerDay, c.DiscoveryEvaluationBurst, c.DiscoveryMaxEntries}
	if want := [...]int{4, 2, 6, 1, 7, 70, 500, 1500, 1000}; got != want || !c.DiscoveryAllowUnverified || c.SMSGateway != SMSWebhook || c.SMSWebhookTokenFile != "/etc/kinmesh/sms.token" {
		t.Fatalf("discovery settings %v %+v, want %v and the webhook", got, c, want)
	}

	d := Config{DataDir: "x"}
	if err := d.applyDefaults(); err != nil {
		t.Fatal(err)
	}
	if d.SMSGateway != SMSConsole || d.PhoneSendsPerDay != discovery.DefaultSendsPerDay || d.PhoneSMSPerDay != discovery.DefaultSMSPerDay || d.DiscoveryEvaluationBurst != discovery.DefaultEvaluationBurst || d.DiscoveryAllowUnverified {
		t.Fatalf("defaults not applied: %+v", d)
	}
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{DataDir: "x", SMSGateway: "carrier-pigeon"}, "sms_gateway"},
		{Config{DataDir: "x", SMSGateway: SMSWebhook}, "sms_webhook_url"},
		{Config{DataDir: "x", DiscoveryEvaluationsPerDay: -1}, "discovery_evaluations_per_day"},
	} {
		if _, err := New(tc.cfg); !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want ErrConfig naming %s", tc.cfg, err, tc.want)
		}
	}
	// A webhook that is not https fails at start, naming the setting.
	r, err := New(Config{DataDir: filepath.Join(t.TempDir(), "r"), Listen: []string{"/ip4/127.0.0.1/tcp/0"}, SMSWebhookURL: "http://sms.example.com/send"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := r.Start(ctx); !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "https") {
		t.Fatalf("Start with an http webhook: %v, want ErrConfig asking for https", err)
	}
}

// syncBuffer is a bytes.Buffer safe for the relay and the test at once.
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

// TestRelayServesDiscovery: a relay verifies a number through its console
// gateway and serves the directory, with its metrics on the relay's
// registry.
func TestRelayServesDiscovery(t *testing.T) {
	var console syncBuffer
	r := startRelay(t, Config{HTTP: "127.0.0.1:0", SMSConsole: &console})
	h := clientHost(t, r)
	c, err := discovery.NewClient(h)
	if err != nil {
		t.Fatal(err)
	}
	id, rec := contacttest.Account(t, "grandma")
	n, _ := discovery.ParseNumber("+351912345678")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.RequestCode(ctx, r.ID(), id, n); err != nil {
		t.Fatalf("RequestCode: %v", err)
	}
	code, ok := r.SMSConsole().LastCode(n)
	if !ok {
		t.Fatal("the console gateway holds no code")
	}
	if line := console.String(); !strings.Contains(line, code) || strings.Contains(line, "912345678") {
		t.Fatalf("console output %q: want the code, not the number", line)
	}
	if _, err := c.VerifyCode(ctx, r.ID(), id, code, rec); err != nil {
		t.Fatalf("VerifyCode: %v", err)
	}
	ms, err := c.Discover(ctx, r.ID(), id, discovery.NewDirectory(discovery.PublicKey{}), []discovery.Number{n})
	if err != nil || len(ms) != 1 || ms[0].Record.Name != "grandma" {
		t.Fatalf("Discover: %+v, %v", ms, err)
	}
	if r.Discovery().Entries() != 1 {
		t.Fatalf("relay directory holds %d entries, want 1", r.Discovery().Entries())
	}

	wantMetrics(t, r, "kinmesh_discovery_entries 1", `kinmesh_discovery_sms_total{result="ok"} 1`, "kinmesh_discovery_evaluated_total 1")
}
