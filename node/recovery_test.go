package node

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	relayv2 "github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/relay"

	"github.com/kinmesh/kinmesh/protocols/backup"
	"github.com/kinmesh/kinmesh/protocols/blobs"
	"github.com/kinmesh/kinmesh/protocols/discovery"
	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/protocols/mailbox"
	"github.com/kinmesh/kinmesh/protocols/netkit"
	"github.com/kinmesh/kinmesh/protocols/prekeys"
	"github.com/kinmesh/kinmesh/storage"
)

// backupRelay is the part of a bootstrap relay recovery needs (node
// never links bootstrap): circuit relay, mailbox, prekeys, discovery with
// a console SMS gateway, backups and blobs, on one real store.
type backupRelay struct {
	h      host.Host
	gw     *discovery.ConsoleGateway
	backup *backup.Service
	blobs  *blobs.Service // profile photos (photo_test.go)
}

func startBackupRelay(t *testing.T) *backupRelay {
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
	gw := discovery.NewConsoleGateway()
	disc, err := discovery.NewService(h, st, gw, discovery.WithLogger(discardLog))
	if err != nil {
		t.Fatal(err)
	}
	bk, err := backup.NewService(h, st, disc, backup.WithLogger(discardLog))
	if err != nil {
		t.Fatal(err)
	}
	bl, err := blobs.NewService(h, st, blobs.WithLogger(discardLog))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		bl.Close()
		bk.Close()
		disc.Close()
		pk.Close()
		mb.Close()
		rl.Close()
		h.Close()
		st.Close()
	})
	return &backupRelay{h: h, gw: gw, backup: bk, blobs: bl}
}

func (r *backupRelay) addr() string { return netkit.P2PAddrs(r.h.ID(), r.h.Addrs())[0] }

func (r *backupRelay) code(t *testing.T, number string) string {
	t.Helper()
	n, err := discovery.ParseNumber(number)
	if err != nil {
		t.Fatal(err)
	}
	c, ok := r.gw.LastCode(n)
	if !ok {
		t.Fatalf("no code texted to %s", n.Masked())
	}
	return c
}

// recoveryAPI is a node's recovery and phone routes, called in-process.
type recoveryAPI struct {
	n   *Node
	mux *http.ServeMux
}

func newRecoveryAPI(n *Node) *recoveryAPI {
	a := &apiServer{n: n}
	mux := http.NewServeMux()
	a.recoveryRoutes(mux)
	a.discoveryRoutes(mux)
	return &recoveryAPI{n: n, mux: mux}
}

func (p *recoveryAPI) call(t *testing.T, method, path string, body, out any) int {
	t.Helper()
	var rd bytes.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd.Reset(b)
	}
	rec := httptest.NewRecorder()
	p.mux.ServeHTTP(rec, httptest.NewRequest(method, path, &rd))
	if out != nil {
		reflect.ValueOf(out).Elem().SetZero()
		if err := json.Unmarshal(rec.Body.Bytes(), out); err != nil {
			t.Fatalf("%s %s: %d %s: %v", method, path, rec.Code, rec.Body, err)
		}
	}
	return rec.Code
}

func (p *recoveryAPI) wantError(t *testing.T, method, path string, body any, status int, code string) {
	t.Helper()
	var e struct {
		Error struct{ Code, Message string } `json:"error"`
	}
	if got := p.call(t, method, path, body, &e); got != status || e.Error.Code != code {
		t.Fatalf("%s %s: %d %q (%s), want %d %q", method, path, got, e.Error.Code, e.Error.Message, status, code)
	}
}

