package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/core/protocol"
	msmux "github.com/multiformats/go-multistream"

	"github.com/kinmesh/kinmesh/protocols/discovery"
	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/storage"
)

// Phone number link. The account links an optional phone number on one of
// its home relays (the "phone relay"): the relay texts a code through its
// SMS gateway, the user types it back, and the relay enrols the account's
// signed contact record in its discovery directory under the number, so
// that people who have the number in their address book find the account
// (discovery.go). The number itself stays on this device, in the "phone"
// namespace; the relay keeps only its OPRF output
// (docs/protocol/discovery.md). Nothing is automatic: every step is a call
// of the user's.
//
// A move (rehome.go) can replace the phone relay. The link can't follow
// by itself: another relay links a number only on a code it texted
// (its own OPRF key, its own proof that the account reads the number's
// SMS), and the relay that holds the link is the one that is gone. So
// the phone then shows NeedsReverification: verifying the number again
// links it on a current home relay, the recovery backup follows it
// there (recovery.go), and the former-relay purge removes the old link
// and backup once the new copy is confirmed (former.go). Until then both
// stay where they are and keep working while that relay is up.

// Phone errors. The API maps each to its own code (docs/api.md, "Phone
// number and contact discovery"); the relay's refusals come as the
// sentinels of protocols/discovery (ErrWrongCode, ErrCodeExpired, …).
var (
	// ErrInvalidPhoneNumber: the number is not in international form.
	ErrInvalidPhoneNumber = errors.New("node: not a valid phone number: use the international form, + and the country code (e.g. +351 912 345 678)")
	// ErrNoPhoneCode: no code was requested, or the last one is void.
	ErrNoPhoneCode = errors.New("node: no verification code pending; ask for one with POST /v1/phone")
	// ErrInvalidCode: what was typed is not a 6-digit code.
	ErrInvalidCode = errors.New("node: a verification code is 6 digits")
	// ErrPhoneRelayUnreachable: none of the home relays answered.
	ErrPhoneRelayUnreachable = errors.New("node: could not reach a home relay; try again when online")
)

// PhoneStatus is the account's phone link as the API shows it, to the
// account's owner only.
type PhoneStatus struct {
	// Number is the verified number ("" if none).
	Number string `json:"number,omitempty"`
	// Verified: Number is linked and discoverable on Relay since
	// VerifiedAt.
	Verified   bool       `json:"verified"`
	VerifiedAt *time.Time `json:"verified_at,omitempty"`
	// Relay is the peer id of the relay holding the link.
	Relay string `json:"relay,omitempty"`
	// NeedsReverification: Relay is no home relay of the account any
	// more (a move replaced it, or the account was restored from it):
	// verify the number again (RequestPhoneCode) to link it on a current
	// home relay. Until then the link and the recovery backup stay on
	// Relay, working while it is up.
	NeedsReverification bool `json:"needs_reverification,omitempty"`
	// Pending is a number waiting for its code, if any.
	Pending *PendingPhone `json:"pending,omitempty"`
}

// PendingPhone is a verification in progress.
type PendingPhone struct {
	Number        string    `json:"number"`
	Relay         string    `json:"relay"`
	CodeExpiresAt time.Time `json:"code_expires_at"`
	AttemptsLeft  int       `json:"attempts_left"`
}

// phoneState is what the "phone" namespace keeps.
type phoneState struct {
	Number     string    `json:"number,omitempty"`
	Relay      string    `json:"relay,omitempty"` // full multiaddr
	VerifiedAt time.Time `json:"verified_at,omitzero"`
	// RecordSeq is the sequence number of the contact record the
	// relay's directory entry holds (entryLoop keeps it current; 0 in
	// states saved before it was kept, which refreshes the entry once).
	RecordSeq uint64 `json:"record_seq,omitempty"`

	PendingNumber  string    `json:"pending_number,omitempty"`
	PendingRelay   string    `json:"pending_relay,omitempty"`
	PendingExpires time.Time `json:"pending_expires,omitzero"`
	AttemptsLeft   int       `json:"attempts_left,omitempty"`
}

const (
	phoneNamespace = "phone"
	keyPhoneState  = "state"
)

func (n *Node) loadPhone(ctx context.Context) (phoneState, error) {
	var st phoneState
	b, err := n.store.Namespace(phoneNamespace).Get(ctx, keyPhoneState)
	if errors.Is(err, storage.ErrNotFound) {
		return st, nil
	}
	if err != nil {
		return st, fmt.Errorf("load phone state: %w", err)
	}
	return st, json.Unmarshal(b, &st)
}

func (n *Node) savePhone(ctx context.Context, st phoneState) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	if err := n.store.Namespace(phoneNamespace).Put(ctx, keyPhoneState, b); err != nil {
		return fmt.Errorf("store phone state: %w", err)
	}
	return nil
}

