package testnet

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kinmesh/kinmesh/node"
	"github.com/kinmesh/kinmesh/protocols/blobs"
	"github.com/kinmesh/kinmesh/protocols/message"
	"github.com/kinmesh/kinmesh/protocols/moments"
)

// moveHome posts a moment with a photo from a's account (on all three
// home relays), then takes home relay dead down for over a day (on clk)
// so that the node replaces it with the fourth relay.
func moveHome(ctx context.Context, t *testing.T, n *Network, clk *clock, dead *Relay) *moments.Moment {
	t.Helper()
	a := n.Devices[0]
	acct, _ := a.Node().Account()
	homes := strings.Join(acct.HomeRelays, " ")
	spare := n.Relays[3]
	if strings.Contains(homes, spare.AddrInfo().ID.String()) || !strings.Contains(homes, dead.AddrInfo().ID.String()) {
		t.Fatalf("homes %v: want relays 1-3, with %s", acct.HomeRelays, dead.Name)
	}
	m, err := a.Node().PostMoment(ctx, "before the move", []moments.MediaInput{{Type: "image/jpeg", Data: momentPhoto(100<<10, "MOVE-MARKER")}})
	if err != nil {
		t.Fatal(err)
	}
	waitCond(ctx, t, "the three homes keep the moment", func() bool {
		x, err := a.Node().Moment(ctx, m.ID)
		return err == nil && x.Relays >= 3
	})
	if _, items, _ := dead.Relay().Moments().Stats(); items == 0 || dead.Relay().Blobs().Usage() == (blobs.Usage{}) {
		t.Fatalf("%s keeps no moment or photo before the move", dead.Name)
	}
	if err := dead.Stop(); err != nil {
		t.Fatal(err)
	}
	waitFor(ctx, t, a.Node(), dead.Name+" seen down and a reservation on "+spare.Name, func(st node.Status) bool {
		return !relayState(st, dead.AddrInfo().ID.String()).DownSince.IsZero() &&
			relayState(st, spare.AddrInfo().ID.String()).Reserved
	})
	clk.Advance(25 * time.Hour)
	if moved, err := a.Node().CheckHomes(ctx); err != nil || !moved {
		t.Fatalf("CheckHomes after 25h = %v, %v; want a move", moved, err)
	}
	return m
}

// relayEmpty reports whether r holds no moments feed and no blob.
func relayEmpty(r *Relay) bool {
	feeds, items, bytes := r.Relay().Moments().Stats()
	return feeds == 0 && items == 0 && bytes == 0 && r.Relay().Blobs().Usage() == blobs.Usage{}
}

// relayBare reports whether r holds nothing of the account: no moments
// feed, blob, directory entry or backup.
func relayBare(r *Relay) bool {
	return relayEmpty(r) && r.Relay().Discovery().Entries() == 0 && r.Relay().Backup().Backups() == 0
}

// wantNothingLeft fails for every relay that still holds data of the
// deleted account.
func wantNothingLeft(t *testing.T, n *Network) {
	t.Helper()
	for _, r := range n.Relays {
		if !relayBare(r) {
			t.Errorf("%s still holds data of the deleted account", r.Name)
		}
	}
}

// moveNet starts four relays and one device with an account, on a clock
// the test moves forward, with a context that ends after timeout.
func moveNet(t *testing.T, timeout time.Duration) (context.Context, *Network, *clock) {
	t.Helper()
	clk := new(clock)
	n := startNet(t, Config{Relays: 4, Devices: 1, Now: clk.Now})
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	accounts(t, ctx, n)
	return ctx, n, clk
}

// linkPhone verifies number for the first device, turns recovery on and
// returns the relay holding the link and the backup: one of the homes,
// relays 1-3.
func linkPhone(ctx context.Context, t *testing.T, n *Network, number string) *Relay {
	t.Helper()
	ph, _ := enableRecovery(ctx, t, n, n.Devices[0], number)
	i := slices.IndexFunc(n.Relays, func(r *Relay) bool { return r.AddrInfo().ID.String() == ph.Relay })
	if i < 0 || i > 2 {
		t.Fatalf("phone relay %s: want one of the homes, relays 1-3", ph.Relay)
	}
	return n.Relays[i]
}

