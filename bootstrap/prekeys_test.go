package bootstrap

import (
	"context"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/protocols/prekeys"
)

func TestPrekeyConfig(t *testing.T) {
	path := filepath.Join(t.TempDir(), "relay.toml")
	os.WriteFile(path, []byte(`
data = "/var/lib/kinmesh"
prekey_fetches_per_minute = 10
prekey_fetch_burst = 5
prekey_one_time_per_hour = 7
prekey_one_time_burst = 3
prekey_owner_ops_per_minute = 2
prekey_owner_burst = 4
prekey_max_accounts = 1000
`), 0o600)
	c, err := LoadConfigFile(path)
	if err != nil {
		t.Fatalf("LoadConfigFile: %v", err)
	}
	got := [...]int{c.PrekeyFetchesPerMinute, c.PrekeyFetchBurst, c.PrekeyOneTimePerHour, c.PrekeyOneTimeBurst, c.PrekeyOwnerOpsPerMinute, c.PrekeyOwnerBurst, c.PrekeyMaxAccounts}
	if want := [...]int{10, 5, 7, 3, 2, 4, 1000}; got != want {
		t.Fatalf("prekey settings %v, want %v", got, want)
	}

	d := Config{DataDir: "x"}
	if err := d.applyDefaults(); err != nil {
		t.Fatal(err)
	}
	if d.PrekeyFetchesPerMinute != prekeys.DefaultFetchesPerMinute || d.PrekeyMaxAccounts != prekeys.DefaultMaxAccounts || d.PrekeyOneTimeBurst != prekeys.DefaultOneTimeBurst {
		t.Fatalf("defaults not applied: %+v", d)
	}
	if _, err := New(Config{DataDir: "x", PrekeyOneTimePerHour: -1}); !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "prekey_one_time_per_hour") {
		t.Fatalf("negative limit: %v, want ErrConfig naming it", err)
	}
}

// TestRelayServesPrekeys: a relay runs the prekey service on its store,
// with its metrics on the relay's registry.
func TestRelayServesPrekeys(t *testing.T) {
	r := startRelay(t, Config{HTTP: "127.0.0.1:0"})
	h := clientHost(t, r)
	c, err := prekeys.NewClient(h)
	if err != nil {
		t.Fatal(err)
	}
	id, err := e2ee.NewIdentity(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	store, err := e2ee.NewPrekeyStore(id, time.Now(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if store, err = store.GenerateOneTime(id, 2, 2, time.Now(), rand.Reader); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.Publish(ctx, r.ID(), id, store.Upload()); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	b, err := c.Fetch(ctx, r.ID(), id.AccountID())
	if err != nil {
		t.Fatalf("Fetch: %v", err)
	}
	if b.OneTimePrekey == nil {
		t.Fatal("bundle without a one-time prekey")
	}
	if r.Prekeys().Accounts() != 1 {
		t.Fatalf("relay holds %d accounts, want 1", r.Prekeys().Accounts())
	}

	wantMetrics(t, r, "kinmesh_prekeys_accounts 1", `kinmesh_prekeys_fetches_total{result="ok"} 1`)
}
