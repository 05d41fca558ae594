// Package contacttest makes accounts for tests of the protocols that
// carry contact records (discovery, backup, calls, presence, the node).
package contacttest

import (
	"crypto/rand"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/kinmesh/kinmesh/protocols/contact"
	"github.com/kinmesh/kinmesh/protocols/e2ee"
)

// Account returns a new identity and its signed contact record (seq 1,
// a fixed issue time, mailbox id "mbx-"+name), failing t on error.
func Account(t testing.TB, name string) (*e2ee.Identity, contact.Signed) {
	t.Helper()
	id, _, rec := account(t, func(mk *e2ee.MailboxKey) contact.Record {
		return contact.Record{Seq: 1, IssuedAt: time.Unix(1_700_000_000, 0), Name: name, MailboxID: "mbx-" + name, MailboxKey: mk.Public()}
	})
	return id, rec
}

// Device returns a new identity, mailbox key and signed contact record
// of an account whose one device is dev (seq 1, issued now, the mailbox
// id the key's), failing t on error.
func Device(t testing.TB, name string, dev peer.ID) (*e2ee.Identity, *e2ee.MailboxKey, contact.Signed) {
	t.Helper()
	return account(t, func(mk *e2ee.MailboxKey) contact.Record {
		return contact.Record{Seq: 1, IssuedAt: time.Now(), Name: name, Devices: []peer.ID{dev}, MailboxID: string(mk.ID()), MailboxKey: mk.Public()}
	})
}

// account makes an identity and a mailbox key and signs the record rec
// makes of the key, with the identity filled in.
func account(t testing.TB, rec func(*e2ee.MailboxKey) contact.Record) (*e2ee.Identity, *e2ee.MailboxKey, contact.Signed) {
	t.Helper()
	id, err := e2ee.NewIdentity(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	mk, err := e2ee.NewMailboxKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	r := rec(mk)
	r.Identity = id.Public()
	signed, err := r.Sign(id)
	if err != nil {
		t.Fatal(err)
	}
	return id, mk, signed
}
