package node

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/kinmesh/kinmesh/protocols/contact"
	"github.com/kinmesh/kinmesh/protocols/discovery"
	"github.com/kinmesh/kinmesh/storage"
)

// Private contact discovery (protocols/discovery). DiscoverContacts is the
// user's explicit permission to look an address book up: nothing syncs by
// itself. For each relay it asks (the phone relay first, then the other
// home relays), the node
//
//   - brings its copy of the relay's directory up to date (only the
//     changes since the last sync),
//   - computes the OPRF outputs of the numbers it has not looked up on
//     that relay before, through the relay, blinded (the relay never sees
//     a number or an output; outputs are cached here, so a number costs
//     the account's lookup budget once),
//   - opens the directory entries whose ids the outputs give.
//
// A relay usually answers lookups only for accounts with a verified number
// there (ErrNotVerified, skipped while another relay answers). The
// directory copies, the pinned relay keys and the cached outputs live in
// the "discovery" namespace:
//
//	r/<relay peer id>                  JSON (relayCopy): the relay's OPRF key, the copy's generation, cursor, base and size, a start over under way, stale generations
//	d/<relay peer id>/<id hex>         sealed record of one directory entry, generation 0
//	g/<relay peer id>/<gen>/<id hex>   the same, generation gen ≥ 1
//	y/<Opaque(relay, key, number)>     the number's OPRF output under that key
//
// The entries of a copy are one generation; lookups read the generation
// r/<relay> names. When the relay says to start over (the copy is older
// than its memory of deletions), the relay's fresh listing is written
// beside the copy, in a generation of its own, and the copy answers
// lookups until the listing's last page: the write of r/<relay> that
// applies that page switches the copy to the new generation, in one
// transaction, and the old generation is deleted after it. A start over
// cut short (a cap, the deadline, the relay gone, the device stopped)
// leaves the copy whole; the next sync, after a restart too, goes on with
// the listing where it stopped, or, if the relay says to start over
// again, deletes it and lists anew. Each listing (the copy's, a start
// over's) keeps its base beside its cursor, the relay's version when it
// began, and sends both (discovery.Listing): the relay asks it to start
// over only if it may have missed a deletion the relay forgot, never for
// deletions made before it began. A generation is deleted only once
// r/<relay> lists it as stale, and a start over begins only once no stale
// generation is left, so a copy and a start over take at most twice the
// caps on disk. Each page is written in transactions that a device store
// takes (dirTxnOps, dirTxnBytes), each with the state that counts what it
// wrote; the last moves the cursor.
//
// A copy is bounded (MaxDirectoryEntries, MaxDirectoryBytes), and so is
// the work of one sync (MaxDirectorySyncPages, DirectorySyncTimeout): a
// relay — the user's own home relay, but hostile or compromised — that
// keeps answering "more" can't fill the device's disk, nor keep a sync
// going. A sync stops at the first page that would take the copy (or a
// start over's listing) beyond its caps, writing nothing of that page,
// with ErrDirectoryTooLarge, and at its deadline with
// ErrDirectorySyncTimeout; what it wrote before stays, within the caps.

// MaxDiscoverNumbers caps the numbers of one DiscoverContacts call.
const MaxDiscoverNumbers = 5000

// Caps on the copy of one relay's directory: the protocol's own
// (discovery.MaxCopyEntries, MaxCopyBytes, MaxSyncPages), which an
// in-memory discovery.Directory keeps too. They are sized from the
// directory's design (docs/protocol/discovery.md): a relay holds at most
// discovery.DefaultMaxEntries entries of about 1.8 KB each, which
// it lists in pages of up to discovery.MaxPageEntries entries and about
// 256 KiB.
const (
	// MaxDirectoryEntries caps the entries of a copy: a full relay's.
	MaxDirectoryEntries = discovery.MaxCopyEntries
	// MaxDirectoryBytes caps the sealed records of a copy: a full relay's
	// entries at about 2 KB each, on average.
	MaxDirectoryBytes = discovery.MaxCopyBytes
	// MaxDirectorySyncPages caps the pages of one sync: twice what a
	// first sync of a copy at both caps needs.
	MaxDirectorySyncPages = discovery.MaxSyncPages
	// DirectorySyncTimeout bounds one sync as a whole, over all its pages
	// (each page has the discovery client's request timeout besides): the
	// protocol's discovery.DefaultSyncTimeout.
	DirectorySyncTimeout = discovery.DefaultSyncTimeout
)

