package prekeys

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"slices"
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/protocols/wire"
)

// TestOwnerAuthRefused: every way of getting the owner proof wrong is
// UNAUTHORIZED (or MALFORMED for what is not a proof at all), and changes
// nothing on the relay.
func TestOwnerAuthRefused(t *testing.T) {
	clk := newClock()
	r := startRelay(t, clk, relaxed...)
	other := startRelay(t, clk)
	bob := newAccount(t, clk.Now(), 3, 3)
	mallory := newAccount(t, clk.Now(), 3, 3)
	c := newClient(t, r)
	mustPublish(t, c, r, bob, bob.store.Upload())

	// A new upload bob would like to make: fresh keys.
	fresh := &account{id: bob.id, store: bob.store}
	newerKeys(t, fresh, 2, 2, clk.Now())
	freshUp, err := fresh.store.Upload().Marshal()
	if err != nil {
		t.Fatal(err)
	}
	malloryUp, err := mallory.store.Upload().Marshal()
	if err != nil {
		t.Fatal(err)
	}
	bobID := bob.id.Public().Marshal()
	malloryID := mallory.id.Public().Marshal()
	signed := func(id *e2ee.Identity, o op, identity, upload []byte, mutate func(nonce []byte, relay, self peer.ID) ([]byte, peer.ID, peer.ID)) func([]byte, peer.ID, peer.ID) request {
		return func(nonce []byte, relay, self peer.ID) request {
			n, rl, sf := nonce, relay, self
			if mutate != nil {
				n, rl, sf = mutate(nonce, relay, self)
			}
			sig := id.Sign(authMessage(n, rl, sf, requestHash(o, identity, upload)))
			return request{kind: reqOwner, op: o, identity: identity, upload: upload, sig: sig}
		}
	}
	otherPeer := newHost(t).ID()
	tests := []struct {
		name string
		sign func([]byte, peer.ID, peer.ID) request
		want Code
	}{
		{"upload of another identity", signed(bob.id, opPublish, bobID, malloryUp, nil), CodeUnauthorized},
		{"identity claimed, signed by another", signed(mallory.id, opPublish, bobID, freshUp, nil), CodeUnauthorized},
		{"purge signed by another", signed(mallory.id, opPurge, bobID, nil, nil), CodeUnauthorized},
		{"forged signature", func(nonce []byte, relay, self peer.ID) request {
			sig := make([]byte, 64)
			_, _ = rand.Read(sig)
			return request{kind: reqOwner, op: opPublish, identity: bobID, upload: freshUp, sig: sig}
		}, CodeUnauthorized},
		{"for another relay", signed(bob.id, opPublish, bobID, freshUp, func(n []byte, _, self peer.ID) ([]byte, peer.ID, peer.ID) {
			return n, other.ID(), self
		}), CodeUnauthorized},
		{"for another peer", signed(bob.id, opPublish, bobID, freshUp, func(n []byte, relay, _ peer.ID) ([]byte, peer.ID, peer.ID) {
			return n, relay, otherPeer
		}), CodeUnauthorized},
		{"old nonce", signed(bob.id, opPublish, bobID, freshUp, func(_ []byte, relay, self peer.ID) ([]byte, peer.ID, peer.ID) {
			return bytes.Repeat([]byte{7}, nonceSize), relay, self
		}), CodeUnauthorized},
		{"signed another request", func(nonce []byte, relay, self peer.ID) request {
			req := signed(bob.id, opStatus, bobID, nil, nil)(nonce, relay, self)
			req.op, req.upload = opPurge, nil
			return req
		}, CodeUnauthorized},
		{"signed another upload", func(nonce []byte, relay, self peer.ID) request {
			req := signed(bob.id, opPublish, bobID, malloryUp, nil)(nonce, relay, self)
			req.upload = freshUp
			return req
		}, CodeUnauthorized},
		{"garbage identity", signed(bob.id, opPurge, []byte("garbage"), nil, nil), CodeMalformed},
		{"garbage upload", signed(bob.id, opPublish, bobID, []byte("garbage"), nil), CodeMalformed},
		{"hello again", func([]byte, peer.ID, peer.ID) request { return request{kind: reqHello} }, CodeMalformed},
		{"mallory's own identity, bob's upload", signed(mallory.id, opPublish, malloryID, freshUp, nil), CodeUnauthorized},
	}
	before := r.keys(t)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := rawOwner(t, c, r.ID(), tc.sign)
			if err != nil {
				t.Fatalf("exchange: %v", err)
			}
			if resp.code != tc.want {
				t.Fatalf("relay answered %v, want %v", resp.code, tc.want)
			}
			if resp.status != nil {
				t.Fatal("a refused request got a status")
			}
			if after := r.keys(t); !slices.Equal(before, after) {
				t.Fatalf("refused request changed the store: %d keys before, %d after", len(before), len(after))
			}
		})
	}
	if got := r.svc.Accounts(); got != 1 {
		t.Fatalf("Accounts() = %d, want 1 (mallory never got in)", got)
	}

	// The proof that does verify goes through.
	resp, err := rawOwner(t, c, r.ID(), signed(bob.id, opPublish, bobID, freshUp, nil))
	if err != nil || resp.code != CodeOK || resp.status.AddedOneTime != 2 {
		t.Fatalf("correct proof: %v, code %v, status %+v", err, resp.code, resp.status)
	}
}

// TestOwnerRequestWithoutChallenge: an owner request as the first frame
// is refused.
func TestOwnerRequestWithoutChallenge(t *testing.T) {
	r := startRelay(t, nil)
	c := newClient(t, r)
	err := c.roundTrip(testCtx(t), r.ID(), func(st networkStream, rd *wire.Reader) error {
		req := request{kind: reqOwner, op: opPurge, identity: []byte{1}, sig: make([]byte, 64)}
		if err := wire.Write(st, encodeRequest(req), maxRequestFrame); err != nil {
			return err
		}
		resp, err := readResponse(rd)
		if err != nil {
			return err
		}
		if resp.code != CodeMalformed {
			t.Errorf("relay answered %v, want malformed", resp.code)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestOversizedFrames: frames over their caps are refused with
// TOO_LARGE before they are read.
func TestOversizedFrames(t *testing.T) {
	r := startRelay(t, nil)
	c := newClient(t, r)
	for _, tc := range []struct {
		name  string
		hello bool
		size  int
	}{
		{"first frame", false, maxRequestFrame + 1},
		{"owner frame", true, maxOwnerFrame + 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := c.roundTrip(testCtx(t), r.ID(), func(st networkStream, rd *wire.Reader) error {
				if tc.hello {
					if err := wire.Write(st, encodeRequest(request{kind: reqHello}), maxRequestFrame); err != nil {
						return err
					}
					if _, err := readResponse(rd); err != nil {
						return err
					}
				}
				// Announce the frame; the relay must answer without
				// waiting for its bytes.
				if _, err := st.Write(binary.AppendUvarint(nil, uint64(tc.size))); err != nil {
					return err
				}
				resp, err := readResponse(rd)
				if err != nil {
					return err
				}
				if resp.code != CodeTooLarge {
					t.Errorf("relay answered %v, want too_large", resp.code)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}
