package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"

	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/protocols/mailbox"
	"github.com/kinmesh/kinmesh/protocols/prekeys"
	"github.com/kinmesh/kinmesh/storage"
)

// Deleting an account. The node asks every relay that holds data of the
// account to purge it: the home relays, the home relays a move replaced
// and that have not confirmed their purge yet (former.go), and the relays
// holding the phone link or the recovery backup. Each purges the mailbox
// (authenticated by the mailbox key), the prekeys (by the identity key),
// what the features registered at Start hold (reports, directory entry,
// backup), the moments feed and media, and the profile photos. Then the
// node wipes every namespace of the account from the local store. A relay
// that doesn't confirm is retried in the background (backoff up to an
// hour) until it does: for that alone the node keeps a purge job with the
// keys and blob ids needed, deleted once every relay has confirmed. The
// DHT copy of the contact record is not republished and expires there.

// accountNamespaces are the store namespaces that hold account data.
var accountNamespaces = []string{"account", "contacts", "blocks", "message", "presence", "phone", "discovery", callsNamespace, momentsNamespace}

// RelayPurge is one relay's answer to the purge.
type RelayPurge struct {
	Relay     string `json:"relay"`
	Confirmed bool   `json:"confirmed"`
	Error     string `json:"error,omitempty"`
	// Former is true for a relay that is not a home relay of the account
	// but still held its data: a home relay a move replaced, or the relay
	// of the phone link or the backup.
	Former bool `json:"former,omitempty"`
}

// Deletion is the result of DeleteAccount.
type Deletion struct {
	Deleted bool         `json:"deleted"`
	Relays  []RelayPurge `json:"relays"`
	// Pending are relays that did not confirm; the node keeps retrying.
	Pending []string `json:"pending"`
}

// purgeJob is what the node keeps to finish purging after the wipe.
type purgeJob struct {
	Identity    []byte   `json:"identity"`
	MailboxAuth []byte   `json:"mailbox_auth"`
	Relays      []string `json:"relays"` // full multiaddrs still to purge
	// Photos are the profile photo blobs (hex ids) to delete (photo.go).
	Photos []string `json:"photos,omitempty"`
	// Media are the blobs (hex ids) of the account's own moments, deleted
	// where a relay holds them besides its feed's (moments.go).
	Media []string `json:"media,omitempty"`
}

const keyPurgeJob = "job"

// DeleteAccount deletes the account: relay purges, then the local wipe.
func (n *Node) DeleteAccount(ctx context.Context) (*Deletion, error) {
	n.acctMu.Lock()
	a, msg := n.acct, n.msg
	n.acctMu.Unlock()
	if a == nil {
		return nil, ErrNoAccount
	}
	idb := a.identity.MarshalPrivate()
	authb, err := a.mailboxAuth.MarshalBinary()
	if err != nil {
		return nil, err
	}
	relays, err := n.accountRelays(ctx, a)
	if err != nil {
		return nil, err
	}
	job := purgeJob{Identity: idb, MailboxAuth: authb, Relays: relays, Photos: n.photoBlobs(ctx, a), Media: n.momentsMedia(ctx, a)}
	// Keep the job first: a crash from here on still finishes the purge.
	if err := n.savePurgeJob(ctx, job); err != nil {
		return nil, err
	}
	n.acctMu.Lock()
	n.acct, n.msg, n.contacts = nil, nil, nil
	n.acctMu.Unlock()
	if err := n.stopSocial(true); err != nil { // contacts forget our presence
		return nil, err
	}
	if err := n.stopCalls(); err != nil {
		return nil, err
	}
	if err := n.stopMoments(false); err != nil {
		return nil, err
	}
	if msg != nil {
		if err := msg.Close(); err != nil {
			return nil, err
		}
	}
	for _, ns := range accountNamespaces {
		if _, err := n.store.Namespace(ns).DeleteAll(ctx); err != nil {
			return nil, fmt.Errorf("wipe %s: %w", ns, err)
		}
	}
	res := &Deletion{Deleted: true, Relays: []RelayPurge{}, Pending: []string{}}
	pending := n.runPurge(ctx, &job)
	for _, r := range relays {
		rp := RelayPurge{Relay: r, Confirmed: pending[r] == nil, Former: !slices.ContainsFunc(a.HomeRelays, func(h string) bool { return relayID(h) == relayID(r) })}
		if err := pending[r]; err != nil {
			rp.Error = err.Error()
			res.Pending = append(res.Pending, r)
		}
		res.Relays = append(res.Relays, rp)
	}
	if len(res.Pending) == 0 {
		err = n.store.Namespace("purge").Delete(ctx, keyPurgeJob)
	} else {
		job.Relays = res.Pending
		err = n.savePurgeJob(ctx, job)
		n.bg.Go(n.purgeLoop)
	}
	n.log.Info("account deleted", "relays_confirmed", len(res.Relays)-len(res.Pending), "pending", len(res.Pending))
	return res, err
}

func (n *Node) savePurgeJob(ctx context.Context, job purgeJob) error {
	b, err := json.Marshal(job)
	if err != nil {
		return err
	}
	batch := n.store.NewBatch()
	if err := batch.Put(n.store.Namespace("purge"), keyPurgeJob, b); err != nil {
		return err
	}
	return batch.Commit(ctx)
}

