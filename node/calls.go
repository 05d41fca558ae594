package node

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/pion/webrtc/v4"

	"github.com/kinmesh/kinmesh/protocols/calls"
	"github.com/kinmesh/kinmesh/protocols/calls/testmedia"
	"github.com/kinmesh/kinmesh/protocols/contact"
	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/protocols/turn"
)

// Calls. The node runs protocols/calls for its account: signalling over
// libp2p to contacts' devices, WebRTC media, STUN/TURN servers from its
// bootstrap relays with short-lived credentials each relay issues
// (protocols/turn), and the call history (with quality statistics) in the
// "calls" namespace. Events "call.<state>" (call.ringing,
// call.connecting, call.connected, call.ended, call.failed) carry the
// call's calls.Info in Event.Call.
//
// Call-quality statistics stay on the device: they are in the call
// history and the export, which are the user's. Sharing them outward (the
// only outward path is the diagnostics record feedback may carry) happens
// only while callQualityConsent() holds: CallQualityReport returns them
// then, and ErrNoCallQualityConsent otherwise.

// callsNamespace is the store namespace of the call history.
const callsNamespace = "calls"

// ErrNoCallQualityConsent: call-quality statistics may not leave the
// device: the user has not turned call-quality sharing on (or not
// accepted the current policy).
var ErrNoCallQualityConsent = errors.New("node: call-quality sharing is off (POST /v1/settings {\"call_quality_sharing\": true})")

// callsState is the node's calls service and what it keeps across
// restarts of it.
type callsState struct {
	mu  sync.Mutex
	svc *calls.Service

	once   sync.Once // per Node: metrics tracer
	tracer calls.MetricsTracer

	credsMu sync.Mutex
	creds   map[peer.ID]turn.Credentials // cached TURN credentials by relay
}

// startCalls starts the calls service for the loaded account (called with
// acctMu held, after messaging started).
func (n *Node) startCalls() error {
	n.calls.once.Do(func() {
		if n.cfg.Registry != nil {
			n.calls.tracer = calls.NewMetricsTracer(n.cfg.Registry)
		}
	})
	a, book := n.acct, n.contacts
	tc, err := turn.NewClient(n.host, a.identity)
	if err != nil {
		return fmt.Errorf("start calls: %w", err)
	}
	opts := []calls.Option{
		calls.WithICEServers(func(ctx context.Context) ([]webrtc.ICEServer, error) { return n.iceServers(ctx, tc) }),
		calls.WithForceRelay(n.callForceRelay),
		calls.WithHistory(n.store.Namespace(callsNamespace)),
		calls.WithEvents(func(i calls.Info) {
			n.events.publish(Event{Type: "call." + string(i.State), Call: i})
		}),
		calls.WithClock(n.cfg.Now),
		calls.WithLogger(n.log.With("component", "calls")),
	}
	if n.calls.tracer != nil {
		opts = append(opts, calls.WithMetricsTracer(n.calls.tracer))
	}
	self := calls.Self{Account: a.identity.AccountID(), Record: func() contact.Signed {
		n.acctMu.Lock()
		defer n.acctMu.Unlock()
		if n.acct == nil {
			return a.record
		}
		return n.acct.record
	}}
	svc, err := calls.NewService(n.host, self, callBook{book}, opts...)
	if err != nil {
		return fmt.Errorf("start calls: %w", err)
	}
	n.calls.mu.Lock()
	n.calls.svc = svc
	n.calls.mu.Unlock()
	return nil
}

// stopCalls hangs up every call and stops the service.
func (n *Node) stopCalls() error {
	n.calls.mu.Lock()
	svc := n.calls.svc
	n.calls.svc = nil
	n.calls.mu.Unlock()
	if svc == nil {
		return nil
	}
	return svc.Close()
}

func (n *Node) callsService() (*calls.Service, error) {
	n.calls.mu.Lock()
	defer n.calls.mu.Unlock()
	if n.calls.svc == nil {
		return nil, ErrNoAccount
	}
	return n.calls.svc, nil
}

