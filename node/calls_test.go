package node

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	relayv2 "github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/relay"

	"github.com/kinmesh/kinmesh/protocols/calls"
	"github.com/kinmesh/kinmesh/protocols/mailbox"
	"github.com/kinmesh/kinmesh/protocols/netkit"
	"github.com/kinmesh/kinmesh/protocols/prekeys"
	"github.com/kinmesh/kinmesh/protocols/turn"
	"github.com/kinmesh/kinmesh/storage"
)

var callsLog = slog.New(slog.DiscardHandler)

// callsRelay is the part of a bootstrap relay calls need (node never links
// bootstrap): circuit relay, mailbox and prekeys (for accounts), and a
// TURN server with its credential service.
type callsRelay struct {
	h    host.Host
	turn *turn.Server
}

func startCallsRelay(t *testing.T) *callsRelay {
	t.Helper()
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableMetrics(), libp2p.ForceReachabilityPublic())
	if err != nil {
		t.Fatal(err)
	}
	st, err := storage.Open(t.TempDir(), storage.WithProfile(storage.ProfileRelay), storage.WithLogger(callsLog))
	if err != nil {
		t.Fatal(err)
	}
	rl, err := relayv2.New(h)
	if err != nil {
		t.Fatal(err)
	}
	mb, err := mailbox.NewService(h, st, mailbox.WithLogger(callsLog))
	if err != nil {
		t.Fatal(err)
	}
	pk, err := prekeys.NewService(h, st, prekeys.WithLogger(callsLog))
	if err != nil {
		t.Fatal(err)
	}
	secret := make([]byte, turn.SecretSize)
	_, _ = rand.Read(secret)
	ts, err := turn.NewServer(h, secret, netip.MustParseAddr("127.0.0.1"),
		turn.WithListen(netip.MustParseAddrPort("127.0.0.1:0")), turn.WithThreads(1), turn.WithLogger(callsLog))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ts.Close()
		pk.Close()
		mb.Close()
		rl.Close()
		h.Close()
		st.Close()
	})
	return &callsRelay{h: h, turn: ts}
}

// callsPair starts two nodes on r whose accounts are contacts, and
// returns them with the base URLs of their local APIs.
func callsPair(t *testing.T, r *callsRelay) (a, b *Node, apiA, apiB string) {
	t.Helper()
	boot := netkit.P2PAddrs(r.h.ID(), r.h.Addrs())[:1]
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var ns []*Node
	var apis []string
	for _, name := range []string{"alice", "bob"} {
		n := startNode(t, Config{DataDir: filepath.Join(t.TempDir(), name), Bootstrap: boot, API: "127.0.0.1:0", RelayBackoff: 50 * time.Millisecond})
		if _, err := n.CreateAccount(ctx, NewAccount{Name: name, BirthDate: "1970-01-01", AcceptPolicy: PolicyVersion}); err != nil {
			t.Fatal(err)
		}
		if err := n.WaitRelays(ctx, 1); err != nil {
			t.Fatal(err)
		}
		ns, apis = append(ns, n), append(apis, "http://"+n.APIAddr())
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
	return ns[0], ns[1], apis[0], apis[1]
}

// apiDo sends a request to a node's API and decodes the answer.
func apiDo(t *testing.T, n *Node, base, method, path string, body, out any) int {
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

// waitCallEvent waits for a call event on events that cond accepts.
func waitCallEvent(t *testing.T, events <-chan Event, cond func(Event, calls.Info) bool) calls.Info {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case e := <-events:
			if i, ok := e.Call.(calls.Info); ok && cond(e, i) {
				return i
			}
		case <-timeout:
			t.Fatal("no such call event")
		}
	}
}

