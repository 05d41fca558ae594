package turn

import (
	"bytes"
	"net/netip"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"
)

func marshal(m proto.Message) []byte {
	b, err := proto.Marshal(m)
	if err != nil {
		panic(err)
	}
	return b
}

func FuzzDecodeRequest(f *testing.F) {
	var r request
	r.account[0], r.time, r.sig = 1, 1_700_000_000, make([]byte, 64)
	f.Add(marshal(encodeRequest(r)))
	f.Add([]byte{0x0a, 0x01, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, code := decodeRequest(b)
		if code != CodeOK {
			return
		}
		again, code := decodeRequest(marshal(encodeRequest(r)))
		if code != CodeOK || again.account != r.account || again.time != r.time || !bytes.Equal(again.sig, r.sig) {
			t.Fatalf("round trip changed the request: %+v != %+v (%v)", again, r, code)
		}
	})
}

func FuzzDecodeResponse(f *testing.F) {
	secret := make([]byte, SecretSize)
	c := issue(secret, make([]byte, 32), peer.ID("device"), time.Unix(1_800_000_000, 0), serverURLs(netip.MustParseAddrPort("198.51.100.7:3478"), netip.MustParseAddrPort("198.51.100.7:3478")))
	f.Add(marshal(encodeResponse(response{creds: &c, ttl: 10 * time.Minute})))
	f.Add(marshal(encodeResponse(response{code: CodeRateLimited, retryAfter: time.Second})))
	now := time.Unix(1_700_000_000, 0)
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := decodeResponse(b, now)
		if err != nil || r.creds == nil {
			return
		}
		again, err := decodeResponse(marshal(encodeResponse(r)), now)
		if err != nil || again.creds == nil || again.creds.Username != r.creds.Username ||
			again.creds.Password != r.creds.Password || !again.creds.Expires.Equal(r.creds.Expires) || len(again.creds.URLs) != len(r.creds.URLs) {
			t.Fatalf("round trip changed the response: %+v != %+v (%v)", again, r, err)
		}
	})
}

func FuzzParseUsername(f *testing.F) {
	f.Add("1800000000:" + accountTag(make([]byte, SecretSize), make([]byte, 32), peer.ID("device")))
	f.Add("0:x")
	f.Fuzz(func(t *testing.T, s string) {
		exp, tag, err := parseUsername(s)
		if err != nil {
			return
		}
		if got := formatUsername(exp, tag); got != s {
			t.Fatalf("username %q parsed and formatted back as %q", s, got)
		}
	})
}

func FuzzParseURL(f *testing.F) {
	for _, u := range []string{"stun:198.51.100.7:3478", "turn:[2001:db8::1]:3478?transport=tcp", "turn:1.2.3.4:5?transport=udp"} {
		f.Add(u)
	}
	f.Fuzz(func(t *testing.T, s string) {
		scheme, addr, tr, err := ParseURL(s)
		if err != nil {
			return
		}
		back := scheme + ":" + addr.String()
		if scheme == schemeTURN {
			back += "?transport=" + tr
		}
		s2, a2, t2, err := ParseURL(back)
		if err != nil || s2 != scheme || a2 != addr || t2 != tr {
			t.Fatalf("%q → %q does not parse the same: %v", s, back, err)
		}
	})
}