// callBook shows the contact book to calls: only friends — contacts the
// user added from their invite (Source "invite"), as presence and moments
// count them — may call this device or be called from it. Someone who
// only wrote first ("message") or shares a group ("group"), a removed
// friend among them, is a stranger to calls: their invites are refused
// with unavailable before anything rings, and calling them is
// calls.ErrUnknownContact.
type callBook struct{ b *contactBook }

func (c callBook) Contact(id e2ee.AccountID) (contact.Signed, bool) {
	c.b.mu.RLock()
	defer c.b.mu.RUnlock()
	e, ok := c.b.entries[id]
	if !ok || e.Source != "invite" {
		return contact.Signed{}, false
	}
	return e.rec, true
}

func (c callBook) Blocked(id e2ee.AccountID) bool { return c.b.Blocked(id) }
func (c callBook) Learn(rec contact.Signed)       { c.b.Learn(rec) }

// iceServers returns the STUN and TURN servers of the first connected
// bootstrap relay that issues credentials (cached until two minutes
// before they expire).
func (n *Node) iceServers(ctx context.Context, tc *turn.Client) ([]webrtc.ICEServer, error) {
	var errs []error
	for _, r := range n.relays {
		if n.host.Network().Connectedness(r.ID) != network.Connected {
			continue
		}
		cr, err := n.turnCredentials(ctx, tc, r.ID)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		return []webrtc.ICEServer{{URLs: cr.URLs, Username: cr.Username, Credential: cr.Password}}, nil
	}
	if len(errs) == 0 {
		return nil, errors.New("node: no relay connected for STUN/TURN")
	}
	return nil, errors.Join(errs...)
}

func (n *Node) turnCredentials(ctx context.Context, tc *turn.Client, relay peer.ID) (turn.Credentials, error) {
	n.calls.credsMu.Lock()
	cr, ok := n.calls.creds[relay]
	n.calls.credsMu.Unlock()
	if ok && time.Until(cr.Expires) > 2*time.Minute {
		return cr, nil
	}
	cr, err := tc.Credentials(ctx, relay)
	if err != nil {
		return cr, err
	}
	n.calls.credsMu.Lock()
	if n.calls.creds == nil {
		n.calls.creds = map[peer.ID]turn.Credentials{}
	}
	n.calls.creds[relay] = cr
	n.calls.credsMu.Unlock()
	return cr, nil
}

// CallOptions are a call's media and settings (calls.Options): the
// embedding app's tracks (calls.Tracks(…)), what to do with the other
// side's, and relay-only for this call. The zero value sends nothing and
// receives audio and video.
type CallOptions = calls.Options

// TestMedia returns call options that play the built-in test clips
// (protocols/calls/testmedia: a tone and a test pattern, Opus and VP8),
// as the local API, the CLI and the testnet do.
func TestMedia(forceRelay bool) (CallOptions, error) {
	p, err := testmedia.New(true, true)
	if err != nil {
		return CallOptions{}, err
	}
	return CallOptions{Media: p, ForceRelay: forceRelay}, nil
}

// Call calls a friend (to is its account id: a contact added from its
// invite; see callBook). It returns at once, the call ringing; its
// progress shows in CallInfo and as call.* events. Errors:
// calls.ErrUnknownContact (not a friend), calls.ErrBlocked,
// calls.ErrTooManyCalls, calls.ErrNoRelay.
func (n *Node) Call(ctx context.Context, to string, o CallOptions) (*calls.Call, error) {
	svc, err := n.callsService()
	if err != nil {
		return nil, err
	}
	id, err := e2ee.ParseAccountID(to)
	if err != nil {
		return nil, fmt.Errorf("%w: %q is not an account id", ErrUnknownContact, to)
	}
	return svc.Call(ctx, id, o)
}

// AcceptCall answers the incoming call id.
func (n *Node) AcceptCall(ctx context.Context, id string, o CallOptions) (*calls.Call, error) {
	svc, err := n.callsService()
	if err != nil {
		return nil, err
	}
	return svc.Accept(ctx, id, o)
}

