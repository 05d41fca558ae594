package testnet

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/kinmesh/kinmesh/protocols/discovery"
	"github.com/kinmesh/kinmesh/protocols/message"
	"github.com/kinmesh/kinmesh/storage"
)

// TestPhoneDiscovery: one device verifies its number through a relay's
// console gateway; another finds it from an address book of several
// numbers, gets its signed contact record, adds it and writes to it. No
// relay keeps any of the numbers, in its files or its decrypted records.
func TestPhoneDiscovery(t *testing.T) {
	n := startNet(t, Config{Relays: 2, Devices: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	accounts(t, ctx, n)
	a, b := n.Devices[0], n.Devices[1]

	const aNumber = "+351 912 345 678"
	book := []string{"+44 7700 900123", aNumber, "+33 6 12 34 56 78", "+1 415 555 2671", "+49 30 1234567"}
	// Without a verified number of its own, b may not look numbers up.
	if _, err := b.Node().DiscoverContacts(ctx, book); !errors.Is(err, discovery.ErrNotVerified) {
		t.Fatalf("discovery before verifying: %v, want ErrNotVerified", err)
	}
	st, err := n.VerifyPhone(ctx, a, aNumber)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Verified || st.Number != "+351912345678" {
		t.Fatalf("a's phone status %+v", st)
	}
	if _, err := n.VerifyPhone(ctx, b, "+351 913 000 111"); err != nil {
		t.Fatal(err)
	}

	res, err := b.Node().DiscoverContacts(ctx, book)
	if err != nil {
		t.Fatalf("DiscoverContacts: %v", err)
	}
	if len(res.Matches) != 1 {
		t.Fatalf("%d matches, want 1 (a's number only): %+v", len(res.Matches), res.Matches)
	}
	m := res.Matches[0]
	if m.Number != "+351912345678" || m.Contact.ID != a.AccountID() || m.Contact.Name != a.Name {
		t.Fatalf("match %+v, want %s", m, a.Name)
	}
	c, err := b.Node().AddContactRecord(ctx, m.Record())
	if err != nil || c.ID != a.AccountID() {
		t.Fatalf("AddContactRecord: %+v, %v", c, err)
	}
	// The record is enough to write: a gets the message.
	if _, err := b.Node().Send(ctx, a.AccountID(), "found you by your number!"); err != nil {
		t.Fatalf("Send: %v", err)
	}
	if _, err := WaitMessages(ctx, a, b.AccountID(), func(ms []message.Message) bool {
		return HasText(ms, "found you by your number!", message.StateReceived)
	}); err != nil {
		t.Fatal(err)
	}

	// No relay keeps a number: not on disk, not in its decrypted records.
	needles := []string{"+351912345678", "351912345678", "912345678", "+447700900123", "447700900123", "+33612345678", "+4930123456"}
	for _, r := range n.Relays {
		for _, s := range needles {
			if f, ok := scanDir(t, r.Dir, []byte(s)); ok {
				t.Errorf("%s: file %s holds %s", r.Name, f, s)
			}
		}
		err := r.Relay().Store().Namespace(discovery.Namespace).List(ctx, storage.ListOptions{}, func(k string, v []byte) error {
			for _, s := range needles {
				if strings.Contains(k, s) || strings.Contains(string(v), s) {
					t.Errorf("%s: record %q holds %s", r.Name, k, s)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}

	// a unlinks its number: it is found no more.
	if _, err := a.Node().UnlinkPhone(ctx); err != nil {
		t.Fatalf("UnlinkPhone: %v", err)
	}
	if res, err := b.Node().DiscoverContacts(ctx, book); err != nil || len(res.Matches) != 0 {
		t.Fatalf("after unlinking: %+v, %v; want no match", res, err)
	}
}

// TestDemoDiscoveryStep runs the demo's discovery step on its own.
func TestDemoDiscoveryStep(t *testing.T) {
	n := startNet(t, Config{Relays: 1, Devices: 3})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	accounts(t, ctx, n)
	detail, err := stepDiscovery(ctx, n)
	if err != nil {
		t.Fatalf("stepDiscovery: %v", err)
	}
	if !strings.Contains(detail, "found") {
		t.Fatalf("detail %q", detail)
	}
}
