package mailbox

import (
	"bytes"
	"crypto/ed25519"
	"encoding/hex"
	"errors"
	"io"
	"testing"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/kinmesh/kinmesh/protocols/mailbox/pb"
)

func rawID(id MailboxID) []byte {
	raw, err := mailboxRaw(string(id))
	if err != nil {
		panic(err)
	}
	return raw[:]
}

func depositReq(id uint64, mbox []byte, envs ...[]byte) *pb.Request {
	return &pb.Request{Id: id, Body: &pb.Request_Deposit{Deposit: &pb.Deposit{Mailbox: mbox, Envelopes: envs}}}
}

func helloReq(id uint64) *pb.Request {
	return &pb.Request{Id: id, Body: &pb.Request_Hello{Hello: &pb.Hello{}}}
}

func authReq(id uint64, pub, sig []byte) *pb.Request {
	return &pb.Request{Id: id, Body: &pb.Request_Auth{Auth: &pb.Auth{PublicKey: pub, Signature: sig}}}
}

func fetchReq(id uint64) *pb.Request {
	return &pb.Request{Id: id, Body: &pb.Request_Fetch{Fetch: &pb.Fetch{}}}
}

func TestAuthRefused(t *testing.T) {
	r := startRelay(t)
	c := newClient(t, r)
	k, other := ownerKey(t, r), newKey(t)
	envs := envelopes(2, 100, "secret")
	mustDeposit(t, c, r, k.ID(), envs)
	raw := rawIDFromPublicKey(k.Public())
	relayID, me := r.h.ID(), c.h.ID()
	sign := func(key Key, nonce []byte, relay, owner peer.ID) []byte {
		return ed25519.Sign(key.priv, authMessage(nonce, relay, owner, raw))
	}
	stranger := newHost(t).ID()

	tests := []struct {
		name string
		// auth returns the Auth to send given this stream's challenge
		// nonce (nil: send no Hello first).
		hello bool
		auth  func(nonce []byte) *pb.Request
	}{
		{"no challenge", false, func([]byte) *pb.Request {
			return authReq(2, k.Public(), sign(k, make([]byte, nonceSize), relayID, me))
		}},
		{"forged signature", true, func([]byte) *pb.Request {
			return authReq(2, k.Public(), make([]byte, ed25519.SignatureSize))
		}},
		{"wrong key", true, func(n []byte) *pb.Request {
			return authReq(2, k.Public(), sign(other, n, relayID, me))
		}},
		{"signed for another relay", true, func(n []byte) *pb.Request {
			return authReq(2, k.Public(), sign(k, n, stranger, me))
		}},
		{"signed for another connection", true, func(n []byte) *pb.Request {
			return authReq(2, k.Public(), sign(k, n, relayID, stranger))
		}},
		{"stale nonce", true, func([]byte) *pb.Request {
			return authReq(2, k.Public(), sign(k, make([]byte, nonceSize), relayID, me))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := openRaw(t, c, r)
			var nonce []byte
			if tt.hello {
				s.send(helloReq(1))
				ch := s.recv().GetChallenge()
				if ch == nil || len(ch.GetNonce()) != nonceSize || peer.ID(ch.GetRelay()) != relayID {
					t.Fatalf("bad challenge %v", ch)
				}
				nonce = ch.GetNonce()
			}
			s.send(tt.auth(nonce))
			if got := s.errCode(s.recv()); got != pb.Code_CODE_UNAUTHORIZED {
				t.Fatalf("auth: got %v, want UNAUTHORIZED", got)
			}
			s.send(fetchReq(3))
			if got := s.errCode(s.recv()); got != pb.Code_CODE_UNAUTHORIZED {
				t.Fatalf("fetch after refused auth: got %v, want UNAUTHORIZED", got)
			}
		})
	}

	t.Run("replay from another stream", func(t *testing.T) {
		s1, s2 := openRaw(t, c, r), openRaw(t, c, r)
		s1.send(helloReq(1))
		n1 := s1.recv().GetChallenge().GetNonce()
		s2.send(helloReq(1))
		_ = s2.recv()
		s2.send(authReq(2, k.Public(), sign(k, n1, relayID, me)))
		if got := s2.errCode(s2.recv()); got != pb.Code_CODE_UNAUTHORIZED {
			t.Fatalf("replayed auth: got %v, want UNAUTHORIZED", got)
		}
	})

	t.Run("one attempt per challenge", func(t *testing.T) {
		s := openRaw(t, c, r)
		s.send(helloReq(1))
		n := s.recv().GetChallenge().GetNonce()
		s.send(authReq(2, k.Public(), make([]byte, ed25519.SignatureSize)))
		_ = s.recv()
		s.send(authReq(3, k.Public(), sign(k, n, relayID, me)))
		if got := s.errCode(s.recv()); got != pb.Code_CODE_UNAUTHORIZED {
			t.Fatalf("second attempt on one challenge: got %v, want UNAUTHORIZED", got)
		}
	})

	t.Run("malformed auth uses up the challenge", func(t *testing.T) {
		s := openRaw(t, c, r)
		s.send(helloReq(1))
		n := s.recv().GetChallenge().GetNonce()
		s.send(authReq(2, k.Public()[:31], sign(k, n, relayID, me)))
		if got := s.errCode(s.recv()); got != pb.Code_CODE_MALFORMED {
			t.Fatalf("auth with a short key: got %v, want MALFORMED", got)
		}
		s.send(authReq(3, k.Public(), sign(k, n, relayID, me)))
		if got := s.errCode(s.recv()); got != pb.Code_CODE_UNAUTHORIZED {
			t.Fatalf("good auth on a challenge a malformed one used: got %v, want UNAUTHORIZED", got)
		}
	})

	t.Run("malformed auths end the stream", func(t *testing.T) {
		s := openRaw(t, c, r)
		for i := range maxAuthFailures {
			s.send(authReq(uint64(i+1), k.Public(), make([]byte, ed25519.SignatureSize-1)))
			if got := s.errCode(s.recv()); got != pb.Code_CODE_MALFORMED {
				t.Fatalf("auth %d with a short signature: got %v, want MALFORMED", i+1, got)
			}
		}
		if _, err := s.rd.ReadBytes(maxResponseFrame); !errors.Is(err, io.EOF) {
			t.Fatalf("after %d malformed auths: read %v, want EOF", maxAuthFailures, err)
		}
	})

	t.Run("three failures end the stream", func(t *testing.T) {
		s := openRaw(t, c, r)
		for i := range maxAuthFailures {
			s.send(authReq(uint64(i+1), k.Public(), make([]byte, ed25519.SignatureSize)))
			_ = s.recv()
		}
		if _, err := s.rd.ReadBytes(maxResponseFrame); !errors.Is(err, io.EOF) {
			t.Fatalf("after %d failures: read %v, want EOF", maxAuthFailures, err)
		}
	})

	t.Run("unauthenticated fetch ack purge", func(t *testing.T) {
		s := openRaw(t, c, r)
		for i, req := range []*pb.Request{
			fetchReq(1),
			{Id: 2, Body: &pb.Request_Ack{Ack: &pb.Ack{Seqs: []uint64{1, 2, 3}}}},
			{Id: 3, Body: &pb.Request_Purge{Purge: &pb.Purge{}}},
		} {
			s.send(req)
			m := s.recv()
			if m.GetId() != uint64(i+1) || s.errCode(m) != pb.Code_CODE_UNAUTHORIZED {
				t.Fatalf("request %d: got %v, want UNAUTHORIZED", i+1, m)
			}
		}
	})

	// Nothing changed: the owner still finds both items.
	if got := fetchAll(t, openSession(t, c, r, k)); len(got) != 2 {
		t.Fatalf("after refused auths: %d items, want 2", len(got))
	}

}

