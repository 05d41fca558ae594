package node

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/protocols/mailbox"
	"github.com/kinmesh/kinmesh/protocols/message"
	"github.com/kinmesh/kinmesh/protocols/moments"
	"github.com/kinmesh/kinmesh/protocols/prekeys"
)

// ErrNothingToChange: a group change named no member to add or remove.
var ErrNothingToChange = errors.New("node: nothing to change")

// startMessaging starts the messaging engine for the loaded account. pk
// is the new account's prekey store (nil for an existing account).
func (n *Node) startMessaging(pk *e2ee.PrekeyStore) error {
	a := n.acct
	if n.contacts == nil {
		book, err := loadContacts(context.Background(), n.store.Namespace("contacts"), n.store.Namespace("blocks"), a.identity.AccountID(), n.cfg.Now)
		if err != nil {
			return err
		}
		n.contacts = book
	}
	mc, err := mailbox.NewClient(n.host)
	if err != nil {
		return err
	}
	pc, err := prekeys.NewClient(n.host)
	if err != nil {
		return err
	}
	n.msg, err = message.New(message.Config{
		Host:  n.host,
		Store: n.store,
		Account: message.Account{
			Identity: a.identity, MailboxKey: a.mailboxKey, MailboxAuth: a.mailboxAuth, Record: a.record,
		},
		Contacts:       n.contacts,
		Mailbox:        mc,
		Prekeys:        pc,
		InitialPrekeys: pk,
		Logger:         n.log.With("component", "message"),
		Now:            n.cfg.Now,
		OnEvent:        n.events.publish,
		OnControl:      n.onControl,
		RetryMin:       n.cfg.RetryMin,
	})
	if err != nil {
		return fmt.Errorf("start messaging: %w", err)
	}
	n.recordChanged()
	n.startRecovery() // recovery.go: backup upkeep
	if err := n.startSocial(); err != nil {
		return err
	}
	if err := n.startMoments(); err != nil { // moments.go
		return err
	}
	return n.startCalls()
}

// onControl hands each feature the controls of its kinds (message
// controls: other features' payloads on the pairwise sessions). It is
// called under the messaging engine's lock: features only queue work.
func (n *Node) onControl(from e2ee.AccountID, kind string, payload []byte) {
	switch kind {
	case moments.ControlKey, moments.ControlKeyRequest:
		n.momentsControl(from, kind, payload)
	case ControlRestored:
		// A contact restored its account on a new device, which lost our
		// moments key: send it again, as if it had asked.
		n.momentsControl(from, moments.ControlKeyRequest, nil)
	}
}

// messaging returns the engine, or ErrNoAccount.
func (n *Node) messaging() (*message.Service, error) {
	n.acctMu.Lock()
	defer n.acctMu.Unlock()
	if n.msg == nil {
		return nil, ErrNoAccount
	}
	return n.msg, nil
}

// Send sends text to a contact or a group (to is an account id or a group
// id).
func (n *Node) Send(ctx context.Context, to, text string) (*message.Message, error) {
	m, err := n.messaging()
	if err != nil {
		return nil, err
	}
	if isGroupID(to) {
		return m.SendGroup(ctx, to, text)
	}
	id, err := e2ee.ParseAccountID(to)
	if err != nil {
		return nil, fmt.Errorf("%w: %q is neither a contact nor a group id", ErrUnknownContact, to)
	}
	return m.Send(ctx, id, text)
}

