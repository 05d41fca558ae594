package node

import (
	"context"
	"encoding/json"
	"runtime"
	"sync"
	"time"

	"github.com/kinmesh/kinmesh/protocols/message"
	"github.com/kinmesh/kinmesh/protocols/netkit"
	"github.com/kinmesh/kinmesh/protocols/presence"
)

// Diagnostics. Usage and performance information stays on the device:
// GET /v1/diagnostics shows the user what the node knows about its own
// health, and feedback carries it to the home relays' operators only when
// the user asks to include it and has consented to diagnostics sharing
// (diagnosticsConsent, settings.go). The record names no one: no account
// or contact ids, names, message text or device peer id — only versions,
// counters, the states of the links to the relays (relay peer ids are
// public infrastructure) and recent errors of those links.

// maxDiagErrors bounds the recent errors kept and shown.
const maxDiagErrors = 20

// Diagnostics is the node's local diagnostics record.
type Diagnostics struct {
	GeneratedAt   time.Time `json:"generated_at"`
	Version       string    `json:"version"`
	Go            string    `json:"go"`
	Platform      string    `json:"platform"`
	UptimeSeconds int64     `json:"uptime_s"`

	// Relays are the links to the bootstrap relays.
	Relays []DiagRelay `json:"relays"`
	// Mailbox are the mailbox sessions on the home relays.
	Mailbox []DiagMailbox `json:"mailbox"`
	// Peers counts connected peers by path.
	Peers DiagPeers `json:"peers"`
	// Messages counts stored messages by state ("received" for incoming).
	Messages map[string]int `json:"messages"`
	Contacts int            `json:"contacts"`
	Groups   int            `json:"groups"`
	// Presence are the presence service's counters (beacons sent, taken,
	// dropped by reason), nil without an account.
	Presence *presence.Stats `json:"presence,omitempty"`
	// StoreBytes is the local store's size on disk.
	StoreBytes uint64 `json:"store_bytes"`
	// RecentErrors are the latest errors of relay links, mailbox sessions
	// and submissions to relays, newest first.
	RecentErrors []DiagError `json:"recent_errors"`
	// CallQuality is the quality of the latest calls (calls.go,
	// CallQualityReport), only while call-quality sharing is in effect.
	CallQuality []CallQuality `json:"call_quality,omitempty"`
}

// DiagRelay is one bootstrap relay link.
type DiagRelay struct {
	PeerID    string `json:"peer_id"`
	Connected bool   `json:"connected"`
	Reserved  bool   `json:"reserved"`
	LastError string `json:"last_error,omitempty"`
}

// DiagMailbox is the mailbox session on one home relay.
type DiagMailbox struct {
	Relay     string `json:"relay"`
	Connected bool   `json:"connected"`
	LastError string `json:"last_error,omitempty"`
}

// DiagPeers counts connected peers.
type DiagPeers struct {
	Direct  int `json:"direct"`
	Relayed int `json:"relayed"`
}

// DiagError is one recent error.
type DiagError struct {
	At    time.Time `json:"at"`
	Where string    `json:"where"`
	Error string    `json:"error"`
}

// diagLog keeps the latest errors of the features that record theirs.
type diagLog struct {
	mu   sync.Mutex
	errs []DiagError // oldest first
}

func (l *diagLog) add(at time.Time, where string, err error) {
	if err == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.errs = append(l.errs, DiagError{At: at, Where: where, Error: err.Error()})
	if len(l.errs) > maxDiagErrors {
		l.errs = l.errs[len(l.errs)-maxDiagErrors:]
	}
}

func (l *diagLog) list() []DiagError {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]DiagError(nil), l.errs...)
}

// Diagnostics builds the diagnostics record. It works without an account
// (the account's parts are then empty).
func (n *Node) Diagnostics(ctx context.Context) (*Diagnostics, error) {
	if n.host == nil {
		return nil, ErrNotStarted
	}
	now := n.cfg.Now()
	d := &Diagnostics{
		GeneratedAt: now, Version: netkit.Version, Go: runtime.Version(),
		Platform: runtime.GOOS + "/" + runtime.GOARCH, UptimeSeconds: int64(now.Sub(n.start).Seconds()),
		Relays: []DiagRelay{}, Mailbox: []DiagMailbox{}, Messages: map[string]int{}, RecentErrors: []DiagError{},
	}
	var errs []DiagError
	st := n.Status()
	for _, r := range st.Relays {
		d.Relays = append(d.Relays, DiagRelay{PeerID: r.PeerID, Connected: r.Connected, Reserved: r.Reserved, LastError: r.LastError})
		if r.LastError != "" && !r.Connected {
			errs = append(errs, DiagError{At: now, Where: "relay " + r.PeerID, Error: r.LastError})
		}
	}
	for _, p := range n.Peers().Peers {
		if p.Path == "direct" {
			d.Peers.Direct++
		} else {
			d.Peers.Relayed++
		}
	}
	if m, err := n.messaging(); err == nil {
		for _, r := range m.Relays() {
			d.Mailbox = append(d.Mailbox, DiagMailbox{Relay: r.Relay.String(), Connected: r.Connected, LastError: r.LastError})
			if r.LastError != "" && !r.Connected {
				errs = append(errs, DiagError{At: now, Where: "mailbox " + r.Relay.String(), Error: r.LastError})
			}
		}
		if err := m.AllMessages(ctx, func(msg message.Message) error {
			d.Messages[string(msg.State)]++
			return nil
		}); err != nil {
			return nil, err
		}
		if gs, err := m.Groups(ctx); err == nil {
			d.Groups = len(gs)
		}
	}
	if book, err := n.contactBook(); err == nil {
		d.Contacts = len(book.list())
	}
	if svc, err := n.presenceService(); err == nil {
		s := svc.Stats()
		d.Presence = &s
	}
	if b, err := n.store.DiskUsage(ctx); err == nil {
		d.StoreBytes = b
	}
	if q, err := n.CallQualityReport(); err == nil && len(q) > 0 {
		d.CallQuality = q
	}
	logged := n.social.diag.list()
	for i := len(logged) - 1; i >= 0; i-- {
		errs = append(errs, logged[i])
	}
	if len(errs) > maxDiagErrors {
		errs = errs[:maxDiagErrors]
	}
	d.RecentErrors = append(d.RecentErrors, errs...)
	return d, nil
}

// diagnosticsJSON is the diagnostics record as feedback attaches it,
// within the relays' cap.
func (n *Node) diagnosticsJSON(ctx context.Context, max int) (json.RawMessage, error) {
	d, err := n.Diagnostics(ctx)
	if err != nil {
		return nil, err
	}
	for {
		b, err := json.Marshal(d)
		if err != nil {
			return nil, err
		}
		if len(b) <= max || len(d.RecentErrors) == 0 && len(d.CallQuality) == 0 {
			if len(b) > max {
				return nil, nil
			}
			return b, nil
		}
		d.RecentErrors = d.RecentErrors[:len(d.RecentErrors)/2]
		d.CallQuality = d.CallQuality[:len(d.CallQuality)/2]
	}
}
