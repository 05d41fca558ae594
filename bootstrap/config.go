package bootstrap

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kinmesh/kinmesh/protocols/mailbox"
)

// Config is a relay's whole configuration: one flat struct, filled from a
// TOML file, then the environment, then flags (later sources win). The
// defaults are listed with each field and applied by New.
type Config struct {
	// DataDir holds the relay's store (host key, and the data later
	// protocols keep). Required.
	DataDir string `toml:"data"`
	// Listen are the multiaddrs to listen on.
	// Default: /ip4/0.0.0.0/tcp/4001 and /ip4/0.0.0.0/udp/4001/quic-v1.
	Listen []string `toml:"listen"`
	// Announce, if set, replaces the addresses the relay advertises (use
	// the public address when behind a port forward).
	Announce []string `toml:"announce"`
	// HTTP is the host:port of the ops endpoint (/healthz, /metrics).
	// Empty disables it. Default empty; the CLI defaults to 127.0.0.1:8080.
	HTTP string `toml:"http"`
	// Bootstrap are fellow relays (multiaddrs ending in /p2p/<id>) this
	// relay keeps connected to, forming the DHT.
	Bootstrap []string `toml:"bootstrap"`

	// Circuit relay limits. Circuits carry signalling and small exchanges
	// only (call media goes over TURN, messages over the mailbox protocol),
	// so they stay short and small.
	//
	// MaxReservations: active reservations (default 1024).
	MaxReservations int `toml:"max_reservations"`
	// MaxReservationsPerIP: reservations from one IP (default 16).
	MaxReservationsPerIP int `toml:"max_reservations_per_ip"`
	// MaxCircuits: open relayed connections per peer (default 16).
	MaxCircuits int `toml:"max_circuits"`
	// CircuitDuration: lifetime of one relayed connection (default 2m).
	CircuitDuration Duration `toml:"circuit_duration"`
	// CircuitBytes: bytes relayed each way on one relayed connection
	// (default 256 KiB).
	CircuitBytes int64 `toml:"circuit_bytes"`
	// ReservationTTL: lifetime of a reservation before renewal (default 1h).
	ReservationTTL Duration `toml:"reservation_ttl"`

	// Mailbox quotas (protocols/mailbox: store-and-forward mail for
	// offline devices, kept at most 15 days).
	//
	// MailboxMaxItems: envelopes one mailbox may hold (default 20000).
	MailboxMaxItems int `toml:"mailbox_max_items"`
	// MailboxMaxBytes: envelope bytes one mailbox may hold (default
	// 128 MiB).
	MailboxMaxBytes int64 `toml:"mailbox_max_bytes"`
	// MailboxDepositsPerMinute: envelopes one depositor (peer id) may
	// deposit per minute, all at once if it likes (default 3000).
	MailboxDepositsPerMinute int `toml:"mailbox_deposits_per_minute"`
	// MailboxDepositBytesPerMinute: envelope bytes one depositor may
	// deposit per minute (default 64 MiB).
	MailboxDepositBytesPerMinute int64 `toml:"mailbox_deposit_bytes_per_minute"`

	// MaxMemory caps the libp2p resource manager (default 512 MiB).
	MaxMemory int64 `toml:"max_memory"`
	// MaxConns caps connections (default 2048); the connection manager
	// trims from 3/4 of it.
	MaxConns int `toml:"max_conns"`

	// Logger receives the relay's logs (default: discard).
	Logger *slog.Logger `toml:"-"`
	// Now is the clock of the store and the services (default time.Now).
	// Tests inject one to check the 15-day expiry.
	Now func() time.Time `toml:"-"`
	// Registry receives the relay's metrics; default a new registry of its
	// own, served on /metrics. Never the global registry.
	Registry *prometheus.Registry `toml:"-"`

	// Prekey service limits (/kinmesh/prekeys/1.0.0, see
	// docs/protocol/prekeys.md).
	//
	// PrekeyFetchesPerMinute, PrekeyFetchBurst: bundle fetches one
	// requester (peer id) may make (defaults 60 a minute, bursts of 30).
	PrekeyFetchesPerMinute int `toml:"prekey_fetches_per_minute"`
	PrekeyFetchBurst       int `toml:"prekey_fetch_burst"`
	// PrekeyOneTimePerHour, PrekeyOneTimeBurst: fetches per target account
	// that take one-time prekeys (defaults 30 an hour, bursts of 20);
	// beyond them bundles carry the last-resort keys only.
	PrekeyOneTimePerHour int `toml:"prekey_one_time_per_hour"`
	PrekeyOneTimeBurst   int `toml:"prekey_one_time_burst"`
	// PrekeyOwnerOpsPerMinute, PrekeyOwnerBurst: publish, status and purge
	// requests one peer may make (defaults 6 a minute, bursts of 12).
	PrekeyOwnerOpsPerMinute int `toml:"prekey_owner_ops_per_minute"`
	PrekeyOwnerBurst        int `toml:"prekey_owner_burst"`
	// PrekeyMaxAccounts: accounts whose prekeys the relay keeps (default
	// 100000; about 300 KB each at most).
	PrekeyMaxAccounts int `toml:"prekey_max_accounts"`
}