// view is the phone state as the API shows it; homes are the account's
// home relays.
func (st phoneState) view(now time.Time, homes []string) *PhoneStatus {
	out := &PhoneStatus{Number: st.Number, Verified: st.Number != ""}
	if out.Verified {
		at := st.VerifiedAt
		out.VerifiedAt = &at
		out.Relay = relayID(st.Relay)
		out.NeedsReverification = st.needsReverification(homes)
	}
	if st.PendingNumber != "" && now.Before(st.PendingExpires) {
		out.Pending = &PendingPhone{
			Number: st.PendingNumber, Relay: relayID(st.PendingRelay),
			CodeExpiresAt: st.PendingExpires, AttemptsLeft: st.AttemptsLeft,
		}
	}
	return out
}

// needsReverification reports whether the number is linked on a relay
// that is no home relay of the account (homes) any more.
func (st phoneState) needsReverification(homes []string) bool {
	return st.Number != "" && st.Relay != "" && !isHome(homes, st.Relay)
}

// isHome reports whether relay (a multiaddr) is one of homes, by peer id.
func isHome(homes []string, relay string) bool {
	id := relayID(relay)
	return id != "" && slices.ContainsFunc(homes, func(h string) bool { return relayID(h) == id })
}

// homeRelays returns the account's home relays (none without one).
func (n *Node) homeRelays() []string {
	n.acctMu.Lock()
	defer n.acctMu.Unlock()
	if n.acct == nil {
		return nil
	}
	return slices.Clone(n.acct.HomeRelays)
}

func relayID(addr string) string {
	ai, err := peer.AddrInfoFromString(addr)
	if err != nil {
		return ""
	}
	return ai.ID.String()
}

// phoneAccount returns the account and a discovery client.
func (n *Node) phoneAccount() (*account, *discovery.Client, error) {
	if n.host == nil {
		return nil, nil, ErrNotStarted
	}
	n.acctMu.Lock()
	a := n.acct
	n.acctMu.Unlock()
	if a == nil {
		return nil, nil, ErrNoAccount
	}
	c, err := discovery.NewClient(n.host, discovery.WithClientLogger(n.log))
	if err != nil {
		return nil, nil, err
	}
	return a, c, nil
}

// phoneRelays returns the relays to use, as dialable peers: prefer first
// (if set), then the account's home relays, connected ones first.
func (n *Node) phoneRelays(a *account, prefer string) []peer.AddrInfo {
	addrs := slices.Clone(a.HomeRelays)
	if prefer != "" {
		addrs = append([]string{prefer}, slices.DeleteFunc(addrs, func(s string) bool { return relayID(s) == relayID(prefer) })...)
	}
	var up, down []peer.AddrInfo
	for _, s := range addrs {
		ai, err := peer.AddrInfoFromString(s)
		if err != nil {
			continue
		}
		n.host.Peerstore().AddAddrs(ai.ID, ai.Addrs, peerstore.TempAddrTTL)
		if n.host.Network().Connectedness(ai.ID) == network.Connected || (prefer != "" && relayID(prefer) == ai.ID.String()) {
			up = append(up, *ai)
		} else {
			down = append(down, *ai)
		}
	}
	return append(up, down...)
}

// relayAnswered reports whether err is a relay's answer (or a client-side
// verdict on it), as opposed to failing to reach the relay.
func relayAnswered(err error) bool {
	var de *discovery.Error
	return err == nil || errors.As(err, &de) || errors.Is(err, discovery.ErrBadProof) ||
		errors.Is(err, discovery.ErrKeyChanged) || errors.Is(err, discovery.ErrProtocol) ||
		errors.Is(err, discovery.ErrInvalidNumber) || errors.Is(err, discovery.ErrMalformed)
}

// unreachable wraps a failure to reach relays.
func unreachable(err error) error {
	if relayAnswered(err) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrPhoneRelayUnreachable, err)
}

// RequestPhoneCode asks a home relay to text a verification code to
// number (international form; spaces, dashes and parentheses are fine).
// The relay of an already verified number is asked first while it is a
// home relay, so the account keeps one phone relay; after a move replaced
// it, the current home relays are asked (verifying the same number again
// moves the link). The code is valid for 10 minutes; submit it with
// ConfirmPhoneCode.
func (n *Node) RequestPhoneCode(ctx context.Context, number string) (*PhoneStatus, error) {
	num, err := discovery.ParseNumber(number)
	if err != nil {
		return nil, fmt.Errorf("%w (%v)", ErrInvalidPhoneNumber, err)
	}
	a, c, err := n.phoneAccount()
	if err != nil {
		return nil, err
	}
	n.phoneMu.Lock()
	defer n.phoneMu.Unlock()
	st, err := n.loadPhone(ctx)
	if err != nil {
		return nil, err
	}
	homes := n.homeRelays()
	prefer := st.Relay
	if !isHome(homes, prefer) {
		prefer = "" // replaced: the link moves to a current home
	}
	var last error = ErrPhoneRelayUnreachable
	for _, r := range n.phoneRelays(a, prefer) {
		res, err := c.RequestCode(ctx, r.ID, a.identity, num)
		if !relayAnswered(err) {
			last = unreachable(err)
			continue
		}
		if err != nil {
			return nil, err
		}
		st.PendingNumber, st.PendingRelay = string(num), relayAddr(r)
		st.PendingExpires, st.AttemptsLeft = res.CodeExpires, res.AttemptsLeft
		if err := n.savePhone(ctx, st); err != nil {
			return nil, err
		}
		n.log.Info("phone verification code requested", "relay", r.ID)
		return st.view(n.cfg.Now(), homes), nil
	}
	return nil, last
}

