package node

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// Home relays. An account keeps its mail and prekeys on k home relays,
// listed in its signed contact record. When one has been unreachable for
// RehomeAfter (default 24 h) and another bootstrap relay is up, the node
// replaces it: a new record (seq+1) goes out with every envelope from then
// on and into the DHT, the mailbox session moves, and prekeys are
// published on the new relay. Contacts that still deposit on the old relay
// lose nothing while the other homes hold the same envelopes. The old
// relay is remembered and purged of the account's data as soon as it
// answers (former.go); until it confirmed, it is not chosen as a home
// again. If it held the phone link (and so the backup), those can't
// follow without a new code: the phone shows it needs verifying again
// (phone.go), and they leave the old relay once they have moved.

// watchRelays notes when each bootstrap relay went down, on every change
// of the relay links.
func (n *Node) watchRelays() {
	for {
		changed := n.keeper.Changed()
		now := n.cfg.Now()
		n.rsvMu.Lock()
		for _, s := range n.keeper.State() {
			if s.Connected {
				delete(n.downSince, s.ID)
			} else if _, ok := n.downSince[s.ID]; !ok {
				n.downSince[s.ID] = now
			}
		}
		n.rsvMu.Unlock()
		wake(n.formerWake)  // a former home relay may be back
		wake(n.entryWake)   // so may the phone relay
		wake(n.publishWake) // a put that failed may go through now
		select {
		case <-n.bgCtx.Done():
			return
		case <-changed:
		}
	}
}

// wake wakes a background loop (the purge of former home relays, the
// directory entry's upkeep, the record's publication) without blocking.
func wake(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// recordRepublish is how often the node publishes its unchanged record in
// the DHT again: DHT servers drop records 36 hours after they were put
// (kad-dht's MaxRecordAge), and keep them in memory only.
const recordRepublish = 12 * time.Hour

// homesLoop checks the home relays every RehomeCheck, refreshes the
// contacts' records from the DHT every hour (the first time at start:
// refreshAtStart) and publishes the account's own every recordRepublish.
func (n *Node) homesLoop() {
	check := time.NewTicker(n.cfg.RehomeCheck)
	defer check.Stop()
	refresh := time.NewTicker(time.Hour)
	defer refresh.Stop()
	republish := time.NewTicker(recordRepublish)
	defer republish.Stop()
	for {
		select {
		case <-n.bgCtx.Done():
			return
		case <-check.C:
			if _, err := n.CheckHomes(n.bgCtx); err != nil {
				n.log.Debug("check home relays", "err", err)
			}
		case <-refresh.C:
			n.RefreshContacts(n.bgCtx)
		case <-republish.C:
			wake(n.publishWake)
		}
	}
}

// CheckHomes replaces home relays that have been down for RehomeAfter
// with bootstrap relays that are up, and reports whether it did. It runs
// every RehomeCheck; tests call it with an injected clock.
func (n *Node) CheckHomes(ctx context.Context) (bool, error) {
	n.acctMu.Lock()
	defer n.acctMu.Unlock()
	a := n.acct
	if a == nil {
		return false, nil
	}
	now := n.cfg.Now()
	homes := make([]peer.AddrInfo, 0, len(a.HomeRelays))
	for _, h := range a.HomeRelays {
		ai, err := peer.AddrInfoFromString(h)
		if err != nil {
			return false, err
		}
		homes = append(homes, *ai)
	}
	isHome := func(id peer.ID) bool {
		return slices.ContainsFunc(homes, func(h peer.AddrInfo) bool { return h.ID == id })
	}
	former, err := n.loadFormer(ctx)
	if err != nil {
		return false, err
	}
	// A relay still to purge of the account's data is no new home: the
	// purge would take what the account keeps there again.
	isFormer := func(id peer.ID) bool {
		return slices.ContainsFunc(former, func(f formerRelay) bool { return relayID(f.Relay) == id.String() })
	}
	n.rsvMu.Lock()
	var spares []peer.AddrInfo
	for _, r := range n.relays {
		_, down := n.downSince[r.ID]
		if !isHome(r.ID) && !isFormer(r.ID) && !down && n.reservations[r.ID].After(time.Now()) {
			spares = append(spares, r)
		}
	}
	changed := false
	for i, h := range homes {
		since, down := n.downSince[h.ID]
		if !down && !slices.ContainsFunc(n.relays, func(r peer.AddrInfo) bool { return r.ID == h.ID }) {
			since, down = n.start, true // not a bootstrap relay any more: down since start
		}
		if !down || now.Sub(since) < n.cfg.RehomeAfter || len(spares) == 0 {
			continue
		}
		n.log.Info("moving home relay", "from", h.ID, "to", spares[0].ID, "down_for", now.Sub(since).Round(time.Minute))
		if !isFormer(h.ID) {
			former = append(former, formerRelay{Relay: relayAddr(h), Since: now})
		}
		homes[i], spares = spares[0], spares[1:]
		changed = true
	}
	n.rsvMu.Unlock()
	if !changed {
		return false, nil
	}
	next := *a
	next.HomeRelays = nil
	for _, h := range homes {
		next.HomeRelays = append(next.HomeRelays, relayAddr(h))
	}
	rec, err := n.signRecord(&next, a.record.Seq+1)
	if err != nil {
		return false, err
	}
	info, err := json.Marshal(next.Account)
	if err != nil {
		return false, err
	}
	ns := n.store.Namespace("account")
	b := n.store.NewBatch()
	if err := b.Put(ns, keyAccount, info); err != nil {
		return false, err
	}
	if err := b.Put(ns, keyRecord, rec.Raw); err != nil {
		return false, err
	}
	if err := n.putFormer(b, former); err != nil {
		return false, err
	}
	if err := b.Commit(ctx); err != nil {
		return false, fmt.Errorf("store new home relays: %w", err)
	}
	a.Account, a.record = next.Account, rec
	n.msg.UpdateRecord(rec)
	n.recordChanged()
	wake(n.formerWake)
	if ph, err := n.loadPhone(ctx); err == nil && ph.needsReverification(next.HomeRelays) {
		n.log.Warn("the relay holding the phone link is no home relay any more: verify the number again to move the link and the backup (POST /v1/phone)", "relay", relayID(ph.Relay))
	}
	return true, nil
}

// refreshAtStart looks every contact's record up in the DHT once, as soon
// as the DHT can answer (its routing table holds a relay; given up after
// 2 minutes): a device that was off for days may hold records from before
// its contacts moved, and waiting for the hourly refresh would leave its
// first messages on their old relays.
func (n *Node) refreshAtStart() {
	if n.dht == nil {
		return
	}
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	giveUp := time.NewTimer(2 * time.Minute)
	defer giveUp.Stop()
	for n.dht.RoutingTable().Size() == 0 {
		select {
		case <-n.bgCtx.Done():
			return
		case <-giveUp.C:
			return
		case <-tick.C:
		}
	}
	n.RefreshContacts(n.bgCtx)
}

// RefreshContacts looks every contact's record up in the DHT and keeps the
// newer ones (new home relays, new device). It runs once at start
// (refreshAtStart) and then every hour.
func (n *Node) RefreshContacts(ctx context.Context) {
	book, err := n.contactBook()
	if err != nil || n.dht == nil {
		return
	}
	for _, c := range book.list() {
		lctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		rec, err := n.LookupRecord(lctx, c.ID)
		cancel()
		if err == nil && string(rec.AccountID()) == c.ID {
			book.Learn(rec)
		}
		if ctx.Err() != nil {
			return
		}
	}
}
