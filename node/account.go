package node

import (
	"context"
	"crypto/rand"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/kinmesh/kinmesh/protocols/contact"
	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/protocols/mailbox"
	"github.com/kinmesh/kinmesh/storage"
)

// PolicyVersion is the version of the privacy policy this node ships
// (Config.PolicyVersion can stand in for a newer build in tests).
const PolicyVersion = "2026-11-01"

//go:embed policy.md
var policyText string

// Policy returns the privacy policy this node ships.
func Policy() (version, text string) { return PolicyVersion, policyText }

// Age rules.
const (
	// MinAge: no one younger may create an account.
	MinAge = 13
	// EUConsentAge: in the EU, anyone younger needs a parent's consent.
	EUConsentAge = 16
	// HomeRelays is how many of the bootstrap relays become the account's
	// home relays (k in DESIGN.md).
	HomeRelays = 3
)

// euCountries are the EU member states (ISO 3166-1 alpha-2).
var euCountries = map[string]bool{
	"AT": true, "BE": true, "BG": true, "HR": true, "CY": true, "CZ": true, "DK": true, "EE": true,
	"FI": true, "FR": true, "DE": true, "GR": true, "HU": true, "IE": true, "IT": true, "LV": true,
	"LT": true, "LU": true, "MT": true, "NL": true, "PL": true, "PT": true, "RO": true, "SK": true,
	"SI": true, "ES": true, "SE": true,
}

// Account errors. The API maps each to its own code (docs/api.md).
var (
	// ErrAgeRestricted: the birth date says the user is under 13.
	ErrAgeRestricted = errors.New("node: kinmesh is not for anyone under 13")
	// ErrParentalConsent: an EU user aged 13 to 15 needs a parent's consent.
	ErrParentalConsent = errors.New("node: users under 16 in the EU need a parent's consent (parental_consent: true)")
	// ErrPolicyNotAccepted: the request did not accept the current policy.
	ErrPolicyNotAccepted = errors.New("node: accept the privacy policy first (GET /v1/policy, then accept_policy: <version>)")
	// ErrInvalidProfile: a profile field is malformed; the message says which.
	ErrInvalidProfile = errors.New("node: invalid profile")
	// ErrAccountExists: this node already has an account.
	ErrAccountExists = errors.New("node: this node already has an account")
	// ErrNoAccount: the call needs an account; create one first.
	ErrNoAccount = errors.New("node: no account yet; create one with POST /v1/account")
)

// NewAccount is what creating an account takes.
type NewAccount struct {
	Name      string `json:"name"`
	BirthDate string `json:"birth_date"` // YYYY-MM-DD
	Country   string `json:"country,omitempty"`
	Gender    string `json:"gender,omitempty"`
	// AcceptPolicy must be the current PolicyVersion.
	AcceptPolicy string `json:"accept_policy"`
	// ParentalConsent is required for EU users aged 13 to 15.
	ParentalConsent bool `json:"parental_consent,omitempty"`
}

// Account is the account as the API shows it. Birth date, country and
// gender stay on this device: they are never part of the contact record.
type Account struct {
	ID               string    `json:"id"`
	Name             string    `json:"name"`
	BirthDate        string    `json:"birth_date"`
	Country          string    `json:"country,omitempty"`
	Gender           string    `json:"gender,omitempty"`
	CreatedAt        time.Time `json:"created_at"`
	PolicyVersion    string    `json:"policy_version"`
	PolicyAcceptedAt time.Time `json:"policy_accepted_at"`
	// CreatedPolicy is the version accepted at account creation.
	CreatedPolicy   string   `json:"created_policy,omitempty"`
	ParentalConsent bool     `json:"parental_consent,omitempty"`
	HomeRelays      []string `json:"home_relays"`
	Fingerprint     string   `json:"fingerprint"`
	// Photo is the profile photo's reference in the contact record, if
	// there is a photo (photo.go).
	Photo *PhotoInfo `json:"photo,omitempty"`
}

// account is the loaded account: its public face and its keys.
type account struct {
	Account
	identity    *e2ee.Identity
	mailboxKey  *e2ee.MailboxKey
	mailboxAuth mailbox.Key
	record      contact.Signed
}

// Keys in the "account" namespace.
const (
	keyAccount     = "account"
	keyIdentity    = "identity"
	keyMailboxKey  = "mailbox-key"
	keyMailboxAuth = "mailbox-auth"
	keyRecord      = "record"
)

