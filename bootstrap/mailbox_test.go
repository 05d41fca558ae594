package bootstrap

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/peerstore"

	"github.com/kinmesh/kinmesh/protocols/mailbox"
	"github.com/kinmesh/kinmesh/protocols/netkit"
)

func TestMailboxConfig(t *testing.T) {
	path := filepath.Join(t.TempDir(), "relay.toml")
	os.WriteFile(path, []byte(`
data = "/var/lib/kinmesh"
mailbox_max_items = 500
mailbox_max_bytes = 10485760
mailbox_deposits_per_minute = 60
mailbox_deposit_bytes_per_minute = 2097152
`), 0o600)
	c, err := LoadConfigFile(path)
	if err != nil {
		t.Fatalf("LoadConfigFile: %v", err)
	}
	if c.MailboxMaxItems != 500 || c.MailboxMaxBytes != 10<<20 || c.MailboxDepositsPerMinute != 60 || c.MailboxDepositBytesPerMinute != 2<<20 {
		t.Fatalf("mailbox settings not read: %+v", c)
	}

	d := Config{DataDir: "x"}
	if err := d.applyDefaults(); err != nil {
		t.Fatal(err)
	}
	if d.MailboxMaxItems != mailbox.DefaultMaxItems || d.MailboxMaxBytes != mailbox.DefaultMaxBytes ||
		d.MailboxDepositsPerMinute != mailbox.DefaultDepositsPerMinute || d.MailboxDepositBytesPerMinute != mailbox.DefaultDepositBytesPerMinute {
		t.Fatalf("mailbox defaults not applied: %+v", d)
	}
	if d.MailboxIPDepositBytesPerHour != mailbox.DefaultSourceDepositBytesPerHour || d.MailboxIPDepositBurst != mailbox.DefaultSourceDepositBurst || d.MinFreeDisk != DefaultMinFreeDisk {
		t.Fatalf("per-address and disk defaults not applied: %+v", d)
	}
	for _, bad := range []Config{
		{DataDir: "x", MailboxMaxItems: -1},
		{DataDir: "x", MailboxMaxBytes: 1000},
		{DataDir: "x", MailboxDepositBytesPerMinute: -5},
		{DataDir: "x", MailboxIPDepositBurst: 1000},
	} {
		if _, err := New(bad); !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "mailbox_") {
			t.Errorf("%+v: got %v, want ErrConfig naming the setting", bad, err)
		}
	}
	if d.GoMemoryLimit != DefaultGoMemoryLimit {
		t.Errorf("go_memory_limit default %d, want %d", d.GoMemoryLimit, DefaultGoMemoryLimit)
	}
	if _, err := New(Config{DataDir: "x", GoMemoryLimit: -2}); !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "go_memory_limit") {
		t.Errorf("go_memory_limit -2: got %v, want ErrConfig naming the setting", err)
	}
}

// mailboxClient returns a mailbox client on a host of its own that knows
// r's addresses, and a new mailbox key.
func mailboxClient(t *testing.T, r *Relay) (*mailbox.Client, mailbox.Key) {
	t.Helper()
	h, err := libp2p.New(netkit.Transports(), libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableMetrics())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Close() })
	h.Peerstore().AddAddrs(r.ID(), r.Host().Addrs(), peerstore.PermanentAddrTTL)
	c, err := mailbox.NewClient(h)
	if err != nil {
		t.Fatal(err)
	}
	key, err := mailbox.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	return c, key
}

// TestRelayMinFreeDisk: a relay whose data directory's file system has
// less free space than min_free_disk refuses new mail as relay full and
// says so on /metrics.
func TestRelayMinFreeDisk(t *testing.T) {
	r := startRelay(t, Config{HTTP: "127.0.0.1:0", MinFreeDisk: 1 << 62})
	c, key := mailboxClient(t, r)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := c.Deposit(ctx, r.ID(), key.ID(), [][]byte{[]byte("a")})
	if err != nil || !errors.Is(res[0].Err, mailbox.ErrRelayFull) {
		t.Fatalf("Deposit: %v, %v; want relay full", res, err)
	}
	wantMetrics(t, r,
		`kinmesh_mailbox_deposits_total{result="relay_full"} 1`,
		`kinmesh_store_low_on_space 1`,
		`kinmesh_store_free_bytes `,
	)
	if _, err := New(Config{DataDir: "x", MinFreeDisk: -2}); !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "min_free_disk") {
		t.Errorf("min_free_disk -2: got %v, want ErrConfig naming the setting", err)
	}
}

// TestRelayServesMailbox: every relay runs the mailbox service on its
// store, with the configured quotas and its metrics on the relay's
// registry.
func TestRelayServesMailbox(t *testing.T) {
	r := startRelay(t, Config{HTTP: "127.0.0.1:0", MailboxMaxItems: 2})
	c, key := mailboxClient(t, r)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := c.Open(ctx, r.ID(), key) // registers the mailbox
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer s.Close()
	res, err := c.Deposit(ctx, r.ID(), key.ID(), [][]byte{[]byte("a"), []byte("b"), []byte("c")})
	if err != nil {
		t.Fatalf("Deposit: %v", err)
	}
	if res[0].Err != nil || res[1].Err != nil || !errors.Is(res[2].Err, mailbox.ErrMailboxFull) {
		t.Fatalf("results %v, want ok, ok, mailbox full (quota 2)", res)
	}
	items, _, err := s.Fetch(ctx, 0, 0)
	if err != nil || len(items) != 2 {
		t.Fatalf("Fetch: %d items, %v", len(items), err)
	}
	if r.Mailbox().Sessions() != 1 {
		t.Fatalf("relay counts %d sessions, want 1", r.Mailbox().Sessions())
	}

	wantMetrics(t, r,
		`kinmesh_mailbox_deposits_total{result="ok"} 2`,
		`kinmesh_mailbox_deposits_total{result="mailbox_full"} 1`,
		`kinmesh_mailbox_sessions 1`,
		`kinmesh_mailbox_fetched_total 2`,
	)
}
