package node

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"log/slog"
	"maps"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"

	"github.com/kinmesh/kinmesh/protocols/contact"
	"github.com/kinmesh/kinmesh/protocols/contact/contacttest"
	"github.com/kinmesh/kinmesh/protocols/discovery"
	"github.com/kinmesh/kinmesh/protocols/discovery/pb"
	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/storage"
)

// relaxedRelay lifts a relay's rate limits, for tests about something
// else.
var relaxedRelay = []discovery.Option{
	discovery.WithSendRate(1<<20, 1<<20), discovery.WithNumberSendRate(1<<20, 1<<20),
	discovery.WithGuessRate(1<<20, 1<<20), discovery.WithEvaluationRate(1<<20, 1<<20),
	discovery.WithListRate(1<<20, 1<<20), discovery.WithAccountOpRate(1<<20, 1<<20),
	discovery.WithSMSBudget(1<<20, 1<<20),
}

// enroller verifies numbers on a relay for accounts of its own (other
// people's phones), with a discovery client on a host of its own.
type enroller struct {
	r    *discoveryRelay
	c    *discovery.Client
	accs map[string]*e2ee.Identity
	recs map[string]contact.Signed
}

func newEnroller(t *testing.T, r *discoveryRelay) *enroller {
	t.Helper()
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableMetrics())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Close() })
	h.Peerstore().AddAddrs(r.h.ID(), r.h.Addrs(), peerstore.PermanentAddrTTL)
	c, err := discovery.NewClient(h, discovery.WithClientLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	return &enroller{r: r, c: c, accs: map[string]*e2ee.Identity{}, recs: map[string]contact.Signed{}}
}

// verify verifies number for the account called name (created the first
// time), which replaces the account's number before, if any.
func (e *enroller) verify(t *testing.T, name, number string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	id, ok := e.accs[name]
	if !ok {
		var rec contact.Signed
		id, rec = contacttest.Account(t, name)
		e.accs[name], e.recs[name] = id, rec
	}
	num, err := discovery.ParseNumber(number)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.RequestCode(ctx, e.r.h.ID(), id, num); err != nil {
		t.Fatalf("RequestCode for %s: %v", name, err)
	}
	code, ok := e.r.gw.LastCode(num)
	if !ok {
		t.Fatalf("no code sent to %s", name)
	}
	if st, err := e.c.VerifyCode(ctx, e.r.h.ID(), id, code, e.recs[name]); err != nil || !st.Verified {
		t.Fatalf("VerifyCode for %s: %+v, %v", name, st, err)
	}
}

// unlink removes the number of the account called name.
func (e *enroller) unlink(t *testing.T, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if st, err := e.c.Unenrol(ctx, e.r.h.ID(), e.accs[name]); err != nil || st.Removed != 1 {
		t.Fatalf("Unenrol %s: %+v, %v", name, st, err)
	}
}

// forgetDeletions moves the relay's clock past the time it remembers
// deletions: its next listing forgets them, and a device whose copy
// predates one must start over.
func forgetDeletions(clk *phoneClock) {
	clk.Advance(discovery.DefaultTombstoneTTL + 2*time.Hour)
}

// lookupStored looks numbers up in n's stored copy of relay's directory,
// without syncing it, with the outputs an earlier discovery cached; it
// returns the name on the record each number finds.
func lookupStored(t *testing.T, n *Node, relay peer.ID, numbers []string) map[string]string {
	t.Helper()
	ctx := context.Background()
	_, _, cp := copyOf(t, n, relay)
	pk, err := discovery.ParsePublicKey(cp.Key)
	if err != nil {
		t.Fatal(err)
	}
	ns := n.store.Namespace(discoveryNamespace)
	outs := map[discovery.Number]discovery.Output{}
	for _, s := range numbers {
		num, err := discovery.ParseNumber(s)
		if err != nil {
			t.Fatal(err)
		}
		b, err := ns.Get(ctx, n.outputKey(relay, pk, num))
		if err != nil || len(b) != discovery.OutputSize {
			t.Fatalf("no cached output for %s: %v", s, err)
		}
		outs[num] = discovery.Output(b)
	}
	found := map[discovery.Number]contact.Signed{}
	if err := n.lookupCopy(ctx, relay, outs, found); err != nil {
		t.Fatal(err)
	}
	names := map[string]string{}
	for num, rec := range found {
		names[string(num)] = rec.Name
	}
	return names
}