// wantLinkKept starts former, the relay a move replaced, again and waits
// until it is purged of the feed and the photo; the directory entry and
// the backup the account still uses there must stay.
func wantLinkKept(ctx context.Context, t *testing.T, former *Relay, what string) {
	t.Helper()
	if err := former.Start(ctx); err != nil {
		t.Fatal(err)
	}
	waitCond(ctx, t, what+" purged of the feed and the photo", func() bool { return relayEmpty(former) })
	if e, b := former.Relay().Discovery().Entries(), former.Relay().Backup().Backups(); e != 1 || b != 1 {
		t.Fatalf("%s (%s) holds %d directory entries and %d backups; want the account's, still in use", what, former.Name, e, b)
	}
}

// wantPurgedOnReturn starts former, a home relay a move replaced and the
// deletion left pending, again and waits until the first device's
// retries purge it of the feed and the photo.
func wantPurgedOnReturn(ctx context.Context, t *testing.T, n *Network, former *Relay) {
	t.Helper()
	a := n.Devices[0]
	if err := former.Start(ctx); err != nil {
		t.Fatal(err)
	}
	waitCond(ctx, t, "the purge of the former home confirmed", func() bool {
		p, err := a.Node().PendingPurges(ctx)
		return err == nil && len(p) == 0
	})
	if !relayEmpty(former) {
		feeds, items, _ := former.Relay().Moments().Stats()
		t.Fatalf("%s keeps %d feeds, %d frames, blobs %+v after the purge", former.Name, feeds, items, former.Relay().Blobs().Usage())
	}
}

// TestMovePurgesFormerHome: the home relay a move replaced is purged of
// the account's moments feed and media once it is back, while the phone
// link and the backup the account still uses there stay; deleting the
// account then purges those too.
func TestMovePurgesFormerHome(t *testing.T) {
	ctx, n, clk := moveNet(t, 120*time.Second)
	a := n.Devices[0]
	dead := linkPhone(ctx, t, n, "+351 91 555 0177")
	moveHome(ctx, t, n, clk, dead)
	wantLinkKept(ctx, t, dead, "the former home")
	res, err := a.Node().DeleteAccount(ctx)
	if err != nil || len(res.Pending) != 0 {
		t.Fatalf("deletion %+v, %v", res, err)
	}
	if !slices.ContainsFunc(res.Relays, func(p node.RelayPurge) bool {
		return strings.Contains(p.Relay, dead.AddrInfo().ID.String()) && p.Former && p.Confirmed
	}) {
		t.Fatalf("deletion reports %+v; want %s, the phone relay, as a former home that confirmed", res.Relays, dead.Name)
	}
	wantNothingLeft(t, n)
}

// TestDeletionReachesFormerHome: deleting the account purges a home
// relay a move replaced, which holds the moments feed and a photo: while
// it is down the deletion reports it pending (and former); once it is
// back the node's retries purge it.
func TestDeletionReachesFormerHome(t *testing.T) {
	ctx, n, clk := moveNet(t, 120*time.Second)
	a, dead := n.Devices[0], n.Relays[1]
	moveHome(ctx, t, n, clk, dead)
	res, err := a.Node().DeleteAccount(ctx)
	if err != nil {
		t.Fatal(err)
	}
	deadID := dead.AddrInfo().ID.String()
	if len(res.Pending) != 1 || !strings.Contains(res.Pending[0], deadID) || !slices.ContainsFunc(res.Relays, func(p node.RelayPurge) bool {
		return strings.Contains(p.Relay, deadID) && p.Former && !p.Confirmed && p.Error != ""
	}) {
		t.Fatalf("deletion %+v; want %s pending, reported as a former home", res, dead.Name)
	}
	for _, r := range n.Relays {
		if r != dead && !relayEmpty(r) {
			t.Errorf("%s still holds moments of the deleted account", r.Name)
		}
	}
	wantPurgedOnReturn(ctx, t, n, dead)
}

