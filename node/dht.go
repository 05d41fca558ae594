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
	wake(n.publishWake)
	wake(n.entryWake)
}

// publishLoop keeps the account's signed contact record published in the
// kinmesh DHT under /kmc/<account id>, so contacts can refresh it (new
// home relays, new device): woken by every new record (recordChanged),
// when relay links change and every recordRepublish (homesLoop), retrying
// with backoff until a put succeeds. Each attempt puts the record current
// then, unless that record was put less than recordRepublish ago.
func (n *Node) publishLoop() {
	var last published
	n.retryLoop(n.publishWake, func(ctx context.Context) bool { return n.publishOnce(ctx, &last) })
}

// published is the record publishLoop last put, and when.
type published struct {
	seq uint64
	at  time.Time
}

// publishOnce puts the current record in the DHT unless last says it is
// there and fresh, and reports whether to retry.
func (n *Node) publishOnce(ctx context.Context, last *published) (retry bool) {
	a, rec := n.accountRecord()
	if a == nil || n.dht == nil {
		return false
	}
	// An hour's margin: the republish tick comes recordRepublish after
	// start, a little after the first put.
	if rec.Seq == last.seq && time.Since(last.at) < recordRepublish-time.Hour {
		return false
	}
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err := n.dht.PutValue(pctx, contact.DHTKey(a.identity.AccountID()), rec.Raw)
	cancel()
	if err != nil {
		n.log.Debug("publish contact record", "err", err)
		return true
	}
	*last = published{seq: rec.Seq, at: time.Now()}
	n.log.Debug("contact record published in the DHT", "seq", rec.Seq)
	return false
}

// LookupRecord fetches an account's newest contact record from the DHT.
func (n *Node) LookupRecord(ctx context.Context, id string) (contact.Signed, error) {
	raw, err := n.dht.GetValue(ctx, "/"+contact.DHTNamespace+"/"+id)
	if err != nil {
		return contact.Signed{}, err
	}
	return contact.Parse(raw)
}
