package testnet

import (
	"bytes"
	"context"
	"errors"
	"image"
	"image/color"
	"image/png"
	"testing"
	"time"

	"github.com/kinmesh/kinmesh/node"
	"github.com/kinmesh/kinmesh/protocols/message"
)

// testPhoto returns a small PNG, different for each seed.
func testPhoto(t *testing.T, seed byte) []byte {
	t.Helper()
	img := image.NewRGBA(image.Rect(0, 0, 48, 32))
	for x := range 48 {
		for y := range 32 {
			img.Set(x, y, color.RGBA{seed, byte(x * 5), byte(y * 7), 255})
		}
	}
	var b bytes.Buffer
	if err := png.Encode(&b, img); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// relayBlobs returns how many blobs each relay holds.
func relayBlobs(n *Network) []uint64 {
	var out []uint64
	for _, r := range n.Relays {
		out = append(out, r.Relay().Blobs().Usage().Blobs)
	}
	return out
}

func wantRelayBlobs(t *testing.T, n *Network, want uint64, when string) {
	t.Helper()
	for i, got := range relayBlobs(n) {
		if got != want {
			t.Fatalf("%s: %s holds %d blobs, want %d", when, n.Relays[i].Name, got, want)
		}
	}
}

// waitContactPhoto waits until d sees want as contact's photo: d learns
// the new record from a message contact sends it.
func waitContactPhoto(ctx context.Context, t *testing.T, d, contact *Device, want []byte, note string) {
	t.Helper()
	if _, err := contact.Node().Send(ctx, d.AccountID(), note); err != nil {
		t.Fatal(err)
	}
	if _, err := WaitMessages(ctx, d, contact.AccountID(), func(ms []message.Message) bool { return HasText(ms, note, "") }); err != nil {
		t.Fatal(err)
	}
	got, typ, err := d.Node().ContactPhoto(ctx, contact.AccountID())
	if err != nil {
		t.Fatalf("%s fetches %s's photo: %v", d.Name, contact.Name, err)
	}
	if typ != "image/png" || !bytes.Equal(got, want) {
		t.Fatalf("%s sees a %s photo of %d bytes, want the %d-byte PNG", d.Name, typ, len(got), len(want))
	}
}

// TestProfilePhoto: a photo set on one device is sealed onto every home
// relay and opened by a contact from the key in the signed record;
// oversized and non-image photos are refused with nothing stored;
// replacing or clearing a photo deletes the old blob from the relays; the
// export carries the reference; deleting the account purges the blob.
func TestProfilePhoto(t *testing.T) {
	n := startNet(t, Config{Relays: 2, Devices: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	a, b := contactsPair(t, ctx, n)
	if _, _, err := b.Node().ContactPhoto(ctx, a.AccountID()); !errors.Is(err, node.ErrNoPhoto) {
		t.Fatalf("a photo before one was set: %v", err)
	}
	base := relayBlobs(n)[0]
	one, two := testPhoto(t, 1), testPhoto(t, 2)

	info, err := a.Node().SetPhoto(ctx, one)
	if err != nil {
		t.Fatal(err)
	}
	if info.Type != "image/png" || info.Size != len(one) || len(info.Key) != 32 {
		t.Fatalf("photo info %+v", info)
	}
	wantRelayBlobs(t, n, base+1, "after setting a photo")
	if got, _, err := a.Node().Photo(ctx); err != nil || !bytes.Equal(got, one) {
		t.Fatalf("own photo: %d bytes, %v", len(got), err)
	}
	if acct, _ := a.Node().Account(); acct.Photo == nil || acct.Photo.Blob != info.Blob {
		t.Fatalf("the account shows photo %+v, want %s", acct.Photo, info.Blob)
	}
	waitContactPhoto(ctx, t, b, a, one, "look, a photo")

	// Bad photos: refused, nothing uploaded, the record unchanged.
	for _, bad := range []struct {
		name string
		data []byte
		want error
	}{
		{"oversized", append(bytes.Clone(one), make([]byte, node.MaxPhotoSize)...), node.ErrPhotoTooLarge},
		{"not an image", []byte("GIF89a? no, just text"), node.ErrPhotoType},
		{"empty", nil, node.ErrPhotoType},
	} {
		if _, err := a.Node().SetPhoto(ctx, bad.data); !errors.Is(err, bad.want) {
			t.Fatalf("%s photo: got %v, want %v", bad.name, err, bad.want)
		}
	}
	wantRelayBlobs(t, n, base+1, "after refused photos")
	if acct, _ := a.Node().Account(); acct.Photo == nil || acct.Photo.Blob != info.Blob {
		t.Fatalf("a refused photo changed the account's photo: %+v", acct.Photo)
	}

	// A new photo replaces the old one, on the relays too.
	info2, err := a.Node().SetPhoto(ctx, two)
	if err != nil {
		t.Fatal(err)
	}
	if info2.Blob == info.Blob {
		t.Fatal("a new photo kept the old blob id")
	}
	wantRelayBlobs(t, n, base+1, "after replacing the photo")
	waitContactPhoto(ctx, t, b, a, two, "a better photo")
	e, err := a.Node().Export(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if e.Account.Photo == nil || e.Account.Photo.Blob != info2.Blob || !bytes.Equal(e.Account.Photo.Key, info2.Key) {
		t.Fatalf("export photo %+v, want %+v", e.Account.Photo, info2)
	}

	// Cleared: gone from the relays and from the record.
	if err := a.Node().ClearPhoto(ctx); err != nil {
		t.Fatal(err)
	}
	wantRelayBlobs(t, n, base, "after clearing the photo")
	if _, _, err := a.Node().Photo(ctx); !errors.Is(err, node.ErrNoPhoto) {
		t.Fatalf("own photo after clearing: %v", err)
	}

	// Deleting the account purges the photo from every home relay.
	if _, err := a.Node().SetPhoto(ctx, one); err != nil {
		t.Fatal(err)
	}
	wantRelayBlobs(t, n, base+1, "after setting a photo again")
	aID := a.AccountID()
	res, err := a.Node().DeleteAccount(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Pending) != 0 {
		t.Fatalf("purge pending on %v", res.Pending)
	}
	wantRelayBlobs(t, n, base, "after deleting the account")
	if _, _, err := b.Node().ContactPhoto(ctx, aID); !errors.Is(err, node.ErrPhotoUnavailable) {
		t.Fatalf("a deleted account's photo: got %v, want ErrPhotoUnavailable", err)
	}
}
