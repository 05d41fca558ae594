package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/kinmesh/kinmesh/storage"
)

// Consent. The node ships a privacy policy version (Config.PolicyVersion).
// Creating an account accepts it; a newer build ships a newer version, and
// until the user accepts that one, optional data collection — diagnostics
// sharing and call-quality sharing — is off, whatever the settings say.
// Every acceptance and every change of an optional setting is kept in the
// consent history (exported with the account).

// Settings are the user's choices. The optional-collection ones default to
// off.
type Settings struct {
	// DiagnosticsSharing lets the node attach diagnostics to feedback.
	DiagnosticsSharing bool `json:"diagnostics_sharing"`
	// CallQualitySharing lets the node share call-quality statistics.
	CallQualitySharing bool `json:"call_quality_sharing"`
	// CallForceRelay makes every call relay-only: the other party sees a
	// relay's address, never this device's (not optional collection: it
	// applies whatever the policy state; POST /v1/calls/settings).
	CallForceRelay bool `json:"call_force_relay"`
}

// ConsentEvent is one entry of the consent history.
type ConsentEvent struct {
	At time.Time `json:"at"`
	// Kind is "policy_accepted" or "setting".
	Kind string `json:"kind"`
	// PolicyVersion for policy_accepted.
	PolicyVersion string `json:"policy_version,omitempty"`
	// Setting and Value for setting changes.
	Setting string `json:"setting,omitempty"`
	Value   bool   `json:"value,omitempty"`
}

// SettingsView is what GET /v1/settings shows.
type SettingsView struct {
	Settings Settings `json:"settings"`
	// Effective is what applies now: optional collection is off while the
	// current policy is not accepted.
	Effective Settings `json:"effective"`
	Policy    struct {
		Current  string `json:"current"`
		Accepted string `json:"accepted"`
		// NeedsAcceptance is true when the node ships a policy version the
		// user has not accepted.
		NeedsAcceptance bool `json:"needs_acceptance"`
	} `json:"policy"`
}

// ErrPolicyVersion: the version to accept is not the one this node ships.
var ErrPolicyVersion = errors.New("node: that is not the policy version this node ships (GET /v1/policy)")

const (
	keySettings = "settings"
	keyConsent  = "consent"
)

// settingsState is the stored settings and consent history.
type settingsState struct {
	Settings Settings       `json:"settings"`
	History  []ConsentEvent `json:"history"`
}

func (n *Node) loadSettings(ctx context.Context) (settingsState, error) {
	var st settingsState
	b, err := n.store.Namespace("account").Get(ctx, keySettings)
	if errors.Is(err, storage.ErrNotFound) {
		return st, nil
	}
	if err != nil {
		return st, err
	}
	return st, json.Unmarshal(b, &st)
}

func (n *Node) saveSettings(ctx context.Context, st settingsState) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	batch := n.store.NewBatch()
	if err := batch.Put(n.store.Namespace("account"), keySettings, b); err != nil {
		return err
	}
	return batch.Commit(ctx)
}

// SettingsView returns the settings, what is in effect and the policy state.
func (n *Node) SettingsView(ctx context.Context) (*SettingsView, error) {
	n.acctMu.Lock()
	defer n.acctMu.Unlock()
	return n.settingsViewLocked(ctx)
}

func (n *Node) settingsViewLocked(ctx context.Context) (*SettingsView, error) {
	if n.acct == nil {
		return nil, ErrNoAccount
	}
	st, err := n.loadSettings(ctx)
	if err != nil {
		return nil, err
	}
	v := &SettingsView{Settings: st.Settings}
	v.Policy.Current, v.Policy.Accepted = n.cfg.PolicyVersion, n.acct.PolicyVersion
	v.Policy.NeedsAcceptance = v.Policy.Current != v.Policy.Accepted
	if !v.Policy.NeedsAcceptance {
		v.Effective = st.Settings
	}
	v.Effective.CallForceRelay = st.Settings.CallForceRelay
	return v, nil
}

