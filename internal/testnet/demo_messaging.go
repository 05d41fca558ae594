package testnet

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/kinmesh/kinmesh/protocols/message"
)

// demoNames are the demo's family, device by device.
var demoNames = []string{"Grandma Rosa", "Dad", "Mia", "Leo", "Aunt Ines", "Uncle Tom", "Cousin Ada", "Baby Finn"}

func demoName(i int) string {
	if i < len(demoNames) {
		return demoNames[i]
	}
	return fmt.Sprintf("Relative %d", i+1)
}

func stepAccounts(ctx context.Context, n *Network) (string, error) {
	var ids []string
	for i, d := range n.Devices {
		a, err := d.CreateAccount(ctx, demoName(i))
		if err != nil {
			return "", fmt.Errorf("%s: %w", d.Name, err)
		}
		ids = append(ids, fmt.Sprintf("%s=%s…", a.Name, a.ID[:8]))
	}
	return strings.Join(ids, " "), nil
}

// stepInvites introduces device-1 to everyone, and each device to the next.
func stepInvites(ctx context.Context, n *Network) (string, error) {
	pairs := 0
	for i, d := range n.Devices {
		if i > 0 {
			if err := Introduce(ctx, n.Devices[0], d); err != nil {
				return "", err
			}
			pairs++
		}
		if i > 1 {
			if err := Introduce(ctx, n.Devices[i-1], d); err != nil {
				return "", err
			}
			pairs++
		}
	}
	return fmt.Sprintf("%d pairs of contacts", pairs), nil
}

// stepRecordInDHT: the second device looks the first one's contact record
// up in the DHT the relays serve (what contacts do at start and hourly to
// learn a move) and finds the record the first device holds now.
func stepRecordInDHT(ctx context.Context, n *Network) (string, error) {
	if len(n.Devices) < 2 {
		return "skipped: fewer than 2 devices", nil
	}
	a, b := n.Devices[0], n.Devices[1]
	inv, err := a.Node().Invite()
	if err != nil {
		return "", err
	}
	want := inv.Record
	// a publishes at start; give the put a moment if it is still under way.
	var last error
	for range 20 {
		rec, err := b.Node().LookupRecord(ctx, a.AccountID())
		switch {
		case err != nil:
			last = err
		case rec.Seq < want.Seq:
			last = fmt.Errorf("found seq %d, %s holds %d", rec.Seq, a.Name, want.Seq)
		default:
			return fmt.Sprintf("%s found %s's record (seq %d, %d home relays)", b.Name, a.Name, rec.Seq, len(rec.HomeRelays)), nil
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
	return "", fmt.Errorf("%s looking %s up in the DHT: %w", b.Name, a.Name, last)
}

func stepOnlineMessage(ctx context.Context, n *Network) (string, error) {
	if len(n.Devices) < 2 {
		return "skipped: fewer than 2 devices", nil
	}
	a, b := n.Devices[0], n.Devices[1]
	start := time.Now()
	text := "Sunday lunch at mine? 🍝"
	m, err := a.Node().Send(ctx, b.AccountID(), text)
	if err != nil {
		return "", err
	}
	trail := []string{string(m.State)}
	if _, err := WaitMessages(ctx, a, b.AccountID(), func(ms []message.Message) bool {
		for _, x := range ms {
			if x.ID == m.ID && x.State != message.State(trail[len(trail)-1]) {
				trail = append(trail, string(x.State))
			}
		}
		return HasText(ms, text, message.StateDelivered)
	}); err != nil {
		return "", err
	}
	if _, err := WaitMessages(ctx, b, a.AccountID(), func(ms []message.Message) bool { return HasText(ms, text, "") }); err != nil {
		return "", err
	}
	return fmt.Sprintf("%s → %s: %s in %s", a.Name, b.Name, strings.Join(trail, " → "), time.Since(start).Round(time.Millisecond)), nil
}

func stepOfflineMessage(ctx context.Context, n *Network) (string, error) {
	if len(n.Devices) < 3 {
		return "skipped: fewer than 3 devices", nil
	}
	a, c := n.Devices[0], n.Devices[2]
	cID := c.AccountID()
	if err := c.Stop(); err != nil {
		return "", err
	}
	text := "Happy birthday, Mia! 🎂"
	m, err := a.Node().Send(ctx, cID, text)
	if err != nil {
		return "", err
	}
	var queued int
	if _, err := WaitMessages(ctx, a, cID, func(ms []message.Message) bool {
		for _, x := range ms {
			if x.ID == m.ID && x.State == message.StateQueued {
				queued = x.Queued
				return x.Queued == len(n.Relays) || x.Queued == min(len(n.Relays), 3)
			}
		}
		return false
	}); err != nil {
		return "", err
	}
	start := time.Now()
	if err := c.Start(ctx); err != nil {
		return "", err
	}
	if _, err := WaitMessages(ctx, c, a.AccountID(), func(ms []message.Message) bool { return HasText(ms, text, "") }); err != nil {
		return "", err
	}
	if _, err := WaitMessages(ctx, a, cID, func(ms []message.Message) bool { return HasText(ms, text, message.StateDelivered) }); err != nil {
		return "", err
	}
	return fmt.Sprintf("%s stopped; queued on %d relays; restarted, received and delivered %s later", c.Name, queued, time.Since(start).Round(time.Millisecond)), nil
}

func stepGroup(ctx context.Context, n *Network) (string, error) {
	if len(n.Devices) < 3 {
		return "skipped: fewer than 3 devices", nil
	}
	admin := n.Devices[0]
	var members []string
	for _, d := range n.Devices[1:] {
		members = append(members, d.AccountID())
	}
	g, err := admin.Node().CreateGroup(ctx, "Family", members)
	if err != nil {
		return "", err
	}
	text := "Photos from the picnic are up!"
	if _, err := admin.Node().Send(ctx, g.ID, text); err != nil {
		return "", err
	}
	for _, d := range n.Devices[1:] {
		if _, err := WaitMessages(ctx, d, g.ID, func(ms []message.Message) bool { return HasText(ms, text, "") }); err != nil {
			return "", err
		}
	}
	reply := "Lovely, thanks Grandma!"
	if _, err := n.Devices[len(n.Devices)-1].Node().Send(ctx, g.ID, reply); err != nil {
		return "", err
	}
	if _, err := WaitMessages(ctx, admin, g.ID, func(ms []message.Message) bool { return HasText(ms, reply, "") }); err != nil {
		return "", err
	}
	return fmt.Sprintf("group %q of %d: message and reply reached everyone", g.Name, len(g.Members)), nil
}
