package node

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/core/protocol"
	msmux "github.com/multiformats/go-multistream"

	"github.com/kinmesh/kinmesh/protocols/backup"
	"github.com/kinmesh/kinmesh/protocols/contact"
	"github.com/kinmesh/kinmesh/protocols/discovery"
	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/protocols/mailbox"
	"github.com/kinmesh/kinmesh/protocols/message"
	"github.com/kinmesh/kinmesh/protocols/prekeys"
	"github.com/kinmesh/kinmesh/storage"
)

// Account recovery (protocols/backup, docs/protocol/recovery.md).
//
// Turning it on (EnableRecovery) needs a verified phone number. The node
// makes a recovery secret, shows it once, derives a backup key from it
// (Argon2id) and keeps the key — never the secret — in the "recovery"
// namespace. It then keeps an encrypted backup of the account (keys,
// profile, contacts, blocks, settings, the former home relays still to
// purge; no messages) on the relay that
// holds the number's link: checked every RecoveryCheck (5 minutes) and
// uploaded when anything in it changed, and at least daily
// (RecoveryRefresh), so the relay's copy never expires while a device of
// the account lives. The backup follows the link: when the number is
// verified on another relay (after a move replaced the phone relay,
// phone.go), the next upload goes there, and the old copy is deleted
// once the new one is confirmed — by the upload itself, or by the
// former-relay purge when the old relay is down then (former.go).
//
// On a new device without an account, StartRecovery asks a relay to text
// a code to the number (with a throwaway identity, kept in memory);
// FinishRecovery presents the code, fetches the backup, opens it with
// the secret the user typed and restores the account: same identity (so
// the same account id), mailbox keys (so mail waiting on the relays is
// fetched), profile, contacts, blocks and settings. It signs a new
// contact record for this device (the sequence number after the highest
// seen), purges the old prekeys from the home relays before the messaging
// engine publishes fresh ones, takes over the relays the lost device left
// and had not purged yet (former.go), and sends every contact a control
// over a new session, so their next messages reach this device. Messages
// encrypted to the lost device's sessions can't be read here and are
// dropped.

// Recovery timing.
const (
	// RecoveryCheck is how often the node checks whether the backup needs
	// uploading (something in it changed, or RecoveryRefresh passed).
	RecoveryCheck = 5 * time.Minute
	// RecoveryRefresh is the longest the node goes without uploading.
	RecoveryRefresh = 24 * time.Hour
	// ControlRestored is the kind of the control a restored device sends
	// every contact (message.Service.SendControl): its payload is JSON
	// {"restored_at": RFC 3339 time}. Receiving it starts the new session;
	// a node need not handle it otherwise.
	ControlRestored = "kinmesh/recovery/restored"
)

// Recovery errors. The API maps each to its own code (docs/api.md,
// "Account recovery"); the relays' refusals come as the sentinels of
// protocols/backup and protocols/discovery.
var (
	// ErrRecoveryNeedsPhone: backups are stored under a verified phone
	// number.
	ErrRecoveryNeedsPhone = errors.New("node: account recovery needs a verified phone number: verify one first (POST /v1/phone)")
	// ErrRecoveryOff: recovery is not turned on.
	ErrRecoveryOff = errors.New("node: account recovery is off; turn it on with POST /v1/recovery")
	// ErrNoRecoveryPending: FinishRecovery without StartRecovery (or
	// after the code was used up).
	ErrNoRecoveryPending = errors.New("node: no recovery in progress; start one with POST /v1/recovery/start")
	// ErrBackupCorrupt: the backup opened with the secret but does not
	// hold a valid account.
	ErrBackupCorrupt = errors.New("node: the backup opened but does not hold a valid kinmesh account")
	// ErrUnknownRelay: the relay named is not one of this node's
	// bootstrap relays.
	ErrUnknownRelay = errors.New("node: that is not one of this node's relays (GET /v1/node lists them)")
)

const (
	recoveryNamespace = "recovery"
	keyRecovery       = "state"
	keyPrekeyPurge    = "prekey-purge"
)

// recoveryState is what the node keeps for account recovery (Node.recovery).
type recoveryState struct {
	mu      sync.Mutex // serializes enabling, uploads, purges and restores
	once    sync.Once  // the upkeep loop and the purger, once per Node
	kick    chan struct{}
	enabled atomic.Bool // the upkeep loop runs its timer only then

	pending *pendingRecovery // a recovery in progress on a fresh node (guarded by mu)
}

// pendingRecovery is a recovery between StartRecovery and FinishRecovery.
// It lives in memory only: a restart starts over.
type pendingRecovery struct {
	number       discovery.Number
	relay        peer.AddrInfo
	id           *e2ee.Identity // throwaway: asks for the code and fetches
	expires      time.Time
	attemptsLeft int
	blob         []byte // fetched: a wrong secret can be retried without a new code
	fetchedAt    time.Time
}

// recoveryRecord is the stored state of recovery: present while it is on.
type recoveryRecord struct {
	Key         []byte       `json:"key"` // backup.Key encoding
	EnabledAt   time.Time    `json:"enabled_at"`
	LastBackup  time.Time    `json:"last_backup,omitzero"`
	LastAttempt time.Time    `json:"last_attempt,omitzero"`
	Digest      string       `json:"digest,omitempty"` // of the contents last uploaded
	Size        int          `json:"size,omitempty"`
	Held        []heldBackup `json:"held,omitempty"`
	Error       string       `json:"error,omitempty"`
}

type heldBackup struct {
	Relay     string    `json:"relay"` // full multiaddr
	UpdatedAt time.Time `json:"updated_at"`
	ExpiresAt time.Time `json:"expires_at"`
}