func TestKey(t *testing.T) {
	seed := make([]byte, ed25519.SeedSize)
	for i := range seed {
		seed[i] = byte(i)
	}
	k, err := UnmarshalKey(seed)
	if err != nil {
		t.Fatal(err)
	}
	// Golden values, computed independently (Python, pyca/cryptography):
	// ID = base32-lower-nopad(SHA-256("kinmesh/mailbox/id/v1" || pub)).
	const wantPub = "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"
	const wantID = "kevsejpxk24m37eeyxspnogg244mff576roypv23vbfi2omwlcta"
	if got := hex.EncodeToString(k.Public()); got != wantPub {
		t.Fatalf("public key %s, want %s", got, wantPub)
	}
	if got := k.ID(); got != wantID {
		t.Fatalf("ID() = %s, want %s", got, wantID)
	}
	id, err := MailboxIDFromPublicKey(k.Public())
	if err != nil || id != k.ID() {
		t.Fatalf("MailboxIDFromPublicKey = %s, %v", id, err)
	}
	b, _ := k.MarshalBinary()
	if !bytes.Equal(b, seed) {
		t.Fatalf("MarshalBinary = %x, want the seed", b)
	}
	k2, err := UnmarshalKey(b)
	if err != nil || k2.ID() != k.ID() {
		t.Fatalf("round trip: %v", err)
	}
	if _, err := UnmarshalKey(b[:31]); !errors.Is(err, ErrBadKey) {
		t.Fatalf("short key: %v", err)
	}
	if _, err := (Key{}).MarshalBinary(); !errors.Is(err, ErrBadKey) {
		t.Fatalf("zero key: %v", err)
	}
	if _, err := MailboxIDFromPublicKey(k.Public()[:31]); !errors.Is(err, ErrBadKey) {
		t.Fatalf("short public key: %v", err)
	}

	// Golden auth message: relay and owner are the Ed25519 peer ids of
	// seeds 0x01… and 0x02…, the nonce 32 bytes of 0x55.
	relay := peerFromSeed(t, 1)
	owner := peerFromSeed(t, 2)
	nonce := bytes.Repeat([]byte{0x55}, nonceSize)
	msg := authMessage(nonce, relay, owner, rawIDFromPublicKey(k.Public()))
	const wantMsg = "6b696e6d6573682f6d61696c626f782f617574682f7631" + "00" +
		"5555555555555555555555555555555555555555555555555555555555555555" +
		"0026" + "0024080112208a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c" +
		"0026" + "0024080112208139770ea87d175f56a35466c34c7ecccb8d8a91b4ee37a25df60f5b8fc9b394" +
		"512b2225f756b8cdfc84c5e4f6b8c6d738c297bff45d87d75ba84a8d399658a6"
	if got := hex.EncodeToString(msg); got != wantMsg {
		t.Fatalf("auth message\n got %s\nwant %s", got, wantMsg)
	}
}

func peerFromSeed(t *testing.T, b byte) peer.ID {
	t.Helper()
	priv, err := crypto.UnmarshalEd25519PrivateKey(ed25519.NewKeyFromSeed(bytes.Repeat([]byte{b}, 32)))
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestParseMailboxID(t *testing.T) {
	good := newKey(t).ID()
	tests := []struct {
		name string
		in   string
		ok   bool
	}{
		{"good", string(good), true},
		{"empty", "", false},
		{"short", string(good[:51]), false},
		{"upper case", string(good[:51]) + "A", false},
		{"bad alphabet", string(good[:51]) + "1", false},
		{"long", string(good) + "a", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseMailboxID(tt.in)
			if (err == nil) != tt.ok {
				t.Fatalf("ParseMailboxID(%q): got %v, want ok=%v", tt.in, err, tt.ok)
			}
			if !tt.ok && !errors.Is(err, ErrBadMailboxID) {
				t.Fatalf("got %v, want ErrBadMailboxID", err)
			}
		})
	}
}