// HangUp ends call id (declines it while it rings).
func (n *Node) HangUp(ctx context.Context, id string) error {
	svc, err := n.callsService()
	if err != nil {
		return err
	}
	return svc.HangUp(ctx, id)
}

// CallInfo returns call id, live or ended.
func (n *Node) CallInfo(id string) (calls.Info, error) {
	svc, err := n.callsService()
	if err != nil {
		return calls.Info{}, err
	}
	return svc.Get(id)
}

// Calls lists the calls, live and past, newest first.
func (n *Node) Calls() ([]calls.Info, error) {
	svc, err := n.callsService()
	if err != nil {
		return nil, err
	}
	return svc.List(), nil
}

// maxCallQuality bounds the calls CallQualityReport (and so the
// diagnostics record) carries: the latest ones.
const maxCallQuality = 20

// CallQuality is one call's quality as it may leave the device: how it
// went, never with whom or when.
type CallQuality struct {
	Direction       calls.Direction `json:"direction"`
	State           calls.State     `json:"state"`
	Reason          string          `json:"reason,omitempty"`
	ForceRelay      bool            `json:"force_relay"`
	Path            string          `json:"path,omitempty"`
	LocalCandidate  string          `json:"local_candidate,omitempty"`
	RemoteCandidate string          `json:"remote_candidate,omitempty"`
	Restarts        int             `json:"ice_restarts,omitempty"`
	SetupMS         int64           `json:"setup_ms,omitempty"`
	DurationS       float64         `json:"duration_s"`
	Stats           *calls.Stats    `json:"stats,omitempty"`
}

// CallQualityReport returns the quality statistics of the latest calls
// (at most 20, newest first) for sharing beyond this device, only while
// the user consents to call-quality sharing; ErrNoCallQualityConsent
// otherwise. They name no one: no call ids, peers or times. Feedback
// carries them in its diagnostics record (Diagnostics.CallQuality), which
// itself leaves only with diagnostics consent and when the user asks.
func (n *Node) CallQualityReport() ([]CallQuality, error) {
	if !n.callQualityConsent() {
		return nil, ErrNoCallQualityConsent
	}
	all, err := n.Calls()
	if err != nil {
		return nil, err
	}
	out := make([]CallQuality, 0, min(len(all), maxCallQuality))
	for _, i := range all[:min(len(all), maxCallQuality)] {
		out = append(out, CallQuality{
			Direction: i.Direction, State: i.State, Reason: i.Reason, ForceRelay: i.ForceRelay,
			Path: i.Path, LocalCandidate: i.LocalCandidate, RemoteCandidate: i.RemoteCandidate,
			Restarts: i.Restarts, SetupMS: i.SetupMS, DurationS: i.DurationS, Stats: i.Stats,
		})
	}
	return out, nil
}

// callForceRelay reads the relay-only setting (it is not optional data
// collection, so it applies whatever the policy state).
func (n *Node) callForceRelay() bool {
	st, err := n.loadSettings(context.Background())
	return err == nil && st.Settings.CallForceRelay
}

// SetCallForceRelay turns relay-only calls on or off for every call from
// now on: with it on, calls offer only the relays' TURN candidates, so the
// other party never learns this device's IP address (calls may take a
// little longer to set up, and use relay bandwidth).
func (n *Node) SetCallForceRelay(ctx context.Context, on bool) (*SettingsView, error) {
	n.acctMu.Lock()
	defer n.acctMu.Unlock()
	if n.acct == nil {
		return nil, ErrNoAccount
	}
	st, err := n.loadSettings(ctx)
	if err != nil {
		return nil, err
	}
	st.Settings.CallForceRelay = on
	if err := n.saveSettings(ctx, st); err != nil {
		return nil, err
	}
	return n.settingsViewLocked(ctx)
}

// exportCalls is the call history for the export.
func (n *Node) exportCalls() []calls.Info {
	all, err := n.Calls()
	if err != nil || all == nil {
		return []calls.Info{}
	}
	return all
}
