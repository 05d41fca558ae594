package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kinmesh/kinmesh/node"
)

// fakeAPI records the calls a verb makes and answers from a table.
type fakeAPI struct {
	mu    sync.Mutex
	calls []string // "METHOD path body"
	reply map[string]any
}

func (f *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	key := r.Method + " " + r.URL.Path
	f.mu.Lock()
	f.calls = append(f.calls, key+" "+strings.TrimSpace(string(b)))
	reply, ok := f.reply[key]
	f.mu.Unlock()
	if r.Header.Get("Authorization") != "Bearer tok" {
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	if !ok {
		w.WriteHeader(http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(reply)
}

func TestPhoneVerbs(t *testing.T) {
	verified := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	f := &fakeAPI{reply: map[string]any{
		"POST /v1/phone":        map[string]any{"phone": node.PhoneStatus{Pending: &node.PendingPhone{Number: "+351912345678", CodeExpiresAt: verified, AttemptsLeft: 5}}},
		"POST /v1/phone/verify": map[string]any{"phone": node.PhoneStatus{Number: "+351912345678", Verified: true, VerifiedAt: &verified, Relay: "12D3relay"}},
		"GET /v1/phone":         map[string]any{"phone": node.PhoneStatus{Number: "+351912345678", Verified: true, Relay: "12D3gone", NeedsReverification: true}},
		"DELETE /v1/phone":      map[string]any{"phone": node.PhoneStatus{}},
		"POST /v1/discovery": node.DiscoveryResult{
			Matches: []node.DiscoveryMatch{{Number: "+351912345678", Contact: node.DiscoveredContact{ID: "acct1", Name: "Rosa", Invite: "kinmesh:abc"}}},
			Invalid: []string{"112"},
		},
		"POST /v1/contacts": map[string]any{"contact": node.Contact{ID: "acct1", Name: "Rosa"}},
	}}
	srv := httptest.NewServer(f)
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	book := filepath.Join(t.TempDir(), "book.txt")
	os.WriteFile(book, []byte("# family\n+44 7700 900123\n\n+33 6 12 34 56 78  # Anne\n"), 0o600)

	ctx := context.Background()
	tests := []struct {
		name string
		run  func(context.Context, []string, io.Writer, io.Writer) error
		args []string
		call string // the last call made
		out  string // in the output
	}{
		{"verify", runPhone, []string{"verify", "--api", addr, "+351", "912", "345", "678", "--token", "tok"}, `POST /v1/phone {"number":"+351 912 345 678"}`, "code sent to +351912345678"},
		{"code", runPhone, []string{"code", "123", "456", "--api", addr, "--token", "tok"}, `POST /v1/phone/verify {"code":"123456"}`, "phone +351912345678 verified on relay 12D3relay"},
		{"status", runPhone, []string{"--api", addr, "--token", "tok"}, "GET /v1/phone ", "verify the number again to move the link and the backup (kinmesh phone verify +351912345678)"},
		{"unlink", runPhone, []string{"unlink", "--api", addr, "--token", "tok"}, "DELETE /v1/phone ", "phone number unlinked"},
		{"discover", runDiscover, []string{"--api", addr, "--token", "tok", "+351912345678", "112", "--file", book}, `POST /v1/discovery {"numbers":["+351912345678","112","+44 7700 900123","+33 6 12 34 56 78"]}`, "1 of 3 numbers are kinmesh users"},
		{"discover and add", runDiscover, []string{"--add", "--api", addr, "--token", "tok", "+351912345678"}, `POST /v1/contacts {"invite":"kinmesh:abc"}`, "added Rosa (acct1)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			if err := tt.run(ctx, tt.args, &out, io.Discard); err != nil {
				t.Fatalf("run: %v", err)
			}
			f.mu.Lock()
			last := f.calls[len(f.calls)-1]
			f.mu.Unlock()
			if last != tt.call {
				t.Fatalf("last call\n got %s\nwant %s", last, tt.call)
			}
			if !strings.Contains(out.String(), tt.out) {
				t.Fatalf("output %q lacks %q", out.String(), tt.out)
			}
		})
	}
	for _, args := range [][]string{{"verify", "--api", addr, "--token", "tok"}, {"code"}, {"fly"}, {"unlink", "now"}} {
		if err := runPhone(ctx, args, io.Discard, io.Discard); !errors.Is(err, errUsage) {
			t.Errorf("phone %v: %v, want a usage error", args, err)
		}
	}
	if err := runDiscover(ctx, []string{"--api", addr, "--token", "tok"}, io.Discard, io.Discard); !errors.Is(err, errUsage) {
		t.Errorf("discover without numbers: %v, want a usage error", err)
	}
	if len(phoneCommands()) != 2 {
		t.Fatal("phoneCommands lists the wrong verbs")
	}
}