// ErrTooManyNumbers: more numbers than MaxDiscoverNumbers in one call.
var ErrTooManyNumbers = fmt.Errorf("node: at most %d numbers per discovery request; split the address book", MaxDiscoverNumbers)

// ErrDirectoryTooLarge: a relay's directory would take this device's copy
// beyond MaxDirectoryEntries or MaxDirectoryBytes, or a sync beyond
// MaxDirectorySyncPages. No honest relay within the design's limits does
// that, so the relay counts as misbehaving (the error wraps
// discovery.ErrDirectoryTooLarge, and so discovery.ErrProtocol);
// discovery goes on with the other relays.
var ErrDirectoryTooLarge = fmt.Errorf("node: %w", discovery.ErrDirectoryTooLarge)

// ErrDirectorySyncTimeout: a sync of a relay's directory was not done
// within DirectorySyncTimeout (the relay is slow, or keeps answering
// "more"). What it wrote stays, and the next sync goes on from there. It
// wraps context.DeadlineExceeded.
var ErrDirectorySyncTimeout = fmt.Errorf("node: the relay's directory did not sync in time; the next discovery goes on where this one stopped: %w", context.DeadlineExceeded)

// directoryCaps are the bounds syncDirectory applies (tests shrink them).
type directoryCaps struct {
	entries int
	bytes   int64
	pages   int
	timeout time.Duration // 0: DirectorySyncTimeout
	// listLimit is the entries asked for per page (0: the most a page
	// holds, discovery.MaxPageEntries).
	listLimit int
}

func defaultDirectoryCaps() directoryCaps {
	return directoryCaps{entries: MaxDirectoryEntries, bytes: MaxDirectoryBytes, pages: MaxDirectorySyncPages, timeout: DirectorySyncTimeout}
}

const discoveryNamespace = "discovery"

// DiscoveryResult is what DiscoverContacts found.
type DiscoveryResult struct {
	// Matches are the numbers that belong to kinmesh users, in the order
	// asked.
	Matches []DiscoveryMatch `json:"matches"`
	// Invalid are the inputs that are not international numbers (they
	// were not looked up).
	Invalid []string `json:"invalid,omitempty"`
}

// DiscoveryMatch is one number of the address book that belongs to a
// user.
type DiscoveryMatch struct {
	Number  string            `json:"number"`
	Contact DiscoveredContact `json:"contact"`
}

// DiscoveredContact is the signed contact record a directory holds for a
// number. Add it with POST /v1/contacts {"invite": Invite} (or
// AddContactRecord).
type DiscoveredContact struct {
	ID          string   `json:"id"`
	Name        string   `json:"name"`
	Fingerprint string   `json:"fingerprint"`
	HomeRelays  []string `json:"home_relays"`
	// Invite is the record as an invite string (without a prekey bundle:
	// the first message fetches one from the contact's relays).
	Invite string `json:"invite"`
	// Known says the account is already a contact.
	Known bool `json:"known"`

	record contact.Signed
}

// Record returns the match's signed contact record.
func (m DiscoveryMatch) Record() contact.Signed { return m.Contact.record }

// relayCopy is what r/<relay> holds: the state of the copy of the
// relay's directory. The copy lookups use is one generation of entries
// (the embedded copyGen; a state written before generations were is
// generation 0's). A start over collects the relay's fresh listing in a
// generation of its own, Staged, which replaces the copy in the one write
// of this state that applies the listing's last page.
type relayCopy struct {
	Key []byte `json:"key"`
	copyGen
	// Staged is the fresh listing of a start over under way (nil if
	// none): the next sync goes on with it, or drops it if the relay says
	// to start over again.
	Staged *copyGen `json:"staged,omitempty"`
	// Stale are generations no longer used whose entries are left to
	// delete.
	Stale []uint64 `json:"stale,omitempty"`
}