// storedEntries returns the entries of the copy of relay's directory that
// n's lookups use (id hex → sealed record), and how many entries n
// stores for relay in all, in every generation.
func storedEntries(t *testing.T, n *Node, relay peer.ID) (live map[string][]byte, all int) {
	t.Helper()
	_, _, cp := copyOf(t, n, relay)
	live = map[string][]byte{}
	ns := n.store.Namespace(discoveryNamespace)
	for _, prefix := range []string{"d/" + relay.String() + "/", "g/" + relay.String() + "/"} {
		err := ns.List(context.Background(), storage.ListOptions{Prefix: prefix}, func(k string, v []byte) error {
			all++
			if id, ok := strings.CutPrefix(k, genPrefix(relay, cp.Gen)); ok {
				live[id] = v
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return live, all
}

// wantRelayDirectory checks that n's copy of r's directory is r's
// directory, entry for entry, and that n stores nothing else for r.
func wantRelayDirectory(t *testing.T, n *Node, e *enroller) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	relay := e.r.h.ID()
	dir := discovery.NewDirectory(discovery.PublicKey{})
	if _, err := e.c.Sync(ctx, relay, dir); err != nil {
		t.Fatal(err)
	}
	live, all := storedEntries(t, n, relay)
	if len(live) != dir.Len() || all != len(live) {
		t.Fatalf("the device's copy holds %d entries (%d stored in all), the relay's directory %d", len(live), all, dir.Len())
	}
	for idHex, box := range live {
		var id discovery.EntryID
		if b, err := hex.DecodeString(idHex); err != nil || copy(id[:], b) != len(id) {
			t.Fatalf("entry key %q", idHex)
		}
		if want, ok := dir.Box(id); !ok || !bytes.Equal(box, want) {
			t.Fatalf("entry %s differs from the relay's (there: %v)", idHex, ok)
		}
	}
	if _, _, cp := copyOf(t, n, relay); cp.Staged != nil || len(cp.Stale) != 0 {
		t.Fatalf("copy state %+v, want no start over under way and nothing stale", cp)
	}
}

// startOverSetup is a relay with a looker's device (lia) whose stored copy
// of the relay's directory is out of date by more than the relay
// remembers: the next sync starts over. The relay's fresh listing has 6
// entries, two pages of 4 and 2 (listLimit 4), and its first page ends
// below the relay's floor (the newest deletion it forgot): the listing
// began after that deletion, so it goes on (its base is above the floor).
type startOverSetup struct {
	clk  *phoneClock
	r    *discoveryRelay
	e    *enroller
	lia  *phoneNode
	book []string
	// before is what lia's copy held (id hex → record) when it was last
	// brought up to date.
	before map[string][]byte
}

func newStartOverSetup(t *testing.T) *startOverSetup {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s := &startOverSetup{clk: &phoneClock{t: time.Now().Truncate(time.Second)}}
	s.r = startDiscoveryRelay(t, s.clk, relaxedRelay...)
	s.e = newEnroller(t, s.r)
	// lia's device runs on a clock of its own: only the relay's moves.
	s.lia = startPhoneNode(t, &phoneClock{t: time.Now()}, s.r, "lia")
	s.lia.verifyPhone(t, s.r, "+351910000000")
	s.e.verify(t, "ana", "+351910000001")
	s.e.verify(t, "bea", "+351910000002")
	s.e.verify(t, "caio", "+351910000003")
	s.e.verify(t, "duda", "+351910000004")
	s.book = []string{"+351910000001", "+351910000002", "+351910000003", "+351910000004",
		"+351910000005", "+351910000006", "+351910000007", "+351910000008", "+351910000009"}
	res, err := s.lia.DiscoverContacts(ctx, s.book)
	if err != nil {
		t.Fatalf("DiscoverContacts: %v", err)
	}
	if got := matchNames(res); !maps.Equal(got, s.oldNames()) {
		t.Fatalf("first discovery found %v, want %v", got, s.oldNames())
	}
	s.before, _ = storedEntries(t, s.lia.Node, s.r.h.ID())
	if len(s.before) != 5 {
		t.Fatalf("the first copy holds %d entries, want 5", len(s.before))
	}
	// The relay's directory changes: eva and fabio join (changes 6, 7),
	// ana leaves (8), bea changes numbers (9: her old entry's deletion,
	// 10); and the relay forgets the deletions (floor 9). Its fresh
	// listing is lia, caio, duda, eva | fabio, bea.
	s.e.verify(t, "eva", "+351910000006")
	s.e.verify(t, "fabio", "+351910000007")
	s.e.unlink(t, "ana")
	s.e.verify(t, "bea", "+351910000005")
	forgetDeletions(s.clk)
	return s
}

// oldNames are the matches of the copy before the start over, newNames
// those of the relay's fresh listing.
func (s *startOverSetup) oldNames() map[string]string {
	return map[string]string{"+351910000001": "ana", "+351910000002": "bea", "+351910000003": "caio", "+351910000004": "duda"}
}

func (s *startOverSetup) newNames() map[string]string {
	return map[string]string{"+351910000003": "caio", "+351910000004": "duda", "+351910000005": "bea", "+351910000006": "eva", "+351910000007": "fabio"}
}

func matchNames(res *DiscoveryResult) map[string]string {
	out := map[string]string{}
	for _, m := range res.Matches {
		out[m.Number] = m.Contact.Name
	}
	return out
}

// interruptedSync runs a sync of n's copy in pages of 4 entries that
// stops after pages pages (the page cap), with ErrDirectoryTooLarge.
func (s *startOverSetup) interruptedSync(t *testing.T, n *Node, pages int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, c, err := n.phoneAccount()
	if err != nil {
		t.Fatal(err)
	}
	caps := defaultDirectoryCaps()
	caps.listLimit, caps.pages = 4, pages
	if _, err := n.syncDirectory(ctx, c, s.r.h.ID(), caps); !errors.Is(err, ErrDirectoryTooLarge) {
		t.Fatalf("interrupted sync: %v, want the page cap's ErrDirectoryTooLarge", err)
	}
}

// wantOldCopy checks that n's lookups answer from the copy before the
// start over, entry for entry, while a start over of staged entries is
// under way.
func (s *startOverSetup) wantOldCopy(t *testing.T, n *Node, staged int) {
	t.Helper()
	relay := s.r.h.ID()
	if got := lookupStored(t, n, relay, s.book); !maps.Equal(got, s.oldNames()) {
		t.Fatalf("lookups during a start over find %v, want the copy before it: %v", got, s.oldNames())
	}
	live, all := storedEntries(t, n, relay)
	if !maps.EqualFunc(live, s.before, bytes.Equal) {
		t.Fatalf("the copy lookups use holds %d entries, not the %d it held before the start over", len(live), len(s.before))
	}
	_, _, cp := copyOf(t, n, relay)
	if cp.Staged == nil || cp.Staged.Entries != staged || all != len(live)+staged {
		t.Fatalf("copy state %+v, %d entries stored in all; want a start over under way with %d entries, and nothing else", cp, all, staged)
	}
}

// TestDirectoryStartOverIsStaged: a relay asks the device to start its
// copy over, and the sync is cut short (the page cap) with the fresh
// listing partly written. Lookups still answer from the copy before,
// entry for entry, and the listing written so far is kept apart; the
// next complete sync switches to the fresh listing: the entries the relay
// dropped no longer answer, and nothing of the old copy is left.
func TestDirectoryStartOverIsStaged(t *testing.T) {
	s := newStartOverSetup(t)
	s.interruptedSync(t, s.lia.Node, 1)
	s.wantOldCopy(t, s.lia.Node, 4)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := s.lia.DiscoverContacts(ctx, s.book)
	if err != nil {
		t.Fatalf("DiscoverContacts: %v", err)
	}
	if got := matchNames(res); !maps.Equal(got, s.newNames()) {
		t.Fatalf("discovery after the start over found %v, want %v", got, s.newNames())
	}
	if got := lookupStored(t, s.lia.Node, s.r.h.ID(), s.book); !maps.Equal(got, s.newNames()) {
		t.Fatalf("lookups after the start over find %v, want %v", got, s.newNames())
	}
	wantRelayDirectory(t, s.lia.Node, s.e)
}

// TestDirectoryStartOverAcrossRestart: the same across device restarts.
// A start over cut short is still under way after a restart, lookups
// answer from the copy before it, and the next sync goes on with it (one
// page is left, and a sync of one page completes it: the listing's cursor
// is below the relay's floor, but its stored base is above). A second
// start over cut short, and then asked for again after a restart (an
// entry it holds left, and the relay forgot that), is dropped, its
// entries deleted, and listed anew.
func TestDirectoryStartOverAcrossRestart(t *testing.T) {
	s := newStartOverSetup(t)
	s.interruptedSync(t, s.lia.Node, 1)
	n := restartNode(t, s.lia.Node)
	s.wantOldCopy(t, n, 4)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	_, c, err := n.phoneAccount()
	if err != nil {
		t.Fatal(err)
	}
	caps := defaultDirectoryCaps()
	caps.listLimit, caps.pages = 4, 1
	if _, err := n.syncDirectory(ctx, c, s.r.h.ID(), caps); err != nil {
		t.Fatalf("the sync after the restart, one page: %v (want the start over resumed and completed)", err)
	}
	if got := lookupStored(t, n, s.r.h.ID(), s.book); !maps.Equal(got, s.newNames()) {
		t.Fatalf("lookups after the start over find %v, want %v", got, s.newNames())
	}
	wantRelayDirectory(t, n, s.e)

	// A second start over, cut short; the device restarts, and the relay
	// asks to start over again before it is done.
	s.before, _ = storedEntries(t, n, s.r.h.ID())
	s.e.unlink(t, "caio")
	s.e.verify(t, "gabi", "+351910000008")
	forgetDeletions(s.clk)
	want := s.newNames()
	s.interruptedSync(t, n, 1)
	n = restartNode(t, n)
	if got := lookupStored(t, n, s.r.h.ID(), s.book); !maps.Equal(got, want) {
		t.Fatalf("lookups during the second start over find %v, want %v", got, want)
	}
	if live, _ := storedEntries(t, n, s.r.h.ID()); !maps.EqualFunc(live, s.before, bytes.Equal) {
		t.Fatal("the copy lookups use changed during the second start over")
	}
	s.e.unlink(t, "duda")
	s.e.verify(t, "hugo", "+351910000009")
	forgetDeletions(s.clk)
	_, c, err = n.phoneAccount()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.syncDirectory(ctx, c, s.r.h.ID(), defaultDirectoryCaps()); err != nil {
		t.Fatalf("sync: %v", err)
	}
	want = map[string]string{"+351910000005": "bea", "+351910000006": "eva", "+351910000007": "fabio", "+351910000008": "gabi", "+351910000009": "hugo"}
	if got := lookupStored(t, n, s.r.h.ID(), s.book); !maps.Equal(got, want) {
		t.Fatalf("lookups after the third start over find %v, want %v", got, want)
	}
	wantRelayDirectory(t, n, s.e)
}

// restartNode closes n and starts a node on its data directory again.
func restartNode(t *testing.T, n *Node) *Node {
	t.Helper()
	cfg := n.cfg
	if err := n.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	return startNode(t, Config{DataDir: cfg.DataDir, Bootstrap: cfg.Bootstrap, Now: cfg.Now})
}

// TestDirectoryDropCutShortBeforeStaging: a store from before start overs
// were staged may hold a drop cut short: a copy state with nothing listed
// (cursor 0, not counted) and entries of the old copy left. The next sync
// lists the relay's directory beside them, never with them, and deletes
// them.
func TestDirectoryDropCutShortBeforeStaging(t *testing.T) {
	n := startNode(t, Config{})
	r := startFakeDirectory(t, n, func(pk []byte, since uint64) *pb.Page {
		return &pb.Page{PublicKey: pk, Version: 5, Next: 5, Entries: fakeEntries(since, 5, func(seq uint64) uint64 { return seq }, 300)}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b := n.store.NewBatch()
	ns := n.store.Namespace(discoveryNamespace)
	for i := range 3 {
		var id discovery.EntryID
		id[0] = 0xee
		id[1] = byte(i)
		if err := b.Put(ns, "d/"+r.id.String()+"/"+hex.EncodeToString(id[:]), make([]byte, 300)); err != nil {
			t.Fatal(err)
		}
	}
	if err := n.putRelayCopy(b, r.id, relayCopy{Key: r.pk}); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	c, err := discovery.NewClient(n.host, discovery.WithClientLogger(n.log))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.syncDirectory(ctx, c, r.id, defaultDirectoryCaps()); err != nil {
		t.Fatal(err)
	}
	entries, bytes, cp := copyOf(t, n, r.id)
	if _, all := storedEntries(t, n, r.id); entries != 5 || bytes != 5*300 || all != 5 || cp.Entries != 5 || len(cp.Stale) != 0 {
		t.Fatalf("the copy holds %d entries, %d bytes, %d stored in all, state %+v; want the relay's 5 and nothing else", entries, bytes, all, cp)
	}
}

// TestDirectoryFirstSyncAfterForgottenDeletions: a new device's first
// sync of a relay that has forgotten deletions, in pages whose boundaries
// are below the relay's floor, completes without starting over — across
// a restart too: the listing's base is stored with its cursor. A copy
// state stored before bases were kept (none) starts over, as it did.
func TestDirectoryFirstSyncAfterForgottenDeletions(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	clk := &phoneClock{t: time.Now().Truncate(time.Second)}
	r := startDiscoveryRelay(t, clk, relaxedRelay...)
	e := newEnroller(t, r)
	names := []string{"ana", "bea", "caio", "duda", "eva", "fabio", "gabi", "hugo", "ines", "joao"}
	for i, name := range names { // changes 1–10
		e.verify(t, name, "+35191100000"+strconv.Itoa(i))
	}
	e.unlink(t, "ana")                   // 11
	e.unlink(t, "bea")                   // 12
	e.unlink(t, "eva")                   // 13
	e.verify(t, "caio", "+351911000099") // 14: caio's old entry deleted, 15: the new one
	forgetDeletions(clk)
	// The relay's listing: duda, fabio, gabi | hugo, ines, joao | caio;
	// its floor will be 14, its version 15.
	caps := defaultDirectoryCaps()
	caps.listLimit = 3
	sync := func(n *Node, pages int) error {
		t.Helper()
		_, c, err := n.phoneAccount()
		if err != nil {
			t.Fatal(err)
		}
		caps.pages = pages
		_, err = n.syncDirectory(ctx, c, r.h.ID(), caps)
		return err
	}

	// In one go: three pages, no more.
	zoe := startPhoneNode(t, &phoneClock{t: time.Now()}, r, "zoe")
	if err := sync(zoe.Node, 3); err != nil {
		t.Fatalf("first sync in 3 pages: %v (want it complete, without starting over)", err)
	}
	wantRelayDirectory(t, zoe.Node, e)
	if live, _ := storedEntries(t, zoe.Node, r.h.ID()); len(live) != 7 {
		t.Fatalf("the copy holds %d entries, want 7", len(live))
	}

	// Cut short after a page, and the device restarts: the listing goes
	// on from its second page.
	lia := startPhoneNode(t, &phoneClock{t: time.Now()}, r, "lia")
	if err := sync(lia.Node, 1); !errors.Is(err, ErrDirectoryTooLarge) {
		t.Fatalf("first sync of one page: %v, want the page cap's ErrDirectoryTooLarge", err)
	}
	if _, _, cp := copyOf(t, lia.Node, r.h.ID()); cp.Cursor != 7 || cp.Base != 15 || cp.Staged != nil {
		t.Fatalf("copy state after one page %+v, want cursor 7 (below the floor, 14), base 15, no start over", cp)
	}
	n := restartNode(t, lia.Node)
	if err := sync(n, 2); err != nil {
		t.Fatalf("the rest of the first sync, after a restart, in 2 pages: %v (want it complete, without starting over)", err)
	}
	wantRelayDirectory(t, n, e)

	// A copy state without a base, as stored before bases were: the
	// relay asks it to start over.
	mia := startPhoneNode(t, &phoneClock{t: time.Now()}, r, "mia")
	if err := sync(mia.Node, 1); !errors.Is(err, ErrDirectoryTooLarge) {
		t.Fatalf("first sync of one page: %v", err)
	}
	_, _, cp := copyOf(t, mia.Node, r.h.ID())
	cp.Base = 0
	b := mia.store.NewBatch()
	if err := mia.putRelayCopy(b, r.h.ID(), cp); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := sync(mia.Node, 1); !errors.Is(err, ErrDirectoryTooLarge) {
		t.Fatalf("sync of one page: %v", err)
	}
	if _, _, cp := copyOf(t, mia.Node, r.h.ID()); cp.Staged == nil || cp.Staged.Base != 15 {
		t.Fatalf("copy state %+v, want a start over under way, base 15", cp)
	}
	if err := sync(mia.Node, 3); err != nil {
		t.Fatal(err)
	}
	wantRelayDirectory(t, mia.Node, e)
}

// TestDirectoryFirstPageCutShort: a first sync whose first page was cut
// short between transactions keeps the entries it wrote, with the
// listing's base. If an entry it wrote leaves the relay, and the relay
// forgets that before the next sync, the relay asks the next sync to
// start over (the entry never comes back to delete it); a copy without
// a base would keep it.
func TestDirectoryFirstPageCutShort(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	clk := &phoneClock{t: time.Now().Truncate(time.Second)}
	r := startDiscoveryRelay(t, clk, relaxedRelay...)
	e := newEnroller(t, r)
	for i, name := range []string{"ana", "bea", "caio", "duda"} { // changes 1–4
		e.verify(t, name, "+35191200000"+strconv.Itoa(i))
	}
	// The first page as the relay sends it now; ana's entry is change 1.
	p, err := e.c.List(ctx, r.h.ID(), discovery.Listing{}, 4)
	if err != nil || len(p.Entries) != 4 || p.Entries[0].Seq != 1 || p.Version != 4 {
		t.Fatalf("first page: %d entries, version %d, %v; want 4 from change 1, version 4", len(p.Entries), p.Version, err)
	}
	ana := p.Entries[0]
	// Two devices whose first sync wrote ana's entry, in the page's first
	// transaction, before it was cut short: one with the listing's base
	// (as writePage stores it), one without.
	lia := startPhoneNode(t, &phoneClock{t: time.Now()}, r, "lia")
	mia := startPhoneNode(t, &phoneClock{t: time.Now()}, r, "mia")
	for _, d := range []struct {
		n    *Node
		base uint64
	}{{lia.Node, p.Version}, {mia.Node, 0}} {
		b := d.n.store.NewBatch()
		if err := b.Put(d.n.store.Namespace(discoveryNamespace), entryKey(r.h.ID(), 0, ana.ID), ana.Box); err != nil {
			t.Fatal(err)
		}
		cp := relayCopy{Key: p.PublicKey.Bytes(), copyGen: copyGen{Base: d.base, Entries: 1, Bytes: int64(len(ana.Box)), Counted: true}}
		if err := d.n.putRelayCopy(b, r.h.ID(), cp); err != nil {
			t.Fatal(err)
		}
		if err := b.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	}
	e.unlink(t, "ana") // 5
	e.verify(t, "eva", "+351912000009")
	forgetDeletions(clk)

	_, c, err := lia.phoneAccount()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lia.syncDirectory(ctx, c, r.h.ID(), defaultDirectoryCaps()); err != nil {
		t.Fatal(err)
	}
	wantRelayDirectory(t, lia.Node, e)

	_, c, err = mia.phoneAccount()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mia.syncDirectory(ctx, c, r.h.ID(), defaultDirectoryCaps()); err != nil {
		t.Fatal(err)
	}
	if live, _ := storedEntries(t, mia.Node, r.h.ID()); len(live) != 5 {
		t.Fatalf("a copy without a base holds %d entries, want the relay's 4 and ana's, left over", len(live))
	}
}
