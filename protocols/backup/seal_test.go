package backup

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/kinmesh/kinmesh/protocols/backup/pb"
)

func TestSecretFormat(t *testing.T) {
	s := newSecret(t)
	str := s.String()
	if !regexp.MustCompile(`^[A-Z2-7]{4}(-[A-Z2-7]{4}){7}$`).MatchString(str) {
		t.Fatalf("secret %q: want 8 groups of 4 characters A-Z, 2-7", str)
	}
	typed := []string{
		str,
		strings.ToLower(str),
		strings.ReplaceAll(str, "-", " "),
		strings.ReplaceAll(str, "-", ""),
		"  " + strings.ReplaceAll(strings.ReplaceAll(strings.ReplaceAll(str, "O", "0"), "I", "1"), "B", "8") + "\n",
	}
	for _, in := range typed {
		got, err := ParseSecret(in)
		if err != nil {
			t.Fatalf("ParseSecret(%q): %v", in, err)
		}
		if !got.Equal(s) {
			t.Fatalf("ParseSecret(%q) = %s, want %s", in, got, s)
		}
	}
}

func TestSecretTypos(t *testing.T) {
	s := newSecret(t)
	str := s.String()
	// Every single-character substitution is caught by the check, but
	// for the rare one that collides (1 in 65,536); count them.
	alphabet := "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
	missed := 0
	tried := 0
	for i := 0; i < len(str); i++ {
		if str[i] == '-' {
			continue
		}
		for _, c := range alphabet {
			if byte(c) == str[i] {
				continue
			}
			typo := str[:i] + string(c) + str[i+1:]
			tried++
			if _, err := ParseSecret(typo); err == nil {
				missed++
			} else if !errors.Is(err, ErrInvalidSecret) {
				t.Fatalf("ParseSecret(typo): %v, want ErrInvalidSecret", err)
			}
		}
	}
	if missed > 1 {
		t.Fatalf("%d of %d one-character typos passed the check", missed, tried)
	}
	for _, in := range []string{"", "ABCD", str + "A", str[:len(str)-1], strings.Replace(str, "-", "!", 1), strings.Repeat("A", 1000)} {
		if _, err := ParseSecret(in); !errors.Is(err, ErrInvalidSecret) {
			t.Errorf("ParseSecret(%q): %v, want ErrInvalidSecret", in, err)
		}
	}
}

// TestSecretGolden pins the display form of a known secret (checked
// independently: Python base32 and hashlib give the same string).
func TestSecretGolden(t *testing.T) {
	var s Secret
	for i := range s.b {
		s.b[i] = byte(i)
	}
	const want = "AAAQ-EAYE-AUDA-OCAJ-BIFQ-YDIO-B4IB-DUKC"
	if got := s.String(); got != want {
		t.Fatalf("secret 00 01 … 11 shows as %q, want %q", got, want)
	}
	back, err := ParseSecret(want)
	if err != nil || !back.Equal(s) {
		t.Fatalf("ParseSecret(%q) = %v, %v", want, back, err)
	}
}

func TestBucket(t *testing.T) {
	tests := []struct {
		name string
		n    int
		want int
	}{
		{"empty", 0, 4 << 10},
		{"small", 100, 4 << 10},
		{"fills 4 KiB", 4<<10 - 4, 4 << 10},
		{"one over 4 KiB", 4<<10 - 3, 8 << 10},
		{"40 KiB", 40 << 10, 64 << 10},
		{"largest", MaxContentsSize, 1 << 20},
		{"too large", MaxContentsSize + 1, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Bucket(tt.n); got != tt.want {
				t.Fatalf("Bucket(%d) = %d, want %d", tt.n, got, tt.want)
			}
		})
	}
}