// runPurge asks every relay of job to purge, in parallel; it returns the
// error of each relay (nil: confirmed).
func (n *Node) runPurge(ctx context.Context, job *purgeJob) map[string]error {
	id, err := e2ee.UnmarshalPrivateIdentity(job.Identity)
	out := map[string]error{}
	if err != nil {
		for _, r := range job.Relays {
			out[r] = err
		}
		return out
	}
	auth, err := mailbox.UnmarshalKey(job.MailboxAuth)
	if err != nil {
		for _, r := range job.Relays {
			out[r] = err
		}
		return out
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, r := range job.Relays {
		wg.Go(func() {
			err := n.purgeRelay(ctx, r, id, auth, job.Media, true)
			err = errors.Join(err, n.purgePhotos(ctx, r, id, job.Photos)) // photo.go
			mu.Lock()
			out[r] = err
			mu.Unlock()
		})
	}
	wg.Wait()
	return out
}

// purgeRelay deletes everything one relay holds for the account: mailbox,
// prekeys, moments feed and media (media: more blob ids of its moments),
// and what each purger holds — with all false (a relay a move replaced,
// the account living on) only the purgers safe then, not the directory
// entry and backup the account may still use there (the former-relay
// purge removes those itself once they moved: former.go).
func (n *Node) purgeRelay(ctx context.Context, relay string, id *e2ee.Identity, auth mailbox.Key, media []string, all bool) error {
	ai, err := peer.AddrInfoFromString(relay)
	if err != nil {
		return err
	}
	n.host.Peerstore().AddAddrs(ai.ID, ai.Addrs, peerstore.TempAddrTTL)
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var errs []error
	if err := n.purgeMailbox(ctx, *ai, auth, all); err != nil {
		errs = append(errs, fmt.Errorf("mailbox: %w", err))
	}
	pc, err := prekeys.NewClient(n.host)
	if err == nil {
		err = pc.Purge(ctx, ai.ID, id)
	}
	if err != nil && !errors.Is(err, prekeys.ErrNotFound) {
		errs = append(errs, fmt.Errorf("prekeys: %w", err))
	}
	if err := n.purgeMoments(ctx, ai.ID, id, media); err != nil { // moments.go
		errs = append(errs, err)
	}
	for _, p := range n.purgers {
		if !all && !p.onMove {
			continue
		}
		if err := p.purge(ctx, ai.ID, id); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// purgeMailbox purges the account's mailbox on relay. On a home relay a
// move replaced (all false) the mail contacts left there before they
// learned of the move is received first (message.Service.RetireRelay).
func (n *Node) purgeMailbox(ctx context.Context, relay peer.AddrInfo, auth mailbox.Key, all bool) error {
	if !all {
		msg, err := n.messaging()
		if err != nil {
			return err
		}
		_, err = msg.RetireRelay(ctx, relay)
		return err
	}
	mc, err := mailbox.NewClient(n.host)
	if err != nil {
		return err
	}
	sess, err := mc.Open(ctx, relay.ID, auth)
	if err != nil {
		return err
	}
	defer sess.Close()
	_, err = sess.Purge(ctx)
	return err
}

// accountRelays lists every relay holding data of account a: its home
// relays first, then the home relays a move replaced that have not
// confirmed a purge (former.go), the phone link's relay (and a pending
// verification's), and the relays holding its backup. Each once.
func (n *Node) accountRelays(ctx context.Context, a *account) ([]string, error) {
	var out []string
	add := func(addr string) {
		id := relayID(addr)
		if id != "" && !slices.ContainsFunc(out, func(o string) bool { return relayID(o) == id }) {
			out = append(out, addr)
		}
	}
	n.acctMu.Lock()
	homes := slices.Clone(a.HomeRelays)
	former, err := n.loadFormer(ctx)
	n.acctMu.Unlock()
	if err != nil {
		return nil, err
	}
	for _, h := range homes {
		add(h)
	}
	for _, f := range former {
		add(f.Relay)
	}
	ph, err := n.loadPhone(ctx)
	if err != nil {
		return nil, err
	}
	add(ph.Relay)
	add(ph.PendingRelay)
	rec, err := n.loadRecovery(ctx)
	if err != nil {
		return nil, err
	}
	if rec != nil {
		for _, h := range rec.Held {
			add(h.Relay)
		}
	}
	return out, nil
}

// purgeLoop retries a pending purge until every relay confirmed.
func (n *Node) purgeLoop() {
	backoff := 5 * time.Second
	for {
		b, err := n.store.Namespace("purge").Get(n.bgCtx, keyPurgeJob)
		if errors.Is(err, storage.ErrNotFound) || n.bgCtx.Err() != nil {
			return
		}
		var job purgeJob
		if err == nil {
			err = json.Unmarshal(b, &job)
		}
		if err == nil {
			var left []string
			for r, perr := range n.runPurge(n.bgCtx, &job) {
				if perr != nil {
					left = append(left, r)
				}
			}
			if len(left) == 0 {
				_ = n.store.Namespace("purge").Delete(n.bgCtx, keyPurgeJob)
				n.log.Info("account purge confirmed by every relay")
				return
			}
			job.Relays = left
			_ = n.savePurgeJob(n.bgCtx, job)
		}
		t := time.NewTimer(backoff)
		select {
		case <-n.bgCtx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(2*backoff, time.Hour)
	}
}

// PendingPurges lists relays still to confirm a purge.
func (n *Node) PendingPurges(ctx context.Context) ([]string, error) {
	b, err := n.store.Namespace("purge").Get(ctx, keyPurgeJob)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var job purgeJob
	return job.Relays, json.Unmarshal(b, &job)
}
