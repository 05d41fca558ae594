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

	"github.com/kinmesh/kinmesh/protocols/contact"
	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/storage"
)

// Contact is a contact as the API shows it. Its id is its account id.
type Contact struct {
	ID      string    `json:"id"`
	Name    string    `json:"name"`
	AddedAt time.Time `json:"added_at"`
	// Source says how we know them: "invite" (added from their invite),
	// "message" (they wrote first) or "group" (a fellow group member).
	Source      string   `json:"source"`
	Blocked     bool     `json:"blocked"`
	Fingerprint string   `json:"fingerprint"`
	HomeRelays  []string `json:"home_relays"`
}

// Contact errors.
var (
	// ErrBadInvite: the invite string is malformed or its signature fails.
	ErrBadInvite = errors.New("node: not a valid kinmesh invite")
	// ErrSelfInvite: the invite is this account's own.
	ErrSelfInvite = errors.New("node: that is your own invite")
	// ErrUnknownContact: no contact has that id.
	ErrUnknownContact = errors.New("node: no such contact")
)

// contactEntry is what the "contacts" namespace keeps per contact.
type contactEntry struct {
	Raw     []byte    `json:"record"` // signed contact record
	Bundle  []byte    `json:"bundle,omitempty"`
	AddedAt time.Time `json:"added_at"`
	Source  string    `json:"source"`

	rec    contact.Signed
	bundle *e2ee.Bundle
}

// contactBook is the address book: every record we know, in memory, backed
// by the store. It implements message.Contacts.
type contactBook struct {
	ns  *storage.Namespace
	now func() time.Time
	me  e2ee.AccountID

	mu      sync.RWMutex
	entries map[e2ee.AccountID]*contactEntry
	blocks  *blockList
}

func loadContacts(ctx context.Context, ns, blocks *storage.Namespace, me e2ee.AccountID, now func() time.Time) (*contactBook, error) {
	bl, err := loadBlocks(ctx, blocks)
	if err != nil {
		return nil, err
	}
	b := &contactBook{ns: ns, now: now, me: me, entries: map[e2ee.AccountID]*contactEntry{}, blocks: bl}
	err = ns.List(ctx, storage.ListOptions{}, func(_ string, v []byte) error {
		e := &contactEntry{}
		if err := json.Unmarshal(v, e); err != nil {
			return err
		}
		rec, err := contact.Parse(e.Raw)
		if err != nil {
			return fmt.Errorf("load contact: %w", err)
		}
		e.rec = rec
		if len(e.Bundle) > 0 {
			e.bundle, _ = e2ee.ParseBundle(e.Bundle)
		}
		b.entries[rec.AccountID()] = e
		return nil
	})
	return b, err
}

func (b *contactBook) save(ctx context.Context, e *contactEntry) error {
	v, err := json.Marshal(e)
	if err != nil {
		return err
	}
	return b.ns.Put(ctx, b.ns.Opaque([]byte(e.rec.AccountID())), v)
}

// add adds or refreshes a contact from an invite.
func (b *contactBook) add(ctx context.Context, inv contact.Invite) (*contactEntry, error) {
	id := inv.Record.AccountID()
	if id == b.me {
		return nil, ErrSelfInvite
	}
	var bundle *e2ee.Bundle
	if len(inv.Bundle) > 0 {
		bb, err := e2ee.ParseBundle(inv.Bundle)
		if err != nil || bb.Identity.AccountID() != id {
			return nil, fmt.Errorf("%w: its prekey bundle is not valid", ErrBadInvite)
		}
		bundle = bb
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	e, ok := b.entries[id]
	if !ok {
		e = &contactEntry{AddedAt: b.now()}
	}
	if !ok || inv.Record.Seq >= e.rec.Seq {
		e.Raw, e.rec = inv.Record.Raw, inv.Record
	}
	if bundle != nil {
		e.Bundle, e.bundle = inv.Bundle, bundle
	}
	e.Source = "invite"
	if err := b.save(ctx, e); err != nil {
		return nil, err
	}
	b.entries[id] = e
	return e, nil
}

// Contact implements message.Contacts.
func (b *contactBook) Contact(id e2ee.AccountID) (contact.Signed, bool) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	e, ok := b.entries[id]
	if !ok {
		return contact.Signed{}, false
	}
	return e.rec, true
}

// Blocked implements message.Contacts.
func (b *contactBook) Blocked(id e2ee.AccountID) bool {
	b.mu.RLock()
	defer b.mu.RUnlock()
	_, ok := b.blocks.m[id]
	return ok
}