// RecoveryStatus is recovery as the API shows it.
type RecoveryStatus struct {
	// Enabled: backups are on (since EnabledAt).
	Enabled   bool       `json:"enabled"`
	EnabledAt *time.Time `json:"enabled_at,omitempty"`
	// LastBackup is when a relay last took the backup, Size its size.
	LastBackup *time.Time `json:"last_backup,omitempty"`
	Size       int        `json:"size,omitempty"`
	// Relays are the relays holding it.
	Relays []RecoveryRelay `json:"relays"`
	// Error is why the last upload failed, if it did.
	Error string `json:"error,omitempty"`
	// PhoneVerified: the account has a verified number (needed).
	PhoneVerified bool `json:"phone_verified"`
	// PhoneNeedsReverification: the number is linked on a relay that is
	// no home relay any more (PhoneStatus.NeedsReverification); the
	// backup stays there, updated while that relay is up, until the
	// number is verified again on a current home.
	PhoneNeedsReverification bool `json:"phone_needs_reverification,omitempty"`
}

// RecoveryRelay is one relay holding the backup.
type RecoveryRelay struct {
	Relay     string    `json:"relay"` // peer id
	UpdatedAt time.Time `json:"updated_at"`
	ExpiresAt time.Time `json:"expires_at"`
}

// RecoveryEnabled is what EnableRecovery returns: the secret, shown this
// once.
type RecoveryEnabled struct {
	Secret   string          `json:"secret"`
	Recovery *RecoveryStatus `json:"recovery"`
}

// RecoveryStart is a recovery waiting for its code.
type RecoveryStart struct {
	Number        string    `json:"number"`
	Relay         string    `json:"relay"` // peer id of the relay that texted the code
	CodeExpiresAt time.Time `json:"code_expires_at"`
	AttemptsLeft  int       `json:"attempts_left"`
	// Fetched: the backup is already here (a wrong secret was typed):
	// finish with the secret alone.
	Fetched bool `json:"fetched,omitempty"`
}

// Restored is what FinishRecovery returns.
type Restored struct {
	Account *Account `json:"account"`
	// BackupAt is when the backup was made.
	BackupAt time.Time `json:"backup_at"`
	Contacts int       `json:"contacts"`
	Blocks   int       `json:"blocks"`
	// Introduced is how many contacts were sent the new session.
	Introduced int `json:"introduced"`
	// PrekeysPending are home relays whose old prekeys could not be
	// purged yet; the node keeps trying.
	PrekeysPending []string `json:"prekeys_pending"`
}

// startRecovery starts the backup upkeep for the loaded account (once per
// Node; Start registers the account-deletion purge of the backups). Called
// from startMessaging with acctMu held: it must not take recovery.mu.
func (n *Node) startRecovery() {
	n.recovery.once.Do(func() {
		n.recovery.kick = make(chan struct{}, 1)
		n.bg.Go(n.recoveryLoop)
	})
	n.kickRecovery()
}

// kickRecovery asks the upkeep loop for a check now.
func (n *Node) kickRecovery() {
	if n.recovery.kick == nil {
		return
	}
	select {
	case n.recovery.kick <- struct{}{}:
	default:
	}
}

// recoveryLoop keeps the backup up to date and finishes a restore's
// prekey purges. It wakes every RecoveryCheck while recovery is on, and
// on kicks.
func (n *Node) recoveryLoop() {
	if rec, err := n.loadRecovery(n.bgCtx); err == nil && rec != nil {
		n.recovery.enabled.Store(true)
	}
	t := time.NewTimer(30 * time.Second) // relays come up first
	defer t.Stop()
	for {
		select {
		case <-n.bgCtx.Done():
			return
		case <-n.recovery.kick:
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(n.bgCtx, 2*time.Minute)
		n.recoveryUpkeep(ctx)
		cancel()
		if !t.Stop() {
			select {
			case <-t.C:
			default:
			}
		}
		if n.recovery.enabled.Load() || n.prekeyPurgePending(n.bgCtx) {
			t.Reset(RecoveryCheck)
		}
	}
}

func (n *Node) recoveryUpkeep(ctx context.Context) {
	if err := n.finishPrekeyPurge(ctx); err != nil {
		n.log.Debug("purge old prekeys after a restore", "err", err)
	}
	if _, err := n.backupIfNeeded(ctx, false); err != nil && !errors.Is(err, ErrRecoveryOff) && !errors.Is(err, ErrNoAccount) {
		n.log.Debug("account backup", "err", err)
	}
}

func (n *Node) loadRecovery(ctx context.Context) (*recoveryRecord, error) {
	b, err := n.store.Namespace(recoveryNamespace).Get(ctx, keyRecovery)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("load recovery state: %w", err)
	}
	var rec recoveryRecord
	if err := json.Unmarshal(b, &rec); err != nil {
		return nil, fmt.Errorf("load recovery state: %w", err)
	}
	return &rec, nil
}

func (n *Node) saveRecovery(ctx context.Context, rec *recoveryRecord) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	batch := n.store.NewBatch()
	if err := batch.Put(n.store.Namespace(recoveryNamespace), keyRecovery, b); err != nil {
		return err
	}
	if err := batch.Commit(ctx); err != nil {
		return fmt.Errorf("store recovery state: %w", err)
	}
	return nil
}

// savedRecovery follows a saved upload: while relays besides the phone
// relay still hold an old copy, the former-relay purge may now take it
// (former.go: it waits for the phone relay's copy).
func (n *Node) savedRecovery(rec *recoveryRecord) {
	if len(rec.Held) > 1 {
		wake(n.formerWake)
	}
}