// TestCallsAPI: a call placed and answered through the local API, with
// its events, statistics, export, hang-up, errors and settings.
func TestCallsAPI(t *testing.T) {
	r := startCallsRelay(t)
	a, b, apiA, apiB := callsPair(t, r)
	bAcct, _ := b.Account()
	aAcct, _ := a.Account()
	evA, stopA := a.Subscribe()
	defer stopA()
	evB, stopB := b.Subscribe()
	defer stopB()

	var placed struct{ Call calls.Info }
	if st := apiDo(t, a, apiA, "POST", "/v1/calls", map[string]any{"to": bAcct.ID}, &placed); st != http.StatusCreated || placed.Call.ID == "" || placed.Call.State != calls.StateRinging {
		t.Fatalf("POST /v1/calls: %d %+v", st, placed)
	}
	ring := waitCallEvent(t, evB, func(e Event, i calls.Info) bool { return e.Type == "call.ringing" && i.Direction == calls.DirectionIn })
	if ring.Peer != aAcct.ID {
		t.Fatalf("ringing from %q, want %q", ring.Peer, aAcct.ID)
	}
	var list struct{ Calls []calls.Info }
	if st := apiDo(t, b, apiB, "GET", "/v1/calls", nil, &list); st != 200 || len(list.Calls) != 1 || list.Calls[0].Direction != "in" || list.Calls[0].State != "ringing" {
		t.Fatalf("GET /v1/calls: %d %+v", st, list)
	}
	if st := apiDo(t, a, apiA, "POST", "/v1/calls/"+placed.Call.ID+"/accept", nil, nil); st != http.StatusConflict {
		t.Errorf("accepting an outgoing call: %d, want 409", st)
	}
	var accepted struct{ Call calls.Info }
	if st := apiDo(t, b, apiB, "POST", "/v1/calls/"+ring.ID+"/accept", nil, &accepted); st != 200 || accepted.Call.State != calls.StateConnecting {
		t.Fatalf("accept: %d %+v", st, accepted)
	}
	waitCallEvent(t, evA, func(e Event, i calls.Info) bool { return e.Type == "call.connected" && i.ID == placed.Call.ID })
	waitCallEvent(t, evB, func(e Event, i calls.Info) bool { return e.Type == "call.connected" && i.ID == ring.ID })

	// Statistics of the test clips, through GET /v1/calls/{id}.
	var got struct {
		Call struct {
			ID, State, Path string
			Stats           map[string]any
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		apiDo(t, b, apiB, "GET", "/v1/calls/"+ring.ID, nil, &got)
		if s := got.Call.Stats; s != nil && s["fps"].(float64) > 0 && s["width"].(float64) > 0 && s["rtt_ms"].(float64) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no plausible statistics: %+v", got)
		}
		select {
		case <-evB:
		case <-time.After(200 * time.Millisecond):
		}
	}
	for _, k := range []string{"rtt_ms", "jitter_ms", "packets_lost", "codec", "fps", "width", "height"} {
		if _, ok := got.Call.Stats[k]; !ok {
			t.Errorf("stats lack %q: %v", k, got.Call.Stats)
		}
	}
	if got.Call.Path != "direct" || got.Call.Stats["codec"] != "opus,vp8" || got.Call.Stats["width"].(float64) != 320 {
		t.Errorf("call %+v", got.Call)
	}

	// Call-quality statistics leave the device only with consent: the
	// diagnostics record feedback carries has them only then, and never
	// says with whom.
	if _, err := b.CallQualityReport(); !errors.Is(err, ErrNoCallQualityConsent) {
		t.Errorf("quality report without consent: %v", err)
	}
	outward := func() Diagnostics {
		t.Helper()
		raw, err := b.diagnosticsJSON(context.Background(), 32<<10)
		if err != nil {
			t.Fatal(err)
		}
		var d Diagnostics
		if err := json.Unmarshal(raw, &d); err != nil {
			t.Fatal(err)
		}
		for _, secret := range []string{aAcct.ID, bAcct.ID, ring.ID, placed.Call.ID} {
			if bytes.Contains(raw, []byte(secret)) {
				t.Errorf("the diagnostics record names %q", secret)
			}
		}
		return d
	}
	if d := outward(); d.CallQuality != nil {
		t.Errorf("diagnostics without call-quality consent carry %+v", d.CallQuality)
	}
	on := true
	if _, err := b.UpdateSettings(context.Background(), nil, &on); err != nil {
		t.Fatal(err)
	}
	if rep, err := b.CallQualityReport(); err != nil || len(rep) != 1 || rep[0].Stats == nil || rep[0].Path != "direct" {
		t.Errorf("quality report with consent: %+v, %v", rep, err)
	}
	if d := outward(); len(d.CallQuality) != 1 || d.CallQuality[0].Stats == nil || d.CallQuality[0].Stats.Codec != "opus,vp8" {
		t.Errorf("diagnostics with call-quality consent: %+v", d.CallQuality)
	}

	// b hangs up; both end; the call stays readable and is exported.
	var hung struct{ Call calls.Info }
	if st := apiDo(t, b, apiB, "DELETE", "/v1/calls/"+ring.ID, nil, &hung); st != 200 || hung.Call.State != calls.StateEnded {
		t.Fatalf("DELETE: %d %+v", st, hung)
	}
	end := waitCallEvent(t, evA, func(e Event, i calls.Info) bool { return e.Type == "call.ended" && i.ID == placed.Call.ID })
	if end.Reason != calls.ReasonRemoteHangup || end.Stats == nil || end.DurationS <= 0 {
		t.Errorf("caller's end: %+v", end)
	}
	exp, err := a.Export(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(exp.Calls) != 1 || exp.Calls[0].ID != placed.Call.ID || exp.Calls[0].Stats == nil {
		t.Errorf("export calls: %+v", exp.Calls)
	}

	// Errors.
	var e apiError
	if st := apiDo(t, a, apiA, "POST", "/v1/calls", map[string]any{"to": "nobody"}, &e); st != 404 || e.Error.Code != "unknown_contact" {
		t.Errorf("call nobody: %d %+v", st, e)
	}
	if st := apiDo(t, a, apiA, "DELETE", "/v1/calls/nope", nil, &e); st != 404 || e.Error.Code != "unknown_call" {
		t.Errorf("hang up no call: %d %+v", st, e)
	}
	if _, err := a.BlockContact(context.Background(), bAcct.ID); err != nil {
		t.Fatal(err)
	}
	if st := apiDo(t, a, apiA, "POST", "/v1/calls", map[string]any{"to": bAcct.ID}, &e); st != 403 || e.Error.Code != "blocked" {
		t.Errorf("call a blocked contact: %d %+v", st, e)
	}

	// The relay-only setting.
	var cs struct {
		ForceRelay bool `json:"force_relay"`
	}
	if st := apiDo(t, a, apiA, "POST", "/v1/calls/settings", map[string]any{"force_relay": true}, &cs); st != 200 || !cs.ForceRelay {
		t.Fatalf("set force_relay: %d %+v", st, cs)
	}
	cs.ForceRelay = false
	if st := apiDo(t, a, apiA, "GET", "/v1/calls/settings", nil, &cs); st != 200 || !cs.ForceRelay {
		t.Fatalf("get force_relay: %d %+v", st, cs)
	}
	if v, err := a.SettingsView(context.Background()); err != nil || !v.Settings.CallForceRelay || !v.Effective.CallForceRelay {
		t.Fatalf("settings view: %+v, %v", v, err)
	}
	if !a.callForceRelay() {
		t.Fatal("the setting does not apply")
	}
}
