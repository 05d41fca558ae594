package node

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kinmesh/kinmesh/storage"
)

// api calls the node's local API with its token.
func api(t *testing.T, n *Node, method, path string, body any, out any) int {
	t.Helper()
	tok, err := os.ReadFile(filepath.Join(n.cfg.DataDir, TokenFile))
	if err != nil {
		t.Fatal(err)
	}
	var rd *bytes.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	} else {
		rd = bytes.NewReader(nil)
	}
	req, _ := http.NewRequest(method, "http://"+n.APIAddr()+path, rd)
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
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

func TestAccountCreationRules(t *testing.T) {
	now := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	n := startNode(t, Config{API: "127.0.0.1:0", Now: func() time.Time { return now }})
	adult := NewAccount{Name: "Rosa", BirthDate: "1950-04-02", AcceptPolicy: PolicyVersion}
	with := func(f func(*NewAccount)) NewAccount { a := adult; f(&a); return a }
	tests := []struct {
		name   string
		req    NewAccount
		status int
		code   string
	}{
		{"12 years old", with(func(a *NewAccount) { a.BirthDate = "2014-11-29" }), 422, "age_restricted"},
		{"13 today outside the EU", with(func(a *NewAccount) { a.BirthDate = "2013-11-28"; a.Country = "US" }), 0, ""},
		{"15 in the EU without consent", with(func(a *NewAccount) { a.BirthDate = "2011-06-01"; a.Country = "PT" }), 422, "parental_consent_required"},
		{"future birth date", with(func(a *NewAccount) { a.BirthDate = "2030-01-01" }), 422, "invalid_profile"},
		{"malformed date", with(func(a *NewAccount) { a.BirthDate = "02/04/1950" }), 422, "invalid_profile"},
		{"impossible date", with(func(a *NewAccount) { a.BirthDate = "1950-02-30" }), 422, "invalid_profile"},
		{"older than 130", with(func(a *NewAccount) { a.BirthDate = "1890-01-01" }), 422, "invalid_profile"},
		{"no name", with(func(a *NewAccount) { a.Name = "  " }), 422, "invalid_profile"},
		{"absurd name", with(func(a *NewAccount) { a.Name = strings.Repeat("ß", 65) }), 422, "invalid_profile"},
		{"control characters", with(func(a *NewAccount) { a.Name = "Rosa\x00" }), 422, "invalid_profile"},
		{"bad country", with(func(a *NewAccount) { a.Country = "Portugal" }), 422, "invalid_profile"},
		{"policy not accepted", with(func(a *NewAccount) { a.AcceptPolicy = "" }), 422, "policy_not_accepted"},
		{"old policy", with(func(a *NewAccount) { a.AcceptPolicy = "2020-01-01" }), 422, "policy_not_accepted"},
	}
	for _, tt := range tests {
		if tt.code == "" {
			continue // the valid case is checked by checkNewAccount below
		}
		t.Run(tt.name, func(t *testing.T) {
			var e apiError
			if got := api(t, n, "POST", "/v1/account", tt.req, &e); got != tt.status || e.Error.Code != tt.code {
				t.Fatalf("got %d %q, want %d %q (%s)", got, e.Error.Code, tt.status, tt.code, e.Error.Message)
			}
			if _, err := n.Account(); err != ErrNoAccount {
				t.Fatalf("an account exists after a refused creation: %v", err)
			}
			if got := keysIn(t, n, "account"); got != 0 {
				t.Fatalf("%d keys stored after a refused creation", got)
			}
		})
	}
	if _, err := checkNewAccount(tests[1].req, now, PolicyVersion); err != nil {
		t.Fatalf("13 today: %v", err)
	}
	eu := with(func(a *NewAccount) { a.BirthDate = "2011-06-01"; a.Country = "PT"; a.ParentalConsent = true })
	var out struct{ Account Account }
	if got := api(t, n, "POST", "/v1/account", eu, &out); got != 201 || !out.Account.ParentalConsent {
		t.Fatalf("EU minor with consent: %d %+v", got, out)
	}
	if got := api(t, n, "POST", "/v1/account", adult, nil); got != http.StatusConflict {
		t.Fatalf("second account: %d, want 409", got)
	}
	http.DefaultClient.CloseIdleConnections()
}

