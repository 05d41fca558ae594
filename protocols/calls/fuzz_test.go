package calls

import (
	"bytes"
	"crypto/rand"
	"testing"

	"google.golang.org/protobuf/proto"
)

func marshal(t testing.TB, f frame) []byte {
	b, err := proto.Marshal(encodeFrame(f))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

const testSDP = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=rtpmap:111 opus/48000/2\r\n"

func frameSeeds(t testing.TB) [][]byte {
	inv := frame{kind: kindInvite, account: "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", record: []byte{1, 2}, audio: true}
	_, _ = rand.Read(inv.callID[:])
	var out [][]byte
	for _, f := range []frame{
		inv, {kind: kindRing}, {kind: kindRing, relayOnly: true}, {kind: kindAccept}, {kind: kindBusy},
		{kind: kindReject, reason: reasonDeclined}, {kind: kindHangup, reason: reasonHangup},
		{kind: kindOffer, sdp: testSDP, restart: true}, {kind: kindAnswer, sdp: testSDP},
		{kind: kindCandidate, candidate: "candidate:1 1 udp 2130706431 192.0.2.1 5000 typ host", mid: "0"},
		{kind: kindCandidate, end: true},
		{kind: kindResume, callID: inv.callID},
	} {
		out = append(out, marshal(t, f))
	}
	return out
}

func TestFrameRoundTrip(t *testing.T) {
	for _, b := range frameSeeds(t) {
		f, err := decodeFrame(b)
		if err != nil {
			t.Fatalf("seed %x: %v", b, err)
		}
		if again := marshal(t, f); !bytes.Equal(again, b) {
			t.Errorf("%s: re-encoded %x, want %x", f.kind, again, b)
		}
	}
	for _, tc := range []struct {
		name string
		f    frame
	}{
		{"mDNS candidate", frame{kind: kindCandidate, candidate: "candidate:1 1 udp 2130706431 abcd.local 5000 typ host"}},
		{"host name candidate", frame{kind: kindCandidate, candidate: "candidate:1 1 udp 2130706431 example.org 5000 typ host"}},
		{"garbage candidate", frame{kind: kindCandidate, candidate: "hello"}},
		{"end with a candidate", frame{kind: kindCandidate, end: true, candidate: "candidate:1 1 udp 1 192.0.2.1 5000 typ host"}},
		{"empty SDP", frame{kind: kindOffer}},
		{"SDP without media", frame{kind: kindAnswer, sdp: "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"}},
		{"bad account", frame{kind: kindInvite, account: "nope"}},
	} {
		if _, err := decodeFrame(marshal(t, tc.f)); err == nil {
			t.Errorf("%s: accepted", tc.name)
		}
	}
	if _, err := decodeFrame(nil); err == nil {
		t.Error("empty frame accepted")
	}
	// A candidate's address and type are decoded with it.
	for _, tc := range []struct {
		cand  string
		addr  string
		relay bool
	}{
		{"candidate:1 1 udp 2130706431 192.0.2.1 5000 typ host", "192.0.2.1", false},
		{"candidate:1 1 udp 1694498815 203.0.113.9 5000 typ srflx raddr 0.0.0.0 rport 5000", "203.0.113.9", false},
		{"candidate:1 1 udp 1023 198.51.100.7 61000 typ relay raddr 0.0.0.0 rport 5000", "198.51.100.7", true},
		{"candidate:1 1 udp 2130706431 ::ffff:10.0.0.1 5000 typ host", "10.0.0.1", false},
		{"candidate:1 1 udp 2130706431 fe80::1%eth0 5000 typ host", "fe80::1", false},
	} {
		f, err := decodeFrame(marshal(t, frame{kind: kindCandidate, candidate: tc.cand}))
		if err != nil {
			t.Errorf("%s: %v", tc.cand, err)
			continue
		}
		if f.candAddr.String() != tc.addr || f.candRelay != tc.relay {
			t.Errorf("%s: address %v, relay %v; want %s, %v", tc.cand, f.candAddr, f.candRelay, tc.addr, tc.relay)
		}
	}
}

func FuzzDecodeFrame(f *testing.F) {
	for _, s := range frameSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, err := decodeFrame(b)
		if err != nil {
			return
		}
		again, err := decodeFrame(marshal(t, fr))
		if err != nil {
			t.Fatalf("re-encoded %s refused: %v", fr.kind, err)
		}
		if again.kind != fr.kind || again.callID != fr.callID || again.account != fr.account || !bytes.Equal(again.record, fr.record) ||
			again.reason != fr.reason || again.sdp != fr.sdp || again.restart != fr.restart || again.candidate != fr.candidate ||
			again.mid != fr.mid || again.mline != fr.mline || again.end != fr.end || again.audio != fr.audio || again.video != fr.video ||
			again.candAddr != fr.candAddr || again.candRelay != fr.candRelay {
			t.Fatalf("round trip changed the frame: %+v != %+v", again, fr)
		}
	})
}

func FuzzVP8(f *testing.F) {
	f.Add(vp8Packet(f, true))
	f.Add(vp8Packet(f, false))
	f.Add([]byte{0x90, 0x80, 0x80})
	f.Fuzz(func(t *testing.T, b []byte) {
		p, _, err := vp8Payload(b)
		if err == nil && len(p) > len(b) {
			t.Fatalf("payload of %d bytes from %d", len(p), len(b))
		}
		if w, h, ok := vp8KeyframeSize(b); ok && (w <= 0 || h <= 0 || w > 0x3fff || h > 0x3fff) {
			t.Fatalf("size %dx%d", w, h)
		}
	})
}
