package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kinmesh/kinmesh/node"
)

// photoAPI answers the photo endpoints with raw bytes, like the daemon.
type photoAPI struct {
	fakeAPI
	photo []byte
}

func (f *photoAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/photo") && r.Header.Get("Authorization") == "Bearer tok" {
		f.mu.Lock()
		f.calls = append(f.calls, r.Method+" "+r.URL.Path+" ")
		f.mu.Unlock()
		w.Header().Set("Content-Type", "image/png")
		_, _ = w.Write(f.photo)
		return
	}
	f.fakeAPI.ServeHTTP(w, r)
}

func TestRecoveryVerbs(t *testing.T) {
	at := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	on := node.RecoveryStatus{Enabled: true, EnabledAt: &at, LastBackup: &at, Size: 4151, PhoneVerified: true,
		Relays: []node.RecoveryRelay{{Relay: "12D3relay", UpdatedAt: at, ExpiresAt: at.Add(90 * 24 * time.Hour)}}}
	off := node.RecoveryStatus{Relays: []node.RecoveryRelay{}}
	png := []byte("\x89PNG\r\n\x1a\n fake")
	f := &photoAPI{photo: png, fakeAPI: fakeAPI{reply: map[string]any{
		"POST /v1/recovery":        node.RecoveryEnabled{Secret: "ABCD-EFGH-IJKL-MNOP-QRST-UVWX-YZ23-4567", Recovery: &on},
		"GET /v1/recovery":         map[string]any{"recovery": on},
		"DELETE /v1/recovery":      map[string]any{"recovery": off},
		"POST /v1/recovery/backup": map[string]any{"recovery": on},
		"POST /v1/recovery/start":  map[string]any{"recovery": node.RecoveryStart{Number: "+351912345678", Relay: "12D3relay", CodeExpiresAt: at, AttemptsLeft: 5}},
		"POST /v1/recovery/finish": node.Restored{Account: &node.Account{ID: "acct1", Name: "Rosa"}, BackupAt: at, Contacts: 3, Blocks: 1, Introduced: 3, PrekeysPending: []string{}},
		"PUT /v1/account/photo":    map[string]any{"photo": node.PhotoInfo{Blob: "ab12", Type: "image/png", Size: len(png)}},
		"DELETE /v1/account/photo": map[string]any{"photo": nil},
	}}}
	srv := httptest.NewServer(f)
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	dir := t.TempDir()
	img := filepath.Join(dir, "me.png")
	if err := os.WriteFile(img, png, 0o600); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out.png")
	api := []string{"--api", addr, "--token", "tok"}
	with := func(args ...string) []string { return append(args, api...) }

	ctx := context.Background()
	tests := []struct {
		name string
		run  func(context.Context, []string, io.Writer, io.Writer) error
		args []string
		call string // the last call made
		out  string // in the output
	}{
		{"status", runRecovery, with(), "GET /v1/recovery ", "held by relay 12D3relay"},
		{"on", runRecovery, with("on"), "POST /v1/recovery ", "ABCD-EFGH-IJKL-MNOP-QRST-UVWX-YZ23-4567"},
		{"backup", runRecovery, with("backup"), "POST /v1/recovery/backup ", "last backup"},
		{"off", runRecovery, with("off"), "DELETE /v1/recovery ", "account recovery is off"},
		{"start", runRecovery, with("start", "+351", "912", "345", "678"), `POST /v1/recovery/start {"number":"+351 912 345 678","relay":""}`, "relay 12D3relay texted a code to +351912345678"},
		{"start on a relay", runRecovery, with("start", "--relay", "12D3relay", "+351912345678"), `POST /v1/recovery/start {"number":"+351912345678","relay":"12D3relay"}`, "texted a code"},
		{"finish", runRecovery, with("finish", "--code", "123456", "--secret", "abcd efgh"), `POST /v1/recovery/finish {"code":"123456","secret":"abcd efgh"}`, "restored account Rosa (acct1)"},
		{"json", runRecovery, with("status", "--json"), "GET /v1/recovery ", `"enabled": true`},
		{"photo set", runPhoto, with("set", img), "PUT /v1/account/photo " + string(png), "profile photo set: image/png"},
		{"photo get", runPhoto, with("get", "--out", out), "GET /v1/account/photo ", "wrote " + out},
		{"contact photo", runPhoto, with("get", "acct1", "--out", "-"), "GET /v1/contacts/acct1/photo ", string(png)},
		{"photo clear", runPhoto, with("clear"), "DELETE /v1/account/photo ", "profile photo cleared"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := tt.run(ctx, tt.args, &buf, io.Discard); err != nil {
				t.Fatalf("run: %v", err)
			}
			f.mu.Lock()
			last := f.calls[len(f.calls)-1]
			f.mu.Unlock()
			if last != tt.call {
				t.Fatalf("last call\n got %s\nwant %s", last, tt.call)
			}
			if !strings.Contains(buf.String(), tt.out) {
				t.Fatalf("output %q lacks %q", buf.String(), tt.out)
			}
		})
	}
	if b, err := os.ReadFile(out); err != nil || !bytes.Equal(b, png) {
		t.Fatalf("photo get wrote %q, %v", b, err)
	}
	for _, args := range [][]string{{"start"}, {"finish", "--code", "1"}, {"fly"}, {"on", "now"}} {
		if err := runRecovery(ctx, with(args...), io.Discard, io.Discard); !errors.Is(err, errUsage) {
			t.Errorf("recovery %v: %v, want a usage error", args, err)
		}
	}
	for _, args := range [][]string{{}, {"set"}, {"get"}, {"clear", "x"}, {"paint"}} {
		if err := runPhoto(ctx, with(args...), io.Discard, io.Discard); !errors.Is(err, errUsage) {
			t.Errorf("photo %v: %v, want a usage error", args, err)
		}
	}
	// An API error comes back with its code.
	f.mu.Lock()
	delete(f.reply, "POST /v1/recovery/finish")
	f.mu.Unlock()
	if err := runRecovery(ctx, with("finish", "--secret", "x"), io.Discard, io.Discard); err == nil {
		t.Error("finish against a failing API succeeded")
	}
	names := map[string]bool{}
	for _, c := range commands() {
		names[c.name] = true
	}
	if !names["recovery"] || !names["photo"] {
		t.Fatal("recovery and photo are not registered")
	}
}