// TestRecoveryAPI: turning recovery on needs a verified number; a fresh
// node restores the account through the API, refusing typos, wrong codes
// and wrong secrets on the way without restoring anything.
func TestRecoveryAPI(t *testing.T) {
	r := startBackupRelay(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	boot := []string{r.addr()}
	alice := startNode(t, Config{DataDir: filepath.Join(t.TempDir(), "alice"), Bootstrap: boot, RelayBackoff: 50 * time.Millisecond})
	bob := startNode(t, Config{DataDir: filepath.Join(t.TempDir(), "bob"), Bootstrap: boot, RelayBackoff: 50 * time.Millisecond})
	for _, n := range []*Node{alice, bob} {
		if _, err := n.CreateAccount(ctx, NewAccount{Name: "n" + n.ID().String()[:6], BirthDate: "1970-01-01", Country: "PT", AcceptPolicy: PolicyVersion}); err != nil {
			t.Fatal(err)
		}
		if err := n.WaitRelays(ctx, 1); err != nil {
			t.Fatal(err)
		}
	}
	inv, err := bob.Invite()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := alice.AddContact(ctx, inv.String()); err != nil {
		t.Fatal(err)
	}
	stranger, err := e2ee.NewIdentity(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := alice.BlockContact(ctx, string(stranger.AccountID())); err != nil {
		t.Fatal(err)
	}
	api := newRecoveryAPI(alice)

	api.wantError(t, "POST", "/v1/recovery", nil, http.StatusConflict, "not_verified")
	api.wantError(t, "POST", "/v1/recovery/backup", nil, http.StatusConflict, "recovery_off")
	const number = "+351 912 345 678"
	if st := api.call(t, "POST", "/v1/phone", map[string]string{"number": number}, nil); st != http.StatusAccepted {
		t.Fatalf("POST /v1/phone: %d", st)
	}
	if st := api.call(t, "POST", "/v1/phone/verify", map[string]string{"code": r.code(t, number)}, nil); st != http.StatusOK {
		t.Fatalf("POST /v1/phone/verify: %d", st)
	}
	var on RecoveryEnabled
	if st := api.call(t, "POST", "/v1/recovery", nil, &on); st != http.StatusCreated {
		t.Fatalf("POST /v1/recovery: %d", st)
	}
	if _, err := backup.ParseSecret(on.Secret); err != nil {
		t.Fatalf("the secret %q does not parse: %v", on.Secret, err)
	}
	if !on.Recovery.Enabled || len(on.Recovery.Relays) != 1 || on.Recovery.Relays[0].Relay != r.h.ID().String() || on.Recovery.LastBackup == nil {
		t.Fatalf("status after enabling: %+v", on.Recovery)
	}
	if r.backup.Backups() != 1 {
		t.Fatalf("the relay holds %d backups", r.backup.Backups())
	}
	var got struct{ Recovery RecoveryStatus }
	if st := api.call(t, "GET", "/v1/recovery", nil, &got); st != http.StatusOK || !got.Recovery.Enabled || !got.Recovery.PhoneVerified {
		t.Fatalf("GET /v1/recovery: %d %+v", st, got.Recovery)
	}
	if st := api.call(t, "POST", "/v1/recovery/backup", nil, &got); st != http.StatusOK {
		t.Fatalf("POST /v1/recovery/backup: %d", st)
	}
	api.wantError(t, "POST", "/v1/recovery/start", map[string]string{"number": number}, http.StatusConflict, "account_exists")

	// A new device.
	fresh := startNode(t, Config{DataDir: filepath.Join(t.TempDir(), "fresh"), Bootstrap: boot, RelayBackoff: 50 * time.Millisecond})
	if err := fresh.WaitRelays(ctx, 1); err != nil {
		t.Fatal(err)
	}
	fapi := newRecoveryAPI(fresh)
	fapi.wantError(t, "GET", "/v1/recovery", nil, http.StatusConflict, "no_account")
	fapi.wantError(t, "POST", "/v1/recovery/finish", map[string]string{"code": "123456", "secret": on.Secret}, http.StatusConflict, "no_recovery_pending")
	fapi.wantError(t, "POST", "/v1/recovery/start", map[string]string{"number": "912 345 678"}, http.StatusUnprocessableEntity, "invalid_phone_number")
	fapi.wantError(t, "POST", "/v1/recovery/start", map[string]string{"number": number, "relay": "12D3KooWNotARelay"}, http.StatusUnprocessableEntity, "unknown_relay")
	var start struct{ Recovery RecoveryStart }
	if st := fapi.call(t, "POST", "/v1/recovery/start", map[string]string{"number": number}, &start); st != http.StatusAccepted {
		t.Fatalf("POST /v1/recovery/start: %d", st)
	}
	if start.Recovery.Relay != r.h.ID().String() || start.Recovery.Number != "+351912345678" || start.Recovery.Fetched {
		t.Fatalf("start: %+v", start.Recovery)
	}
	code := r.code(t, number)
	wrongCode := "000000"
	if code == wrongCode {
		wrongCode = "111111"
	}
	typo := []byte(on.Secret)
	for _, c := range []byte("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567") {
		typo[0] = c
		if _, err := backup.ParseSecret(string(typo)); err != nil {
			break // a typo the check catches (all but 1 in 65,536 do)
		}
	}
	fapi.wantError(t, "POST", "/v1/recovery/finish", map[string]string{"code": code, "secret": string(typo)}, http.StatusUnprocessableEntity, "invalid_secret")
	fapi.wantError(t, "POST", "/v1/recovery/finish", map[string]string{"code": "12", "secret": on.Secret}, http.StatusUnprocessableEntity, "invalid_code")
	fapi.wantError(t, "POST", "/v1/recovery/finish", map[string]string{"code": wrongCode, "secret": on.Secret}, http.StatusUnprocessableEntity, "wrong_code")
	other, _ := backup.NewSecret(rand.Reader)
	fapi.wantError(t, "POST", "/v1/recovery/finish", map[string]string{"code": code, "secret": other.String()}, http.StatusUnprocessableEntity, "wrong_secret")
	if _, err := fresh.Account(); err == nil {
		t.Fatal("a wrong secret restored an account")
	}
	for _, ns := range []string{"account", "contacts", "blocks", "phone", recoveryNamespace} {
		if k := nsCount(t, fresh, ns); k != 0 {
			t.Fatalf("after a wrong secret namespace %s holds %d keys", ns, k)
		}
	}
	if st := fapi.call(t, "GET", "/v1/recovery/start", nil, &start); st != http.StatusOK || !start.Recovery.Fetched {
		t.Fatalf("pending after a wrong secret: %d %+v", st, start.Recovery)
	}
	// The code is spent; the secret alone finishes.
	var res Restored
	if st := fapi.call(t, "POST", "/v1/recovery/finish", map[string]string{"secret": on.Secret}, &res); st != http.StatusCreated {
		t.Fatalf("POST /v1/recovery/finish: %d", st)
	}
	want, _ := alice.Account()
	if res.Account == nil || res.Account.ID != want.ID || res.Account.Name != want.Name || res.Account.BirthDate != "1970-01-01" || res.Account.Country != "PT" {
		t.Fatalf("restored %+v, want %+v", res.Account, want)
	}
	if res.Contacts != 1 || res.Introduced != 1 || res.Blocks != 1 {
		t.Fatalf("restored %d contacts, %d blocks, introduced %d; want 1, 1, 1", res.Contacts, res.Blocks, res.Introduced)
	}
	if bl, err := fresh.Blocks(); err != nil || len(bl) != 1 || bl[0].Contact != string(stranger.AccountID()) {
		t.Fatalf("blocks after restore: %+v, %v", bl, err)
	}
	cs, err := fresh.Contacts()
	if err != nil || len(cs) != 1 || cs[0].ID != bob.mustAccountID(t) {
		t.Fatalf("contacts after restore: %+v, %v", cs, err)
	}
	ph, err := fresh.Phone(ctx)
	if err != nil || !ph.Verified || ph.Number != "+351912345678" {
		t.Fatalf("phone after restore: %+v, %v", ph, err)
	}
	fapi.wantError(t, "POST", "/v1/recovery/finish", map[string]string{"secret": on.Secret}, http.StatusConflict, "no_recovery_pending")
	fapi.wantError(t, "POST", "/v1/recovery/start", map[string]string{"number": number}, http.StatusConflict, "account_exists")
	if st := fapi.call(t, "GET", "/v1/recovery", nil, &got); st != http.StatusOK || !got.Recovery.Enabled {
		t.Fatalf("recovery on the restored device: %d %+v", st, got.Recovery)
	}
	// The restored device keeps the backup (same secret) and can turn it off.
	if st := fapi.call(t, "POST", "/v1/recovery/backup", nil, &got); st != http.StatusOK || len(got.Recovery.Relays) != 1 {
		t.Fatalf("backup from the restored device: %d %+v", st, got.Recovery)
	}
	if st := fapi.call(t, "DELETE", "/v1/recovery", nil, &got); st != http.StatusOK || got.Recovery.Enabled {
		t.Fatalf("DELETE /v1/recovery: %d %+v", st, got.Recovery)
	}
	if r.backup.Backups() != 0 {
		t.Fatalf("the relay still holds %d backups", r.backup.Backups())
	}
	if st := fapi.call(t, "DELETE", "/v1/recovery", nil, &got); st != http.StatusOK {
		t.Fatalf("second DELETE /v1/recovery: %d", st)
	}
}

func (n *Node) mustAccountID(t *testing.T) string {
	t.Helper()
	a, err := n.Account()
	if err != nil {
		t.Fatal(err)
	}
	return a.ID
}

func nsCount(t *testing.T, n *Node, ns string) int {
	t.Helper()
	c := 0
	if err := n.Store().Namespace(ns).List(context.Background(), storage.ListOptions{}, func(string, []byte) error { c++; return nil }); err != nil {
		t.Fatal(err)
	}
	return c
}
