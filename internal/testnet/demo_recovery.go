package testnet

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/kinmesh/kinmesh/node"
	"github.com/kinmesh/kinmesh/protocols/message"
)

// AddDevice starts one more device, bootstrapped to every relay like the
// others (a new phone joining the network), and adds it to Devices.
func (n *Network) AddDevice(ctx context.Context, name string) (*Device, error) {
	if len(n.Devices) == 0 {
		return nil, fmt.Errorf("testnet: add %s: no device to copy the configuration of", name)
	}
	d := &Device{Name: name, Dir: filepath.Join(n.dir, name)}
	d.cfg = n.Devices[0].cfg
	d.cfg.DataDir = d.Dir
	d.cfg.Logger = n.log.With("member", name)
	if err := d.Start(ctx); err != nil {
		return nil, err
	}
	n.Devices = append(n.Devices, d)
	return d, nil
}

// Lose stops the device and deletes its data directory, as if the phone
// were lost; Start then starts it as a new, empty device (a new peer id
// and no account) on the same addresses.
func (d *Device) Lose() error {
	if err := d.Stop(); err != nil {
		return err
	}
	return os.RemoveAll(d.Dir)
}

// RecoverAccount restores an account on d, a device without one: it asks
// a relay to text a code to number, reads the code from the relay's
// console gateway and finishes with secret, as a user would type them.
func (n *Network) RecoverAccount(ctx context.Context, d *Device, number, secret string) (*node.Restored, error) {
	nd := d.Node()
	if nd == nil {
		return nil, fmt.Errorf("%s is stopped", d.Name)
	}
	st, err := nd.StartRecovery(ctx, number, "")
	if err != nil {
		return nil, fmt.Errorf("%s: start recovery: %w", d.Name, err)
	}
	code, ok := n.PhoneCode(st.Number)
	if !ok {
		return nil, fmt.Errorf("%s: no relay texted a code", d.Name)
	}
	res, err := nd.FinishRecovery(ctx, code, secret)
	if err != nil {
		return nil, fmt.Errorf("%s: finish recovery: %w", d.Name, err)
	}
	return res, nil
}

// stepRecovery: the last device (whose account the next step deletes)
// turns backups on, loses its phone, and restores the account on a new
// one from its number and secret: same account, same contacts, and the
// first device's messages reach it again.
func stepRecovery(ctx context.Context, n *Network) (string, error) {
	if len(n.Devices) < 2 {
		return "skipped: fewer than 2 devices", nil
	}
	last := len(n.Devices) - 1
	d, friend := n.Devices[last], n.Devices[0]
	ph, err := d.Node().Phone(ctx)
	if err != nil {
		return "", err
	}
	if !ph.Verified {
		if ph, err = n.VerifyPhone(ctx, d, demoPhone(last)); err != nil {
			return "", err
		}
	}
	on, err := d.Node().EnableRecovery(ctx)
	if err != nil {
		return "", fmt.Errorf("%s: enable recovery: %w", d.Name, err)
	}
	before, err := d.Node().Account()
	if err != nil {
		return "", err
	}
	contacts, err := d.Node().Contacts()
	if err != nil {
		return "", err
	}
	oldPeer := d.Node().ID()
	if err := d.Lose(); err != nil {
		return "", err
	}
	if err := d.Start(ctx); err != nil {
		return "", err
	}
	if err := n.WaitReady(ctx); err != nil {
		return "", err
	}
	res, err := n.RecoverAccount(ctx, d, ph.Number, on.Secret)
	if err != nil {
		return "", err
	}
	if res.Account.ID != before.ID || res.Account.Name != before.Name || res.Contacts != len(contacts) {
		return "", fmt.Errorf("%s restored %s %q with %d contacts, want %s %q with %d", d.Name,
			res.Account.ID, res.Account.Name, res.Contacts, before.ID, before.Name, len(contacts))
	}
	photo := ""
	if before.Photo != nil {
		after, err := d.Node().Account()
		if err != nil {
			return "", err
		}
		if after.Photo == nil || after.Photo.Blob != before.Photo.Blob {
			return "", fmt.Errorf("%s's profile photo was not restored: %+v", d.Name, after.Photo)
		}
		photo = ", its profile photo kept"
	}
	// The new phone writes first; its contact answers on the new session.
	const hello, reply = "new phone, same me 📱", "welcome back!"
	if _, err := d.Node().Send(ctx, friend.AccountID(), hello); err != nil {
		return "", err
	}
	if _, err := WaitMessages(ctx, friend, d.AccountID(), func(ms []message.Message) bool { return HasText(ms, hello, "") }); err != nil {
		return "", err
	}
	if _, err := friend.Node().Send(ctx, d.AccountID(), reply); err != nil {
		return "", err
	}
	if _, err := WaitMessages(ctx, d, friend.AccountID(), func(ms []message.Message) bool { return HasText(ms, reply, "") }); err != nil {
		return "", err
	}
	return fmt.Sprintf("%s lost its phone (%s…) and restored %q on a new one (%s…) from its number and secret: %d contacts back%s, %s writes to it again",
		d.Name, oldPeer.String()[:16], res.Account.Name, d.Node().ID().String()[:16], res.Contacts, photo, friend.Name), nil
}