// UpdateSettings changes settings; fields left nil stay. Turning optional
// collection on needs the current policy accepted.
func (n *Node) UpdateSettings(ctx context.Context, diagnostics, callQuality *bool) (*SettingsView, error) {
	n.acctMu.Lock()
	defer n.acctMu.Unlock()
	if n.acct == nil {
		return nil, ErrNoAccount
	}
	st, err := n.loadSettings(ctx)
	if err != nil {
		return nil, err
	}
	if (diagnostics != nil && *diagnostics || callQuality != nil && *callQuality) && n.acct.PolicyVersion != n.cfg.PolicyVersion {
		return nil, ErrPolicyNotAccepted
	}
	now := n.cfg.Now()
	set := func(name string, dst *bool, v *bool) {
		if v != nil && *dst != *v {
			*dst = *v
			st.History = append(st.History, ConsentEvent{At: now, Kind: "setting", Setting: name, Value: *v})
		}
	}
	set("diagnostics_sharing", &st.Settings.DiagnosticsSharing, diagnostics)
	set("call_quality_sharing", &st.Settings.CallQualitySharing, callQuality)
	if err := n.saveSettings(ctx, st); err != nil {
		return nil, err
	}
	return n.settingsViewLocked(ctx)
}

// AcceptPolicy records that the user accepted version, which must be the
// one this node ships.
func (n *Node) AcceptPolicy(ctx context.Context, version string) (*SettingsView, error) {
	n.acctMu.Lock()
	defer n.acctMu.Unlock()
	a := n.acct
	if a == nil {
		return nil, ErrNoAccount
	}
	if version != n.cfg.PolicyVersion {
		return nil, ErrPolicyVersion
	}
	st, err := n.loadSettings(ctx)
	if err != nil {
		return nil, err
	}
	now := n.cfg.Now()
	st.History = append(st.History, ConsentEvent{At: now, Kind: "policy_accepted", PolicyVersion: version})
	next := a.Account
	next.PolicyVersion, next.PolicyAcceptedAt = version, now
	info, err := json.Marshal(next)
	if err != nil {
		return nil, err
	}
	sb, err := json.Marshal(st)
	if err != nil {
		return nil, err
	}
	b := n.store.NewBatch()
	ns := n.store.Namespace("account")
	if err := b.Put(ns, keyAccount, info); err != nil {
		return nil, err
	}
	if err := b.Put(ns, keySettings, sb); err != nil {
		return nil, err
	}
	if err := b.Commit(ctx); err != nil {
		return nil, fmt.Errorf("store policy acceptance: %w", err)
	}
	a.Account = next
	return n.settingsViewLocked(ctx)
}

// ConsentHistory returns every policy acceptance and optional-setting
// change, oldest first; account creation counts as the first acceptance.
func (n *Node) ConsentHistory(ctx context.Context) ([]ConsentEvent, error) {
	n.acctMu.Lock()
	defer n.acctMu.Unlock()
	if n.acct == nil {
		return nil, ErrNoAccount
	}
	st, err := n.loadSettings(ctx)
	if err != nil {
		return nil, err
	}
	first := ConsentEvent{At: n.acct.CreatedAt, Kind: "policy_accepted", PolicyVersion: n.acct.createdPolicy()}
	return append([]ConsentEvent{first}, st.History...), nil
}

// diagnosticsConsent reports whether diagnostics may leave the device now.
func (n *Node) diagnosticsConsent() bool {
	v, err := n.SettingsView(context.Background())
	return err == nil && v.Effective.DiagnosticsSharing
}

// callQualityConsent reports whether call-quality statistics may leave
// the device now.
func (n *Node) callQualityConsent() bool {
	v, err := n.SettingsView(context.Background())
	return err == nil && v.Effective.CallQualitySharing
}
