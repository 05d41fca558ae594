package node

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"

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
//	r/<relay peer id>            JSON: the relay's OPRF key and the sync cursor
//	d/<relay peer id>/<id hex>   sealed record of one directory entry
//	y/<Opaque(relay, key, number)>  the number's OPRF output under that key

// MaxDiscoverNumbers caps the numbers of one DiscoverContacts call.
const MaxDiscoverNumbers = 5000

// ErrTooManyNumbers: more numbers than MaxDiscoverNumbers in one call.
var ErrTooManyNumbers = fmt.Errorf("node: at most %d numbers per discovery request; split the address book", MaxDiscoverNumbers)

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

// relayCopy is what r/<relay> holds.
type relayCopy struct {
	Key    []byte `json:"key"`
	Cursor uint64 `json:"cursor"`
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
		if discovery.RetryAfter(err) > 0 || errors.Is(err, discovery.ErrBadProof) || errors.Is(err, discovery.ErrKeyChanged) {
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
	synced, err := n.syncDirectory(ctx, c, relay)
	if err != nil {
		return err
	}
	if !synced.Equal(pk) {
		return fmt.Errorf("discovery: relay %s: %w", relay, discovery.ErrKeyChanged)
	}
	for num, y := range outs {
		id := y.ID()
		box, err := ns.Get(ctx, entryKey(relay, id))
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
	p, err := c.List(ctx, relay, 0, 0)
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

func entryKey(relay peer.ID, id discovery.EntryID) string {
	return "d/" + relay.String() + "/" + hex.EncodeToString(id[:])
}

// syncDirectory brings the copy of relay's directory up to date and
// returns the relay's OPRF key (pinned at the first sync:
// discovery.ErrKeyChanged if the relay shows another).
func (n *Node) syncDirectory(ctx context.Context, c *discovery.Client, relay peer.ID) (discovery.PublicKey, error) {
	ns := n.store.Namespace(discoveryNamespace)
	metaKey := "r/" + relay.String()
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
	for {
		p, err := c.List(ctx, relay, cp.Cursor, discovery.MaxPageEntries)
		if err != nil {
			return pinned, err
		}
		if !pinned.IsZero() && !pinned.Equal(p.PublicKey) {
			return pinned, fmt.Errorf("discovery: relay %s: %w", relay, discovery.ErrKeyChanged)
		}
		pinned = p.PublicKey
		if p.StartOver {
			if err := n.dropCopy(ctx, relay); err != nil {
				return pinned, err
			}
		}
		batch := n.store.NewBatch()
		for _, e := range p.Entries {
			if e.Deleted() {
				err = batch.Delete(ns, entryKey(relay, e.ID))
			} else {
				err = batch.Put(ns, entryKey(relay, e.ID), e.Box)
			}
			if err != nil {
				return pinned, err
			}
		}
		cp = relayCopy{Key: pinned.Bytes(), Cursor: p.Next}
		v, err := json.Marshal(cp)
		if err != nil {
			return pinned, err
		}
		if err := batch.Put(ns, metaKey, v); err != nil {
			return pinned, err
		}
		if err := batch.CommitUnsynced(ctx); err != nil {
			return pinned, err
		}
		if !p.More {
			return pinned, nil
		}
	}
}

// dropCopy deletes the copy of relay's directory entries.
func (n *Node) dropCopy(ctx context.Context, relay peer.ID) error {
	ns := n.store.Namespace(discoveryNamespace)
	for {
		var keys []string
		err := ns.List(ctx, storage.ListOptions{Prefix: "d/" + relay.String() + "/", Limit: 1000}, func(k string, _ []byte) error {
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