// ConfirmPhoneCode submits the code texted to the pending number. On
// success the number is linked to the account on the relay that sent it
// and enrolled in its discovery directory (replacing a number verified
// before, which leaves the directory). The recovery backup follows the
// link to that relay at once. A previous link on a relay that is no home
// any more and can't be reached now is left to the former-relay purge
// (former.go), which removes it, and the backup there, once it answers.
func (n *Node) ConfirmPhoneCode(ctx context.Context, code string) (*PhoneStatus, error) {
	code, ok := discovery.NormalizeCode(code)
	if !ok {
		return nil, ErrInvalidCode
	}
	a, c, err := n.phoneAccount()
	if err != nil {
		return nil, err
	}
	n.phoneMu.Lock()
	defer n.phoneMu.Unlock()
	st, err := n.loadPhone(ctx)
	if err != nil {
		return nil, err
	}
	if st.PendingNumber == "" {
		return nil, ErrNoPhoneCode
	}
	relay, err := peer.AddrInfoFromString(st.PendingRelay)
	if err != nil {
		return nil, fmt.Errorf("pending phone relay: %w", err)
	}
	n.host.Peerstore().AddAddrs(relay.ID, relay.Addrs, peerstore.TempAddrTTL)
	n.acctMu.Lock()
	rec := a.record
	n.acctMu.Unlock()
	res, err := c.VerifyCode(ctx, relay.ID, a.identity, code, rec)
	switch {
	case err == nil:
	case errors.Is(err, discovery.ErrWrongCode):
		st.AttemptsLeft = res.AttemptsLeft
		return nil, errors.Join(err, n.savePhone(ctx, st))
	case errors.Is(err, discovery.ErrCodeExpired), errors.Is(err, discovery.ErrNoCode), errors.Is(err, discovery.ErrTooManyAttempts):
		st.PendingNumber, st.PendingRelay, st.PendingExpires, st.AttemptsLeft = "", "", time.Time{}, 0
		return nil, errors.Join(err, n.savePhone(ctx, st))
	default:
		return nil, unreachable(err)
	}
	old := st.Relay
	st = phoneState{Number: st.PendingNumber, Relay: st.PendingRelay, VerifiedAt: res.VerifiedAt, RecordSeq: rec.Seq}
	if err := n.savePhone(ctx, st); err != nil {
		return nil, err
	}
	homes := n.homeRelays()
	if old != "" && relayID(old) != relay.ID.String() {
		// The previous number's entry lives on another relay: remove it.
		if ai, err := peer.AddrInfoFromString(old); err == nil {
			n.host.Peerstore().AddAddrs(ai.ID, ai.Addrs, peerstore.TempAddrTTL)
			if _, err := c.Unenrol(ctx, ai.ID, a.identity); err != nil {
				n.log.Warn("remove the previous number from its relay's directory", "relay", ai.ID, "err", err)
				if !isHome(homes, old) {
					// No home: the former-relay purge takes it, with
					// whatever else of the account it holds.
					if err := n.addFormer(ctx, formerRelay{Relay: old, Since: n.cfg.Now()}); err != nil {
						n.log.Warn("remember the previous phone relay to purge", "relay", ai.ID, "err", err)
					}
				}
			}
		}
	}
	wake(n.entryWake)  // the record may have changed meanwhile
	n.kickRecovery()   // the backup follows the link
	wake(n.formerWake) // the old link is no longer in use
	n.log.Info("phone number verified", "relay", relay.ID)
	return st.view(n.cfg.Now(), homes), nil
}

// Phone returns the account's phone link, as this device knows it.
func (n *Node) Phone(ctx context.Context) (*PhoneStatus, error) {
	if _, _, err := n.phoneAccount(); err != nil {
		return nil, err
	}
	st, err := n.loadPhone(ctx)
	if err != nil {
		return nil, err
	}
	return st.view(n.cfg.Now(), n.homeRelays()), nil
}

