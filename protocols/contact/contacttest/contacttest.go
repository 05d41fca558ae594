// Package contacttest makes accounts for tests of the protocols that
// carry contact records (discovery, backup, the node).
package contacttest

import (
	"crypto/rand"
	"testing"
	"time"

	"github.com/kinmesh/kinmesh/protocols/contact"
	"github.com/kinmesh/kinmesh/protocols/e2ee"
)

// Account returns a new identity and its signed contact record (seq 1,
// a fixed issue time, mailbox id "mbx-"+name), failing t on error.
func Account(t testing.TB, name string) (*e2ee.Identity, contact.Signed) {
	t.Helper()
	id, err := e2ee.NewIdentity(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	mk, err := e2ee.NewMailboxKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := contact.Record{
		Identity: id.Public(), Seq: 1, IssuedAt: time.Unix(1_700_000_000, 0), Name: name,
		MailboxID: "mbx-" + name, MailboxKey: mk.Public(),
	}.Sign(id)
	if err != nil {
		t.Fatal(err)
	}
	return id, rec
}
