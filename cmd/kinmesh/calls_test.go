package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kinmesh/kinmesh/protocols/calls"
)

// callsAPI is a fake daemon API for the call verbs: it records requests
// and answers from a table.
type callsAPI struct {
	mu   sync.Mutex
	seen []string // "METHOD path body"
	resp map[string]any
}

func (f *callsAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	key := r.Method + " " + r.URL.Path
	f.mu.Lock()
	f.seen = append(f.seen, strings.TrimSpace(key+" "+strings.TrimSpace(string(b))))
	v, ok := f.resp[key]
	f.mu.Unlock()
	if r.Header.Get("Authorization") != "Bearer tok" || !ok {
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte(`{"error":{"code":"unknown_call","message":"no such call"}}`))
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

func (f *callsAPI) last() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.seen[len(f.seen)-1]
}

func TestCallVerbs(t *testing.T) {
	ended := calls.Info{ID: "c1", Peer: "acct", Direction: "out", State: calls.StateEnded, Reason: calls.ReasonHangup, Path: "relay",
		LocalCandidate: "relay", RemoteCandidate: "host", StartedAt: time.Unix(1_800_000_000, 0), SetupMS: 42, DurationS: 3,
		Stats: &calls.Stats{RTTMS: 12.5, JitterMS: 1.5, PacketsLost: 1, PacketsReceived: 99, Codec: "opus,vp8", FPS: 15, Width: 320, Height: 240, FramesReceived: 45}}
	f := &callsAPI{resp: map[string]any{
		"POST /v1/calls":           map[string]any{"call": calls.Info{ID: "c1", State: calls.StateRinging}},
		"POST /v1/calls/c2/accept": map[string]any{"call": calls.Info{ID: "c2", State: calls.StateConnecting}},
		"DELETE /v1/calls/c1":      map[string]any{"call": ended},
		"GET /v1/calls/c1":         map[string]any{"call": ended},
		"GET /v1/calls":            map[string]any{"calls": []calls.Info{ended, {ID: "c2", Direction: "in", State: calls.StateRinging, Peer: "bob"}}},
	}}
	srv := httptest.NewServer(f)
	defer srv.Close()
	api := []string{"--api", strings.TrimPrefix(srv.URL, "http://"), "--token", "tok"}
	ctx := context.Background()
	for _, tt := range []struct {
		name string
		run  func(context.Context, []string, io.Writer, io.Writer) error
		args []string
		req  string
		out  []string
	}{
		{"call", runCall, []string{"acct", "--force-relay"}, `POST /v1/calls {"force_relay":true,"to":"acct"}`, []string{"call c1 ringing"}},
		{"call, followed", runCall, []string{"--follow", "acct"}, "GET /v1/calls/c1", []string{"call c1 ended via relay (hangup)", "rtt 12.5 ms", "320x240 at 15.0 fps"}},
		{"answer", runAnswer, []string{"c2"}, `POST /v1/calls/c2/accept {"force_relay":false}`, []string{"call c2 connecting"}},
		{"hangup", runHangup, []string{"c1"}, "DELETE /v1/calls/c1", []string{"call c1 ended (hangup)"}},
		{"list", runCalls, nil, "GET /v1/calls", []string{"c1  out  ended (hangup)", "relay", "c2  in   ringing"}},
		{"show", runCalls, []string{"c1"}, "GET /v1/calls/c1", []string{"path       relay (relay ↔ host candidates)", "setup      42 ms", "lost 1 of 100 packets, codec opus,vp8"}},
		{"show json", runCalls, []string{"c1", "--json"}, "GET /v1/calls/c1", []string{`"rtt_ms": 12.5`, `"path": "relay"`}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var out strings.Builder
			if err := tt.run(ctx, append(tt.args, api...), &out, io.Discard); err != nil {
				t.Fatalf("%v\n%s", err, out.String())
			}
			if got := f.last(); got != tt.req {
				t.Errorf("request %q, want %q", got, tt.req)
			}
			for _, want := range tt.out {
				if !strings.Contains(out.String(), want) {
					t.Errorf("output lacks %q:\n%s", want, out.String())
				}
			}
		})
	}
	for _, tt := range []struct {
		name string
		run  func(context.Context, []string, io.Writer, io.Writer) error
		args []string
	}{
		{"call nobody", runCall, nil},
		{"answer nothing", runAnswer, nil},
		{"hang up two", runHangup, []string{"a", "b"}},
	} {
		if err := tt.run(ctx, append(tt.args, api...), io.Discard, io.Discard); !errors.Is(err, errUsage) {
			t.Errorf("%s: %v, want a usage error", tt.name, err)
		}
	}
	if err := runHangup(ctx, append([]string{"nope"}, api...), io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), "unknown_call") {
		t.Errorf("hang up an unknown call: %v", err)
	}
	if len(callsCommands()) != 4 {
		t.Error("callsCommands lists the wrong verbs")
	}
}