func TestSealOpen(t *testing.T) {
	s := newSecret(t)
	k, err := NewKey(s, testKDF, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{0, 1, 4000, 5000, 70_000, MaxContentsSize} {
		contents := make([]byte, n)
		_, _ = rand.Read(contents)
		blob, err := k.Seal(contents, rand.Reader)
		if err != nil {
			t.Fatalf("Seal(%d bytes): %v", n, err)
		}
		if len(blob) != BlobSize(n) {
			t.Fatalf("blob of %d bytes for %d bytes of contents, want %d", len(blob), n, BlobSize(n))
		}
		if err := CheckBlob(blob); err != nil {
			t.Fatalf("CheckBlob: %v", err)
		}
		got, k2, err := Open(blob, s)
		if err != nil {
			t.Fatalf("Open(%d bytes): %v", n, err)
		}
		if !bytes.Equal(got, contents) {
			t.Fatalf("opened %d bytes, want the %d sealed", len(got), n)
		}
		if !bytes.Equal(k2.Marshal(), k.Marshal()) {
			t.Fatal("the key derived from the secret is not the sealing key")
		}
	}
	if _, err := k.Seal(make([]byte, MaxContentsSize+1), rand.Reader); !errors.Is(err, ErrContentsTooLarge) {
		t.Fatalf("Seal(too large): %v, want ErrContentsTooLarge", err)
	}
}

func TestWrongSecret(t *testing.T) {
	s := newSecret(t)
	blob, k := sealed(t, s, []byte("grandma's contacts"))
	if _, _, err := Open(blob, newSecret(t)); !errors.Is(err, ErrWrongSecret) {
		t.Fatalf("Open with another secret: %v, want ErrWrongSecret", err)
	}
	// A key of the same secret with another salt opens nothing of it.
	other, err := NewKey(s, testKDF, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.Open(blob); !errors.Is(err, ErrWrongSecret) {
		t.Fatalf("Open with another salt's key: %v, want ErrWrongSecret", err)
	}
	// Tampering anywhere fails authentication (or the form check).
	for _, off := range []int{6, 20, 40, HeaderSize, len(blob) - 1} {
		bad := bytes.Clone(blob)
		bad[off] ^= 1
		_, _, err := Open(bad, s)
		if !errors.Is(err, ErrWrongSecret) && !errors.Is(err, ErrBadBlob) {
			t.Errorf("Open with byte %d flipped: %v, want ErrWrongSecret or ErrBadBlob", off, err)
		}
		if _, err := k.Open(bad); !errors.Is(err, ErrWrongSecret) && !errors.Is(err, ErrBadBlob) {
			t.Errorf("Key.Open with byte %d flipped: %v", off, err)
		}
	}
}

func TestKeyMarshal(t *testing.T) {
	s := newSecret(t)
	blob, k := sealed(t, s, []byte("x"))
	k2, err := UnmarshalKey(k.Marshal())
	if err != nil {
		t.Fatal(err)
	}
	if got, err := k2.Open(blob); err != nil || string(got) != "x" {
		t.Fatalf("unmarshalled key opens %q, %v", got, err)
	}
	if k2.KDF() != testKDF {
		t.Fatalf("KDF %+v, want %+v", k2.KDF(), testKDF)
	}
	for _, b := range [][]byte{nil, k.Marshal()[1:], append([]byte{9}, k.Marshal()[1:]...)} {
		if _, err := UnmarshalKey(b); err == nil {
			t.Errorf("UnmarshalKey(%x) succeeded", b)
		}
	}
}

// TestHeaderBounds: a relay can't make a device derive with absurd
// parameters.
func TestHeaderBounds(t *testing.T) {
	_, k := sealed(t, newSecret(t), nil)
	tests := []struct {
		name string
		p    KDFParams
		ok   bool
	}{
		{"default", DefaultKDF, true},
		{"test", testKDF, true},
		{"no passes", KDFParams{0, 1 << 10, 1}, false},
		{"11 passes", KDFParams{11, 1 << 10, 1}, false},
		{"no threads", KDFParams{1, 1 << 10, 0}, false},
		{"17 threads", KDFParams{1, 1 << 10, 17}, false},
		{"512 KiB", KDFParams{1, 512, 1}, false},
		{"512 MiB", KDFParams{1, 512 << 10, 1}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kk := *k
			kk.kdf = tt.p
			blob := append(kk.header(make([]byte, aeadNonceSize)), make([]byte, MinBucket+tagSize)...)
			_, err := ParseHeader(blob)
			if (err == nil) != tt.ok {
				t.Fatalf("ParseHeader with %+v: %v, want ok=%v", tt.p, err, tt.ok)
			}
			if !tt.ok && !errors.Is(err, ErrBadBlob) {
				t.Fatalf("got %v, want ErrBadBlob", err)
			}
		})
	}
	good := append(k.header(make([]byte, aeadNonceSize)), make([]byte, MinBucket+tagSize)...)
	for _, tt := range []struct {
		name string
		blob []byte
	}{
		{"empty", nil},
		{"header only", good[:HeaderSize]},
		{"one byte short", good[:len(good)-1]},
		{"one byte over", append(bytes.Clone(good), 0)},
		{"not a bucket", append(bytes.Clone(good), make([]byte, 100)...)},
		{"bad magic", append([]byte("KMBX"), good[4:]...)},
		{"bad version", append(append(bytes.Clone(good[:4]), 2), good[5:]...)},
		{"too large", make([]byte, MaxBlobSize+1)},
	} {
		if err := CheckBlob(tt.blob); !errors.Is(err, ErrBadBlob) {
			t.Errorf("%s: CheckBlob: %v, want ErrBadBlob", tt.name, err)
		}
	}
}

// TestGoldenBlob pins the header's byte layout.
func TestGoldenBlob(t *testing.T) {
	var s Secret
	k := deriveKey(s, [saltSize]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}, KDFParams{Time: 2, MemoryKiB: 4096, Threads: 3})
	nonce := bytes.Repeat([]byte{0xab}, aeadNonceSize)
	blob, err := k.Seal([]byte("hi"), bytes.NewReader(nonce))
	if err != nil {
		t.Fatal(err)
	}
	const want = "4b4d424b" + "01" + "01" + "00000002" + "00001000" + "03" +
		"0102030405060708090a0b0c0d0e0f10" + "abababababababababababababababababababababababab"
	if got := hex.EncodeToString(blob[:HeaderSize]); got != want {
		t.Fatalf("header\n got %s\nwant %s", got, want)
	}
	if len(blob) != HeaderSize+MinBucket+tagSize {
		t.Fatalf("blob of %d bytes", len(blob))
	}
}

