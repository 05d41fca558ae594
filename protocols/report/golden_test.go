package report

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/kinmesh/kinmesh/protocols/report/pb"
	"github.com/kinmesh/kinmesh/protocols/wire"
)

// TestGolden pins the encodings docs/protocol/report.md shows: the signed
// auth message, a submission and the frames.
func TestGolden(t *testing.T) {
	nonce := bytes.Repeat([]byte{0xaa}, nonceSize)
	var hash [sha256.Size]byte
	for i := range hash {
		hash[i] = byte(i)
	}
	key := bytes.Repeat([]byte{0x11}, 32)
	sub := Submission{
		Kind: KindReport, ID: strings.Repeat("ab", submissionIDSize), CreatedAt: time.UnixMilli(1_790_000_000_000),
		Reported: accountFromKey(key), Reason: ReasonSpam, Text: "spam",
	}
	body, err := Encode(sub)
	if err != nil {
		t.Fatal(err)
	}
	var hello, accepted bytes.Buffer
	if err := wire.Write(&hello, encodeRequest(request{kind: reqHello}), maxHelloFrame); err != nil {
		t.Fatal(err)
	}
	if err := wire.Write(&accepted, encodeResponse(response{receipt: &Receipt{ID: itemID(42)}}), maxResponseFrame); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		got  []byte
		want string
	}{
		{"auth message", authMessage(nonce, peer.ID("R"), hash),
			hex.EncodeToString([]byte(authContext)) + "00" + strings.Repeat("aa", 32) + "01" + "52" +
				"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"},
		{"submission", body,
			"0801" + "1210" + strings.Repeat("ab", 16) + "18" + "80d8c1a28c34" +
				"2220" + strings.Repeat("11", 32) + "2801" + "3204" + hex.EncodeToString([]byte("spam"))},
		{"hello frame", hello.Bytes(), "02" + "0a00"},
		{"accepted frame", accepted.Bytes(), "14" + "2212" + "0a10" + hex.EncodeToString([]byte("000000000000002a"))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := hex.EncodeToString(tt.got); got != tt.want {
				t.Fatalf("\n got %s\nwant %s", got, tt.want)
			}
		})
	}
}

// TestCodesMatchWire: every code's name is its wire name, and CodeOf
// finds it through wrapping.
func TestCodesMatchWire(t *testing.T) {
	for c := CodeOK; c <= CodeUnavailable; c++ {
		name, ok := pb.Code_name[int32(c)]
		if !ok || name != "CODE_"+strings.ToUpper(c.String()) {
			t.Errorf("code %d (%s): wire name %q", c, c, name)
		}
		if c != CodeOK && CodeOf(fmt.Errorf("wrapped: %w", c.Err())) != c {
			t.Errorf("CodeOf(%s.Err()) = %s", c, CodeOf(c.Err()))
		}
	}
	for r := ReasonSpam; r <= ReasonOther; r++ {
		name := pb.Reason_name[int32(r)]
		want := "REASON_" + strings.ToUpper(r.String())
		if r == ReasonSexual {
			want = "REASON_SEXUAL" // shown as sexual_content
		}
		if name != want {
			t.Errorf("reason %d (%s): wire name %q, want %q", r, r, name, want)
		}
	}
}