// checkNewAccount validates a request against the profile rules, the age
// gate and the policy; it stores nothing.
func checkNewAccount(req NewAccount, now time.Time, policy string) (NewAccount, error) {
	req.Name = strings.TrimSpace(req.Name)
	req.Country = strings.ToUpper(strings.TrimSpace(req.Country))
	req.Gender = strings.TrimSpace(req.Gender)
	switch {
	case req.Name == "":
		return req, fmt.Errorf("%w: name is required", ErrInvalidProfile)
	case !utf8.ValidString(req.Name) || utf8.RuneCountInString(req.Name) > contact.MaxNameLen:
		return req, fmt.Errorf("%w: name must be at most %d characters", ErrInvalidProfile, contact.MaxNameLen)
	case strings.IndexFunc(req.Name, func(r rune) bool { return unicode.IsControl(r) }) >= 0:
		return req, fmt.Errorf("%w: name contains control characters", ErrInvalidProfile)
	case req.Country != "" && (len(req.Country) != 2 || strings.IndexFunc(req.Country, func(r rune) bool { return r < 'A' || r > 'Z' }) >= 0):
		return req, fmt.Errorf("%w: country must be a two-letter ISO 3166 code", ErrInvalidProfile)
	case utf8.RuneCountInString(req.Gender) > 32:
		return req, fmt.Errorf("%w: gender must be at most 32 characters", ErrInvalidProfile)
	}
	born, err := time.Parse(time.DateOnly, req.BirthDate)
	if err != nil {
		return req, fmt.Errorf("%w: birth_date must be YYYY-MM-DD", ErrInvalidProfile)
	}
	if born.After(now) {
		return req, fmt.Errorf("%w: birth_date is in the future", ErrInvalidProfile)
	}
	age := ageOn(born, now)
	if age > 130 {
		return req, fmt.Errorf("%w: birth_date is more than 130 years ago", ErrInvalidProfile)
	}
	if age < MinAge {
		return req, ErrAgeRestricted
	}
	if euCountries[req.Country] && age < EUConsentAge && !req.ParentalConsent {
		return req, ErrParentalConsent
	}
	if req.AcceptPolicy != policy {
		return req, ErrPolicyNotAccepted
	}
	return req, nil
}

// ageOn returns the age in whole years on day now of someone born on born.
func ageOn(born, now time.Time) int {
	y := now.Year() - born.Year()
	if now.Month() < born.Month() || (now.Month() == born.Month() && now.Day() < born.Day()) {
		y--
	}
	return y
}

// CreateAccount creates this node's account: identity, mailbox keys,
// prekeys and the signed contact record naming up to HomeRelays of the
// bootstrap relays as home relays. Nothing is stored if a check fails.
func (n *Node) CreateAccount(ctx context.Context, req NewAccount) (*Account, error) {
	if n.host == nil {
		return nil, ErrNotStarted
	}
	now := n.cfg.Now()
	req, err := checkNewAccount(req, now, n.cfg.PolicyVersion)
	if err != nil {
		return nil, err
	}
	n.acctMu.Lock()
	defer n.acctMu.Unlock()
	if n.acct != nil {
		return nil, ErrAccountExists
	}
	id, err := e2ee.NewIdentity(rand.Reader)
	if err != nil {
		return nil, err
	}
	mk, err := e2ee.NewMailboxKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	auth, err := mailbox.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	pk, err := e2ee.NewPrekeyStore(id, now, rand.Reader)
	if err != nil {
		return nil, err
	}
	var homes []string
	for _, r := range n.relays[:min(len(n.relays), HomeRelays)] {
		homes = append(homes, relayAddr(r))
	}
	a := &account{
		Account: Account{
			ID: string(id.AccountID()), Name: req.Name, BirthDate: req.BirthDate,
			Country: req.Country, Gender: req.Gender, CreatedAt: now,
			PolicyVersion: n.cfg.PolicyVersion, PolicyAcceptedAt: now, ParentalConsent: req.ParentalConsent,
			CreatedPolicy: n.cfg.PolicyVersion,
			HomeRelays:    homes, Fingerprint: id.Public().Fingerprint(),
		},
		identity: id, mailboxKey: mk, mailboxAuth: auth,
	}
	if a.record, err = n.signRecord(a, 1); err != nil {
		return nil, err
	}
	authBytes, err := auth.MarshalBinary()
	if err != nil {
		return nil, err
	}
	info, err := json.Marshal(a.Account)
	if err != nil {
		return nil, err
	}
	ns := n.store.Namespace("account")
	b := n.store.NewBatch()
	for k, v := range map[string][]byte{
		keyAccount: info, keyIdentity: id.MarshalPrivate(), keyMailboxKey: mk.Marshal(),
		keyMailboxAuth: authBytes, keyRecord: a.record.Raw,
	} {
		if err := b.Put(ns, k, v); err != nil {
			return nil, err
		}
	}
	if err := b.Commit(ctx); err != nil {
		return nil, fmt.Errorf("store account: %w", err)
	}
	n.acct = a
	if err := n.startMessaging(pk); err != nil {
		return nil, err
	}
	out := a.Account
	return &out, nil
}