// view is the recovery state as the API shows it, with the phone state
// ph and the account's home relays.
func (rec *recoveryRecord) view(ph phoneState, homes []string) *RecoveryStatus {
	st := &RecoveryStatus{Relays: []RecoveryRelay{}, PhoneVerified: ph.Number != "", PhoneNeedsReverification: ph.needsReverification(homes)}
	if rec == nil {
		return st
	}
	st.Enabled = true
	at := rec.EnabledAt
	st.EnabledAt = &at
	if !rec.LastBackup.IsZero() {
		lb := rec.LastBackup
		st.LastBackup, st.Size = &lb, rec.Size
	}
	for _, h := range rec.Held {
		st.Relays = append(st.Relays, RecoveryRelay{Relay: relayID(h.Relay), UpdatedAt: h.UpdatedAt, ExpiresAt: h.ExpiresAt})
	}
	st.Error = rec.Error
	return st
}

// recoveryAccount returns the account and a backup client.
func (n *Node) recoveryAccount() (*account, *backup.Client, error) {
	if n.host == nil {
		return nil, nil, ErrNotStarted
	}
	n.acctMu.Lock()
	a := n.acct
	n.acctMu.Unlock()
	if a == nil {
		return nil, nil, ErrNoAccount
	}
	c, err := backup.NewClient(n.host, backup.WithClientLogger(n.log))
	if err != nil {
		return nil, nil, err
	}
	return a, c, nil
}

// Recovery returns whether backups are on, when the last one was taken
// and which relays hold it, as this device knows it.
func (n *Node) Recovery(ctx context.Context) (*RecoveryStatus, error) {
	if _, _, err := n.recoveryAccount(); err != nil {
		return nil, err
	}
	rec, err := n.loadRecovery(ctx)
	if err != nil {
		return nil, err
	}
	ph, err := n.loadPhone(ctx)
	if err != nil {
		return nil, err
	}
	return rec.view(ph, n.homeRelays()), nil
}

// EnableRecovery turns account recovery on — or, when it is on, replaces
// the secret (the old one stops working): it makes a new recovery secret,
// derives the backup key from it and uploads a first backup to the relay
// holding the account's verified number. The secret is returned this once
// and kept nowhere: the user must write it down.
func (n *Node) EnableRecovery(ctx context.Context) (*RecoveryEnabled, error) {
	if _, _, err := n.recoveryAccount(); err != nil {
		return nil, err
	}
	ph, err := n.loadPhone(ctx)
	if err != nil {
		return nil, err
	}
	if ph.Number == "" || ph.Relay == "" {
		return nil, ErrRecoveryNeedsPhone
	}
	secret, err := backup.NewSecret(rand.Reader)
	if err != nil {
		return nil, err
	}
	key, err := backup.NewKey(secret, backup.DefaultKDF, rand.Reader)
	if err != nil {
		return nil, err
	}
	n.recovery.mu.Lock()
	defer n.recovery.mu.Unlock()
	prev, err := n.loadRecovery(ctx)
	if err != nil {
		return nil, err
	}
	rec := &recoveryRecord{Key: key.Marshal(), EnabledAt: n.cfg.Now()}
	if prev != nil {
		rec.Held = prev.Held // so relays that no longer should hold it are cleaned
	}
	if err := n.uploadLocked(ctx, rec, true); err != nil {
		return nil, err
	}
	if err := n.saveRecovery(ctx, rec); err != nil {
		return nil, err
	}
	n.savedRecovery(rec)
	n.recovery.enabled.Store(true)
	n.kickRecovery() // arms the upkeep timer
	n.log.Info("account recovery on", "relays", len(rec.Held))
	return &RecoveryEnabled{Secret: secret.String(), Recovery: rec.view(ph, n.homeRelays())}, nil
}

// DisableRecovery deletes the backups from the relays holding them and
// forgets the backup key. If a relay can't be reached nothing changes;
// retry.
func (n *Node) DisableRecovery(ctx context.Context) (*RecoveryStatus, error) {
	a, c, err := n.recoveryAccount()
	if err != nil {
		return nil, err
	}
	n.recovery.mu.Lock()
	defer n.recovery.mu.Unlock()
	ph, err := n.loadPhone(ctx)
	if err != nil {
		return nil, err
	}
	rec, err := n.loadRecovery(ctx)
	if err != nil {
		return nil, err
	}
	if rec == nil {
		return (*recoveryRecord)(nil).view(ph, n.homeRelays()), nil
	}
	relays := []string{}
	for _, h := range rec.Held {
		relays = append(relays, h.Relay)
	}
	if ph.Relay != "" && !slices.ContainsFunc(relays, func(s string) bool { return relayID(s) == relayID(ph.Relay) }) {
		relays = append(relays, ph.Relay)
	}
	for _, r := range relays {
		ai, err := peer.AddrInfoFromString(r)
		if err != nil {
			continue
		}
		n.host.Peerstore().AddAddrs(ai.ID, ai.Addrs, peerstore.TempAddrTTL)
		if _, err := c.Delete(ctx, ai.ID, a.identity); err != nil && !unsupported(err) {
			return nil, backupUnreachable(err)
		}
	}
	if err := n.store.Namespace(recoveryNamespace).Delete(ctx, keyRecovery); err != nil {
		return nil, err
	}
	n.recovery.enabled.Store(false)
	wake(n.formerWake) // no backup left in use on a former home relay
	n.log.Info("account recovery off: backups deleted", "relays", len(relays))
	return (*recoveryRecord)(nil).view(ph, n.homeRelays()), nil
}

// BackupNow uploads the backup now, changed or not.
func (n *Node) BackupNow(ctx context.Context) (*RecoveryStatus, error) {
	return n.backupIfNeeded(ctx, true)
}