// copyGen is one generation of a copy: where its entries are, the cursor
// of the last change written to it, its listing's base, and its size.
type copyGen struct {
	Gen    uint64 `json:"gen,omitempty"`
	Cursor uint64 `json:"cursor"`
	// Base is the relay's version when the generation's listing began
	// (the Version of the first page written to it), sent with Cursor
	// (discovery.Listing): the relay asks the listing to start over only
	// if it may have missed a deletion. It is written with the first
	// transaction of that page, so a first page cut short keeps it too.
	// 0 for a state written before bases were kept: the relay then asks
	// a listing below its floor to start over, as it did.
	Base uint64 `json:"base,omitempty"`
	// Entries and Bytes measure the generation (its entries, their sealed
	// records' bytes); they are written with every change to it. Counted
	// is false for a state written before they were kept, and for one
	// written by a drop (before start overs were staged): the next sync
	// counts the copy, or, if it has listed nothing, deletes it.
	Entries int   `json:"entries"`
	Bytes   int64 `json:"bytes"`
	Counted bool  `json:"counted"`
}

// nextGen returns a generation number that no generation of cp uses.
func (cp *relayCopy) nextGen() uint64 {
	g := cp.Gen
	if cp.Staged != nil {
		g = max(g, cp.Staged.Gen)
	}
	for _, s := range cp.Stale {
		g = max(g, s)
	}
	return g + 1
}

// DiscoverContacts looks numbers up (international form; others are
// returned as Invalid) and returns those that belong to kinmesh users,
// with their signed contact records. The account's own number is left
// out.
func (n *Node) DiscoverContacts(ctx context.Context, numbers []string) (*DiscoveryResult, error) {
	if len(numbers) > MaxDiscoverNumbers {
		return nil, ErrTooManyNumbers
	}
	a, c, err := n.phoneAccount()
	if err != nil {
		return nil, err
	}
	res := &DiscoveryResult{Matches: []DiscoveryMatch{}}
	var nums []discovery.Number
	seen := map[discovery.Number]bool{}
	for _, s := range numbers {
		num, err := discovery.ParseNumber(s)
		if err != nil {
			res.Invalid = append(res.Invalid, s)
			continue
		}
		if !seen[num] {
			seen[num] = true
			nums = append(nums, num)
		}
	}
	if len(nums) == 0 {
		return res, nil
	}
	n.phoneMu.Lock()
	defer n.phoneMu.Unlock()
	st, err := n.loadPhone(ctx)
	if err != nil {
		return nil, err
	}
	found := map[discovery.Number]contact.Signed{}
	var errs []error
	answered := false
	for _, r := range n.phoneRelays(a, st.Relay) {
		err := n.discoverOn(ctx, c, a, r.ID, nums, found)
		if err == nil {
			answered = true
			continue
		}
		errs = append(errs, unreachable(err))
		if discovery.RetryAfter(err) > 0 || errors.Is(err, discovery.ErrBadProof) || errors.Is(err, discovery.ErrKeyChanged) ||
			errors.Is(err, ErrDirectoryTooLarge) || errors.Is(err, ErrDirectorySyncTimeout) {
			n.log.Warn("discovery on a relay failed", "relay", r.ID, "err", err)
		}
	}
	if !answered {
		// Prefer the most telling error: a relay's refusal over not
		// reaching another.
		for _, e := range errs {
			if !errors.Is(e, ErrPhoneRelayUnreachable) && !errors.Is(e, discovery.ErrNotVerified) {
				return nil, e
			}
		}
		for _, e := range errs {
			if errors.Is(e, discovery.ErrNotVerified) {
				return nil, e
			}
		}
		return nil, errors.Join(errs...)
	}
	book, err := n.contactBook()
	if err != nil {
		return nil, err
	}
	me := a.identity.AccountID()
	for _, num := range nums {
		rec, ok := found[num]
		if !ok || rec.AccountID() == me {
			continue
		}
		_, known := book.Contact(rec.AccountID())
		res.Matches = append(res.Matches, DiscoveryMatch{Number: string(num), Contact: discovered(rec, known)})
	}
	return res, nil
}

func discovered(rec contact.Signed, known bool) DiscoveredContact {
	d := DiscoveredContact{
		ID: string(rec.AccountID()), Name: rec.Name, Fingerprint: rec.Identity.Fingerprint(),
		HomeRelays: []string{}, Invite: contact.Invite{Record: rec}.String(), Known: known, record: rec,
	}
	for _, h := range rec.HomeRelays {
		d.HomeRelays = append(d.HomeRelays, h.String())
	}
	return d
}

