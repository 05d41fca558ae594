package testnet

import (
	"context"
	"crypto/rand"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/kinmesh/kinmesh/node"
	"github.com/kinmesh/kinmesh/protocols/backup"
	"github.com/kinmesh/kinmesh/protocols/message"
)

// relayBackups returns how many backups the network's relays hold.
func relayBackups(n *Network) int {
	total := 0
	for _, r := range n.Relays {
		total += r.Relay().Backup().Backups()
	}
	return total
}

// wantNoAccount fails unless d holds no account and nothing of one.
func wantNoAccount(t *testing.T, d *Device, when string) {
	t.Helper()
	if _, err := d.Node().Account(); !errors.Is(err, node.ErrNoAccount) {
		t.Fatalf("%s: %s has an account (%v)", when, d.Name, err)
	}
	for _, ns := range []string{"account", "contacts", "blocks", "message", "phone", "recovery"} {
		if k := nsKeys(t, d.Node().Store(), ns); k != 0 {
			t.Fatalf("%s: %s's namespace %s holds %d keys", when, d.Name, ns, k)
		}
	}
}

// replacePhone loses d's phone and starts d again as a new, empty device
// on the same data dir, then waits until the network is ready.
func replacePhone(ctx context.Context, t *testing.T, n *Network, d *Device) {
	t.Helper()
	if err := d.Lose(); err != nil {
		t.Fatal(err)
	}
	if err := d.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := n.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestAccountRecovery: through real relays, an account with a verified
// number and recovery on loses its phone; a new device restores it from
// the number and the secret — same account, contacts back, mail flowing
// both ways. Wrong codes run into the attempt limit, a wrong secret is
// refused, and neither stores anything. Deleting the account purges the
// backup from the relay.
func TestAccountRecovery(t *testing.T) {
	n := startNet(t, Config{Relays: 2, Devices: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	a, b := contactsPair(t, ctx, n)
	const number = "+351 91 555 0101"
	if _, err := a.Node().EnableRecovery(ctx); !errors.Is(err, node.ErrRecoveryNeedsPhone) {
		t.Fatalf("recovery without a number: %v", err)
	}
	if _, err := n.VerifyPhone(ctx, a, number); err != nil {
		t.Fatal(err)
	}
	on, err := a.Node().EnableRecovery(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := relayBackups(n); got != 1 {
		t.Fatalf("relays hold %d backups, want 1", got)
	}
	before, _ := a.Node().Account()
	if _, err := a.Node().Send(ctx, b.AccountID(), "before"); err != nil {
		t.Fatal(err)
	}
	if _, err := WaitMessages(ctx, b, before.ID, func(ms []message.Message) bool { return HasText(ms, "before", "") }); err != nil {
		t.Fatal(err)
	}

	// Someone else tries the number: wrong codes until the relay stops
	// taking them; nothing is restored.
	thief, err := n.AddDevice(ctx, "thief")
	if err != nil {
		t.Fatal(err)
	}
	if err := n.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := thief.Node().StartRecovery(ctx, number, ""); err != nil {
		t.Fatal(err)
	}
	code, ok := n.PhoneCode(number)
	if !ok {
		t.Fatal("no code texted")
	}
	wrong := "000000"
	if code == wrong {
		wrong = "111111"
	}
	locked := false
	for i := 0; i < 2*5 && !locked; i++ {
		_, err := thief.Node().FinishRecovery(ctx, wrong, on.Secret)
		switch {
		case errors.Is(err, backup.ErrTooManyAttempts):
			locked = true
		case !errors.Is(err, backup.ErrWrongCode):
			t.Fatalf("wrong code %d: got %v, want ErrWrongCode", i+1, err)
		}
	}
	if !locked {
		t.Fatal("wrong codes never ran into the attempt limit")
	}
	if _, err := thief.Node().FinishRecovery(ctx, code, on.Secret); !errors.Is(err, node.ErrNoRecoveryPending) {
		t.Fatalf("the right code after the lockout: got %v, want ErrNoRecoveryPending", err)
	}
	wantNoAccount(t, thief, "after the attempt limit")

	// The phone is lost; a new one starts empty on the same data dir.
	oldPeer := a.Node().ID()
	replacePhone(ctx, t, n, a)
	if a.Node().ID() == oldPeer {
		t.Fatal("the new device has the lost one's peer id")
	}
	st, err := a.Node().StartRecovery(ctx, number, "")
	if err != nil {
		t.Fatal(err)
	}
	if code, ok = n.PhoneCode(st.Number); !ok {
		t.Fatal("no code texted")
	}
	other, err := backup.NewSecret(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Node().FinishRecovery(ctx, code, other.String()); !errors.Is(err, backup.ErrWrongSecret) {
		t.Fatalf("a wrong secret: got %v, want ErrWrongSecret", err)
	}
	wantNoAccount(t, a, "after a wrong secret")
	res, err := a.Node().FinishRecovery(ctx, "", on.Secret)
	if err != nil {
		t.Fatal(err)
	}
	if res.Account.ID != before.ID || res.Account.Name != before.Name || res.Contacts != 1 || res.Introduced != 1 {
		t.Fatalf("restored %+v (%d contacts, %d introduced), want %s %q with 1", res.Account, res.Contacts, res.Introduced, before.ID, before.Name)
	}
	if cs, err := a.Node().Contacts(); err != nil || len(cs) != 1 || cs[0].ID != b.AccountID() {
		t.Fatalf("contacts after the restore: %+v, %v", cs, err)
	}
	if ph, err := a.Node().Phone(ctx); err != nil || !ph.Verified {
		t.Fatalf("phone after the restore: %+v, %v", ph, err)
	}

	// Mail flows both ways on the new device.
	if _, err := a.Node().Send(ctx, b.AccountID(), "new phone"); err != nil {
		t.Fatal(err)
	}
	if _, err := WaitMessages(ctx, b, before.ID, func(ms []message.Message) bool { return HasText(ms, "new phone", "") }); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Node().Send(ctx, before.ID, "welcome back"); err != nil {
		t.Fatal(err)
	}
	if _, err := WaitMessages(ctx, a, b.AccountID(), func(ms []message.Message) bool { return HasText(ms, "welcome back", "") }); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Node().BackupNow(ctx); err != nil {
		t.Fatal(err)
	}
	if got := relayBackups(n); got != 1 {
		t.Fatalf("relays hold %d backups after the restore, want 1", got)
	}

	// Deleting the account purges the backup (and the rest) everywhere.
	identity := accountSecrets(t, a)
	del, err := a.Node().DeleteAccount(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(del.Pending) != 0 {
		t.Fatalf("purge pending on %v", del.Pending)
	}
	if got := relayBackups(n); got != 0 {
		t.Fatalf("relays hold %d backups after the deletion", got)
	}
	for _, r := range n.Relays {
		for _, ns := range []string{"backup", "mailbox", "prekeys", "discovery"} {
			scanNamespace(t, r, ns, identity)
		}
	}
	// The number no longer restores anything.
	fresh, err := n.AddDevice(ctx, "fresh")
	if err != nil {
		t.Fatal(err)
	}
	if err := n.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := fresh.Node().StartRecovery(ctx, number, ""); err == nil {
		if code, ok = n.PhoneCode(number); !ok {
			t.Fatal("no code texted")
		}
		if _, err := fresh.Node().FinishRecovery(ctx, code, on.Secret); err == nil {
			t.Fatal("a deleted account was restored")
		}
	}
	wantNoAccount(t, fresh, "after recovering a deleted account")
}

// TestRestoreAfterMoveTheBackupMissed: the account moves to another home
// relay and its phone is lost before the backup caught up with the move
// (the upkeep uploads it every few minutes). The new device restores
// from that older backup, finds the newer record the lost device put in
// the DHT, and signs one newer still, so contacts take it over the lost
// device's (a record of the same sequence number would not replace it);
// the move's new home, which the backup never named, is purged of the
// account's prekeys as a former home.
func TestRestoreAfterMoveTheBackupMissed(t *testing.T) {
	var clk clock
	n := startNet(t, Config{Relays: 4, Devices: 2, Now: clk.Now})
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	a, b := contactsPair(t, ctx, n)
	const number = "+351 91 555 0102"
	ph, on := enableRecovery(ctx, t, n, a, number)
	backedUp, _ := a.Node().Account()
	seq := recordSeq(ctx, t, a, a.AccountID())

	// Move off a home that isn't the phone relay.
	dead := n.Relays[1]
	if dead.AddrInfo().ID.String() == ph.Relay {
		dead = n.Relays[2]
	}
	spare := n.Relays[3]
	moveHome(ctx, t, n, &clk, dead)
	waitCond(ctx, t, "the moved record in the DHT", func() bool {
		rec, err := a.Node().LookupRecord(ctx, a.AccountID())
		return err == nil && rec.Seq > seq && slices.ContainsFunc(rec.Relays(), func(r peer.AddrInfo) bool { return r.ID == spare.AddrInfo().ID })
	})
	moved := recordSeq(ctx, t, a, a.AccountID())
	if err := a.Node().MaintainPrekeys(ctx); err != nil {
		t.Fatalf("prekeys on the new home: %v", err)
	}
	if got := spare.Relay().Prekeys().Accounts(); got != 1 {
		t.Fatalf("the new home holds prekeys of %d accounts, want the moved one's", got)
	}
	if err := dead.Start(ctx); err != nil {
		t.Fatal(err)
	}

	oldPeer := a.Node().ID()
	res := loseAndRestore(ctx, t, n, a, number, "", on.Secret)
	if res.Account.ID != backedUp.ID {
		t.Fatalf("restored %s, want %s", res.Account.ID, backedUp.ID)
	}
	waitCond(ctx, t, "b finds the restored device's record, newer than the move's", func() bool {
		rec, err := b.Node().LookupRecord(ctx, a.AccountID())
		return err == nil && rec.Seq > moved && slices.Contains(rec.Devices, a.Node().ID()) && !slices.Contains(rec.Devices, oldPeer)
	})
	waitCond(ctx, t, "the move's new home purged as a former home", func() bool { return spare.Relay().Prekeys().Accounts() == 0 })
	if _, err := b.Node().Send(ctx, a.AccountID(), "after the restore"); err != nil {
		t.Fatal(err)
	}
	if _, err := WaitMessages(ctx, a, b.AccountID(), func(ms []message.Message) bool { return HasText(ms, "after the restore", "") }); err != nil {
		t.Fatal(err)
	}
}

// recordSeq returns the sequence number of id's record as d finds it in
// the DHT.
func recordSeq(ctx context.Context, t *testing.T, d *Device, id string) uint64 {
	t.Helper()
	var seq uint64
	waitCond(ctx, t, "the record in the DHT", func() bool {
		rec, err := d.Node().LookupRecord(ctx, id)
		if err == nil {
			seq = rec.Seq
		}
		return err == nil
	})
	return seq
}

// loseAndRestore loses d's phone, starts d again empty and restores the
// account from number's backup (on relay, if not ""), with secret.
func loseAndRestore(ctx context.Context, t *testing.T, n *Network, d *Device, number, relay, secret string) *node.Restored {
	t.Helper()
	replacePhone(ctx, t, n, d)
	st, err := d.Node().StartRecovery(ctx, number, relay)
	if err != nil {
		t.Fatal(err)
	}
	code, ok := n.PhoneCode(st.Number)
	if !ok {
		t.Fatal("no code texted")
	}
	res, err := d.Node().FinishRecovery(ctx, code, secret)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// enableRecovery verifies number for d and turns account recovery on.
func enableRecovery(ctx context.Context, t *testing.T, n *Network, d *Device, number string) (*node.PhoneStatus, *node.RecoveryEnabled) {
	t.Helper()
	ph, err := n.VerifyPhone(ctx, d, number)
	if err != nil {
		t.Fatal(err)
	}
	on, err := d.Node().EnableRecovery(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return ph, on
}
