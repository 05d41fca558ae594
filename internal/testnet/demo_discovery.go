package testnet

import (
	"context"
	"fmt"
	"strings"

	"github.com/kinmesh/kinmesh/node"
	"github.com/kinmesh/kinmesh/protocols/discovery"
)

// PhoneCode returns the last verification code a relay of the network
// texted to number through its console SMS gateway (every testnet relay
// uses one: codes are kept in memory, nothing is sent).
func (n *Network) PhoneCode(number string) (string, bool) {
	num, err := discovery.ParseNumber(number)
	if err != nil {
		return "", false
	}
	for _, r := range n.Relays {
		rl := r.Relay()
		if rl == nil || rl.SMSConsole() == nil {
			continue
		}
		if code, ok := rl.SMSConsole().LastCode(num); ok {
			return code, true
		}
	}
	return "", false
}

// VerifyPhone links number to d's account: it asks for a code, reads it
// from the relay's console gateway and submits it, as a user would type
// it.
func (n *Network) VerifyPhone(ctx context.Context, d *Device, number string) (*node.PhoneStatus, error) {
	nd := d.Node()
	if nd == nil {
		return nil, fmt.Errorf("%s is stopped", d.Name)
	}
	st, err := nd.RequestPhoneCode(ctx, number)
	if err != nil {
		return nil, fmt.Errorf("%s: request code: %w", d.Name, err)
	}
	code, ok := n.PhoneCode(st.Pending.Number)
	if !ok {
		return nil, fmt.Errorf("%s: no relay texted a code", d.Name)
	}
	if st, err = nd.ConfirmPhoneCode(ctx, code); err != nil {
		return nil, fmt.Errorf("%s: confirm code: %w", d.Name, err)
	}
	return st, nil
}

// demoPhone is device i's demo phone number.
func demoPhone(i int) string { return fmt.Sprintf("+351 91 200 %04d", i+1) }

// stepDiscovery: every device links its number; the second device finds
// the first in an address book of several numbers, only it, and adds it
// as a contact from the signed record the directory holds.
func stepDiscovery(ctx context.Context, n *Network) (string, error) {
	if len(n.Devices) < 2 {
		return "skipped: fewer than 2 devices", nil
	}
	for i, d := range n.Devices {
		if _, err := n.VerifyPhone(ctx, d, demoPhone(i)); err != nil {
			return "", err
		}
	}
	book := []string{demoPhone(0), "+44 7700 900123", "+33 6 12 34 56 78", "+1 415 555 2671"}
	b := n.Devices[1].Node()
	res, err := b.DiscoverContacts(ctx, book)
	if err != nil {
		return "", fmt.Errorf("%s: discover: %w", n.Devices[1].Name, err)
	}
	if len(res.Matches) != 1 || res.Matches[0].Contact.ID != n.Devices[0].AccountID() {
		return "", fmt.Errorf("%s found %d of %d numbers, want %s's only", n.Devices[1].Name, len(res.Matches), len(book), n.Devices[0].Name)
	}
	if _, err := b.AddContactRecord(ctx, res.Matches[0].Record()); err != nil {
		return "", err
	}
	// No relay's store (decrypted) holds any number of the book.
	var needles [][]byte
	for _, s := range book {
		num, err := discovery.ParseNumber(s)
		if err != nil {
			return "", err
		}
		needles = append(needles, []byte(num), []byte(strings.TrimPrefix(string(num), "+")))
	}
	if where, err := relayNamespacesHold(ctx, n, []string{discovery.Namespace, "backup"}, needles...); err != nil {
		return "", err
	} else if where != "" {
		return "", fmt.Errorf("%s holds a phone number", where)
	}
	return fmt.Sprintf("%d numbers verified; %s found %q among %d numbers (relays saw blinded values only; their stores scanned: no number in them)",
		len(n.Devices), n.Devices[1].Name, res.Matches[0].Contact.Name, len(book)), nil
}