// TestRestoredDeviceReachesFormerHome: the backup carries the home relays
// a move left and has not purged yet, so a device restored from it knows
// them: deleting the account there reports the former home pending while
// it is down, and purges it of the moments feed, the photo, the prekeys
// and the mailbox once it is back.
func TestRestoredDeviceReachesFormerHome(t *testing.T) {
	ctx, n, clk := moveNet(t, 150*time.Second)
	a := n.Devices[0]
	const number = "+351 91 555 0178"
	ph, on := enableRecovery(ctx, t, n, a, number)
	// The home that dies is not the phone relay, which keeps the backup.
	i := slices.IndexFunc(n.Relays[:3], func(r *Relay) bool { return r.AddrInfo().ID.String() != ph.Relay })
	dead := n.Relays[i]
	deadID := dead.AddrInfo().ID.String()
	moveHome(ctx, t, n, clk, dead)
	if _, err := a.Node().BackupNow(ctx); err != nil {
		t.Fatal(err)
	}
	identity := accountSecrets(t, a)

	// The phone is lost; the account comes back on a new one.
	res := loseAndRestore(ctx, t, n, a, number, ph.Relay, on.Secret)
	if slices.ContainsFunc(res.Account.HomeRelays, func(h string) bool { return strings.Contains(h, deadID) }) {
		t.Fatalf("restored homes %v: want the homes after the move, without %s", res.Account.HomeRelays, dead.Name)
	}

	del, err := a.Node().DeleteAccount(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(del.Pending) != 1 || !strings.Contains(del.Pending[0], deadID) || !slices.ContainsFunc(del.Relays, func(p node.RelayPurge) bool {
		return strings.Contains(p.Relay, deadID) && p.Former && !p.Confirmed
	}) {
		t.Fatalf("deletion on the restored device %+v; want %s, the home the lost device left, pending and former", del, dead.Name)
	}
	wantPurgedOnReturn(ctx, t, n, dead)
	wantNothingLeft(t, n)
	for _, r := range n.Relays {
		for _, ns := range []string{"mailbox", "prekeys"} {
			scanNamespace(t, r, ns, identity)
		}
	}
}

// movePhoneRelay verifies number for the first device, turns recovery on
// and moves the account off the relay holding the link and the backup;
// the phone and recovery then show that the number needs verifying again.
// It returns the replaced relay, left stopped.
func movePhoneRelay(ctx context.Context, t *testing.T, n *Network, clk *clock, number string) *Relay {
	t.Helper()
	a := n.Devices[0]
	dead := linkPhone(ctx, t, n, number)
	moveHome(ctx, t, n, clk, dead)
	got, err := a.Node().Phone(ctx)
	if err != nil || !got.Verified || got.Relay != dead.AddrInfo().ID.String() || !got.NeedsReverification {
		t.Fatalf("phone after the move: %+v, %v; want verified on %s, needing reverification", got, err, dead.Name)
	}
	if rs, err := a.Node().Recovery(ctx); err != nil || !rs.PhoneNeedsReverification {
		t.Fatalf("recovery after the move: %+v, %v; want phone_needs_reverification", rs, err)
	}
	return dead
}

// verifyAgain verifies number again for the first device and returns the
// relay that now holds the link, once it holds the backup too: a home
// relay, not old.
func verifyAgain(ctx context.Context, t *testing.T, n *Network, number string, old *Relay) *Relay {
	t.Helper()
	a := n.Devices[0]
	again, err := n.VerifyPhone(ctx, a, number)
	if err != nil {
		t.Fatal(err)
	}
	acct, _ := a.Node().Account()
	if again.Relay == old.AddrInfo().ID.String() || again.NeedsReverification ||
		!slices.ContainsFunc(acct.HomeRelays, func(h string) bool { return strings.Contains(h, again.Relay) }) {
		t.Fatalf("phone verified again: %+v; want it on a home relay of %v, not %s", again, acct.HomeRelays, old.Name)
	}
	moved := n.Relays[slices.IndexFunc(n.Relays, func(r *Relay) bool { return r.AddrInfo().ID.String() == again.Relay })]
	waitCond(ctx, t, "the backup on the new phone relay", func() bool { return moved.Relay().Backup().Backups() == 1 })
	if e := moved.Relay().Discovery().Entries(); e != 1 {
		t.Fatalf("%s, the new phone relay, holds %d directory entries; want the account's", moved.Name, e)
	}
	if rs, err := a.Node().Recovery(ctx); err != nil || rs.PhoneNeedsReverification {
		t.Fatalf("recovery after verifying again: %+v, %v", rs, err)
	}
	return moved
}

// wantMovedOff waits until old holds nothing of the account, its link
// and backup included, and the recovery state lists the backup on moved
// only; then deleting the account leaves nothing anywhere.
func wantMovedOff(ctx context.Context, t *testing.T, n *Network, old, moved *Relay) {
	t.Helper()
	a := n.Devices[0]
	waitCond(ctx, t, "the former phone relay purged of everything, link and backup included", func() bool {
		return relayBare(old)
	})
	waitCond(ctx, t, "the backup listed on the new phone relay only", func() bool {
		rs, err := a.Node().Recovery(ctx)
		return err == nil && len(rs.Relays) == 1 && rs.Relays[0].Relay == moved.AddrInfo().ID.String()
	})
	if moved.Relay().Backup().Backups() != 1 || moved.Relay().Discovery().Entries() != 1 {
		t.Fatalf("%s lost the new link or backup", moved.Name)
	}
	res, err := a.Node().DeleteAccount(ctx)
	if err != nil || len(res.Pending) != 0 {
		t.Fatalf("deletion %+v, %v", res, err)
	}
	wantNothingLeft(t, n)
}

// TestMoveOffPhoneRelay: a move replaces the relay holding the phone link
// and the backup, which then stays down. The link can't follow without a
// new code, so the phone and recovery show that the number needs
// verifying again; once it is, the link and the backup are on a current
// home relay, and when the replaced relay comes back it is purged of its
// old copies too.
func TestMoveOffPhoneRelay(t *testing.T) {
	ctx, n, clk := moveNet(t, 150*time.Second)
	const number = "+351 91 555 0179"
	dead := movePhoneRelay(ctx, t, n, clk, number)
	moved := verifyAgain(ctx, t, n, number, dead)
	if err := dead.Start(ctx); err != nil {
		t.Fatal(err)
	}
	wantMovedOff(ctx, t, n, dead, moved)
}

// TestMoveOffPhoneRelayBack: as TestMoveOffPhoneRelay, but the replaced
// relay is back before the number is verified again. It is purged of all
// but the link and the backup, still in use; verifying again asks a
// current home for the code, not the old relay, and then the old link and
// backup go too.
func TestMoveOffPhoneRelayBack(t *testing.T) {
	ctx, n, clk := moveNet(t, 150*time.Second)
	const number = "+351 91 555 0180"
	old := movePhoneRelay(ctx, t, n, clk, number)
	wantLinkKept(ctx, t, old, "the former phone relay")
	if ph, err := n.Devices[0].Node().Phone(ctx); err != nil || !ph.NeedsReverification {
		t.Fatalf("phone with the old relay back: %+v, %v; want it still needing reverification", ph, err)
	}
	moved := verifyAgain(ctx, t, n, number, old)
	wantMovedOff(ctx, t, n, old, moved)
}

// TestPhoneEntryFollowsMove: a move replaces a home relay other than the
// phone relay, so the account's record names new home relays while the
// link stays where it is. The directory entry on the phone relay follows
// the record: someone who finds the account by number gets the new home
// relays, not the ones it had when the number was verified.
func TestPhoneEntryFollowsMove(t *testing.T) {
	clk := new(clock)
	n := startNet(t, Config{Relays: 4, Devices: 2, Now: clk.Now})
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	accounts(t, ctx, n)
	a, b := n.Devices[0], n.Devices[1]
	const number = "+351 91 555 0181"
	phone := linkPhone(ctx, t, n, number)
	var dead *Relay
	for _, r := range n.Relays[:3] {
		if r != phone {
			dead = r
		}
	}
	moveHome(ctx, t, n, clk, dead)
	acct, _ := a.Node().Account()
	if ph, err := a.Node().Phone(ctx); err != nil || ph.NeedsReverification {
		t.Fatalf("phone after moving off another relay: %+v, %v; want the link current", ph, err)
	}
	// b looks numbers up where its own number is verified: the first home
	// relay that is up, the same as a's.
	bp, err := n.VerifyPhone(ctx, b, "+351 91 555 0182")
	if err != nil {
		t.Fatal(err)
	}
	if bp.Relay != phone.AddrInfo().ID.String() {
		t.Fatalf("b's number verified on %s, a's on %s: b can't look a's up", bp.Relay, phone.Name)
	}
	spare, gone := n.Relays[3].AddrInfo().ID, dead.AddrInfo().ID
	var homes []string
	waitCond(ctx, t, "a's new home relays in the record found by number", func() bool {
		res, err := b.Node().DiscoverContacts(ctx, []string{number})
		if err != nil || len(res.Matches) != 1 {
			return false
		}
		homes = homes[:0]
		for _, r := range res.Matches[0].Record().Relays() {
			homes = append(homes, r.ID.String())
		}
		return slices.Contains(homes, spare.String()) && !slices.Contains(homes, gone.String())
	})
	if len(homes) != len(acct.HomeRelays) {
		t.Fatalf("the record found by number names %v; a's home relays are %v", homes, acct.HomeRelays)
	}
}

// TestMailOnFormerHomeArrives: mail that waits only on a home relay that a
// move then replaced (deposited while the account was offline and its other
// homes were down) reaches the account once that relay is back: the
// former-relay purge receives it before it empties the mailbox there.
func TestMailOnFormerHomeArrives(t *testing.T) {
	var clk clock
	n := startNet(t, Config{Relays: 4, Devices: 2, Now: clk.Now})
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	a, b := contactsPair(t, ctx, n)
	dead, spare, others := n.Relays[1], n.Relays[3], []*Relay{n.Relays[0], n.Relays[2]}
	acct, _ := a.Node().Account()
	if homes := strings.Join(acct.HomeRelays, " "); strings.Contains(homes, spare.AddrInfo().ID.String()) {
		t.Fatalf("homes %v: want relays 1-3", acct.HomeRelays)
	}

	// a is offline and its other homes are down: b's message waits on
	// relay-2 alone. b stops too, so that nothing brings it again.
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	aID, bID := a.AccountID(), b.AccountID()
	must(a.Stop())
	for _, r := range others {
		must(r.Stop())
	}
	const text = "waiting on relay-2 only"
	_, err := b.Node().Send(ctx, aID, text)
	must(err)
	waitCond(ctx, t, "b's message queued on one relay", func() bool {
		ms, err := b.Node().Messages(ctx, aID)
		return err == nil && slices.ContainsFunc(ms, func(m message.Message) bool {
			return m.Text == text && m.State == message.StateQueued && m.Queued == 1
		})
	})
	must(b.Stop())

	// relay-2 goes down, a comes back and moves to relay-4.
	must(dead.Stop())
	for _, r := range others {
		must(r.Start(ctx))
	}
	must(a.Start(ctx))
	waitFor(ctx, t, a.Node(), "relay-2 seen down, the other homes up and relay-4 up with a reservation", func(st node.Status) bool {
		up := func(r *Relay) bool { return relayState(st, r.AddrInfo().ID.String()).DownSince.IsZero() }
		return !up(dead) && up(others[0]) && up(others[1]) && up(spare) && relayState(st, spare.AddrInfo().ID.String()).Reserved
	})
	clk.Advance(25 * time.Hour)
	if moved, err := a.Node().CheckHomes(ctx); err != nil || !moved {
		t.Fatalf("CheckHomes after 25h = %v, %v; want a move", moved, err)
	}
	acct, _ = a.Node().Account()
	if homes := strings.Join(acct.HomeRelays, " "); strings.Contains(homes, dead.AddrInfo().ID.String()) || !strings.Contains(homes, spare.AddrInfo().ID.String()) {
		t.Fatalf("homes after the move %v: want relay-4 instead of relay-2", acct.HomeRelays)
	}

	// relay-2 is back: the purge of the former home brings the message
	// before it empties the mailbox there (without that drain the message
	// would be deleted unread and this wait would time out).
	must(dead.Start(ctx))
	waitCond(ctx, t, "the message that waited on relay-2", func() bool {
		ms, err := a.Node().Messages(ctx, bID)
		return err == nil && slices.ContainsFunc(ms, func(m message.Message) bool { return m.Text == text && m.Incoming })
	})
}
