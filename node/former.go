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
// reports. The node remembers every replaced relay (key "former-relays"
// in the "account" namespace, written with the move) and purges it — all
// but the directory entry and the backup, which the account may still
// use there — at start, after a move, when a relay link comes up, and with
// backoff (5 s doubling up to an hour) until it confirms; then it forgets
// it. A relay still to purge is never chosen as a new home. Deleting the
// account purges the ones left, with everything, along with the home
// relays (delete.go). The recovery backup carries the list
// (backup.Contents.FormerRelays, recovery.go): a device restored from it
// takes the list over, adding the homes of a newer record the lost device
// published after the backup, and goes on purging them.

// keyFormerRelays holds the former home relays still to purge (JSON).
const keyFormerRelays = "former-relays"

// formerRelay is a home relay a move replaced.
type formerRelay struct {
	Relay string    `json:"relay"` // full multiaddr
	Since time.Time `json:"since"` // when the move replaced it
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
func (n *Node) formerLoop() {
	var backoff time.Duration
	for {
		var retry <-chan time.Time
		var t *time.Timer
		if n.purgeFormer(n.bgCtx) {
			backoff = min(max(2*backoff, 5*time.Second), time.Hour)
			t = time.NewTimer(backoff)
			retry = t.C
		} else {
			backoff = 0
		}
		select {
		case <-n.bgCtx.Done():
		case <-n.formerWake:
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
// parallel, and forgets those that confirmed. It reports whether some are
// left.
func (n *Node) purgeFormer(ctx context.Context) (left bool) {
	n.acctMu.Lock()
	a := n.acct
	var former []formerRelay
	var err error
	if a != nil {
		former, err = n.loadFormer(ctx)
	}
	n.acctMu.Unlock()
	if err != nil {
		n.log.Warn("purge former home relays", "err", err)
		return true
	}
	if len(former) == 0 {
		return false
	}
	media, photos := n.momentsMedia(ctx, a), n.photoBlobs(ctx, a)
	var mu sync.Mutex
	var wg sync.WaitGroup
	done := map[string]bool{}
	for _, f := range former {
		wg.Go(func() {
			err := n.purgeRelay(ctx, f.Relay, a.identity, a.mailboxAuth, media, false)
			err = errors.Join(err, n.purgePhotos(ctx, f.Relay, a.identity, photos))
			if err != nil {
				n.log.Debug("purge a former home relay", "relay", relayID(f.Relay), "err", err)
				return
			}
			mu.Lock()
			done[relayID(f.Relay)] = true
			mu.Unlock()
		})
	}
	wg.Wait()
	n.acctMu.Lock()
	defer n.acctMu.Unlock()
	if n.acct != a {
		return false // deleted meanwhile: the account's purge job has them
	}
	cur, err := n.loadFormer(ctx)
	if err != nil {
		return true
	}
	keep := slices.DeleteFunc(cur, func(f formerRelay) bool { return done[relayID(f.Relay)] })
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
		n.log.Info("former home relays purged", "confirmed", len(done), "left", len(keep))
	}
	return len(keep) > 0
}
