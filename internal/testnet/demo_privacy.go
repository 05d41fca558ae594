package testnet

import (
	"context"
	"fmt"
	"strings"
	"time"

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
			return fmt.Sprintf("%s shares %.4f,%.4f with %s until %s (then it is gone from %s's device)", a.Name, l.Lat, l.Lon, b.Name, l.ExpiresAt.Format("15:04"), b.Name), nil
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
	return fmt.Sprintf("%s's export: %d contacts, %d groups, %d messages, %d blocks, %d consent events",
		n.Devices[0].Name, len(e.Contacts), len(e.Groups), len(e.Messages), len(e.Blocks), len(e.ConsentHistory)), nil
}

func stepDelete(ctx context.Context, n *Network) (string, error) {
	d := n.Devices[len(n.Devices)-1]
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
	return fmt.Sprintf("%s deleted its account: wiped locally, purge confirmed by %d relays %v", d.Name, len(confirmed), confirmed), nil
}
