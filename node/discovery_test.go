package node

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"

	"github.com/kinmesh/kinmesh/protocols/discovery"
	"github.com/kinmesh/kinmesh/protocols/netkit"
	"github.com/kinmesh/kinmesh/storage"
)

// phoneClock is a settable clock shared by a test's relay and nodes.
type phoneClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *phoneClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *phoneClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// discoveryRelay is a relay host running only the discovery service, on a
// real store, with a console SMS gateway.
type discoveryRelay struct {
	h    host.Host
	svc  *discovery.Service
	gw   *discovery.ConsoleGateway
	addr string
}

func startDiscoveryRelay(t *testing.T, clk *phoneClock, opts ...discovery.Option) *discoveryRelay {
	t.Helper()
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableMetrics())
	if err != nil {
		t.Fatal(err)
	}
	st, err := storage.Open(t.TempDir(), storage.WithProfile(storage.ProfileRelay), storage.WithClock(clk.Now), storage.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	gw := discovery.NewConsoleGateway()
	svc, err := discovery.NewService(h, st, gw, append([]discovery.Option{discovery.WithClock(clk.Now), discovery.WithLogger(slog.New(slog.DiscardHandler))}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = svc.Close()
		_ = h.Close()
		_ = st.Close()
	})
	return &discoveryRelay{h: h, svc: svc, gw: gw, addr: netkit.P2PAddrs(h.ID(), h.Addrs())[0]}
}

// phoneNode is a started node with an account, and its discovery API.
type phoneNode struct {
	*Node
	mux *http.ServeMux
}

func startPhoneNode(t *testing.T, clk *phoneClock, r *discoveryRelay, name string) *phoneNode {
	t.Helper()
	n := startNode(t, Config{DataDir: filepath.Join(t.TempDir(), name), Bootstrap: []string{r.addr}, Now: clk.Now})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := n.CreateAccount(ctx, NewAccount{Name: name, BirthDate: "1970-01-01", AcceptPolicy: PolicyVersion}); err != nil {
		t.Fatalf("CreateAccount: %v", err)
	}
	a := &apiServer{n: n}
	mux := http.NewServeMux()
	a.discoveryRoutes(mux)
	return &phoneNode{Node: n, mux: mux}
}

// call calls the node's discovery API.
func (p *phoneNode) call(t *testing.T, method, path string, body any, out any) (int, http.Header) {
	t.Helper()
	var rd bytes.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd.Reset(b)
	}
	req := httptest.NewRequest(method, path, &rd)
	rec := httptest.NewRecorder()
	p.mux.ServeHTTP(rec, req)
	if out != nil {
		reflect.ValueOf(out).Elem().SetZero()
		if err := json.Unmarshal(rec.Body.Bytes(), out); err != nil {
			t.Fatalf("%s %s: %d %s: %v", method, path, rec.Code, rec.Body, err)
		}
	}
	return rec.Code, rec.Header()
}

type apiErr struct {
	Error struct{ Code, Message string } `json:"error"`
}

func (p *phoneNode) wantError(t *testing.T, method, path string, body any, status int, code string) http.Header {
	t.Helper()
	var e apiErr
	got, h := p.call(t, method, path, body, &e)
	if got != status || e.Error.Code != code {
		t.Fatalf("%s %s %v: %d %q (%s), want %d %q", method, path, body, got, e.Error.Code, e.Error.Message, status, code)
	}
	return h
}

type phoneReply struct {
	Phone PhoneStatus `json:"phone"`
}

// verifyPhone verifies number for p through the API.
func (p *phoneNode) verifyPhone(t *testing.T, r *discoveryRelay, number string) {
	t.Helper()
	var out phoneReply
	if st, _ := p.call(t, "POST", "/v1/phone", map[string]string{"number": number}, &out); st != http.StatusAccepted {
		t.Fatalf("POST /v1/phone: %d", st)
	}
	num, _ := discovery.ParseNumber(number)
	code, ok := r.gw.LastCode(num)
	if !ok {
		t.Fatal("no code sent")
	}
	if st, _ := p.call(t, "POST", "/v1/phone/verify", map[string]string{"code": code}, &out); st != http.StatusOK || !out.Phone.Verified {
		t.Fatalf("POST /v1/phone/verify: %d %+v", st, out)
	}
}

