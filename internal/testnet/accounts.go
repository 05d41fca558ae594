package testnet

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/kinmesh/kinmesh/node"
	"github.com/kinmesh/kinmesh/protocols/message"
)

// CreateAccount creates the device's account with a profile fit for the
// demo (an adult, policy accepted), and returns once its mailbox is open
// on every home relay: relays keep mail only for mailboxes whose owner
// authenticated there, so a device stopped before that would get no mail
// queued for it.
func (d *Device) CreateAccount(ctx context.Context, name string) (*node.Account, error) {
	nd := d.Node()
	if nd == nil {
		return nil, fmt.Errorf("%s is stopped", d.Name)
	}
	if a, err := nd.Account(); err == nil {
		return a, nil
	}
	a, err := nd.CreateAccount(ctx, node.NewAccount{
		Name: name, BirthDate: "1970-01-01", AcceptPolicy: node.PolicyVersion,
	})
	if err != nil {
		return nil, err
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for nd.MailboxSessions() < len(a.HomeRelays) {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%s: mailbox open on %d of %d home relays: %w", d.Name, nd.MailboxSessions(), len(a.HomeRelays), ctx.Err())
		case <-tick.C:
		}
	}
	return a, nil
}

// AccountID returns the device's account id ("" without an account).
func (d *Device) AccountID() string {
	nd := d.Node()
	if nd == nil {
		return ""
	}
	a, err := nd.Account()
	if err != nil {
		return ""
	}
	return a.ID
}

// Introduce makes a and b contacts of each other, each adding the other's
// invite.
func Introduce(ctx context.Context, a, b *Device) error {
	for _, pair := range [][2]*Device{{a, b}, {b, a}} {
		inv, err := pair[0].Node().Invite()
		if err != nil {
			return fmt.Errorf("%s invite: %w", pair[0].Name, err)
		}
		if _, err := pair[1].Node().AddContact(ctx, inv.String()); err != nil {
			return fmt.Errorf("%s adds %s: %w", pair[1].Name, pair[0].Name, err)
		}
	}
	return nil
}

// WaitMessages waits until the conversation with `with` on d satisfies
// cond, re-checking on every event the node emits.
func WaitMessages(ctx context.Context, d *Device, with string, cond func([]message.Message) bool) ([]message.Message, error) {
	nd := d.Node()
	if nd == nil {
		return nil, fmt.Errorf("%s is stopped", d.Name)
	}
	events, stop := nd.Subscribe()
	defer stop()
	for {
		ms, err := nd.Messages(ctx, with)
		if err != nil {
			return nil, err
		}
		if cond(ms) {
			return ms, nil
		}
		select {
		case <-ctx.Done():
			return ms, fmt.Errorf("%s: waiting for messages with %.12s…: %w", d.Name, with, ctx.Err())
		case <-events:
		}
		// Take every event already queued before re-reading: one re-read
		// per burst of events, not one per event.
	drain:
		for {
			select {
			case <-events:
			default:
				break drain
			}
		}
	}
}

// HasText reports whether ms holds a message with text in state st ("" for
// any).
func HasText(ms []message.Message, text string, st message.State) bool {
	return slices.ContainsFunc(ms, func(m message.Message) bool {
		return m.Text == text && (st == "" || m.State == st)
	})
}
