package testnet

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"time"

	"github.com/libp2p/go-libp2p/core/peerstore"

	"github.com/kinmesh/kinmesh/node"
	"github.com/kinmesh/kinmesh/protocols/blobs"
	"github.com/kinmesh/kinmesh/protocols/message"
	"github.com/kinmesh/kinmesh/storage"
)

// stepAgeGate: sign-up refuses an 11-year-old, and a 14-year-old in the
// EU without a parent's consent, before anything is stored.
func stepAgeGate(ctx context.Context, n *Network) (string, error) {
	d := n.Devices[0].Node()
	now := time.Now()
	child := now.AddDate(-11, 0, 0).Format(time.DateOnly)
	teen := now.AddDate(-14, 0, 0).Format(time.DateOnly)
	_, err := d.CreateAccount(ctx, node.NewAccount{Name: "Kid", BirthDate: child, AcceptPolicy: node.PolicyVersion})
	if !errors.Is(err, node.ErrAgeRestricted) {
		return "", fmt.Errorf("an 11-year-old's sign-up: got %v, want ErrAgeRestricted", err)
	}
	_, err = d.CreateAccount(ctx, node.NewAccount{Name: "Teen", BirthDate: teen, Country: "PT", AcceptPolicy: node.PolicyVersion})
	if !errors.Is(err, node.ErrParentalConsent) {
		return "", fmt.Errorf("an EU 14-year-old without consent: got %v, want ErrParentalConsent", err)
	}
	return "an 11-year-old refused (age_restricted); a 14-year-old in Portugal refused without a parent's consent (parental_consent_required); nothing stored", nil
}

// demoProfilePhoto returns a small PNG.
func demoProfilePhoto(seed byte) ([]byte, error) {
	img := image.NewRGBA(image.Rect(0, 0, 64, 64))
	for x := range 64 {
		for y := range 64 {
			img.Set(x, y, color.RGBA{seed, byte(x * 4), byte(y * 4), 255})
		}
	}
	var b bytes.Buffer
	err := png.Encode(&b, img)
	return b.Bytes(), err
}

// stepPhoto: the last device sets a profile photo; it goes sealed onto
// its home relays, and the first device, after a message carrying the
// new record, fetches and opens it. An oversized photo is refused.
func stepPhoto(ctx context.Context, n *Network) (string, error) {
	if len(n.Devices) < 2 {
		return "skipped: fewer than 2 devices", nil
	}
	d, friend := n.Devices[len(n.Devices)-1], n.Devices[0]
	photo, err := demoProfilePhoto(0x80)
	if err != nil {
		return "", err
	}
	if _, err := d.Node().SetPhoto(ctx, make([]byte, node.MaxPhotoSize+1)); !errors.Is(err, node.ErrPhotoTooLarge) {
		return "", fmt.Errorf("an oversized photo: got %v, want ErrPhotoTooLarge", err)
	}
	info, err := d.Node().SetPhoto(ctx, photo)
	if err != nil {
		return "", err
	}
	const note = "new profile photo 📷"
	if _, err := d.Node().Send(ctx, friend.AccountID(), note); err != nil {
		return "", err
	}
	if _, err := WaitMessages(ctx, friend, d.AccountID(), func(ms []message.Message) bool { return HasText(ms, note, "") }); err != nil {
		return "", err
	}
	got, typ, err := friend.Node().ContactPhoto(ctx, d.AccountID())
	if err != nil {
		return "", fmt.Errorf("%s fetches %s's photo: %w", friend.Name, d.Name, err)
	}
	if !bytes.Equal(got, photo) {
		return "", fmt.Errorf("%s opened a different photo (%d bytes, want %d)", friend.Name, len(got), len(photo))
	}
	return fmt.Sprintf("%s set a %d-byte %s photo (blob %s…, sealed on its home relays); %s opened it with the key in the signed record; a 512 KiB+1 photo was refused",
		d.Name, info.Size, typ, info.Blob[:12], friend.Name), nil
}

// relaysHold reports the first relay namespace (of those an account's
// data lives in: mail, prekeys, backups, the directory, its reports)
// holding one of needles, in a key or a decrypted value.
func relaysHold(ctx context.Context, n *Network, needles ...[]byte) (string, error) {
	return relayNamespacesHold(ctx, n, []string{"mailbox", "prekeys", "backup", "discovery", "report"}, needles...)
}

// relayNamespacesHold reports the first of the relays' namespaces nss
// holding one of needles, in a key or a decrypted value.
func relayNamespacesHold(ctx context.Context, n *Network, nss []string, needles ...[]byte) (string, error) {
	for _, r := range n.Relays {
		rl := r.Relay()
		if rl == nil {
			continue
		}
		for _, ns := range nss {
			hit := ""
			err := rl.Store().Namespace(ns).List(ctx, storage.ListOptions{}, func(k string, v []byte) error {
				for _, nd := range needles {
					if bytes.Contains(v, nd) || bytes.Contains([]byte(k), nd) {
						hit = r.Name + "/" + ns
						return errStopScan
					}
				}
				return nil
			})
			if err != nil && !errors.Is(err, errStopScan) {
				return "", err
			}
			if hit != "" {
				return hit, nil
			}
		}
	}
	return "", nil
}

var errStopScan = errors.New("found")

// photoGone checks that no relay holds blob (hex id) any more, asking
// each over /kinmesh/blobs from the first device.
func photoGone(ctx context.Context, n *Network, blob string) error {
	id, err := blobs.ParseBlobID(blob)
	if err != nil {
		return err
	}
	c, err := blobs.NewClient(n.Devices[0].Node().Host())
	if err != nil {
		return err
	}
	for _, r := range n.Relays {
		n.Devices[0].Node().Host().Peerstore().AddAddrs(r.AddrInfo().ID, r.AddrInfo().Addrs, peerstore.TempAddrTTL)
		has, err := c.Has(ctx, r.AddrInfo().ID, []blobs.BlobID{id})
		if err != nil {
			return fmt.Errorf("ask %s for the photo: %w", r.Name, err)
		}
		if has[0] {
			return fmt.Errorf("%s still holds the deleted account's photo", r.Name)
		}
	}
	return nil
}