func keysIn(t *testing.T, n *Node, ns string) int {
	t.Helper()
	c := 0
	if err := n.store.Namespace(ns).List(context.Background(), listAll, func(string, []byte) error { c++; return nil }); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestProfileStaysOnDevice: birth date, country and gender are not in the
// contact record or the invite.
func TestProfileStaysOnDevice(t *testing.T) {
	n := startNode(t, Config{})
	if _, err := n.CreateAccount(context.Background(), NewAccount{Name: "Rosa", BirthDate: "1950-04-02", Country: "PT", Gender: "female-marker-xyz", AcceptPolicy: PolicyVersion}); err != nil {
		t.Fatal(err)
	}
	inv, err := n.Invite()
	if err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{"1950-04-02", "1950", "female-marker-xyz"} {
		if bytes.Contains(inv.Record.Raw, []byte(secret)) || strings.Contains(inv.String(), secret) {
			t.Errorf("%q leaks into the contact record or invite", secret)
		}
	}
}

// TestConsentGating: after a policy change, optional collection is off
// until the user accepts the new version.
func TestConsentGating(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "node")
	ctx := context.Background()
	n := startNode(t, Config{DataDir: dir, PolicyVersion: "2026-01-01"})
	if _, err := n.CreateAccount(ctx, NewAccount{Name: "Rosa", BirthDate: "1950-04-02", AcceptPolicy: "2026-01-01"}); err != nil {
		t.Fatal(err)
	}
	yes := true
	v, err := n.UpdateSettings(ctx, &yes, &yes)
	if err != nil || !v.Effective.DiagnosticsSharing || !v.Effective.CallQualitySharing {
		t.Fatalf("enable optional collection: %+v, %v", v, err)
	}
	if !n.diagnosticsConsent() {
		t.Fatal("diagnostics consent off after enabling it")
	}
	n.Close()

	n = startNode(t, Config{DataDir: dir, PolicyVersion: "2026-11-01"})
	v, err = n.SettingsView(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !v.Policy.NeedsAcceptance || v.Effective.DiagnosticsSharing || v.Effective.CallQualitySharing || !v.Settings.DiagnosticsSharing {
		t.Fatalf("after a policy change: %+v, want settings kept but not in effect", v)
	}
	if n.diagnosticsConsent() || n.callQualityConsent() {
		t.Fatal("optional collection on before the new policy is accepted")
	}
	if _, err := n.UpdateSettings(ctx, &yes, nil); err != ErrPolicyNotAccepted {
		t.Fatalf("enabling before accepting: %v, want ErrPolicyNotAccepted", err)
	}
	if _, err := n.AcceptPolicy(ctx, "2026-01-01"); err != ErrPolicyVersion {
		t.Fatalf("accepting an old version: %v, want ErrPolicyVersion", err)
	}
	if v, err = n.AcceptPolicy(ctx, "2026-11-01"); err != nil || v.Policy.NeedsAcceptance || !v.Effective.DiagnosticsSharing {
		t.Fatalf("after accepting: %+v, %v", v, err)
	}
	hist, err := n.ConsentHistory(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, h := range hist {
		kinds = append(kinds, h.Kind+":"+h.PolicyVersion+h.Setting)
	}
	want := "policy_accepted:2026-01-01 setting:diagnostics_sharing setting:call_quality_sharing policy_accepted:2026-11-01"
	if got := strings.Join(kinds, " "); got != want {
		t.Fatalf("consent history %q, want %q", got, want)
	}
}

var listAll = storage.ListOptions{}
