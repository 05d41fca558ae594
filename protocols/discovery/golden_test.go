package discovery

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/kinmesh/kinmesh/protocols/wire"
)

// TestGoldenFrames pins the wire bytes of the fixed-layout frames.
func TestGoldenFrames(t *testing.T) {
	for _, tc := range []struct {
		name string
		m    []byte
		want string
	}{
		{"hello", marshal(encodeRequest(request{kind: reqHello})), "02" + "0a00"},
		{"list", marshal(encodeRequest(request{kind: reqList, since: 300, limit: 100})), "07" + "1a05" + "08ac02" + "1064"},
		{"list with base", marshal(encodeRequest(request{kind: reqList, since: 300, limit: 100, base: 280})), "0a" + "1a08" + "08ac02" + "1064" + "189802"},
		{"challenge", marshal(encodeResponse(response{nonce: bytes.Repeat([]byte{1}, 32)})), "24" + "1a22" + "0a20" + strings.Repeat("01", 32)},
		{"rate limited", marshal(encodeResponse(response{code: CodeRateLimited, retryAfter: 1500 * time.Millisecond})), "05" + "0804" + "10dc0b"},
		{"send code body", encodeOwnerBody(ownerBody{op: opSendCode, number: "+351912345678"}), "11" + "0a0f" + "0a0d" + hex.EncodeToString([]byte("+351912345678"))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := wire.WriteBytes(&buf, tc.m, maxOwnerFrame); err != nil {
				t.Fatal(err)
			}
			if got := hex.EncodeToString(buf.Bytes()); got != tc.want {
				t.Fatalf("frame\n got %s\nwant %s", got, tc.want)
			}
		})
	}
}

// TestAuthMessage checks the signed bytes against the layout in doc.go,
// built independently.
func TestAuthMessage(t *testing.T) {
	nonce := bytes.Repeat([]byte{0x11}, 32)
	relay, requester := peer.ID("relay-id"), peer.ID("me")
	identity, body := []byte("identity"), []byte("body bytes")
	h := sha256.Sum256(append(append([]byte{byte(len(identity))}, identity...), body...))
	var want []byte
	want = append(want, "kinmesh/discovery/v1/auth"...)
	want = append(want, 0)
	want = append(want, nonce...)
	want = append(want, byte(len(relay)))
	want = append(want, relay...)
	want = append(want, byte(len(requester)))
	want = append(want, requester...)
	want = append(want, h[:]...)
	if got := authMessage(nonce, relay, requester, requestHash(identity, body)); !bytes.Equal(got, want) {
		t.Fatalf("auth message\n got %x\nwant %x", got, want)
	}
}

func TestCodes(t *testing.T) {
	for c := CodeOK; c <= CodeUnavailable; c++ {
		if c.String() == fmt.Sprintf("code_%d", uint8(c)) {
			t.Errorf("code %d has no name", c)
		}
		if (c == CodeOK) != (c.Err() == nil) {
			t.Errorf("code %v: Err %v", c, c.Err())
		}
	}
	e := &Error{Code: CodeTooManyAttempts, RetryAfter: time.Hour}
	if !strings.Contains(e.Error(), "1h0m0s") || RetryAfter(e) != time.Hour {
		t.Fatalf("Error %q", e)
	}
	if err := Code(200).Err(); err == nil || !strings.Contains(err.Error(), "200") {
		t.Fatalf("unknown code: %v", err)
	}
	for i := 0; i < 2000; i++ {
		if c := newCode(); !validCode(c) {
			t.Fatalf("newCode() = %q", c)
		}
	}
}
