package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/kinmesh/kinmesh/protocols/backup"
	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/storage"
)

// Former home relays. A move (rehome.go) replaces a home relay that has
// been down for a day, but what the account kept there stays: the moments
// feed and its media (no expiry), profile photos, prekeys, the mailbox,
// reports, and on the phone relay the phone link (directory entry) and
// the recovery backup. The node remembers every replaced relay (key
// "former-relays" in the "account" namespace, written with the move) and
// purges it (the mailbox after receiving what contacts left there:
// message.Service.RetireRelay) at start, after a move, when a relay link comes up, when the
// phone link or the backup moves, and with backoff (5 s doubling up to
// an hour) until it confirms; then it forgets it.
//
// The phone link and the backup can't follow a move by themselves (a new
// relay links a number only on a code it texted: phone.go), so while the
// account still uses them on a former relay — the link is there, or the
// backup is and the phone relay holds no copy yet — its purge leaves them
// and the relay stays listed, marked kept, with nothing to retry. Once
// the number is verified again on a current home and the backup uploaded
// there (confirmed by that relay), the next purge removes the old link
// and backup too, and the relay is forgotten.
//
// A listed relay is never chosen as a new home. Deleting the account
// purges the ones listed, with everything, along with the home relays
// (delete.go). The recovery backup carries the list
// (backup.Contents.FormerRelays, recovery.go): a device restored from it
// takes the list over, adding the homes of a newer record the lost device
// published after the backup, and goes on purging them.

// keyFormerRelays holds the former home relays still to purge (JSON).
const keyFormerRelays = "former-relays"

// formerRelay is a home relay a move replaced.
type formerRelay struct {
	Relay string    `json:"relay"` // full multiaddr
	Since time.Time `json:"since"` // when the move replaced it
	// Kept: purged of everything but the phone link or the backup the
	// account still uses there (inUse); the rest waits until they moved.
	Kept bool `json:"kept,omitempty"`
}

// inUse reports whether the account still uses the phone link or the
// backup that relay (a former home) holds: the link is there (or a
// verification in progress), or the backup is and the phone relay holds
// no copy yet (rec: the recovery state, nil while recovery is off).
func inUse(relay string, ph phoneState, rec *recoveryRecord, now time.Time) bool {
	id := relayID(relay)
	if id == "" {
		return false
	}
	if id == relayID(ph.Relay) || (id == relayID(ph.PendingRelay) && now.Before(ph.PendingExpires)) {
		return true
	}
	if rec == nil {
		return false
	}
	held := func(addr string) bool {
		return slices.ContainsFunc(rec.Held, func(h heldBackup) bool { return relayID(h.Relay) == relayID(addr) })
	}
	return held(relay) && !held(ph.Relay)
}

// purger is a feature's purge of what one relay holds for the account.
type purger struct {
	purge func(ctx context.Context, relay peer.ID, id *e2ee.Identity) error
	// onMove: also run on a home relay a move replaced, the account living
	// on.
	onMove bool
}

// loadFormer returns the former home relays still to purge. Called with
// acctMu held.
func (n *Node) loadFormer(ctx context.Context) ([]formerRelay, error) {
	b, err := n.store.Namespace("account").Get(ctx, keyFormerRelays)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("load former home relays: %w", err)
	}
	var out []formerRelay
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, fmt.Errorf("load former home relays: %w", err)
	}
	return out, nil
}

