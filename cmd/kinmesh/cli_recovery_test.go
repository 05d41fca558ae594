package main

import (
	"bytes"
	"context"
	"image"
	"image/color"
	"image/png"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/kinmesh/kinmesh/internal/testnet"
	"github.com/kinmesh/kinmesh/protocols/message"
)

// failing runs a client verb that must fail and returns its stderr.
func failing(t *testing.T, args ...string) string {
	t.Helper()
	var errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if code := run(ctx, args, io.Discard, &errb); code == 0 {
		t.Fatalf("kinmesh %s succeeded", strings.Join(args, " "))
	}
	return errb.String()
}

// TestCLIRecoveryAndPhoto drives real daemons (an in-process testnet: a
// relay with a console SMS gateway, two devices with their local APIs)
// through the phone, photo and recovery verbs a user types: verify a
// number, set a photo a contact then fetches, turn recovery on, lose the
// phone, and restore the account — photo included — on a new one.
func TestCLIRecoveryAndPhoto(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	n, err := testnet.Start(ctx, testnet.Config{Relays: 1, Devices: 2, DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Errorf("close the testnet: %v", err)
		}
	})
	rosa, mia := n.Devices[0], n.Devices[1]
	for i, d := range []*testnet.Device{rosa, mia} {
		if _, err := d.CreateAccount(ctx, []string{"Rosa", "Mia"}[i]); err != nil {
			t.Fatal(err)
		}
	}
	if err := testnet.Introduce(ctx, rosa, mia); err != nil {
		t.Fatal(err)
	}
	rosaID := rosa.AccountID()

	const number = "+351 91 777 0001"
	if out := cli(t, "phone", "verify", number, "--data", rosa.Dir); !strings.Contains(out, "code sent") {
		t.Fatalf("phone verify:\n%s", out)
	}
	code, ok := n.PhoneCode(number)
	if !ok {
		t.Fatal("no code texted")
	}
	cli(t, "phone", "code", code, "--data", rosa.Dir)
	if out := cli(t, "recovery", "--data", rosa.Dir); !strings.Contains(out, "recovery is off") {
		t.Fatalf("recovery status before:\n%s", out)
	}
	out := cli(t, "recovery", "on", "--data", rosa.Dir)
	secret := regexp.MustCompile(`\b([A-Z2-7]{4}(?:-[A-Z2-7]{4}){7})\b`).FindStringSubmatch(out)
	if secret == nil {
		t.Fatalf("recovery on printed no secret:\n%s", out)
	}

	// A photo: too large refused, a real one set, a contact fetches it.
	dir := t.TempDir()
	big := filepath.Join(dir, "big.png")
	if err := os.WriteFile(big, make([]byte, 600<<10), 0o600); err != nil {
		t.Fatal(err)
	}
	if e := failing(t, "photo", "set", big, "--data", rosa.Dir); !strings.Contains(e, "photo_too_large") {
		t.Fatalf("an oversized photo: %s", e)
	}
	img := image.NewRGBA(image.Rect(0, 0, 40, 30))
	for x := range 40 {
		img.Set(x, x%30, color.RGBA{255, 0, byte(x), 255})
	}
	var pic bytes.Buffer
	if err := png.Encode(&pic, img); err != nil {
		t.Fatal(err)
	}
	photo := filepath.Join(dir, "rosa.png")
	if err := os.WriteFile(photo, pic.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	if out := cli(t, "photo", "set", photo, "--data", rosa.Dir); !strings.Contains(out, "profile photo set: image/png") {
		t.Fatalf("photo set:\n%s", out)
	}
	cli(t, "send", "--data", rosa.Dir, "--to", mia.AccountID(), "my", "new", "photo")
	if _, err := testnet.WaitMessages(ctx, mia, rosaID, func(ms []message.Message) bool { return testnet.HasText(ms, "my new photo", "") }); err != nil {
		t.Fatal(err)
	}
	got := filepath.Join(dir, "got.png")
	cli(t, "photo", "get", rosaID, "--out", got, "--data", mia.Dir)
	if b, err := os.ReadFile(got); err != nil || !bytes.Equal(b, pic.Bytes()) {
		t.Fatalf("mia's copy of rosa's photo: %d bytes, %v", len(b), err)
	}
	cli(t, "recovery", "backup", "--data", rosa.Dir)

	// Rosa loses her phone; a new one restores her account.
	if err := rosa.Lose(); err != nil {
		t.Fatal(err)
	}
	if err := rosa.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := n.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	if e := failing(t, "account", "--data", rosa.Dir); !strings.Contains(e, "no_account") {
		t.Fatalf("the new phone has an account: %s", e)
	}
	if out := cli(t, "recovery", "start", number, "--data", rosa.Dir); !strings.Contains(out, "texted a code") {
		t.Fatalf("recovery start:\n%s", out)
	}
	if code, ok = n.PhoneCode(number); !ok {
		t.Fatal("no code texted")
	}
	wrong := []byte(secret[1])
	wrong[len(wrong)-1] ^= 1 // a typo: the check catches it before the code is spent
	if e := failing(t, "recovery", "finish", "--code", code, "--secret", string(wrong), "--data", rosa.Dir); !strings.Contains(e, "invalid_secret") {
		t.Fatalf("a mistyped secret: %s", e)
	}
	out = cli(t, "recovery", "finish", "--code", code, "--secret", strings.ToLower(secret[1]), "--data", rosa.Dir)
	if !strings.Contains(out, "restored account Rosa ("+rosaID+")") || !strings.Contains(out, "1 contacts") {
		t.Fatalf("recovery finish:\n%s", out)
	}
	if out := cli(t, "account", "--data", rosa.Dir); !strings.Contains(out, rosaID) {
		t.Fatalf("account after the restore:\n%s", out)
	}
	if out := cli(t, "recovery", "--data", rosa.Dir); !strings.Contains(out, "held by relay") {
		t.Fatalf("recovery status after the restore:\n%s", out)
	}
	// The photo comes back from the relay.
	cli(t, "photo", "get", "--out", got, "--data", rosa.Dir)
	if b, err := os.ReadFile(got); err != nil || !bytes.Equal(b, pic.Bytes()) {
		t.Fatalf("the restored photo: %d bytes, %v", len(b), err)
	}
	if out := cli(t, "recovery", "off", "--data", rosa.Dir); !strings.Contains(out, "recovery is off") {
		t.Fatalf("recovery off:\n%s", out)
	}
	cli(t, "photo", "clear", "--data", rosa.Dir)
	if e := failing(t, "photo", "get", "--out", got, "--data", rosa.Dir); !strings.Contains(e, "no_photo") {
		t.Fatalf("photo after clearing: %s", e)
	}
}