// InviteBundle implements message.Contacts.
func (b *contactBook) InviteBundle(id e2ee.AccountID) *e2ee.Bundle {
	b.mu.RLock()
	defer b.mu.RUnlock()
	if e, ok := b.entries[id]; ok {
		return e.bundle
	}
	return nil
}

// Learn implements message.Contacts: records of people who wrote to us or
// share a group with us are kept (and kept fresh).
func (b *contactBook) Learn(rec contact.Signed) {
	id := rec.AccountID()
	if id == b.me {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	e, ok := b.entries[id]
	if ok && !rec.Newer(e.rec.Record) {
		return
	}
	if !ok {
		e = &contactEntry{AddedAt: b.now(), Source: "message"}
	}
	e.Raw, e.rec = rec.Raw, rec
	if err := b.save(context.Background(), e); err != nil {
		return
	}
	b.entries[id] = e
}

func (b *contactBook) list() []Contact {
	b.mu.RLock()
	defer b.mu.RUnlock()
	out := make([]Contact, 0, len(b.entries))
	for id, e := range b.entries {
		c := e.view()
		_, c.Blocked = b.blocks.m[id]
		out = append(out, c)
	}
	slices.SortFunc(out, func(x, y Contact) int { return strings.Compare(x.Name+x.ID, y.Name+y.ID) })
	return out
}

func (e *contactEntry) view() Contact {
	c := Contact{
		ID: string(e.rec.AccountID()), Name: e.rec.Name, AddedAt: e.AddedAt, Source: e.Source,
		Fingerprint: e.rec.Identity.Fingerprint(),
	}
	for _, h := range e.rec.HomeRelays {
		c.HomeRelays = append(c.HomeRelays, h.String())
	}
	return c
}

// AddContact adds a contact from an invite string (or URI). It works
// offline: nothing is sent until the first message.
func (n *Node) AddContact(ctx context.Context, invite string) (*Contact, error) {
	inv, err := contact.ParseInvite(invite)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadInvite, err)
	}
	book, err := n.contactBook()
	if err != nil {
		return nil, err
	}
	e, err := book.add(ctx, inv)
	if err != nil {
		return nil, err
	}
	n.momentsAudienceChanged() // a new friend gets the moments key now
	c := e.view()
	c.Blocked = book.Blocked(e.rec.AccountID())
	return &c, nil
}

// remove takes id out of the address book. A fellow group member's record
// stays, as Source "group": the group's messages still need it.
func (b *contactBook) remove(ctx context.Context, id e2ee.AccountID, groupMember bool) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	e, ok := b.entries[id]
	if !ok {
		return fmt.Errorf("%w: %s", ErrUnknownContact, id)
	}
	if groupMember {
		kept := *e
		kept.Source = "group"
		if err := b.save(ctx, &kept); err != nil {
			return err
		}
		b.entries[id] = &kept
		return nil
	}
	if err := b.ns.Delete(ctx, b.ns.Opaque([]byte(id))); err != nil {
		return err
	}
	delete(b.entries, id)
	return nil
}

// RemoveContact removes a contact: they are no longer a friend, so they
// get no more presence and the moments audience rotates away from them
// (they keep what they could already read, and can't read what comes
// next). Conversations stay. If they share a group with us, their record
// stays as a group member's (Source "group"), which group messages need;
// if they write again, they come back as Source "message". Removing is
// not blocking: BlockContact drops what they send.
func (n *Node) RemoveContact(ctx context.Context, id string) error {
	book, err := n.contactBook()
	if err != nil {
		return err
	}
	aid := accountID(id)
	inGroup := false
	if svc, err := n.messaging(); err == nil {
		groups, err := svc.Groups(ctx)
		if err != nil {
			return err
		}
		for _, g := range groups {
			if !g.Left && slices.Contains(g.Members, id) {
				inGroup = true
				break
			}
		}
	}
	if err := book.remove(ctx, aid, inGroup); err != nil {
		return err
	}
	n.momentsAudienceChanged() // out of the moments audience at once
	return nil
}

// Contacts lists every contact.
func (n *Node) Contacts() ([]Contact, error) {
	book, err := n.contactBook()
	if err != nil {
		return nil, err
	}
	return book.list(), nil
}

func (n *Node) contactBook() (*contactBook, error) {
	n.acctMu.Lock()
	defer n.acctMu.Unlock()
	if n.contacts == nil {
		return nil, ErrNoAccount
	}
	return n.contacts, nil
}

func accountID(s string) e2ee.AccountID { return e2ee.AccountID(s) }
