package discovery

import (
	"fmt"
)

// Directory is a client's copy of one relay's directory: the entries
// (id → sealed record) and the cursor of the last change applied, so the
// next Sync fetches only what changed since. Its PublicKey is the relay's
// OPRF key, pinned by the first page applied. A Directory is not safe for
// concurrent use. Devices that keep the copy across restarts persist the
// pages' entries themselves (node does, in its store).
type Directory struct {
	// PublicKey is the relay's OPRF key (zero until the first Apply).
	PublicKey PublicKey
	// Cursor is the Page.Next of the last page applied.
	Cursor uint64

	entries map[EntryID][]byte
}

// NewDirectory returns an empty copy. If pk is not zero, pages with
// another key are refused (ErrKeyChanged).
func NewDirectory(pk PublicKey) *Directory {
	return &Directory{PublicKey: pk, entries: make(map[EntryID][]byte)}
}

// Apply applies a page: drops everything first if the page says to start
// over, then adds, replaces and deletes entries, and moves the cursor.
// A page of another key than the pinned one changes nothing and returns
// ErrKeyChanged.
func (d *Directory) Apply(p *Page) error {
	if p.PublicKey.IsZero() {
		return fmt.Errorf("page without a key: %w", ErrProtocol)
	}
	if !d.PublicKey.IsZero() && !d.PublicKey.Equal(p.PublicKey) {
		return ErrKeyChanged
	}
	if d.entries == nil {
		d.entries = make(map[EntryID][]byte)
	}
	d.PublicKey = p.PublicKey
	if p.StartOver {
		clear(d.entries)
	}
	for _, e := range p.Entries {
		if e.Deleted() {
			delete(d.entries, e.ID)
		} else {
			d.entries[e.ID] = e.Box
		}
	}
	d.Cursor = p.Next
	return nil
}

// Len returns how many entries the copy holds.
func (d *Directory) Len() int { return len(d.entries) }

// Box returns the sealed record of id.
func (d *Directory) Box(id EntryID) ([]byte, bool) {
	b, ok := d.entries[id]
	return b, ok
}
