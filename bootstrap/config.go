package bootstrap

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kinmesh/kinmesh/protocols/discovery"
	"github.com/kinmesh/kinmesh/protocols/mailbox"
)

// DefaultGoMemoryLimit is the relay process's default soft memory limit
// (Config.GoMemoryLimit): with a million envelopes queued it keeps the
// relay's peak RSS near 260 MB where it reached 330 (docs/benchmarks.md,
// "Relay RSS").
const DefaultGoMemoryLimit = 200 << 20

// DefaultMinFreeDisk is the free disk space a relay keeps by default
// (Config.MinFreeDisk): room for Badger's compactions and value-log GC,
// which need space to free space.
const DefaultMinFreeDisk = 1 << 30

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
	// MailboxIPDepositBytesPerHour, MailboxIPDepositBurst: envelope bytes
	// all depositors connecting from one IP address (one IPv6 /64) may
	// deposit together, whatever their peer ids: per hour (default
	// 256 MiB) and at once (default 512 MiB). Peer ids are free; this is
	// what bounds how fast one address fills the relay's disk with mail.
	MailboxIPDepositBytesPerHour int64 `toml:"mailbox_ip_deposit_bytes_per_hour"`
	MailboxIPDepositBurst        int64 `toml:"mailbox_ip_deposit_burst"`
	// MailboxIPRegistrationsPerHour, MailboxIPRegistrationBurst: how many
	// mailboxes the owners connecting from one IP address (one IPv6 /64)
	// may newly register (a mailbox is registered when its owner
	// authenticates; the relay takes mail only for registered ones): per
	// hour (default 256) and at once (default 1024).
	MailboxIPRegistrationsPerHour int `toml:"mailbox_ip_registrations_per_hour"`
	MailboxIPRegistrationBurst    int `toml:"mailbox_ip_registration_burst"`

	// DHTMaxBytes: bytes of DHT records (devices' signed contact
	// records, about 1.8 KB each) the relay keeps in memory; once full,
	// records under new keys are refused until old ones expire after
	// 36 hours (default 32 MiB).
	DHTMaxBytes int64 `toml:"dht_max_bytes"`

	// MinFreeDisk: free space (bytes) the relay keeps on the file system
	// of its data directory. Below it, it takes no new mail, media or
	// moments (refused as relay full, or unavailable for moments, so
	// devices use their other relays) and keeps serving and deleting what
	// it holds, which frees space (default 1 GiB; -1 for no floor).
	// Backups, reports and the directory are bounded by their own caps.
	MinFreeDisk int64 `toml:"min_free_disk"`

	// MaxMemory caps the libp2p resource manager (default 512 MiB).
	MaxMemory int64 `toml:"max_memory"`
	// GoMemoryLimit is the Go runtime's soft memory limit for the relay
	// process (runtime/debug.SetMemoryLimit), in bytes: the garbage
	// collector works harder as the heap nears it, so Badger's compaction
	// buffers don't let the heap grow to twice what is live. The kinmesh
	// relay command applies it unless GOMEMLIMIT is set; this package
	// never does (it is process-wide). 0 means DefaultGoMemoryLimit, -1
	// none. It is soft: a busier relay's heap grows past it, at the cost
	// of more collection.
	GoMemoryLimit int64 `toml:"go_memory_limit"`
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

	// Report queue (/kinmesh/report/1.0.0, see docs/protocol/report.md):
	// reports, feedback and support requests from the accounts using this
	// relay, read by the operator on the ops endpoint (loopback only).
	//
	// ReportRetention: how long an item stays unless marked done
	// (default 720h, 30 days).
	ReportRetention Duration `toml:"report_retention"`
	// ReportsPerDay, FeedbackPerDay: submissions one account may make per
	// UTC day (defaults 20 reports, 10 feedback and support requests).
	ReportsPerDay  int `toml:"reports_per_day"`
	FeedbackPerDay int `toml:"feedback_per_day"`
	// ReportMaxItems, ReportMaxBytes: caps on the report queue (defaults
	// 10000 items, 256 MiB).
	ReportMaxItems int   `toml:"report_max_items"`
	ReportMaxBytes int64 `toml:"report_max_bytes"`
	// FeedbackMaxItems, FeedbackMaxBytes: caps on the feedback queue
	// (feedback and support requests), apart from the report queue so
	// feedback can't crowd out reports (defaults 2000 items, 64 MiB).
	FeedbackMaxItems int   `toml:"feedback_max_items"`
	FeedbackMaxBytes int64 `toml:"feedback_max_bytes"`
	// ReportUrgentReserve: percent of the report queue only urgent
	// reports (child safety, self-harm, violence) may fill (default 20;
	// -1 none).
	ReportUrgentReserve int `toml:"report_urgent_reserve"`
	// ReportPeerShare, ReportIPShare: percent of each queue what one peer,
	// and what one IP address (one IPv6 /64), submitted may hold at once
	// (defaults 2 and 10).
	ReportPeerShare int `toml:"report_peer_share"`
	ReportIPShare   int `toml:"report_ip_share"`

	// Phone verification and contact discovery (/kinmesh/discovery/1.0.0,
	// see docs/protocol/discovery.md and docs/operator-guide.md#sms-gateways).
	//
	// SMSGateway: "console" (codes go to the relay's log, nothing is sent:
	// development and testnets only) or "webhook". Default "webhook" when
	// SMSWebhookURL is set, else "console".
	SMSGateway string `toml:"sms_gateway"`
	// SMSWebhookURL: where the webhook gateway POSTs {"to","text"} JSON
	// (https, or http on loopback for a local adapter).
	SMSWebhookURL string `toml:"sms_webhook_url"`
	// SMSWebhookTokenFile: a file holding the webhook's bearer token.
	SMSWebhookTokenFile string `toml:"sms_webhook_token_file"`
	// PhoneSendsPerDay, PhoneSendBurst: codes one account may have sent
	// (defaults 5 a day, 3 at once). PhoneNumberSendsPerDay,
	// PhoneNumberSendBurst: codes one number may be sent (same defaults).
	PhoneSendsPerDay       int `toml:"phone_sends_per_day"`
	PhoneSendBurst         int `toml:"phone_send_burst"`
	PhoneNumberSendsPerDay int `toml:"phone_number_sends_per_day"`
	PhoneNumberSendBurst   int `toml:"phone_number_send_burst"`
	// PhoneSMSPerHour, PhoneSMSPerDay: verification texts the relay sends
	// in all, whoever asks (defaults 100 an hour, 1000 a day): what the
	// operator's SMS bill can't exceed.
	PhoneSMSPerHour int `toml:"phone_sms_per_hour"`
	PhoneSMSPerDay  int `toml:"phone_sms_per_day"`
	// DiscoveryEvaluationsPerDay, DiscoveryEvaluationBurst: numbers one
	// account may look up (defaults 1000 a day, 2000 at once).
	DiscoveryEvaluationsPerDay int `toml:"discovery_evaluations_per_day"`
	DiscoveryEvaluationBurst   int `toml:"discovery_evaluation_burst"`
	// DiscoveryMaxEntries: verified numbers the directory holds (default
	// 400000, what a device's copy holds).
	DiscoveryMaxEntries int `toml:"discovery_max_entries"`
	// DiscoveryAllowUnverified lets accounts without a verified number on
	// this relay look numbers up (default false: each account that
	// queries costs a phone number, which keeps enumeration expensive).
	DiscoveryAllowUnverified bool `toml:"discovery_allow_unverified"`
	// SMSConsole, with the console gateway, receives one line per code
	// instead of the log (the CLI passes stdout). SMS, if set, is the
	// gateway, whatever SMSGateway says (embedders, tests).
	SMSConsole io.Writer            `toml:"-"`
	SMS        discovery.SMSGateway `toml:"-"`

	// STUN/TURN server for calls (protocols/turn; see
	// docs/protocol/calls.md and docs/operator-guide.md, "TURN"). It
	// relays call media for devices that can't reach each other, with
	// short-lived credentials it issues to accounts over libp2p.
	//
	// TURNDisable turns it off (default false: on).
	TURNDisable bool `toml:"turn_disable"`
	// TURNListen: IP:port it listens on, UDP and TCP. Default: the IP of
	// the first IPv4 listen address, port 3478 (port 0, any free port,
	// when that listen address has port 0: tests, testnets).
	TURNListen string `toml:"turn_listen"`
	// TURNPublicIP: the address put in relay candidates, which devices and
	// their peers reach the relay at. Default: the first IPv4 announce
	// address, else TURNListen's IP, else the first specific IPv4 listen
	// address, else the host's first global IPv4 address. Set it when the
	// relay is behind NAT or a port forward.
	TURNPublicIP string `toml:"turn_public_ip"`
	// TURNNoTCP turns TURN over TCP off (default false: UDP and TCP).
	TURNNoTCP bool `toml:"turn_no_tcp"`
	// TURNThreads: UDP sockets sharing the port, one read loop each
	// (default: the number of CPUs).
	TURNThreads int `toml:"turn_threads"`
	// TURNRelayPortMin, TURNRelayPortMax: the UDP ports allocations relay
	// on (default 49152-65535); open them in the firewall.
	TURNRelayPortMin int `toml:"turn_relay_port_min"`
	TURNRelayPortMax int `toml:"turn_relay_port_max"`
	// TURNCredentialTTL: how long issued credentials open new allocations
	// (default 10m; allocations made in time refresh for 4h more).
	TURNCredentialTTL Duration `toml:"turn_credential_ttl"`
	// TURNAccountAllocations, TURNAccountBandwidth: what one account may
	// hold: allocations (default 8) and relayed bytes per second, both
	// directions together (default 524288, 4 Mbit/s).
	TURNAccountAllocations int   `toml:"turn_account_allocations"`
	TURNAccountBandwidth   int64 `toml:"turn_account_bandwidth"`
	// TURNPeerAllocations, TURNPeerBandwidth: what the credentials issued
	// to one libp2p peer (a device) may hold, whatever accounts they are
	// for: allocations (default 8) and relayed bytes per second (default
	// 524288). Account keys are free; the peer that asks bounds one
	// requester.
	TURNPeerAllocations int   `toml:"turn_peer_allocations"`
	TURNPeerBandwidth   int64 `toml:"turn_peer_bandwidth"`
	// TURNIPAllocations, TURNIPBandwidth: what TURN clients from one IP
	// address (one IPv6 /64) may hold, whatever peers and accounts:
	// allocations (default 64) and relayed bytes per second (default
	// 4194304, 32 Mbit/s).
	TURNIPAllocations int   `toml:"turn_ip_allocations"`
	TURNIPBandwidth   int64 `toml:"turn_ip_bandwidth"`
	// TURNMaxAllocations: allocations on the relay (default 1024).
	TURNMaxAllocations int `toml:"turn_max_allocations"`
	// TURNAllowPeers: address ranges (CIDR, or single addresses) the
	// TURN server may relay to although it refuses them by default. By
	// default it relays only to globally reachable addresses: not to
	// loopback, private, carrier-grade NAT, link-local, multicast or other
	// special-purpose ranges, nor to the relay's own addresses (but for
	// its allocations' ports). Test networks set it (127.0.0.0/8 on one
	// machine, the NAT lab's 198.18.0.0/15); a relay serving a private
	// network on purpose lists that network. Default none.
	TURNAllowPeers []string `toml:"turn_allow_peers"`

	// Moments and their media (protocols/moments, protocols/blobs; see
	// docs/protocol/moments.md, docs/protocol/blobs.md and the operator
	// guide, "Moments and media"). The relay keeps the feeds of the
	// accounts using it as a home relay (encrypted frames: moments,
	// likes, comments) until their authors delete them, and their
	// encrypted photos and videos.
	//
	// MomentsMaxFeeds: feeds the relay keeps (default 100000).
	MomentsMaxFeeds int `toml:"moments_max_feeds"`
	// MomentsFeedMaxItems, MomentsFeedMaxBytes: frames one feed may keep
	// and their bytes (defaults 50000 and 64 MiB).
	MomentsFeedMaxItems int   `toml:"moments_feed_max_items"`
	MomentsFeedMaxBytes int64 `toml:"moments_feed_max_bytes"`
	// MomentsReactionsPerMoment: likes and comments kept per moment
	// (default 2000).
	MomentsReactionsPerMoment int `toml:"moments_reactions_per_moment"`
	// MediaMaxBytes: disk budget for media, all uploaders (default 64 GiB).
	MediaMaxBytes int64 `toml:"media_max_bytes"`
	// MediaUploaderMaxBytes, MediaUploaderMaxBlobs: what one uploader
	// (device) may store (defaults 2 GiB and 20000 photos or videos).
	MediaUploaderMaxBytes int64 `toml:"media_uploader_max_bytes"`
	MediaUploaderMaxBlobs int   `toml:"media_uploader_max_blobs"`
	// MediaIPUploadBytesPerHour, MediaIPUploadBurst: media bytes all
	// devices connecting from one IP address (one IPv6 /64) may upload
	// together, whatever their peer ids: per hour (default 256 MiB) and
	// at once (default 1 GiB; at least 52 MiB, one video). Peer ids are
	// free; this is what bounds how fast one address fills MediaMaxBytes.
	MediaIPUploadBytesPerHour int64 `toml:"media_ip_upload_bytes_per_hour"`
	MediaIPUploadBurst        int64 `toml:"media_ip_upload_burst"`
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
	if c.GoMemoryLimit == 0 {
		c.GoMemoryLimit = DefaultGoMemoryLimit
	}
	setInt(&c.MailboxMaxItems, mailbox.DefaultMaxItems)
	setInt(&c.MailboxDepositsPerMinute, mailbox.DefaultDepositsPerMinute)
	if c.MailboxMaxBytes == 0 {
		c.MailboxMaxBytes = mailbox.DefaultMaxBytes
	}
	if c.MailboxDepositBytesPerMinute == 0 {
		c.MailboxDepositBytesPerMinute = mailbox.DefaultDepositBytesPerMinute
	}
	if c.MailboxIPDepositBytesPerHour == 0 {
		c.MailboxIPDepositBytesPerHour = mailbox.DefaultSourceDepositBytesPerHour
	}
	if c.MailboxIPDepositBurst == 0 {
		c.MailboxIPDepositBurst = mailbox.DefaultSourceDepositBurst
	}
	setInt(&c.MailboxIPRegistrationsPerHour, mailbox.DefaultSourceRegistrationsPerHour)
	setInt(&c.MailboxIPRegistrationBurst, mailbox.DefaultSourceRegistrationBurst)
	if c.DHTMaxBytes == 0 {
		c.DHTMaxBytes = DefaultDHTMaxBytes
	}
	if c.DHTMaxBytes < 64<<10 {
		return fmt.Errorf("%w: dht_max_bytes must be at least %d, got %d", ErrConfig, 64<<10, c.DHTMaxBytes)
	}
	switch {
	case c.MinFreeDisk == 0:
		c.MinFreeDisk = DefaultMinFreeDisk
	case c.MinFreeDisk < -1:
		return fmt.Errorf("%w: min_free_disk must be bytes, or -1 for no floor, got %d", ErrConfig, c.MinFreeDisk)
	}
	for name, v := range map[string]int{"max_reservations": c.MaxReservations, "max_reservations_per_ip": c.MaxReservationsPerIP, "max_circuits": c.MaxCircuits, "max_conns": c.MaxConns, "mailbox_max_items": c.MailboxMaxItems, "mailbox_deposits_per_minute": c.MailboxDepositsPerMinute,
		"mailbox_ip_registrations_per_hour": c.MailboxIPRegistrationsPerHour, "mailbox_ip_registration_burst": c.MailboxIPRegistrationBurst} {
		if v < 0 {
			return fmt.Errorf("%w: %s must be positive, got %d", ErrConfig, name, v)
		}
	}
	for name, v := range map[string]int64{"mailbox_max_bytes": c.MailboxMaxBytes, "mailbox_deposit_bytes_per_minute": c.MailboxDepositBytesPerMinute,
		"mailbox_ip_deposit_bytes_per_hour": c.MailboxIPDepositBytesPerHour, "mailbox_ip_deposit_burst": c.MailboxIPDepositBurst} {
		if v < mailbox.MaxEnvelopeSize {
			return fmt.Errorf("%w: %s must be at least %d (one envelope), got %d", ErrConfig, name, mailbox.MaxEnvelopeSize, v)
		}
	}
	if c.GoMemoryLimit < -1 {
		return fmt.Errorf("%w: go_memory_limit must be bytes, or -1 for none, got %d", ErrConfig, c.GoMemoryLimit)
	}
	if c.CircuitDuration < 0 || c.CircuitBytes < 0 || c.ReservationTTL < 0 || c.MaxMemory < 0 {
		return fmt.Errorf("%w: durations and sizes must be positive", ErrConfig)
	}
	if err := c.applyPrekeyDefaults(); err != nil {
		return err
	}
	if err := c.applyTURNDefaults(); err != nil {
		return err
	}
	if err := c.applyReportDefaults(); err != nil {
		return err
	}
	if err := c.applyDiscoveryDefaults(); err != nil {
		return err
	}
	if err := c.applyMomentsDefaults(); err != nil {
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