// backupIfNeeded uploads the backup if it changed since the last upload,
// RecoveryRefresh has passed, it is not on the right relays, or force.
func (n *Node) backupIfNeeded(ctx context.Context, force bool) (*RecoveryStatus, error) {
	if _, _, err := n.recoveryAccount(); err != nil {
		return nil, err
	}
	n.recovery.mu.Lock()
	defer n.recovery.mu.Unlock()
	rec, err := n.loadRecovery(ctx)
	if err != nil {
		return nil, err
	}
	if rec == nil {
		return nil, ErrRecoveryOff
	}
	upErr := n.uploadLocked(ctx, rec, force)
	if err := n.saveRecovery(ctx, rec); err != nil {
		return nil, errors.Join(upErr, err)
	}
	n.savedRecovery(rec)
	if upErr != nil {
		return nil, upErr
	}
	ph, err := n.loadPhone(ctx)
	if err != nil {
		return nil, err
	}
	return rec.view(ph, n.homeRelays()), nil
}

// uploadLocked seals the account's current contents with rec's key and
// stores them on the relay holding the account's number (unless nothing
// changed and force is false), and deletes them from relays that should
// no longer hold them (those it can't reach stay in rec.Held, tried again
// at the next upload; the caller wakes the former-relay purge for them
// once rec is saved: savedRecovery). It updates rec; the caller saves it.
// Called with recovery.mu held.
func (n *Node) uploadLocked(ctx context.Context, rec *recoveryRecord, force bool) error {
	a, c, err := n.recoveryAccount()
	if err != nil {
		return err
	}
	key, err := backup.UnmarshalKey(rec.Key)
	if err != nil {
		return fmt.Errorf("recovery key: %w", err)
	}
	contents, err := n.backupContents(ctx, a)
	if err != nil {
		return err
	}
	enc, err := contents.Encode() // CreatedAt zero: the digest covers what changes
	if err != nil {
		return err
	}
	sum := sha256.Sum256(enc)
	digest := hex.EncodeToString(sum[:])
	ph, err := n.loadPhone(ctx)
	if err != nil {
		return err
	}
	now := n.cfg.Now()
	if ph.Number == "" || ph.Relay == "" {
		rec.Error, rec.LastAttempt = ErrRecoveryNeedsPhone.Error(), now
		return ErrRecoveryNeedsPhone
	}
	target, err := peer.AddrInfoFromString(ph.Relay)
	if err != nil {
		return fmt.Errorf("phone relay: %w", err)
	}
	held := slices.ContainsFunc(rec.Held, func(h heldBackup) bool { return relayID(h.Relay) == target.ID.String() })
	if !force && held && digest == rec.Digest && now.Sub(rec.LastBackup) < RecoveryRefresh && len(rec.Held) == 1 {
		return nil
	}
	contents.CreatedAt = now
	if enc, err = contents.Encode(); err != nil {
		return err
	}
	blob, err := key.Seal(enc, rand.Reader)
	if err != nil {
		return err
	}
	rec.LastAttempt = now
	n.host.Peerstore().AddAddrs(target.ID, target.Addrs, peerstore.TempAddrTTL)
	st, err := c.Put(ctx, target.ID, a.identity, blob)
	if err != nil {
		rec.Error = err.Error()
		return backupUnreachable(err)
	}
	// Relays that held it before and are not the phone relay any more.
	var keep []heldBackup
	for _, h := range rec.Held {
		ai, perr := peer.AddrInfoFromString(h.Relay)
		if perr != nil || ai.ID == target.ID {
			continue
		}
		n.host.Peerstore().AddAddrs(ai.ID, ai.Addrs, peerstore.TempAddrTTL)
		if _, derr := c.Delete(ctx, ai.ID, a.identity); derr != nil && !unsupported(derr) && !backupAnswered(derr) {
			keep = append(keep, h) // try again next time
		}
	}
	rec.Held = append(keep, heldBackup{Relay: ph.Relay, UpdatedAt: now, ExpiresAt: st.ExpiresAt})
	rec.LastBackup, rec.Digest, rec.Size, rec.Error = now, digest, len(blob), ""
	n.log.Debug("account backup uploaded", "relay", target.ID, "bytes", len(blob))
	return nil
}

// backupContents gathers what a backup restores.
func (n *Node) backupContents(ctx context.Context, a *account) (*backup.Contents, error) {
	n.acctMu.Lock()
	acct, rec := a.Account, a.record
	n.acctMu.Unlock()
	auth, err := a.mailboxAuth.MarshalBinary()
	if err != nil {
		return nil, err
	}
	c := &backup.Contents{
		Identity: a.identity.MarshalPrivate(), MailboxKey: a.mailboxKey.Marshal(), MailboxAuth: auth, Record: rec.Raw,
		Profile: backup.Profile{
			Name: acct.Name, BirthDate: acct.BirthDate, Country: acct.Country, Gender: acct.Gender,
			CreatedAt: acct.CreatedAt, PolicyVersion: acct.PolicyVersion, PolicyAcceptedAt: acct.PolicyAcceptedAt,
			CreatedPolicy: acct.CreatedPolicy, ParentalConsent: acct.ParentalConsent,
		},
		HomeRelays: slices.Clone(acct.HomeRelays),
	}
	book, err := n.contactBook()
	if err != nil {
		return nil, err
	}
	book.mu.RLock()
	for _, e := range book.entries {
		c.Contacts = append(c.Contacts, backup.Contact{Record: e.Raw, AddedAt: e.AddedAt, Source: e.Source})
	}
	for _, b := range book.blocks.m {
		c.Blocks = append(c.Blocks, backup.Block{Account: b.Contact, BlockedAt: b.BlockedAt})
	}
	book.mu.RUnlock()
	slices.SortFunc(c.Contacts, func(x, y backup.Contact) int { return bytes.Compare(x.Record, y.Record) })
	slices.SortFunc(c.Blocks, func(x, y backup.Block) int { return strings.Compare(x.Account, y.Account) })
	ns := n.store.Namespace("account")
	if b, err := ns.Get(ctx, keySettings); err == nil {
		c.Settings = b
	} else if !errors.Is(err, storage.ErrNotFound) {
		return nil, err
	}
	if b, err := ns.Get(ctx, keyPresenceShare); err == nil {
		c.Presence = string(b)
	} else if !errors.Is(err, storage.ErrNotFound) {
		return nil, err
	}
	ph, err := n.loadPhone(ctx)
	if err != nil {
		return nil, err
	}
	if ph.Number != "" {
		c.Phone = &backup.Phone{Number: ph.Number, Relay: ph.Relay, VerifiedAt: ph.VerifiedAt}
	}
	// The relays a move left, so a restored device goes on purging them
	// and account deletion reaches them (former.go).
	n.acctMu.Lock()
	former, err := n.loadFormer(ctx)
	n.acctMu.Unlock()
	if err != nil {
		return nil, err
	}
	c.FormerRelays = backupFormer(former)
	return c, nil
}