// discoverOn runs discovery on one relay, adding what it finds to found
// (numbers already found elsewhere are not looked up again). It looks the
// numbers up first, so a relay that refuses (not verified, rate limited)
// costs no directory download.
func (n *Node) discoverOn(ctx context.Context, c *discovery.Client, a *account, relay peer.ID, nums []discovery.Number, found map[discovery.Number]contact.Signed) error {
	pk, err := n.relayKey(ctx, c, relay)
	if err != nil {
		return err
	}
	ns := n.store.Namespace(discoveryNamespace)
	outs := make(map[discovery.Number]discovery.Output, len(nums))
	var todo []discovery.Number
	for _, num := range nums {
		if _, ok := found[num]; ok {
			continue
		}
		b, err := ns.Get(ctx, n.outputKey(relay, pk, num))
		switch {
		case err == nil && len(b) == discovery.OutputSize:
			outs[num] = discovery.Output(b)
		case err == nil || errors.Is(err, storage.ErrNotFound):
			todo = append(todo, num)
		default:
			return err
		}
	}
	if len(todo) > 0 {
		ys, err := c.Evaluate(ctx, relay, a.identity, pk, todo)
		// Keep what was computed even if a later batch was refused.
		batch := n.store.NewBatch()
		for i, y := range ys {
			outs[todo[i]] = y
			if perr := batch.Put(ns, n.outputKey(relay, pk, todo[i]), y[:]); perr != nil {
				return perr
			}
		}
		if cerr := batch.CommitUnsynced(ctx); cerr != nil {
			return cerr
		}
		if err != nil {
			return err
		}
	}
	synced, err := n.syncDirectory(ctx, c, relay, defaultDirectoryCaps())
	if err != nil {
		return err
	}
	if !synced.Equal(pk) {
		return fmt.Errorf("discovery: relay %s: %w", relay, discovery.ErrKeyChanged)
	}
	return n.lookupCopy(ctx, relay, outs, found)
}

