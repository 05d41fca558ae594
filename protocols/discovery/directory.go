package discovery

import (
	"fmt"
)

// Directory is a client's copy of one relay's directory: the entries
// (id → sealed record) and the cursor of the last change applied, so the
// next Sync fetches only what changed since. Its PublicKey is the relay's
// OPRF key, pinned by the first page applied. A Directory is not safe for
// concurrent use. Devices that keep the copy across restarts persist the
// pages' entries, Cursor and Base themselves (node does, in its store).
//
// A copy is bounded like the node's stored one: at most MaxCopyEntries
// entries and MaxCopyBytes of sealed records. A page that would take it
// beyond is refused whole (ErrDirectoryTooLarge), so a relay that keeps
// serving entries can't grow a device's memory without limit. A page
// that says to start over does not drop the copy: the relay's fresh
// listing is collected beside it, within the same caps, and replaces it
// only with the listing's last page; until then Len and Box answer from
// the copy held before. A copy and a start over under way hold at most
// twice the caps.
type Directory struct {
	// PublicKey is the relay's OPRF key (zero until the first Apply).
	PublicKey PublicKey
	// Cursor is the Page.Next of the last page applied.
	Cursor uint64
	// Base is the Page.Version of the first page of the listing Cursor
	// belongs to (the page applied at Cursor 0, or the last that said to
	// start over). Sync sends it with Cursor (Listing): the relay asks a
	// listing to start over only if it may have missed a deletion, not
	// for every deletion it forgot before the listing began.
	Base uint64

	held  entrySet  // the copy
	fresh *entrySet // the listing of a start over under way, until its last page

	// Caps; zero means MaxCopyEntries, MaxCopyBytes (tests shrink them).
	maxEntries int
	maxBytes   int64
}

// entrySet is a set of entries and the bytes of their sealed records.
type entrySet struct {
	boxes map[EntryID][]byte
	bytes int64
}

// NewDirectory returns an empty copy. If pk is not zero, pages with
// another key are refused (ErrKeyChanged).
func NewDirectory(pk PublicKey) *Directory {
	return &Directory{PublicKey: pk, held: entrySet{boxes: make(map[EntryID][]byte)}}
}

// Apply applies a page: adds, replaces and deletes entries, and moves the
// cursor; a page that says to start over begins a fresh listing, which
// replaces the copy once a page says there is no more. A page applied at
// Cursor 0 or that says to start over is the first of a listing: its
// Version becomes Base. A page that fails
// changes nothing: one of another key than the pinned one
// (ErrKeyChanged), and one that would take the copy (or the fresh
// listing) beyond MaxCopyEntries or MaxCopyBytes (ErrDirectoryTooLarge).
func (d *Directory) Apply(p *Page) error {
	if p.PublicKey.IsZero() {
		return fmt.Errorf("page without a key: %w", ErrProtocol)
	}
	if !d.PublicKey.IsZero() && !d.PublicKey.Equal(p.PublicKey) {
		return ErrKeyChanged
	}
	if d.held.boxes == nil {
		d.held.boxes = make(map[EntryID][]byte)
	}
	target := &d.held
	switch {
	case p.StartOver:
		target = &entrySet{boxes: make(map[EntryID][]byte, len(p.Entries))}
	case d.fresh != nil:
		target = d.fresh
	}
	maxEntries, maxBytes := d.caps()
	if n, b := target.after(p.Entries); n > maxEntries || b > maxBytes {
		return fmt.Errorf("the page after %d would make the copy %d entries, %d bytes (at most %d, %d): %w",
			d.Cursor, n, b, maxEntries, maxBytes, ErrDirectoryTooLarge)
	}
	d.PublicKey = p.PublicKey
	if p.StartOver {
		d.fresh = target
	}
	target.apply(p.Entries)
	if d.Cursor == 0 || p.StartOver {
		d.Base = p.Version
	}
	d.Cursor = p.Next
	if d.fresh != nil && !p.More {
		d.held, d.fresh = *d.fresh, nil
	}
	return nil
}

func (d *Directory) caps() (entries int, bytes int64) {
	entries, bytes = d.maxEntries, d.maxBytes
	if entries == 0 {
		entries = MaxCopyEntries
	}
	if bytes == 0 {
		bytes = MaxCopyBytes
	}
	return entries, bytes
}

// after returns how many entries, and bytes of sealed records, s would
// hold after es, without changing s.
func (s *entrySet) after(es []Entry) (entries int, bytes int64) {
	entries, bytes = len(s.boxes), s.bytes
	size := make(map[EntryID]int, len(es)) // after es so far; -1: none
	for _, e := range es {
		old, ok := size[e.ID]
		if !ok {
			old = -1
			if b, in := s.boxes[e.ID]; in {
				old = len(b)
			}
		}
		if old >= 0 {
			entries--
			bytes -= int64(old)
		}
		size[e.ID] = -1
		if !e.Deleted() {
			size[e.ID] = len(e.Box)
			entries++
			bytes += int64(len(e.Box))
		}
	}
	return entries, bytes
}

// apply applies es to s.
func (s *entrySet) apply(es []Entry) {
	for _, e := range es {
		if old, ok := s.boxes[e.ID]; ok {
			s.bytes -= int64(len(old))
			delete(s.boxes, e.ID)
		}
		if !e.Deleted() {
			s.boxes[e.ID] = e.Box
			s.bytes += int64(len(e.Box))
		}
	}
}

// Listing returns where the copy's listing stands, for the next List.
func (d *Directory) Listing() Listing { return Listing{Since: d.Cursor, Base: d.Base} }

// Len returns how many entries the copy holds.
func (d *Directory) Len() int { return len(d.held.boxes) }

// Box returns the sealed record of id.
func (d *Directory) Box(id EntryID) ([]byte, bool) {
	b, ok := d.held.boxes[id]
	return b, ok
}