// purgeBackup is the account-deletion purge of one relay: the backup (see
// delete.go's purgers). It also forgets the local recovery state.
func (n *Node) purgeBackup(ctx context.Context, relay peer.ID, id *e2ee.Identity) error {
	n.recovery.mu.Lock() // an upload in flight finishes first
	defer n.recovery.mu.Unlock()
	n.recovery.enabled.Store(false)
	if _, err := n.store.Namespace(recoveryNamespace).DeleteAll(ctx); err != nil {
		return fmt.Errorf("backup: wipe recovery state: %w", err)
	}
	return n.dropBackup(ctx, relay, id)
}

// dropBackup deletes the account's backup from relay, leaving the local
// recovery state alone (account deletion's purgeBackup wipes that too).
func (n *Node) dropBackup(ctx context.Context, relay peer.ID, id *e2ee.Identity) error {
	c, err := backup.NewClient(n.host, backup.WithClientLogger(n.log))
	if err != nil {
		return err
	}
	if _, err := c.Delete(ctx, relay, id); err != nil && !unsupported(err) { // a relay without backups holds none
		return fmt.Errorf("backup: %w", err)
	}
	return nil
}

// forgetHeld drops relays (peer ids) that deleted the backup from the
// relays the recovery state lists as holding it.
func (n *Node) forgetHeld(ctx context.Context, relays map[string]bool) error {
	n.recovery.mu.Lock()
	defer n.recovery.mu.Unlock()
	rec, err := n.loadRecovery(ctx)
	if err != nil || rec == nil {
		return err
	}
	held := len(rec.Held)
	rec.Held = slices.DeleteFunc(rec.Held, func(h heldBackup) bool { return relays[relayID(h.Relay)] })
	if len(rec.Held) == held {
		return nil
	}
	return n.saveRecovery(ctx, rec)
}

// unsupported reports whether err says the relay does not speak the
// protocol.
func unsupported(err error) bool {
	var u msmux.ErrNotSupported[protocol.ID]
	return errors.As(err, &u)
}

// backupAnswered reports whether err is a relay's answer (or a verdict on
// it), as opposed to failing to reach the relay.
func backupAnswered(err error) bool {
	var be *backup.Error
	return err == nil || errors.As(err, &be) || errors.Is(err, backup.ErrProtocol) ||
		errors.Is(err, backup.ErrBadBlob) || errors.Is(err, backup.ErrMalformed)
}

// backupUnreachable wraps a failure to reach a relay.
func backupUnreachable(err error) error {
	if backupAnswered(err) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrPhoneRelayUnreachable, err)
}

// StartRecovery begins recovering an account on this fresh node (it must
// have none): it asks a relay to text a verification code to number. The
// relay must be the one holding the account's backup — the relay the
// account verified its number on, normally its first home relay. relay
// may name it (peer id or multiaddr of one of the bootstrap relays);
// otherwise the bootstrap relays are asked in order, connected ones
// first, and the first that answers sends the code. Finish with
// FinishRecovery.
func (n *Node) StartRecovery(ctx context.Context, number, relay string) (*RecoveryStart, error) {
	if n.host == nil {
		return nil, ErrNotStarted
	}
	num, err := discovery.ParseNumber(number)
	if err != nil {
		return nil, fmt.Errorf("%w (%v)", ErrInvalidPhoneNumber, err)
	}
	n.acctMu.Lock()
	has := n.acct != nil
	n.acctMu.Unlock()
	if has {
		return nil, ErrAccountExists
	}
	candidates, err := n.recoveryRelays(relay)
	if err != nil {
		return nil, err
	}
	tmp, err := e2ee.NewIdentity(rand.Reader)
	if err != nil {
		return nil, err
	}
	dc, err := discovery.NewClient(n.host, discovery.WithClientLogger(n.log))
	if err != nil {
		return nil, err
	}
	n.recovery.mu.Lock()
	defer n.recovery.mu.Unlock()
	var last error = ErrPhoneRelayUnreachable
	for _, r := range candidates {
		n.host.Peerstore().AddAddrs(r.ID, r.Addrs, peerstore.TempAddrTTL)
		res, err := dc.RequestCode(ctx, r.ID, tmp, num)
		if !relayAnswered(err) {
			last = unreachable(err)
			continue
		}
		if err != nil {
			return nil, err
		}
		n.recovery.pending = &pendingRecovery{number: num, relay: r, id: tmp, expires: res.CodeExpires, attemptsLeft: res.AttemptsLeft}
		n.log.Info("account recovery: verification code requested", "relay", r.ID)
		return n.recovery.pending.view(), nil
	}
	return nil, last
}