// Duration is a time.Duration that reads "90s" / "2m" from TOML.
type Duration time.Duration

// UnmarshalText parses a Go duration string.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// MarshalText renders the duration as a Go duration string.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// ErrConfig means the configuration is unusable; the message says which
// setting and why.
var ErrConfig = errors.New("relay config")

// LoadConfigFile reads a TOML config file. Unknown keys are an error, so a
// typo doesn't silently fall back to a default.
func LoadConfigFile(path string) (Config, error) {
	var c Config
	md, err := toml.DecodeFile(path, &c)
	if err != nil {
		return Config{}, fmt.Errorf("%w: read %s: %v", ErrConfig, path, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		keys := make([]string, len(und))
		for i, k := range und {
			keys[i] = k.String()
		}
		return Config{}, fmt.Errorf("%w: %s: unknown settings %s", ErrConfig, path, strings.Join(keys, ", "))
	}
	return c, nil
}

// ApplyEnv overrides c from KINMESH_RELAY_* environment variables:
// DATA, LISTEN and BOOTSTRAP (comma-separated), ANNOUNCE, HTTP.
func (c *Config) ApplyEnv(getenv func(string) string) error {
	if getenv == nil {
		getenv = os.Getenv
	}
	list := func(s string) []string {
		var out []string
		for _, p := range strings.Split(s, ",") {
			if p = strings.TrimSpace(p); p != "" {
				out = append(out, p)
			}
		}
		return out
	}
	if v := getenv("KINMESH_RELAY_DATA"); v != "" {
		c.DataDir = v
	}
	if v := getenv("KINMESH_RELAY_LISTEN"); v != "" {
		c.Listen = list(v)
	}
	if v := getenv("KINMESH_RELAY_ANNOUNCE"); v != "" {
		c.Announce = list(v)
	}
	if v := getenv("KINMESH_RELAY_BOOTSTRAP"); v != "" {
		c.Bootstrap = list(v)
	}
	if v := getenv("KINMESH_RELAY_HTTP"); v != "" {
		c.HTTP = v
	}
	if v := getenv("KINMESH_RELAY_MAX_RESERVATIONS_PER_IP"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			return fmt.Errorf("%w: KINMESH_RELAY_MAX_RESERVATIONS_PER_IP=%q is not a number", ErrConfig, v)
		}
		c.MaxReservationsPerIP = n
	}
	return nil
}

func (c *Config) applyDefaults() error {
	if c.DataDir == "" {
		return fmt.Errorf("%w: no data directory: pass --data DIR", ErrConfig)
	}
	if len(c.Listen) == 0 {
		c.Listen = []string{"/ip4/0.0.0.0/tcp/4001", "/ip4/0.0.0.0/udp/4001/quic-v1"}
	}
	setInt := func(p *int, def int) {
		if *p == 0 {
			*p = def
		}
	}
	setInt(&c.MaxReservations, 1024)
	setInt(&c.MaxReservationsPerIP, 16)
	setInt(&c.MaxCircuits, 16)
	setInt(&c.MaxConns, 2048)
	if c.CircuitDuration == 0 {
		c.CircuitDuration = Duration(2 * time.Minute)
	}
	if c.CircuitBytes == 0 {
		c.CircuitBytes = 256 << 10
	}
	if c.ReservationTTL == 0 {
		c.ReservationTTL = Duration(time.Hour)
	}
	if c.MaxMemory == 0 {
		c.MaxMemory = 512 << 20
	}
	setInt(&c.MailboxMaxItems, mailbox.DefaultMaxItems)
	setInt(&c.MailboxDepositsPerMinute, mailbox.DefaultDepositsPerMinute)
	if c.MailboxMaxBytes == 0 {
		c.MailboxMaxBytes = mailbox.DefaultMaxBytes
	}
	if c.MailboxDepositBytesPerMinute == 0 {
		c.MailboxDepositBytesPerMinute = mailbox.DefaultDepositBytesPerMinute
	}
	for name, v := range map[string]int{"max_reservations": c.MaxReservations, "max_reservations_per_ip": c.MaxReservationsPerIP, "max_circuits": c.MaxCircuits, "max_conns": c.MaxConns, "mailbox_max_items": c.MailboxMaxItems, "mailbox_deposits_per_minute": c.MailboxDepositsPerMinute} {
		if v < 0 {
			return fmt.Errorf("%w: %s must be positive, got %d", ErrConfig, name, v)
		}
	}
	for name, v := range map[string]int64{"mailbox_max_bytes": c.MailboxMaxBytes, "mailbox_deposit_bytes_per_minute": c.MailboxDepositBytesPerMinute} {
		if v < mailbox.MaxEnvelopeSize {
			return fmt.Errorf("%w: %s must be at least %d (one envelope), got %d", ErrConfig, name, mailbox.MaxEnvelopeSize, v)
		}
	}
	if c.CircuitDuration < 0 || c.CircuitBytes < 0 || c.ReservationTTL < 0 || c.MaxMemory < 0 {
		return fmt.Errorf("%w: durations and sizes must be positive", ErrConfig)
	}
	if err := c.applyPrekeyDefaults(); err != nil {
		return err
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Registry == nil {
		c.Registry = prometheus.NewRegistry()
	}
	return nil
}