// backupFormer returns the former home relays as a backup carries them:
// oldest first and, past backup.MaxFormerRelays, the most recently
// replaced only (those are the likeliest to come back and need the
// purge; the others stay on this device's list).
func backupFormer(former []formerRelay) []backup.FormerRelay {
	out := make([]backup.FormerRelay, 0, len(former))
	for _, f := range former {
		out = append(out, backup.FormerRelay{Relay: f.Relay, Since: f.Since})
	}
	slices.SortStableFunc(out, func(x, y backup.FormerRelay) int {
		if c := x.Since.Compare(y.Since); c != 0 {
			return c
		}
		return strings.Compare(x.Relay, y.Relay)
	})
	if len(out) > backup.MaxFormerRelays {
		out = out[len(out)-backup.MaxFormerRelays:]
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// mergeFormer adds more to former, each relay once (by peer id), leaving
// out the account's home relays (homes) and addresses that don't parse.
func mergeFormer(former []formerRelay, homes []string, more ...formerRelay) []formerRelay {
	for _, f := range more {
		id := relayID(f.Relay)
		has := func(addr string) bool { return relayID(addr) == id }
		if id == "" || slices.ContainsFunc(homes, has) || slices.ContainsFunc(former, func(g formerRelay) bool { return has(g.Relay) }) {
			continue
		}
		former = append(former, f)
	}
	return former
}

// addFormer adds f to the former home relays, unless it is listed or a
// home relay, and wakes their purge.
func (n *Node) addFormer(ctx context.Context, f formerRelay) error {
	n.acctMu.Lock()
	defer n.acctMu.Unlock()
	if n.acct == nil {
		return ErrNoAccount
	}
	former, err := n.loadFormer(ctx)
	if err != nil {
		return err
	}
	more := mergeFormer(slices.Clone(former), n.acct.HomeRelays, f)
	if len(more) == len(former) {
		return nil
	}
	b := n.store.NewBatch()
	if err := n.putFormer(b, more); err != nil {
		return err
	}
	if err := b.Commit(ctx); err != nil {
		return fmt.Errorf("store former home relays: %w", err)
	}
	wake(n.formerWake)
	return nil
}

// putFormer adds the former home relays to b.
func (n *Node) putFormer(b *storage.Batch, former []formerRelay) error {
	ns := n.store.Namespace("account")
	if len(former) == 0 {
		return b.Delete(ns, keyFormerRelays)
	}
	v, err := json.Marshal(former)
	if err != nil {
		return err
	}
	return b.Put(ns, keyFormerRelays, v)
}

// formerLoop purges the former home relays until each confirms.
func (n *Node) formerLoop() { n.retryLoop(n.formerWake, n.purgeFormer) }

// retryLoop runs work until the node stops: again whenever woken, and
// while work reports something left to retry, after a backoff of 5 s
// doubling up to an hour.
func (n *Node) retryLoop(woken <-chan struct{}, work func(context.Context) (retry bool)) {
	var backoff time.Duration
	for {
		var retry <-chan time.Time
		var t *time.Timer
		if work(n.bgCtx) {
			backoff = min(max(2*backoff, 5*time.Second), time.Hour)
			t = time.NewTimer(backoff)
			retry = t.C
		} else {
			backoff = 0
		}
		select {
		case <-n.bgCtx.Done():
		case <-woken:
		case <-retry:
		}
		if t != nil {
			t.Stop()
		}
		if n.bgCtx.Err() != nil {
			return
		}
	}
}

// purgeFormer asks every former home relay of the account to purge, in
// parallel: everything but the phone link and backup still in use there
// (inUse), which waits for them to move. It forgets the relays purged of
// everything, marks kept those purged of the rest, and reports whether
// some are left to retry.
func (n *Node) purgeFormer(ctx context.Context) (left bool) {
	n.acctMu.Lock()
	a := n.acct
	var former []formerRelay
	var err error
	if a != nil {
		former, err = n.loadFormer(ctx)
	}
	n.acctMu.Unlock()
	if len(former) == 0 && err == nil {
		return false
	}
	var ph phoneState
	var rec *recoveryRecord
	if err == nil {
		ph, err = n.loadPhone(ctx)
	}
	if err == nil {
		rec, err = n.loadRecovery(ctx)
	}
	if err != nil {
		n.log.Warn("purge former home relays", "err", err)
		return true
	}
	now := n.cfg.Now()
	media, photos := n.momentsMedia(ctx, a), n.photoBlobs(ctx, a)
	var mu sync.Mutex
	var wg sync.WaitGroup
	done := map[string]bool{} // relay id → purged of everything (else kept)
	for _, f := range former {
		keep := inUse(f.Relay, ph, rec, now)
		if keep && f.Kept {
			continue // nothing more to purge until they move
		}
		wg.Go(func() {
			err := n.purgeRelay(ctx, f.Relay, a.identity, a.mailboxAuth, media, false)
			err = errors.Join(err, n.purgePhotos(ctx, f.Relay, a.identity, photos))
			if ai, perr := peer.AddrInfoFromString(f.Relay); perr == nil && !keep {
				// The link and backup moved (or never were here).
				pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				err = errors.Join(err, n.purgeDiscovery(pctx, ai.ID, a.identity), n.dropBackup(pctx, ai.ID, a.identity))
				cancel()
			}
			if err != nil {
				n.log.Debug("purge a former home relay", "relay", relayID(f.Relay), "err", err)
				return
			}
			mu.Lock()
			done[relayID(f.Relay)] = !keep
			mu.Unlock()
		})
	}
	wg.Wait()
	whole := map[string]bool{}
	for id, all := range done {
		if all {
			whole[id] = true
		}
	}
	if len(whole) > 0 {
		// The backup record stops listing the relays that deleted it.
		if err := n.forgetHeld(ctx, whole); err != nil {
			n.log.Warn("forget the backup on purged former home relays", "err", err)
		}
	}
	n.acctMu.Lock()
	defer n.acctMu.Unlock()
	if n.acct != a {
		return false // deleted meanwhile: the account's purge job has them
	}
	cur, err := n.loadFormer(ctx)
	if err != nil {
		return true
	}
	var keep []formerRelay
	for _, f := range cur {
		all, ok := done[relayID(f.Relay)]
		switch {
		case ok && all:
			continue // forgotten
		case ok:
			f.Kept = true
		}
		keep = append(keep, f)
		if !f.Kept || !inUse(f.Relay, ph, rec, now) {
			left = true
		}
	}
	if len(done) > 0 {
		b := n.store.NewBatch()
		err := n.putFormer(b, keep)
		if err == nil {
			err = b.Commit(ctx)
		}
		if err != nil {
			n.log.Warn("store former home relays", "err", err)
			return true
		}
		n.log.Info("former home relays purged", "confirmed", len(whole), "kept", len(done)-len(whole), "left", len(keep))
	}
	return left
}