func (p *pendingRecovery) view() *RecoveryStart {
	return &RecoveryStart{
		Number: string(p.number), Relay: p.relay.ID.String(), CodeExpiresAt: p.expires,
		AttemptsLeft: p.attemptsLeft, Fetched: p.blob != nil,
	}
}

// recoveryRelays returns the relays to ask for a code: the one named, or
// the bootstrap relays, connected ones first.
func (n *Node) recoveryRelays(named string) ([]peer.AddrInfo, error) {
	if named != "" {
		want := named
		if ai, err := peer.AddrInfoFromString(named); err == nil {
			want = ai.ID.String()
		}
		for _, r := range n.relays {
			if r.ID.String() == want {
				return []peer.AddrInfo{r}, nil
			}
		}
		return nil, fmt.Errorf("%w: %s", ErrUnknownRelay, named)
	}
	var up, down []peer.AddrInfo
	for _, r := range n.relays {
		if n.host.Network().Connectedness(r.ID) == network.Connected {
			up = append(up, r)
		} else {
			down = append(down, r)
		}
	}
	return append(up, down...), nil
}

// PendingRecovery returns the recovery in progress, if any.
func (n *Node) PendingRecovery() (*RecoveryStart, bool) {
	n.recovery.mu.Lock()
	defer n.recovery.mu.Unlock()
	if n.recovery.pending == nil {
		return nil, false
	}
	return n.recovery.pending.view(), true
}

// FinishRecovery completes StartRecovery: it presents code to the relay
// and fetches the backup held under the number, opens it with secret and
// restores the account on this node. A wrong secret (backup.ErrWrongSecret)
// restores nothing; the fetched backup stays in memory, so the secret can
// be typed again without a new code (code may then be empty). A secret
// that is not one (a typo the check catches, backup.ErrInvalidSecret) is
// refused before the code is spent.
func (n *Node) FinishRecovery(ctx context.Context, code, secret string) (*Restored, error) {
	if n.host == nil {
		return nil, ErrNotStarted
	}
	s, err := backup.ParseSecret(secret)
	if err != nil {
		return nil, err
	}
	n.recovery.mu.Lock()
	defer n.recovery.mu.Unlock()
	p := n.recovery.pending
	if p == nil {
		return nil, ErrNoRecoveryPending
	}
	if p.blob == nil {
		norm, ok := discovery.NormalizeCode(code)
		if !ok {
			return nil, ErrInvalidCode
		}
		c, err := backup.NewClient(n.host, backup.WithClientLogger(n.log))
		if err != nil {
			return nil, err
		}
		n.host.Peerstore().AddAddrs(p.relay.ID, p.relay.Addrs, peerstore.TempAddrTTL)
		f, st, err := c.Fetch(ctx, p.relay.ID, p.id, norm)
		switch {
		case err == nil:
			p.blob, p.fetchedAt = f.Blob, n.cfg.Now()
		case errors.Is(err, backup.ErrWrongCode):
			p.attemptsLeft = st.AttemptsLeft
			return nil, err
		case errors.Is(err, backup.ErrNoBackup):
			n.recovery.pending = nil
			return nil, fmt.Errorf("%w (relay %s; if the account verified its number on another relay, start again naming it)", err, p.relay.ID)
		case errors.Is(err, backup.ErrCodeExpired), errors.Is(err, backup.ErrNoCode), errors.Is(err, backup.ErrTooManyAttempts):
			n.recovery.pending = nil
			return nil, err
		default:
			return nil, backupUnreachable(err)
		}
	}
	plain, key, err := backup.Open(p.blob, s)
	if err != nil {
		if errors.Is(err, backup.ErrWrongSecret) {
			n.log.Info("account recovery: the secret does not open the backup")
		}
		return nil, err
	}
	contents, err := backup.DecodeContents(plain)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBackupCorrupt, err)
	}
	res, err := n.restore(ctx, contents, key, p)
	if err != nil {
		return nil, err
	}
	n.recovery.pending = nil
	return res, nil
}

// restored is a backup's contents parsed and checked.
type restored struct {
	acct     *account
	contacts []*contactEntry
	blocks   []Block
}

