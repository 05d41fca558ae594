package testnet

import (
	"context"
	"fmt"

	"github.com/kinmesh/kinmesh/node"
	"github.com/kinmesh/kinmesh/protocols/message"
)

// Demo steps for presence, reports and feedback. They run after the
// invite and consent steps: device-1 is a contact of every other device,
// each device of the next, and device-1 shares diagnostics.

// stepPresence: device-1 tells its contacts it is online and they see
// it; device-3 then shares with nobody, and device-1 sees nothing of it.
func stepPresence(ctx context.Context, n *Network) (string, error) {
	if len(n.Devices) < 3 {
		return "skipped: fewer than 3 devices", nil
	}
	a, c := n.Devices[0], n.Devices[2]
	r, err := a.Node().AnnouncePresence(ctx)
	if err != nil {
		return "", err
	}
	seen := 0
	for _, d := range n.Devices[1:] {
		if p, err := d.Node().PresenceOf(a.AccountID()); err == nil && p.Online {
			seen++
		}
	}
	if seen != len(n.Devices)-1 {
		return "", fmt.Errorf("%d of %d contacts see %s online after it told %d", seen, len(n.Devices)-1, a.Name, r.Sent)
	}
	if err := c.Node().SetPresenceShare(ctx, node.PresenceNobody); err != nil {
		return "", err
	}
	p, err := a.Node().PresenceOf(c.AccountID())
	if err != nil {
		return "", err
	}
	if p.Online || p.LastSeen != nil {
		return "", fmt.Errorf("%s shares with nobody, yet %s sees %+v", c.Name, a.Name, p)
	}
	if err := c.Node().SetPresenceShare(ctx, node.PresenceContacts); err != nil {
		return "", err
	}
	// A blocked contact gets no presence, and shows none.
	b := n.Devices[1]
	if _, err := a.Node().BlockContact(ctx, b.AccountID()); err != nil {
		return "", err
	}
	r2, err := a.Node().AnnouncePresence(ctx)
	if err != nil {
		return "", err
	}
	if r2.Sent >= r.Sent {
		return "", fmt.Errorf("%s blocked %s, yet told %d contacts it is online (%d before)", a.Name, b.Name, r2.Sent, r.Sent)
	}
	if p, err := a.Node().PresenceOf(b.AccountID()); err != nil || p.Online || p.LastSeen != nil {
		return "", fmt.Errorf("%s sees blocked %s: %+v, %v", a.Name, b.Name, p, err)
	}
	if err := a.Node().UnblockContact(ctx, b.AccountID()); err != nil {
		return "", err
	}
	return fmt.Sprintf("%d contacts see %s online; %s chose \"nobody\" and vanished from %s's view (then shared again); blocked %s was told nothing and showed nothing (then unblocked)",
		seen, a.Name, c.Name, a.Name, b.Name), nil
}

// stepReport: device-3 reports device-2, disclosing one of its messages.
func stepReport(ctx context.Context, n *Network) (string, error) {
	if len(n.Devices) < 3 {
		return "skipped: fewer than 3 devices", nil
	}
	b, c := n.Devices[1], n.Devices[2]
	const text = "Win a free cruise! Send your card number 💳"
	if _, err := b.Node().Send(ctx, c.AccountID(), text); err != nil {
		return "", err
	}
	ms, err := WaitMessages(ctx, c, b.AccountID(), func(ms []message.Message) bool { return HasText(ms, text, "") })
	if err != nil {
		return "", err
	}
	var id string
	for _, m := range ms {
		if m.Text == text {
			id = m.ID
		}
	}
	res, err := c.Node().Report(ctx, node.ReportRequest{Account: b.AccountID(), Reason: "scam", Text: "asks for my card", Messages: []string{id}})
	if err != nil {
		return "", err
	}
	held := 0
	for _, r := range n.Relays {
		if rl := r.Relay(); rl != nil {
			if k, _ := rl.Reports().Len(); k > 0 {
				held++
			}
		}
	}
	return fmt.Sprintf("%s reported %s (1 message disclosed): %d of %d home relays accepted; %d relays hold reports (kinmesh relay reports)", c.Name, b.Name, res.Accepted, len(res.Relays), held), nil
}

// stepFeedback: device-1 (diagnostics sharing on since the consent step)
// asks for help with diagnostics; device-3 (sharing off) asks too.
func stepFeedback(ctx context.Context, n *Network) (string, error) {
	if len(n.Devices) < 3 {
		return "skipped: fewer than 3 devices", nil
	}
	a, c := n.Devices[0], n.Devices[2]
	ra, err := a.Node().Feedback(ctx, node.FeedbackRequest{Kind: "support", Text: "How do I add my grandson?", IncludeDiagnostics: true})
	if err != nil {
		return "", err
	}
	rc, err := c.Node().Feedback(ctx, node.FeedbackRequest{Text: "Love it!", IncludeDiagnostics: true})
	if err != nil {
		return "", err
	}
	if rc.DiagnosticsAttached {
		return "", fmt.Errorf("%s's feedback carried diagnostics without consent", c.Name)
	}
	return fmt.Sprintf("%s's support request: diagnostics attached=%v (consented); %s's feedback: attached=%v (no consent)", a.Name, ra.DiagnosticsAttached, c.Name, rc.DiagnosticsAttached), nil
}
