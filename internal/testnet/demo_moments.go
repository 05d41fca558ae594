package testnet

import (
	"bytes"
	"context"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"slices"
	"time"

	"github.com/kinmesh/kinmesh/protocols/blobs"
	"github.com/kinmesh/kinmesh/protocols/moments"
)

// Demo step for moments. It runs after the invite steps: device-1 is a
// contact of every other device.

// demoPhoto is a small PNG: a green field under a blue sky.
func demoPhoto() ([]byte, error) {
	img := image.NewRGBA(image.Rect(0, 0, 96, 64))
	for y := range 64 {
		for x := range 96 {
			c := color.RGBA{0x3a, 0x9a, 0x3a, 0xff}
			if y < 40 {
				c = color.RGBA{0x5a, 0x9a, 0xe6, 0xff}
			}
			img.Set(x, y, c)
		}
	}
	var b bytes.Buffer
	err := png.Encode(&b, img)
	return b.Bytes(), err
}

// waitMoment waits until d's moment id satisfies cond (nil: absent).
func waitMoment(ctx context.Context, d *Device, id, what string, cond func(*moments.Moment) bool) error {
	nd := d.Node()
	if nd == nil {
		return fmt.Errorf("%s is stopped", d.Name)
	}
	events, stop := nd.Subscribe()
	defer stop()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		m, err := nd.Moment(ctx, id)
		if err != nil {
			m = nil
		}
		if cond(m) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: waiting until %s: %w", d.Name, what, ctx.Err())
		case <-events:
		case <-tick.C:
		}
	}
}

// stepMoments: device-1 posts a moment with a photo; device-2 sees it,
// fetches the photo and likes it, and device-1 sees the like; device-1
// deletes it, and it leaves device-2's feed and every relay (frames and
// photo).
func stepMoments(ctx context.Context, n *Network) (string, error) {
	if len(n.Devices) < 2 {
		return "skipped: fewer than 2 devices", nil
	}
	a, b := n.Devices[0], n.Devices[1]
	photo, err := demoPhoto()
	if err != nil {
		return "", err
	}
	m, err := a.Node().PostMoment(ctx, "Grandma's garden 🌷", []moments.MediaInput{{Type: "image/png", Data: photo}})
	if err != nil {
		return "", err
	}
	start := time.Now()
	if err := waitMoment(ctx, b, m.ID, "the moment arrives", func(x *moments.Moment) bool { return x != nil }); err != nil {
		return "", err
	}
	arrived := time.Since(start)
	typ, data, err := b.Node().MomentMediaData(ctx, m.ID, 0)
	if err != nil {
		return "", fmt.Errorf("%s fetches the photo: %w", b.Name, err)
	}
	if typ != "image/png" || !bytes.Equal(data, photo) {
		return "", fmt.Errorf("%s got %s of %d bytes, not the photo", b.Name, typ, len(data))
	}
	if err := b.Node().LikeMoment(ctx, m.ID); err != nil {
		return "", err
	}
	if err := waitMoment(ctx, a, m.ID, "the like arrives", func(x *moments.Moment) bool { return x != nil && len(x.Likes) == 1 }); err != nil {
		return "", err
	}
	if err := a.Node().DeleteMoment(ctx, m.ID); err != nil {
		return "", err
	}
	if err := waitMoment(ctx, b, m.ID, "the moment is deleted", func(x *moments.Moment) bool { return x == nil }); err != nil {
		return "", err
	}
	blob, err := blobIDOf(m)
	if err != nil {
		return "", err
	}
	bc, err := blobs.NewClient(b.Node().Host())
	if err != nil {
		return "", err
	}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for purged := 0; ; {
		purged = 0
		for _, r := range n.Relays {
			rl := r.Relay()
			if rl == nil {
				continue
			}
			_, items, _ := rl.Moments().Stats()
			b.Node().Host().Peerstore().AddAddrs(r.AddrInfo().ID, r.AddrInfo().Addrs, time.Minute)
			held, err := bc.Has(ctx, r.AddrInfo().ID, []blobs.BlobID{blob})
			if items == 0 && err == nil && !slices.Contains(held, true) {
				purged++
			}
		}
		if purged == len(n.Relays) {
			break
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("%d of %d relays purged the moment and its photo", purged, len(n.Relays))
		case <-tick.C:
		}
	}
	return fmt.Sprintf("%s saw it in %v, fetched the %d-byte photo and liked it; after deletion it left %s and all %d relays",
		b.Name, arrived.Round(time.Millisecond), len(photo), b.Name, len(n.Relays)), nil
}

func blobIDOf(m *moments.Moment) (blobs.BlobID, error) {
	if len(m.Media) != 1 {
		return blobs.BlobID{}, fmt.Errorf("the moment has %d media, want 1", len(m.Media))
	}
	var raw []byte
	if _, err := fmt.Sscanf(m.Media[0].Blob, "%x", &raw); err != nil {
		return blobs.BlobID{}, err
	}
	return blobs.BlobIDFromBytes(raw)
}