// parseBackup checks every key and record of c.
func parseBackup(c *backup.Contents) (*restored, error) {
	bad := func(what string, err error) error { return fmt.Errorf("%w: %s: %v", ErrBackupCorrupt, what, err) }
	id, err := e2ee.UnmarshalPrivateIdentity(c.Identity)
	if err != nil {
		return nil, bad("identity", err)
	}
	mk, err := e2ee.UnmarshalMailboxKey(c.MailboxKey)
	if err != nil {
		return nil, bad("mailbox key", err)
	}
	auth, err := mailbox.UnmarshalKey(c.MailboxAuth)
	if err != nil {
		return nil, bad("mailbox auth key", err)
	}
	rec, err := contact.Parse(c.Record)
	if err != nil {
		return nil, bad("contact record", err)
	}
	if !rec.Identity.Equal(id.Public()) {
		return nil, bad("contact record", errors.New("not the identity's"))
	}
	homes := slices.Clone(c.HomeRelays)
	if len(homes) == 0 {
		for _, r := range rec.Relays() {
			homes = append(homes, relayAddr(r))
		}
	}
	for _, h := range homes {
		if _, err := peer.AddrInfoFromString(h); err != nil {
			return nil, bad("home relay", err)
		}
	}
	p := c.Profile
	out := &restored{acct: &account{
		Account: Account{
			ID: string(id.AccountID()), Name: p.Name, BirthDate: p.BirthDate, Country: p.Country, Gender: p.Gender,
			CreatedAt: p.CreatedAt, PolicyVersion: p.PolicyVersion, PolicyAcceptedAt: p.PolicyAcceptedAt,
			CreatedPolicy: p.CreatedPolicy, ParentalConsent: p.ParentalConsent,
			HomeRelays: homes, Fingerprint: id.Public().Fingerprint(),
		},
		identity: id, mailboxKey: mk, mailboxAuth: auth, record: rec,
	}}
	seen := map[e2ee.AccountID]bool{}
	for _, ct := range c.Contacts {
		r, err := contact.Parse(ct.Record)
		if err != nil || r.AccountID() == id.AccountID() || seen[r.AccountID()] {
			continue // a record that no longer verifies is dropped, not fatal
		}
		seen[r.AccountID()] = true
		src := ct.Source
		if src == "" {
			src = "invite"
		}
		out.contacts = append(out.contacts, &contactEntry{Raw: r.Raw, AddedAt: ct.AddedAt, Source: src, rec: r})
	}
	for _, b := range c.Blocks {
		if _, err := e2ee.ParseAccountID(b.Account); err != nil {
			continue
		}
		out.blocks = append(out.blocks, Block{Contact: b.Account, BlockedAt: b.BlockedAt})
	}
	return out, nil
}

// restore writes the account of c to this node and starts it: see
// FinishRecovery. Called with recovery.mu held.
func (n *Node) restore(ctx context.Context, c *backup.Contents, key *backup.Key, p *pendingRecovery) (*Restored, error) {
	r, err := parseBackup(c)
	if err != nil {
		return nil, err
	}
	a := r.acct
	// The relays the lost device left behind and had not purged yet: the
	// backup's list, and the home relays of a record it published after
	// the backup was made (a move the backup missed), unless they are
	// homes again here. This device purges them (former.go).
	now := n.cfg.Now()
	var former []formerRelay
	for _, f := range c.FormerRelays {
		since := f.Since
		if since.IsZero() {
			since = now
		}
		former = mergeFormer(former, a.HomeRelays, formerRelay{Relay: f.Relay, Since: since})
	}
	// The record this device signs must be newer than any the lost device
	// published after the backup was made.
	seq := a.record.Seq
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	if dr, err := n.LookupRecord(lctx, a.ID); err == nil && dr.AccountID() == a.identity.AccountID() && dr.Seq > seq {
		seq = dr.Seq
		for _, r := range dr.Relays() {
			former = mergeFormer(former, a.HomeRelays, formerRelay{Relay: relayAddr(r), Since: now})
		}
	}
	cancel()
	n.acctMu.Lock()
	has := n.acct != nil
	n.acctMu.Unlock()
	if has {
		return nil, ErrAccountExists
	}
	// The old prekeys go before the engine publishes fresh ones (ids from
	// 1 again): relays that can't be reached now are retried.
	purgeLeft := n.purgePrekeys(ctx, a.identity, a.HomeRelays)

	n.acctMu.Lock()
	if n.acct != nil {
		n.acctMu.Unlock()
		return nil, ErrAccountExists
	}
	err = n.writeRestored(ctx, r, c, key, p, seq, purgeLeft, former)
	var msg *message.Service
	if err == nil {
		var pk *e2ee.PrekeyStore
		if pk, err = e2ee.NewPrekeyStore(a.identity, n.cfg.Now(), rand.Reader); err == nil {
			n.acct = a
			if err = n.startMessaging(pk); err != nil {
				n.acct = nil
			} else {
				msg = n.msg
			}
		}
	}
	n.acctMu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("restore account: %w", err)
	}
	n.recovery.enabled.Store(true)
	res := &Restored{Account: &Account{}, BackupAt: c.CreatedAt, Contacts: len(r.contacts), Blocks: len(r.blocks), PrekeysPending: []string{}}
	*res.Account = a.Account
	// Introduce this device to every contact over a fresh session.
	var ids []e2ee.AccountID
	blocked := map[string]bool{}
	for _, b := range r.blocks {
		blocked[b.Contact] = true
	}
	for _, e := range r.contacts {
		if !blocked[string(e.rec.AccountID())] {
			ids = append(ids, e.rec.AccountID())
		}
	}
	if len(ids) > 0 {
		payload, _ := json.Marshal(map[string]time.Time{"restored_at": n.cfg.Now().UTC()})
		if err := msg.SendControl(ctx, ids, ControlRestored, payload); err != nil {
			n.log.Warn("account recovery: introduce to contacts", "err", err)
		} else {
			res.Introduced = len(ids)
		}
	}
	// The directory entry on the phone relay gets the new record from the
	// entry's upkeep (phone.go), which starting messaging woke.
	res.PrekeysPending, _ = n.loadPrekeyPurge(ctx)
	if res.PrekeysPending == nil {
		res.PrekeysPending = []string{}
	}
	n.kickRecovery()
	wake(n.formerWake) // relays the lost device left: purge them
	n.log.Info("account restored from backup", "contacts", res.Contacts, "introduced", res.Introduced)
	return res, nil
}

