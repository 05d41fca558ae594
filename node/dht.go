package node

import (
	"context"
	"time"

	"github.com/kinmesh/kinmesh/protocols/contact"
)

// accountRecord returns the account (nil if there is none) and its
// current contact record.
func (n *Node) accountRecord() (*account, contact.Signed) {
	n.acctMu.Lock()
	defer n.acctMu.Unlock()
	if n.acct == nil {
		return nil, contact.Signed{}
	}
	return n.acct, n.acct.record
}

// recordChanged spreads a new contact record of the account (and, at
// start, the current one): in the DHT and in the phone directory entry
// (phone.go).
func (n *Node) recordChanged() {
	n.publishRecord()
	wake(n.entryWake)
}

// publishRecord publishes the account's signed contact record in the
// kinmesh DHT under /kmc/<account id>, so contacts can refresh it (new
// home relays, new device). It retries with backoff until it succeeds or
// the node closes.
func (n *Node) publishRecord() {
	a := n.acct
	if a == nil || n.dht == nil {
		return
	}
	key, raw := contact.DHTKey(a.identity.AccountID()), a.record.Raw
	n.bg.Go(func() {
		backoff := time.Second
		for n.bgCtx.Err() == nil {
			ctx, cancel := context.WithTimeout(n.bgCtx, 30*time.Second)
			err := n.dht.PutValue(ctx, key, raw)
			cancel()
			if err == nil {
				n.log.Debug("contact record published in the DHT")
				return
			}
			n.log.Debug("publish contact record", "err", err)
			t := time.NewTimer(backoff)
			select {
			case <-n.bgCtx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			backoff = min(2*backoff, 10*time.Minute)
		}
	})
}

// LookupRecord fetches an account's newest contact record from the DHT.
func (n *Node) LookupRecord(ctx context.Context, id string) (contact.Signed, error) {
	raw, err := n.dht.GetValue(ctx, "/"+contact.DHTNamespace+"/"+id)
	if err != nil {
		return contact.Signed{}, err
	}
	return contact.Parse(raw)
}