// UnlinkPhone removes the number: the relay deletes the link and the
// directory entry (and any pending code), then the device forgets the
// number. If the relay can't be reached nothing changes; retry.
func (n *Node) UnlinkPhone(ctx context.Context) (*PhoneStatus, error) {
	a, c, err := n.phoneAccount()
	if err != nil {
		return nil, err
	}
	n.phoneMu.Lock()
	defer n.phoneMu.Unlock()
	st, err := n.loadPhone(ctx)
	if err != nil {
		return nil, err
	}
	for _, addr := range []string{st.Relay, st.PendingRelay} {
		ai, err := peer.AddrInfoFromString(addr)
		if err != nil {
			continue
		}
		n.host.Peerstore().AddAddrs(ai.ID, ai.Addrs, peerstore.TempAddrTTL)
		if _, err := c.Unenrol(ctx, ai.ID, a.identity); err != nil {
			return nil, unreachable(err)
		}
	}
	if err := n.store.Namespace(phoneNamespace).Delete(ctx, keyPhoneState); err != nil {
		return nil, err
	}
	wake(n.formerWake) // no link left in use on a former home relay
	return phoneState{}.view(n.cfg.Now(), nil), nil
}

// The directory entry on the phone relay carries the account's signed
// contact record: it is what people who find the account by number add as
// a contact. So it follows the record: a move to other home relays, a new
// profile photo, a new device, a restore. phoneState.RecordSeq is the
// sequence number of the record the entry holds; entryLoop sends the
// account's current record (discovery's UpdateRecord) whenever it is
// newer. It is woken at start, by every new record (recordChanged), by a
// verification and when relay links change, and retries with backoff
// while the relay can't be reached.

// entryLoop keeps the phone directory entry's record current.
func (n *Node) entryLoop() { n.retryLoop(n.entryWake, n.refreshEntry) }

// refreshEntry sends the current record to the relay holding the phone
// link if its entry holds an older one, and reports whether to retry.
func (n *Node) refreshEntry(ctx context.Context) (retry bool) {
	if n.host == nil {
		return false
	}
	a, rec := n.accountRecord()
	if a == nil {
		return false
	}
	st, err := n.loadPhone(ctx)
	if err != nil {
		n.log.Warn("phone directory entry", "err", err)
		return true
	}
	if st.Number == "" || st.RecordSeq >= rec.Seq {
		return false
	}
	ai, err := peer.AddrInfoFromString(st.Relay)
	if err != nil {
		n.log.Warn("phone directory entry: the phone relay's address", "err", err)
		return false
	}
	c, err := discovery.NewClient(n.host, discovery.WithClientLogger(n.log))
	if err != nil {
		return true
	}
	n.host.Peerstore().AddAddrs(ai.ID, ai.Addrs, peerstore.TempAddrTTL)
	uctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	_, err = c.UpdateRecord(uctx, ai.ID, a.identity, rec)
	cancel()
	switch {
	case errors.Is(err, discovery.ErrNotVerified):
		// No link there (unlinked meanwhile, or the relay lost it):
		// no entry to refresh until the number is verified again.
		n.log.Warn("phone directory entry: the relay holds no link for the account", "relay", ai.ID)
	case err != nil:
		n.log.Debug("phone directory entry: send the new record", "relay", ai.ID, "err", err)
		return true
	}
	// Note it unless the link changed meanwhile: a verification enrols
	// the record it read, which may be older than the one just sent, and
	// notes that one; the loop, woken by it, looks again.
	n.phoneMu.Lock()
	defer n.phoneMu.Unlock()
	cur, err := n.loadPhone(ctx)
	if err != nil {
		n.log.Warn("phone directory entry", "err", err)
		return true
	}
	if cur.Number != st.Number || cur.Relay != st.Relay || !cur.VerifiedAt.Equal(st.VerifiedAt) || cur.RecordSeq != st.RecordSeq {
		wake(n.entryWake)
		return false
	}
	cur.RecordSeq = rec.Seq
	if err := n.savePhone(ctx, cur); err != nil {
		n.log.Warn("phone directory entry", "err", err)
		return true
	}
	n.log.Debug("phone directory entry refreshed", "relay", ai.ID, "seq", rec.Seq)
	return false
}

// purgeDiscovery is the account-deletion purge of one relay: the number
// link, directory entry and pending code (see delete.go's purgers).
func (n *Node) purgeDiscovery(ctx context.Context, relay peer.ID, id *e2ee.Identity) error {
	c, err := discovery.NewClient(n.host, discovery.WithClientLogger(n.log))
	if err != nil {
		return err
	}
	_, err = c.Unenrol(ctx, relay, id)
	var unsupported msmux.ErrNotSupported[protocol.ID]
	if err != nil && !errors.As(err, &unsupported) { // a relay without discovery holds nothing
		return fmt.Errorf("discovery: %w", err)
	}
	return nil
}