// writeRestored stores the restored account, signing its record for this
// device with sequence number seq+1; purgeLeft are the home relays whose
// old prekeys are still to purge, former the relays the lost device left
// that still hold data of the account. Called with acctMu and recovery.mu
// held.
func (n *Node) writeRestored(ctx context.Context, r *restored, c *backup.Contents, key *backup.Key, p *pendingRecovery, seq uint64, purgeLeft []string, former []formerRelay) error {
	a := r.acct
	rec, err := n.signRecord(a, seq+1)
	if err != nil {
		return err
	}
	a.record = rec
	// Leftovers of a restore that crashed halfway go first.
	for _, ns := range []string{"account", "contacts", "blocks", "message", phoneNamespace, recoveryNamespace} {
		if _, err := n.store.Namespace(ns).DeleteAll(ctx); err != nil {
			return fmt.Errorf("clear %s: %w", ns, err)
		}
	}
	book := &contactBook{ns: n.store.Namespace("contacts")}
	for _, e := range r.contacts {
		if err := book.save(ctx, e); err != nil {
			return err
		}
	}
	bns := n.store.Namespace("blocks")
	for _, b := range r.blocks {
		v, err := json.Marshal(b)
		if err != nil {
			return err
		}
		if err := bns.Put(ctx, bns.Opaque([]byte(b.Contact)), v); err != nil {
			return err
		}
	}
	verifiedAt := n.cfg.Now()
	if c.Phone != nil && !c.Phone.VerifiedAt.IsZero() {
		verifiedAt = c.Phone.VerifiedAt
	}
	if err := n.savePhone(ctx, phoneState{Number: string(p.number), Relay: relayAddr(p.relay), VerifiedAt: verifiedAt}); err != nil {
		return err
	}
	now := n.cfg.Now()
	held := []heldBackup{{Relay: relayAddr(p.relay), UpdatedAt: c.CreatedAt}}
	if err := n.saveRecovery(ctx, &recoveryRecord{Key: key.Marshal(), EnabledAt: now, Held: held}); err != nil {
		return err
	}
	if err := n.savePrekeyPurge(ctx, purgeLeft); err != nil {
		return err
	}
	// The account itself last: until it is written there is no account,
	// and a new recovery starts over.
	auth, err := a.mailboxAuth.MarshalBinary()
	if err != nil {
		return err
	}
	info, err := json.Marshal(a.Account)
	if err != nil {
		return err
	}
	ns := n.store.Namespace("account")
	b := n.store.NewBatch()
	kv := map[string][]byte{
		keyAccount: info, keyIdentity: a.identity.MarshalPrivate(), keyMailboxKey: a.mailboxKey.Marshal(),
		keyMailboxAuth: auth, keyRecord: rec.Raw,
	}
	var st settingsState
	if len(c.Settings) > 0 && json.Unmarshal(c.Settings, &st) == nil {
		kv[keySettings] = c.Settings
	}
	if c.Presence == PresenceContacts || c.Presence == PresenceNobody {
		kv[keyPresenceShare] = []byte(c.Presence)
	}
	for k, v := range kv {
		if err := b.Put(ns, k, v); err != nil {
			return err
		}
	}
	if err := n.putFormer(b, former); err != nil {
		return err
	}
	if err := b.Commit(ctx); err != nil {
		return fmt.Errorf("store restored account: %w", err)
	}
	return nil
}

// purgePrekeys deletes the account's prekeys from relays, in parallel,
// and returns the relays that did not confirm.
func (n *Node) purgePrekeys(ctx context.Context, id *e2ee.Identity, relays []string) []string {
	pc, err := prekeys.NewClient(n.host)
	if err != nil {
		return relays
	}
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	var mu sync.Mutex
	var wg sync.WaitGroup
	var left []string
	for _, r := range relays {
		ai, err := peer.AddrInfoFromString(r)
		if err != nil {
			continue
		}
		n.host.Peerstore().AddAddrs(ai.ID, ai.Addrs, peerstore.TempAddrTTL)
		wg.Go(func() {
			err := pc.Purge(ctx, ai.ID, id)
			if err != nil && !errors.Is(err, prekeys.ErrNotFound) && !unsupported(err) {
				n.log.Debug("account recovery: purge old prekeys", "relay", ai.ID, "err", err)
				mu.Lock()
				left = append(left, r)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	slices.Sort(left)
	return left
}

func (n *Node) loadPrekeyPurge(ctx context.Context) ([]string, error) {
	b, err := n.store.Namespace(recoveryNamespace).Get(ctx, keyPrekeyPurge)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var relays []string
	return relays, json.Unmarshal(b, &relays)
}

func (n *Node) savePrekeyPurge(ctx context.Context, relays []string) error {
	ns := n.store.Namespace(recoveryNamespace)
	if len(relays) == 0 {
		return ns.Delete(ctx, keyPrekeyPurge)
	}
	b, err := json.Marshal(relays)
	if err != nil {
		return err
	}
	return ns.Put(ctx, keyPrekeyPurge, b)
}

func (n *Node) prekeyPurgePending(ctx context.Context) bool {
	relays, err := n.loadPrekeyPurge(ctx)
	return err == nil && len(relays) > 0
}

// finishPrekeyPurge retries the prekey purges a restore could not do,
// then republishes fresh prekeys there.
func (n *Node) finishPrekeyPurge(ctx context.Context) error {
	n.recovery.mu.Lock()
	defer n.recovery.mu.Unlock()
	relays, err := n.loadPrekeyPurge(ctx)
	if err != nil || len(relays) == 0 {
		return err
	}
	n.acctMu.Lock()
	a := n.acct
	n.acctMu.Unlock()
	if a == nil {
		return n.savePrekeyPurge(ctx, nil)
	}
	left := n.purgePrekeys(ctx, a.identity, relays)
	if err := n.savePrekeyPurge(ctx, left); err != nil {
		return err
	}
	if len(left) < len(relays) {
		return n.MaintainPrekeys(ctx)
	}
	return nil
}