func TestContentsRoundTrip(t *testing.T) {
	at := time.Unix(1_750_000_000, 0).UTC()
	c := &Contents{
		CreatedAt: at, Identity: []byte("id"), MailboxKey: []byte("mk"), MailboxAuth: []byte("ma"), Record: []byte("rec"),
		Profile: Profile{
			Name: "Ada", BirthDate: "1950-02-03", Country: "PT", Gender: "f", CreatedAt: at,
			PolicyVersion: "v2", PolicyAcceptedAt: at.Add(time.Hour), CreatedPolicy: "v1", ParentalConsent: true,
		},
		HomeRelays:   []string{"/ip4/1.2.3.4/tcp/1/p2p/x"},
		Contacts:     []Contact{{Record: []byte("r1"), AddedAt: at, Source: "invite"}, {Record: []byte("r2"), Source: "message"}},
		Blocks:       []Block{{Account: "acct", BlockedAt: at}},
		Settings:     []byte(`{"settings":{}}`),
		Presence:     "nobody",
		Phone:        &Phone{Number: "+351912345678", Relay: "/p2p/x", VerifiedAt: at},
		FormerRelays: []FormerRelay{{Relay: "/ip4/5.6.7.8/tcp/1/p2p/y", Since: at}, {Relay: "/p2p/z"}},
	}
	b, err := c.Encode()
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeContents(b)
	if err != nil {
		t.Fatal(err)
	}
	b2, err := got.Encode()
	if err != nil || !bytes.Equal(b, b2) {
		t.Fatalf("re-encoding differs: %v", err)
	}
	if got.Profile != c.Profile || *got.Phone != *c.Phone || len(got.Contacts) != 2 || got.Contacts[0].Source != "invite" || !got.Contacts[1].AddedAt.IsZero() {
		t.Fatalf("decoded %+v", got)
	}
	if !slices.Equal(got.FormerRelays, c.FormerRelays) {
		t.Fatalf("former relays decoded as %+v, want %+v", got.FormerRelays, c.FormerRelays)
	}
	bad := []func(*Contents){
		func(c *Contents) { c.Identity = nil },
		func(c *Contents) { c.Record = make([]byte, maxRecordSize+1) },
		func(c *Contents) { c.Profile.Name = "" },
		func(c *Contents) { c.Profile.Name = string([]byte{0xff}) },
		func(c *Contents) { c.Blocks = []Block{{}} },
		func(c *Contents) { c.HomeRelays = make([]string, maxHomeRelays+1) },
		func(c *Contents) { c.Contacts = []Contact{{}} },
		func(c *Contents) { c.Phone = &Phone{} },
		func(c *Contents) { c.FormerRelays = make([]FormerRelay, MaxFormerRelays+1) },
		func(c *Contents) { c.FormerRelays = []FormerRelay{{Since: at}} },
		func(c *Contents) { c.FormerRelays = []FormerRelay{{Relay: strings.Repeat("x", maxStringLen+1)}} },
	}
	for i, f := range bad {
		cc := *c
		f(&cc)
		if _, err := cc.Encode(); !errors.Is(err, ErrBadContents) {
			t.Errorf("bad contents %d: Encode: %v, want ErrBadContents", i, err)
		}
	}
	if _, err := DecodeContents([]byte{0xff}); !errors.Is(err, ErrBadContents) {
		t.Fatalf("DecodeContents(garbage): %v", err)
	}
}

// TestContentsWithoutFormerRelays: a backup made before contents carried
// former relays (no field 14) still decodes, with none.
func TestContentsWithoutFormerRelays(t *testing.T) {
	old := &pb.Contents{
		Version: ContentsVersion, CreatedUnix: 1_750_000_000,
		Identity: []byte("id"), MailboxKey: []byte("mk"), MailboxAuth: []byte("ma"), Record: []byte("rec"),
		Profile:    &pb.Profile{Name: "Ada", BirthDate: "1950-02-03"},
		HomeRelays: []string{"/ip4/1.2.3.4/tcp/1/p2p/x"},
		Phone:      &pb.Phone{Number: "+351912345678", Relay: "/p2p/x"},
	}
	b, err := proto.Marshal(old)
	if err != nil {
		t.Fatal(err)
	}
	c, err := DecodeContents(b)
	if err != nil {
		t.Fatalf("DecodeContents(an older backup): %v", err)
	}
	if len(c.FormerRelays) != 0 || c.Profile.Name != "Ada" || c.Phone == nil {
		t.Fatalf("decoded %+v, want the profile and phone and no former relays", c)
	}
}
