package testnet

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/kinmesh/kinmesh/node"
	"github.com/kinmesh/kinmesh/protocols/message"
)

func stepConsent(ctx context.Context, n *Network) (string, error) {
	d := n.Devices[0].Node()
	v, err := d.SettingsView(ctx)
	if err != nil {
		return "", err
	}
	if v.Effective.DiagnosticsSharing || v.Effective.CallQualitySharing {
		return "", fmt.Errorf("optional collection is on by default: %+v", v.Effective)
	}
	on := true
	if v, err = d.UpdateSettings(ctx, &on, nil); err != nil {
		return "", err
	}
	return fmt.Sprintf("optional collection off by default; %s turned diagnostics sharing on under policy %s", n.Devices[0].Name, v.Policy.Accepted), nil
}

func stepBlock(ctx context.Context, n *Network) (string, error) {
	if len(n.Devices) < 3 {
		return "skipped: fewer than 3 devices", nil
	}
	a, b, c := n.Devices[0], n.Devices[1], n.Devices[2]
	if _, err := a.Node().BlockContact(ctx, b.AccountID()); err != nil {
		return "", err
	}
	if _, err := b.Node().Send(ctx, a.AccountID(), "you can't see this"); err != nil {
		return "", err
	}
	// c writes after b; once a has c's message, b's was processed (and dropped).
	if _, err := c.Node().Send(ctx, a.AccountID(), "but you see this"); err != nil {
		return "", err
	}
	if _, err := WaitMessages(ctx, a, c.AccountID(), func(ms []message.Message) bool { return HasText(ms, "but you see this", "") }); err != nil {
		return "", err
	}
	if _, err := WaitMessages(ctx, b, a.AccountID(), func(ms []message.Message) bool {
		return HasText(ms, "you can't see this", message.StateSent) || HasText(ms, "you can't see this", message.StateQueued)
	}); err != nil {
		return "", err
	}
	ms, _ := a.Node().Messages(ctx, b.AccountID())
	if HasText(ms, "you can't see this", "") {
		return "", fmt.Errorf("a blocked contact's message was shown")
	}
	if err := a.Node().UnblockContact(ctx, b.AccountID()); err != nil {
		return "", err
	}
	return fmt.Sprintf("%s blocked %s: its message was dropped on the device (the sender sees it sent, never delivered); unblocked", a.Name, b.Name), nil
}

func stepLocation(ctx context.Context, n *Network) (string, error) {
	a, b := n.Devices[0], n.Devices[1]
	if err := a.Node().ShareLocation(ctx, []string{b.AccountID()}, 38.7223, -9.1393, 15, 15*time.Minute, false); err != nil {
		return "", err
	}
	events, stop := b.Node().Subscribe()
	defer stop()
	for {
		ls, err := b.Node().Locations(ctx)
		if err != nil {
			return "", err
		}
		if len(ls) == 1 {
			l := ls[0]
			gone, err := demoLocationExpiry(ctx, b, a)
			if err != nil {
				return "", err
			}
			return fmt.Sprintf("%s shares %.4f,%.4f with %s until %s (then it is gone from %s's device); %s", a.Name, l.Lat, l.Lon, b.Name, l.ExpiresAt.Format("15:04"), b.Name, gone), nil
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-events:
		}
	}
}

func stepExport(ctx context.Context, n *Network) (string, error) {
	e, err := n.Devices[0].Node().Export(ctx)
	if err != nil {
		return "", err
	}
	phone := "no phone"
	if e.Phone != nil && e.Phone.Verified {
		phone = "phone " + e.Phone.Number
	}
	return fmt.Sprintf("%s's export: %d contacts, %d groups, %d messages, %d blocks, %d consent events, %d calls, presence %q, %s",
		n.Devices[0].Name, len(e.Contacts), len(e.Groups), len(e.Messages), len(e.Blocks), len(e.ConsentHistory), len(e.Calls), e.Presence, phone), nil
}

func stepDelete(ctx context.Context, n *Network) (string, error) {
	d := n.Devices[len(n.Devices)-1]
	inv, err := d.Node().Invite()
	if err != nil {
		return "", err
	}
	acct, err := d.Node().Account()
	if err != nil {
		return "", err
	}
	res, err := d.Node().DeleteAccount(ctx)
	if err != nil {
		return "", err
	}
	var confirmed []string
	for _, r := range res.Relays {
		if r.Confirmed {
			confirmed = append(confirmed, r.Relay[strings.LastIndex(r.Relay, "/")+1:][:12]+"…")
		}
	}
	if len(res.Pending) > 0 {
		return "", fmt.Errorf("relays did not confirm the purge: %v", res.Pending)
	}
	// Nothing of it is left: not on the device, not in any relay's store
	// (scanned, decrypted), and its photo can't be fetched.
	if _, err := d.Node().Account(); !errors.Is(err, node.ErrNoAccount) {
		return "", fmt.Errorf("the account can still be read: %v", err)
	}
	if where, err := relaysHold(ctx, n, []byte(inv.Record.AccountID()), inv.Record.Identity.Sign); err != nil {
		return "", err
	} else if where != "" {
		return "", fmt.Errorf("%s still holds the deleted account", where)
	}
	photo := "no photo"
	if acct.Photo != nil {
		if err := photoGone(ctx, n, acct.Photo.Blob); err != nil {
			return "", err
		}
		photo = "its photo blob gone"
	}
	return fmt.Sprintf("%s deleted its account: wiped locally, purge confirmed by %d relays %v; relay stores scanned: nothing of it left, %s",
		d.Name, len(confirmed), confirmed, photo), nil
}

// demoLocationExpiry: from shares its location with to for 2 seconds; to
// sees it, then sees it expire.
func demoLocationExpiry(ctx context.Context, from, to *Device) (string, error) {
	const d = 2 * time.Second
	if err := from.Node().ShareLocation(ctx, []string{to.AccountID()}, 41.1579, -8.6291, 30, d, false); err != nil {
		return "", err
	}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	seen := false
	start := time.Now()
	for {
		ls, err := to.Node().Locations(ctx)
		if err != nil {
			return "", err
		}
		has := false
		for _, l := range ls {
			has = has || l.From == from.AccountID()
		}
		switch {
		case has:
			seen = true
		case seen:
			return fmt.Sprintf("a %s share from %s to %s expired on %s's device after %s", d, from.Name, to.Name, to.Name, time.Since(start).Round(100*time.Millisecond)), nil
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("the %s location share (seen: %v) did not expire: %w", d, seen, ctx.Err())
		case <-tick.C:
		}
	}
}