// isGroupID tells group ids (32 hex digits) from account ids (52 base32).
func isGroupID(s string) bool {
	if len(s) != 32 {
		return false
	}
	for _, c := range s {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// Messages returns the conversation with a contact or group.
func (n *Node) Messages(ctx context.Context, with string) ([]message.Message, error) {
	m, err := n.messaging()
	if err != nil {
		return nil, err
	}
	return m.Messages(ctx, with)
}

// MarkRead marks the conversation read and sends read receipts.
func (n *Node) MarkRead(ctx context.Context, with string) (int, error) {
	m, err := n.messaging()
	if err != nil {
		return 0, err
	}
	return m.MarkRead(ctx, with)
}

// CreateGroup creates a group of contacts.
func (n *Node) CreateGroup(ctx context.Context, name string, members []string) (*message.Group, error) {
	m, err := n.messaging()
	if err != nil {
		return nil, err
	}
	ids, err := parseAccounts(members)
	if err != nil {
		return nil, err
	}
	return m.CreateGroup(ctx, name, ids)
}

// ChangeGroup adds and removes members (admin only).
func (n *Node) ChangeGroup(ctx context.Context, group string, add, remove []string) (*message.Group, error) {
	m, err := n.messaging()
	if err != nil {
		return nil, err
	}
	addIDs, err := parseAccounts(add)
	if err != nil {
		return nil, err
	}
	rmIDs, err := parseAccounts(remove)
	if err != nil {
		return nil, err
	}
	var g *message.Group
	if len(addIDs) > 0 {
		if g, err = m.AddMembers(ctx, group, addIDs); err != nil {
			return nil, err
		}
	}
	if len(rmIDs) > 0 {
		if g, err = m.RemoveMembers(ctx, group, rmIDs); err != nil {
			return nil, err
		}
	}
	if g == nil {
		return nil, fmt.Errorf("%w: give members to add or remove", ErrNothingToChange)
	}
	return g, nil
}

// RenameGroup renames a group (admin only).
func (n *Node) RenameGroup(ctx context.Context, group, name string) (*message.Group, error) {
	m, err := n.messaging()
	if err != nil {
		return nil, err
	}
	return m.RenameGroup(ctx, group, name)
}

// LeaveGroup leaves a group. The admin hands it to the member who has
// been in it longest.
func (n *Node) LeaveGroup(ctx context.Context, group string) (*message.Group, error) {
	m, err := n.messaging()
	if err != nil {
		return nil, err
	}
	return m.LeaveGroup(ctx, group)
}

// Groups lists the groups this account is or was in.
func (n *Node) Groups(ctx context.Context) ([]message.Group, error) {
	m, err := n.messaging()
	if err != nil {
		return nil, err
	}
	return m.Groups(ctx)
}

func parseAccounts(ss []string) ([]e2ee.AccountID, error) {
	out := make([]e2ee.AccountID, 0, len(ss))
	for _, s := range ss {
		id, err := e2ee.ParseAccountID(s)
		if err != nil {
			return nil, fmt.Errorf("%w: %q", ErrUnknownContact, s)
		}
		out = append(out, id)
	}
	return out, nil
}

// Event is what GET /v1/events streams.
type Event = message.Event

// eventHub fans events out to subscribers (SSE clients). Slow subscribers
// lose events rather than stall the node; they can re-read state.
type eventHub struct {
	mu   sync.Mutex
	subs map[chan Event]struct{}
}

func newEventHub() *eventHub { return &eventHub{subs: map[chan Event]struct{}{}} }

func (h *eventHub) publish(e Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for c := range h.subs {
		select {
		case c <- e:
		default:
		}
	}
}

// Subscribe returns a channel of events and a function to stop.
func (n *Node) Subscribe() (<-chan Event, func()) {
	c := make(chan Event, 256)
	n.events.mu.Lock()
	n.events.subs[c] = struct{}{}
	n.events.mu.Unlock()
	return c, func() {
		n.events.mu.Lock()
		delete(n.events.subs, c)
		n.events.mu.Unlock()
	}
}

// MaintainPrekeys checks, tops up and rotates this account's prekeys on
// its home relays now (it also happens at start and every 6 hours).
func (n *Node) MaintainPrekeys(ctx context.Context) error {
	m, err := n.messaging()
	if err != nil {
		return err
	}
	return m.MaintainPrekeys(ctx)
}

// ExpireNow marks outgoing messages undelivered for 15 days as expired
// now, rather than at the next hourly check (an app may call it when it
// comes to the foreground). It returns how many expired.
func (n *Node) ExpireNow() (int, error) {
	m, err := n.messaging()
	if err != nil {
		return 0, err
	}
	return m.ExpireNow()
}

// MailboxSessions returns on how many home relays this account's mailbox
// is open (new mail is pushed at once).
func (n *Node) MailboxSessions() int {
	m, err := n.messaging()
	if err != nil {
		return 0
	}
	c := 0
	for _, r := range m.Relays() {
		if r.Connected {
			c++
		}
	}
	return c
}