// lookupCopy adds to found the contact record of each number whose output
// names an entry of the copy of relay's directory: the copy's own
// generation, never a start over under way.
func (n *Node) lookupCopy(ctx context.Context, relay peer.ID, outs map[discovery.Number]discovery.Output, found map[discovery.Number]contact.Signed) error {
	cp, err := n.relayCopy(ctx, relay)
	if err != nil {
		return err
	}
	ns := n.store.Namespace(discoveryNamespace)
	for num, y := range outs {
		box, err := ns.Get(ctx, entryKey(relay, cp.Gen, y.ID()))
		if errors.Is(err, storage.ErrNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		rec, err := y.Open(box)
		if err != nil {
			n.log.Debug("unreadable directory entry", "relay", relay, "err", err)
			continue
		}
		found[num] = rec
	}
	return nil
}

// relayKey returns relay's OPRF key: the one pinned at the first sync, or
// else the one the relay shows now (pinned by the sync that follows).
func (n *Node) relayKey(ctx context.Context, c *discovery.Client, relay peer.ID) (discovery.PublicKey, error) {
	cp, err := n.relayCopy(ctx, relay)
	if err != nil {
		return discovery.PublicKey{}, err
	}
	if len(cp.Key) > 0 {
		return discovery.ParsePublicKey(cp.Key)
	}
	p, err := c.List(ctx, relay, discovery.Listing{}, 0)
	if err != nil {
		return discovery.PublicKey{}, err
	}
	return p.PublicKey, nil
}

// relayCopy reads the state of the copy of relay's directory (zero if
// none).
func (n *Node) relayCopy(ctx context.Context, relay peer.ID) (relayCopy, error) {
	var cp relayCopy
	b, err := n.store.Namespace(discoveryNamespace).Get(ctx, "r/"+relay.String())
	if errors.Is(err, storage.ErrNotFound) {
		return cp, nil
	}
	if err != nil {
		return cp, err
	}
	if err := json.Unmarshal(b, &cp); err != nil {
		return cp, fmt.Errorf("discovery copy of %s: %w", relay, err)
	}
	return cp, nil
}

func (n *Node) outputKey(relay peer.ID, pk discovery.PublicKey, num discovery.Number) string {
	return "y/" + n.store.Namespace(discoveryNamespace).Opaque([]byte(relay), pk.Bytes(), []byte(num))
}

// genPrefix is the key prefix of the entries of generation gen of the
// copy of relay's directory.
func genPrefix(relay peer.ID, gen uint64) string {
	if gen == 0 {
		return "d/" + relay.String() + "/"
	}
	return "g/" + relay.String() + "/" + strconv.FormatUint(gen, 10) + "/"
}

func entryKey(relay peer.ID, gen uint64, id discovery.EntryID) string {
	return genPrefix(relay, gen) + hex.EncodeToString(id[:])
}

// syncDirectory brings the copy of relay's directory up to date and
// returns the relay's OPRF key (pinned at the first sync:
// discovery.ErrKeyChanged if the relay shows another). It keeps the copy
// within caps, stops after caps.pages pages (ErrDirectoryTooLarge) and
// after caps.timeout (ErrDirectorySyncTimeout); a page that would break a
// cap is not written.
func (n *Node) syncDirectory(ctx context.Context, c *discovery.Client, relay peer.ID, caps directoryCaps) (discovery.PublicKey, error) {
	if caps.timeout <= 0 {
		caps.timeout = DirectorySyncTimeout
	}
	deadline := time.Now().Add(caps.timeout)
	sctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	pk, err := n.syncPages(sctx, c, relay, caps)
	// The stream's deadline is the sync's: it may fire first.
	if err != nil && ctx.Err() == nil && (sctx.Err() != nil || !time.Now().Before(deadline)) {
		err = fmt.Errorf("%w: relay %s, after %v (%w)", ErrDirectorySyncTimeout, relay, caps.timeout, err)
	}
	return pk, err
}

// syncPages is syncDirectory's work, within its deadline.
func (n *Node) syncPages(ctx context.Context, c *discovery.Client, relay peer.ID, caps directoryCaps) (discovery.PublicKey, error) {
	cp, err := n.relayCopy(ctx, relay)
	if err != nil {
		return discovery.PublicKey{}, err
	}
	var pinned discovery.PublicKey
	if len(cp.Key) > 0 {
		if pinned, err = discovery.ParsePublicKey(cp.Key); err != nil {
			return pinned, fmt.Errorf("discovery copy of %s: %w", relay, err)
		}
	}
	if len(cp.Key) > 0 && cp.Cursor == 0 && !cp.Counted && cp.Staged == nil {
		// A copy with nothing listed holds nothing: what its generation
		// holds was left by a drop cut short (before start overs were
		// staged). Never mix it in.
		cp.Stale = append(slices.Clone(cp.Stale), cp.Gen)
		cp.copyGen = copyGen{Gen: cp.nextGen(), Counted: true}
	}
	if !cp.Counted {
		if cp.Entries, cp.Bytes, err = n.countGen(ctx, relay, cp.Gen); err != nil {
			return pinned, err
		}
		cp.Counted = true
	}
	limit := caps.listLimit
	if limit <= 0 {
		limit = discovery.MaxPageEntries
	}
	for pages := 0; ; pages++ {
		if pages == caps.pages {
			return pinned, fmt.Errorf("%w: relay %s: still more after %d pages", ErrDirectoryTooLarge, relay, pages)
		}
		at := discovery.Listing{Since: cp.Cursor, Base: cp.Base}
		if cp.Staged != nil {
			at = discovery.Listing{Since: cp.Staged.Cursor, Base: cp.Staged.Base}
		}
		p, err := c.List(ctx, relay, at, limit)
		if err != nil {
			return pinned, err
		}
		if !pinned.IsZero() && !pinned.Equal(p.PublicKey) {
			return pinned, fmt.Errorf("discovery: relay %s: %w", relay, discovery.ErrKeyChanged)
		}
		pinned = p.PublicKey
		cp.Key = pinned.Bytes()
		since := at.Since
		if p.StartOver {
			since = 0
		}
		if p.More && p.Next <= since {
			return pinned, fmt.Errorf("discovery: relay %s: more changes but no progress past %d: %w", relay, since, discovery.ErrProtocol)
		}
		if p.StartOver {
			if cp, err = n.startOver(ctx, relay, cp); err != nil {
				return pinned, err
			}
		}
		if cp, err = n.writePage(ctx, relay, cp, p, caps); err != nil {
			return pinned, err
		}
		if !p.More {
			break
		}
	}
	if err := n.dropStale(ctx, relay, &cp); err != nil {
		n.log.Debug("delete a stale directory copy (the next sync goes on)", "relay", relay, "err", err)
	}
	return pinned, nil
}

// Writes of a copy go in transactions of at most dirTxnOps operations
// and about dirTxnBytes (keys, records, and dirTxnOverhead per operation
// for the store's own), well within what one device store transaction
// takes (storage.Batch: about 300 KB and 3,000 entries). A full page of
// records under about 620 bytes (256 KiB) is more than one.
const (
	dirTxnOps      = 1000
	dirTxnBytes    = 128 << 10
	dirTxnOverhead = 100
)

// writePage writes page p into the copy cp of relay's directory — into
// the start over under way if there is one, else into the copy — and
// returns the state after it. It refuses a page that would take the
// generation beyond caps (ErrDirectoryTooLarge) and writes nothing of it.
//
// A page is written in transactions of at most dirTxnOps and dirTxnBytes,
// each with the state that counts what the generation holds after it (and,
// for the first page of its listing, the listing's base); the last also
// moves the cursor, and, for the last page of a start over,
// switches the copy to the start over's generation and marks the old one
// stale. A page cut short between transactions is listed again by the
// next sync and written again over itself.
func (n *Node) writePage(ctx context.Context, relay peer.ID, cp relayCopy, p *discovery.Page, caps directoryCaps) (relayCopy, error) {
	ns := n.store.Namespace(discoveryNamespace)
	g := &cp.copyGen
	if cp.Staged != nil {
		staged := *cp.Staged
		cp.Staged, g = &staged, &staged
	}
	type write struct {
		key     string
		box     []byte // nil: delete
		entries int    // the generation's size after this write
		bytes   int64
	}
	writes := make([]write, 0, len(p.Entries))
	size := make(map[discovery.EntryID]int, len(p.Entries)) // after this page so far; -1: none
	entries, bytes := g.Entries, g.Bytes
	for _, e := range p.Entries {
		key := entryKey(relay, g.Gen, e.ID)
		old, ok := size[e.ID]
		if !ok {
			b, err := ns.Get(ctx, key)
			switch {
			case err == nil:
				old = len(b)
			case errors.Is(err, storage.ErrNotFound):
				old = -1
			default:
				return cp, err
			}
		}
		if old >= 0 {
			entries--
			bytes -= int64(old)
		}
		size[e.ID] = -1
		var box []byte
		if !e.Deleted() {
			box = e.Box
			size[e.ID] = len(box)
			entries++
			bytes += int64(len(box))
		}
		writes = append(writes, write{key: key, box: box, entries: entries, bytes: bytes})
	}
	if entries > caps.entries || bytes > caps.bytes {
		return cp, fmt.Errorf("%w: relay %s: its next page would make the copy %d entries, %d bytes (at most %d, %d)",
			ErrDirectoryTooLarge, relay, entries, bytes, caps.entries, caps.bytes)
	}
	if g.Cursor == 0 && g.Base == 0 {
		// The listing's first page: its entries are as of p.Version or
		// later. A base written before (this page cut short, listed
		// again) is older, and stays.
		g.Base = p.Version
	}
	batch := n.store.NewBatch()
	cost := 0
	for i, w := range writes {
		var err error
		if w.box == nil {
			err = batch.Delete(ns, w.key)
		} else {
			err = batch.Put(ns, w.key, w.box)
		}
		if err != nil {
			return cp, err
		}
		cost += len(w.key) + len(w.box) + dirTxnOverhead
		if i < len(writes)-1 && (batch.Len() >= dirTxnOps || cost >= dirTxnBytes) {
			g.Entries, g.Bytes = w.entries, w.bytes
			if err := n.commitRelayCopy(ctx, batch, relay, cp); err != nil {
				return cp, err
			}
			cost = 0
		}
	}
	g.Entries, g.Bytes, g.Cursor = entries, bytes, p.Next
	if cp.Staged != nil && !p.More {
		cp.Stale = append(slices.Clone(cp.Stale), cp.Gen)
		cp.copyGen, cp.Staged = *cp.Staged, nil
	}
	return cp, n.commitRelayCopy(ctx, batch, relay, cp)
}

// commitRelayCopy adds the write of relay's copy state to b and commits
// it.
func (n *Node) commitRelayCopy(ctx context.Context, b *storage.Batch, relay peer.ID, cp relayCopy) error {
	if err := n.putRelayCopy(b, relay, cp); err != nil {
		return err
	}
	return b.CommitUnsynced(ctx)
}

// putRelayCopy adds the write of relay's copy state to b.
func (n *Node) putRelayCopy(b *storage.Batch, relay peer.ID, cp relayCopy) error {
	v, err := json.Marshal(cp)
	if err != nil {
		return err
	}
	return b.Put(n.store.Namespace(discoveryNamespace), "r/"+relay.String(), v)
}

// startOver begins a start over of the copy of relay's directory, as the
// relay asks: the relay's fresh listing goes into a new generation, and
// the copy stays, for lookups, until the listing's last page replaces it
// (writePage). A start over already under way is dropped, and every stale
// generation deleted first, so the copy's generations hold at most twice
// its caps.
func (n *Node) startOver(ctx context.Context, relay peer.ID, cp relayCopy) (relayCopy, error) {
	if cp.Staged != nil {
		// Marked stale before any of its entries is deleted: a state
		// never names a generation that lost entries.
		cp.Stale = append(slices.Clone(cp.Stale), cp.Staged.Gen)
		cp.Staged = nil
		if err := n.commitRelayCopy(ctx, n.store.NewBatch(), relay, cp); err != nil {
			return cp, err
		}
	}
	if err := n.dropStale(ctx, relay, &cp); err != nil {
		return cp, err
	}
	cp.Staged = &copyGen{Gen: cp.nextGen(), Counted: true}
	return cp, nil
}

// dropStale deletes the entries of the stale generations of relay's copy,
// and forgets each generation once it holds none.
func (n *Node) dropStale(ctx context.Context, relay peer.ID, cp *relayCopy) error {
	for len(cp.Stale) > 0 {
		if err := n.dropGen(ctx, relay, cp.Stale[0]); err != nil {
			return err
		}
		next := *cp
		next.Stale = slices.Clone(cp.Stale[1:])
		if len(next.Stale) == 0 {
			next.Stale = nil
		}
		if err := n.commitRelayCopy(ctx, n.store.NewBatch(), relay, next); err != nil {
			return err
		}
		*cp = next
	}
	return nil
}

// countGen counts the entries of generation gen of the copy of relay's
// directory and their bytes.
func (n *Node) countGen(ctx context.Context, relay peer.ID, gen uint64) (entries int, bytes int64, err error) {
	err = n.store.Namespace(discoveryNamespace).List(ctx, storage.ListOptions{Prefix: genPrefix(relay, gen)}, func(_ string, v []byte) error {
		entries++
		bytes += int64(len(v))
		return nil
	})
	return entries, bytes, err
}

// dropGen deletes the entries of generation gen of the copy of relay's
// directory, in transactions of dirTxnOps.
func (n *Node) dropGen(ctx context.Context, relay peer.ID, gen uint64) error {
	ns := n.store.Namespace(discoveryNamespace)
	for {
		var keys []string
		err := ns.List(ctx, storage.ListOptions{Prefix: genPrefix(relay, gen), Limit: dirTxnOps}, func(k string, _ []byte) error {
			keys = append(keys, k)
			return nil
		})
		if err != nil || len(keys) == 0 {
			return err
		}
		b := n.store.NewBatch()
		for _, k := range keys {
			if err := b.Delete(ns, k); err != nil {
				return err
			}
		}
		if err := b.CommitUnsynced(ctx); err != nil {
			return err
		}
	}
}

// AddContactRecord adds a contact from a signed contact record (from
// DiscoverContacts), as an invite without a prekey bundle would.
func (n *Node) AddContactRecord(ctx context.Context, rec contact.Signed) (*Contact, error) {
	rec, err := contact.Parse(rec.Raw) // verify: the record may come from anywhere
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadInvite, err)
	}
	book, err := n.contactBook()
	if err != nil {
		return nil, err
	}
	e, err := book.add(ctx, contact.Invite{Record: rec})
	if err != nil {
		return nil, err
	}
	c := e.view()
	return &c, nil
}