// TestPhoneAPI: the phone link through the local API, error codes
// included.
func TestPhoneAPI(t *testing.T) {
	clk := &phoneClock{t: time.Now().Truncate(time.Second)}
	r := startDiscoveryRelay(t, clk)
	n := startPhoneNode(t, clk, r, "rosa")

	var out phoneReply
	if st, _ := n.call(t, "GET", "/v1/phone", nil, &out); st != http.StatusOK || out.Phone.Verified || out.Phone.Pending != nil {
		t.Fatalf("GET /v1/phone before anything: %d %+v", st, out)
	}
	n.wantError(t, "POST", "/v1/phone", map[string]string{"number": "912 345 678"}, 422, "invalid_phone_number")
	n.wantError(t, "POST", "/v1/phone/verify", map[string]string{"code": "123456"}, 409, "no_code_pending")
	n.wantError(t, "POST", "/v1/phone/verify", map[string]string{"code": "12a"}, 422, "invalid_code")

	if st, _ := n.call(t, "POST", "/v1/phone", map[string]string{"number": "+351 912 345 678"}, &out); st != http.StatusAccepted {
		t.Fatalf("POST /v1/phone: %d", st)
	}
	if p := out.Phone.Pending; p == nil || p.Number != "+351912345678" || p.AttemptsLeft != discovery.DefaultMaxAttempts || p.Relay != r.h.ID().String() {
		t.Fatalf("pending %+v", out.Phone.Pending)
	}
	code, _ := r.gw.LastCode("+351912345678")
	wrong := "000000"
	if code == wrong {
		wrong = "999999"
	}
	n.wantError(t, "POST", "/v1/phone/verify", map[string]string{"code": wrong}, 422, "wrong_code")
	if _, _ = n.call(t, "GET", "/v1/phone", nil, &out); out.Phone.Pending == nil || out.Phone.Pending.AttemptsLeft != discovery.DefaultMaxAttempts-1 {
		t.Fatalf("after a wrong code: %+v", out.Phone.Pending)
	}
	// Expired codes.
	clk.Advance(discovery.DefaultCodeTTL + time.Second)
	n.wantError(t, "POST", "/v1/phone/verify", map[string]string{"code": code}, 410, "code_expired")
	n.wantError(t, "POST", "/v1/phone/verify", map[string]string{"code": code}, 409, "no_code_pending")

	n.verifyPhone(t, r, "+351 912 345 678")
	if _, _ = n.call(t, "GET", "/v1/phone", nil, &out); !out.Phone.Verified || out.Phone.Number != "+351912345678" || out.Phone.Relay != r.h.ID().String() || out.Phone.Pending != nil {
		t.Fatalf("GET /v1/phone after verifying: %+v", out.Phone)
	}
	// Too many wrong codes lock verification, with a Retry-After.
	if st, _ := n.call(t, "POST", "/v1/phone", map[string]string{"number": "+351 912 345 679"}, nil); st != http.StatusAccepted {
		t.Fatalf("second number: %d", st)
	}
	for range discovery.DefaultMaxAttempts - 1 {
		n.wantError(t, "POST", "/v1/phone/verify", map[string]string{"code": "000001"}, 422, "wrong_code")
	}
	h := n.wantError(t, "POST", "/v1/phone/verify", map[string]string{"code": "000001"}, 429, "too_many_attempts")
	if h.Get("Retry-After") != "3600" {
		t.Fatalf("Retry-After %q, want 3600", h.Get("Retry-After"))
	}
	// The verified number is untouched.
	if _, _ = n.call(t, "GET", "/v1/phone", nil, &out); out.Phone.Number != "+351912345678" {
		t.Fatalf("verified number after a failed change: %+v", out.Phone)
	}
}