// relayAddr returns the first address of r as a full /p2p/ multiaddr.
func relayAddr(r peer.AddrInfo) string {
	if len(r.Addrs) == 0 {
		return "/p2p/" + r.ID.String()
	}
	return r.Addrs[0].Encapsulate(ma.StringCast("/p2p/" + r.ID.String())).String()
}

// signRecord builds and signs the account's contact record.
func (n *Node) signRecord(a *account, seq uint64) (contact.Signed, error) {
	var homes []ma.Multiaddr
	for _, h := range a.HomeRelays {
		m, err := ma.NewMultiaddr(h)
		if err != nil {
			return contact.Signed{}, err
		}
		homes = append(homes, m)
	}
	rec := contact.Record{
		Identity:   a.identity.Public(),
		Seq:        seq,
		IssuedAt:   n.cfg.Now(),
		Name:       a.Name,
		HomeRelays: homes,
		Devices:    []peer.ID{n.host.ID()},
		MailboxID:  string(a.mailboxAuth.ID()),
		MailboxKey: a.mailboxKey.Public(),
		Photo:      a.record.Photo, // the current photo stays (photo.go)
	}
	return rec.Sign(a.identity)
}

// loadAccount loads the account, if one exists, at Start.
func (n *Node) loadAccount(ctx context.Context) (*account, error) {
	ns := n.store.Namespace("account")
	info, err := ns.Get(ctx, keyAccount)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("load account: %w", err)
	}
	a := &account{}
	if err := json.Unmarshal(info, &a.Account); err != nil {
		return nil, fmt.Errorf("load account: %w", err)
	}
	get := func(k string) []byte {
		if err != nil {
			return nil
		}
		var b []byte
		b, err = ns.Get(ctx, k)
		return b
	}
	idb, mkb, authb, recb := get(keyIdentity), get(keyMailboxKey), get(keyMailboxAuth), get(keyRecord)
	if err != nil {
		return nil, fmt.Errorf("load account keys: %w", err)
	}
	if a.identity, err = e2ee.UnmarshalPrivateIdentity(idb); err != nil {
		return nil, err
	}
	if a.mailboxKey, err = e2ee.UnmarshalMailboxKey(mkb); err != nil {
		return nil, err
	}
	if a.mailboxAuth, err = mailbox.UnmarshalKey(authb); err != nil {
		return nil, err
	}
	if a.record, err = contact.Parse(recb); err != nil {
		return nil, err
	}
	// The device's peer id is part of the record; re-sign if it changed.
	if len(a.record.Devices) != 1 || a.record.Devices[0] != n.host.ID() {
		rec, err := n.signRecord(a, a.record.Seq+1)
		if err != nil {
			return nil, err
		}
		if err := ns.Put(ctx, keyRecord, rec.Raw); err != nil {
			return nil, err
		}
		a.record = rec
	}
	return a, nil
}

// Account returns the account, if one exists.
func (n *Node) Account() (*Account, error) {
	n.acctMu.Lock()
	defer n.acctMu.Unlock()
	if n.acct == nil {
		return nil, ErrNoAccount
	}
	out := n.acct.Account
	out.Photo = photoInfo(n.acct.record)
	return &out, nil
}

// Invite returns an invite for this account: the signed contact record and
// a prekey bundle (signed and last-resort prekeys), so whoever adds it can
// write at once, even before reaching a relay.
func (n *Node) Invite() (contact.Invite, error) {
	n.acctMu.Lock()
	a := n.acct
	n.acctMu.Unlock()
	if a == nil {
		return contact.Invite{}, ErrNoAccount
	}
	pk, err := n.msg.Prekeys()
	if err != nil {
		return contact.Invite{}, err
	}
	up := pk.Upload()
	b := &e2ee.Bundle{Identity: up.Identity, SignedPrekey: up.SignedPrekey, PQPrekey: up.LastResort}
	raw, err := b.Marshal()
	if err != nil {
		return contact.Invite{}, err
	}
	return contact.Invite{Record: a.record, Bundle: raw}, nil
}

// createdPolicy is the policy version accepted at account creation.
func (a Account) createdPolicy() string {
	if a.CreatedPolicy != "" {
		return a.CreatedPolicy
	}
	return a.PolicyVersion
}