// TestDiscoveryAPI: a second account finds the first by its number,
// nobody else, adds it; after the first unlinks, it is found no more.
func TestDiscoveryAPI(t *testing.T) {
	clk := &phoneClock{t: time.Now().Truncate(time.Second)}
	r := startDiscoveryRelay(t, clk, discovery.WithEvaluationRate(20, 20))
	rosa := startPhoneNode(t, clk, r, "rosa")
	tiago := startPhoneNode(t, clk, r, "tiago")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	book := []string{"+351 912 345 678", "+44 7700 900000", "112", "+33 6 12 34 56 78"}
	tiago.wantError(t, "POST", "/v1/discovery", map[string]any{"numbers": book}, 409, "not_verified")
	rosa.verifyPhone(t, r, "+351912345678")
	tiago.verifyPhone(t, r, "+351 913 000 000")

	var res DiscoveryResult
	if st, _ := tiago.call(t, "POST", "/v1/discovery", map[string]any{"numbers": append(book, "+351 913 000 000")}, &res); st != http.StatusOK {
		t.Fatalf("POST /v1/discovery: %d", st)
	}
	rosaAcct, _ := rosa.Account()
	if len(res.Matches) != 1 || res.Matches[0].Number != "+351912345678" || res.Matches[0].Contact.ID != rosaAcct.ID || res.Matches[0].Contact.Name != "rosa" || res.Matches[0].Contact.Known {
		t.Fatalf("matches %+v, want rosa only (not tiago's own number)", res.Matches)
	}
	if len(res.Invalid) != 1 || res.Invalid[0] != "112" {
		t.Fatalf("invalid %v, want [112]", res.Invalid)
	}
	// Repeated syncs cost nothing: the outputs are cached.
	before := relayStatus(t, ctx, tiago, r).EvaluationsLeft
	if st, _ := tiago.call(t, "POST", "/v1/discovery", map[string]any{"numbers": book}, &res); st != http.StatusOK || len(res.Matches) != 1 {
		t.Fatalf("second discovery: %d %+v", st, res)
	}
	if after := relayStatus(t, ctx, tiago, r).EvaluationsLeft; after != before {
		t.Fatalf("a repeated discovery spent %d lookups", before-after)
	}
	// Adding the match: its invite string works with POST /v1/contacts.
	c, err := tiago.AddContact(ctx, res.Matches[0].Contact.Invite)
	if err != nil || c.ID != rosaAcct.ID {
		t.Fatalf("AddContact from the match: %+v, %v", c, err)
	}
	goRes, err := tiago.DiscoverContacts(ctx, book)
	if err != nil || len(goRes.Matches) != 1 {
		t.Fatalf("DiscoverContacts: %+v, %v", goRes, err)
	}
	if c, err := tiago.AddContactRecord(ctx, goRes.Matches[0].Record()); err != nil || c.ID != rosaAcct.ID {
		t.Fatalf("AddContactRecord: %+v, %v", c, err)
	}
	if _, err := tiago.AddContactRecord(ctx, res.Matches[0].Record()); err == nil {
		t.Fatal("AddContactRecord took an empty record")
	}
	if _, _ = tiago.call(t, "POST", "/v1/discovery", map[string]any{"numbers": book}, &res); !res.Matches[0].Contact.Known {
		t.Fatal("an added contact is not marked known")
	}
	// A big address book spends the whole budget: refused with a hint.
	var many []string
	for i := range 18 { // within the burst of 20, beyond what is left of it
		many = append(many, "+4930123"+padDigits(i))
	}
	h := tiago.wantError(t, "POST", "/v1/discovery", map[string]any{"numbers": many}, 429, "rate_limited")
	if h.Get("Retry-After") == "" {
		t.Fatal("no Retry-After on rate_limited")
	}
	var overBurst []string
	for i := range 21 {
		overBurst = append(overBurst, "+4930124"+padDigits(i))
	}
	tiago.wantError(t, "POST", "/v1/discovery", map[string]any{"numbers": overBurst}, 413, "too_many_numbers")
	tooMany := make([]string, MaxDiscoverNumbers+1)
	tiago.wantError(t, "POST", "/v1/discovery", map[string]any{"numbers": tooMany}, 413, "too_many_numbers")

	// Rosa unlinks: she is found no more.
	var out phoneReply
	if st, _ := rosa.call(t, "DELETE", "/v1/phone", nil, &out); st != http.StatusOK || out.Phone.Verified {
		t.Fatalf("DELETE /v1/phone: %d %+v", st, out)
	}
	if _, _ = tiago.call(t, "POST", "/v1/discovery", map[string]any{"numbers": book}, &res); len(res.Matches) != 0 {
		t.Fatalf("matches after unlinking: %+v", res.Matches)
	}
	// Account deletion's purge removes a verified number too.
	rosa.verifyPhone(t, r, "+351912345678")
	if r.svc.Entries() != 2 {
		t.Fatalf("entries %d, want 2", r.svc.Entries())
	}
	rosa.acctMu.Lock()
	id := rosa.acct.identity
	rosa.acctMu.Unlock()
	if err := rosa.purgeDiscovery(ctx, r.h.ID(), id); err != nil {
		t.Fatalf("purgeDiscovery: %v", err)
	}
	if r.svc.Entries() != 1 {
		t.Fatalf("entries after purge %d, want 1 (tiago's)", r.svc.Entries())
	}
}

func padDigits(i int) string {
	b := []byte("00000")
	for j := len(b) - 1; j >= 0 && i > 0; j-- {
		b[j] = byte('0' + i%10)
		i /= 10
	}
	return string(b)
}

func relayStatus(t *testing.T, ctx context.Context, p *phoneNode, r *discoveryRelay) discovery.Status {
	t.Helper()
	_, c, err := p.phoneAccount()
	if err != nil {
		t.Fatal(err)
	}
	p.acctMu.Lock()
	id := p.acct.identity
	p.acctMu.Unlock()
	st, err := c.Status(ctx, r.h.ID(), id)
	if err != nil {
		t.Fatal(err)
	}
	return st
}
