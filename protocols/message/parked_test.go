package message

import (
	"context"
	"crypto/rand"
	"strings"
	"testing"
	"time"

	"github.com/kinmesh/kinmesh/protocols/e2ee"
)

// TestParkedBesideSessions: a group message parked for its sender key is
// kept apart from the sessions with its sender, so retrying it when the
// key comes leaves those sessions in the store, and the conversation goes
// on after a restart (nothing cached).
func TestParkedBesideSessions(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	_, a, b := pair(t, ctx)
	connect(t, ctx, a, b)
	exchange(t, ctx, a, b, "before")

	// A message of a's in a group b doesn't know, parked at b; then a's
	// key arrives (as it would in the same envelope), and b retries it.
	k, err := e2ee.NewSenderKey(rand.Reader, newID(), a.me(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	msg, _, err := k.Encrypt([]byte("a group message"))
	if err != nil {
		t.Fatal(err)
	}
	b.svc.mu.Lock()
	tx := b.svc.begin()
	tx.park([32]byte{1}, e2ee.EnvelopeContent{Sender: a.id.Public(), Type: e2ee.ContentSenderKey, Payload: msg}, inbound{from: a.me()})
	if err := tx.commit(); err != nil {
		b.svc.mu.Unlock()
		t.Fatal(err)
	}
	tx = b.svc.begin()
	tx.keysArrived = []e2ee.AccountID{a.me()}
	tx.unpark(map[e2ee.AccountID][][]byte{})
	err = tx.commit()
	b.svc.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}

	if ss, _, keys := storedSessions(t, ctx, b, a); len(ss) == 0 || len(keys) != len(ss) {
		t.Fatalf("b's sessions with a after a parked message was retried: %d, under %d keys", len(ss), len(keys))
	}
	restart(t, b)
	connect(t, ctx, a, b)
	exchange(t, ctx, a, b, "after")
}

// TestParkedBounded: group messages waiting for a sender key can't be
// piled up by whoever claims to be a sender: at most maxParkedPerSender
// per claimed sender and maxParked in all are kept; the rest are dropped
// as unreadable (and acked, so they leave the relays).
func TestParkedBounded(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	r := newRelay(t)
	b := newDevice(t, "b", r)
	senders := maxParked/maxParkedPerSender + 1
	var envs [][]byte
	for range senders {
		x, err := e2ee.NewIdentity(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		k, err := e2ee.NewSenderKey(rand.Reader, newID(), x.AccountID(), time.Now())
		if err != nil {
			t.Fatal(err)
		}
		for range maxParkedPerSender + 2 {
			var msg []byte
			if msg, k, err = k.Encrypt([]byte("junk")); err != nil {
				t.Fatal(err)
			}
			env, err := e2ee.SealEnvelope(b.rec.MailboxKey, e2ee.EnvelopeContent{Sender: x.Public(), Type: e2ee.ContentSenderKey, Payload: msg})
			if err != nil {
				t.Fatal(err)
			}
			envs = append(envs, env)
		}
	}
	for i, err := range b.svc.receive(envs, nil, nil) {
		if err != nil && i%(maxParkedPerSender+2) < maxParkedPerSender {
			t.Fatalf("envelope %d: %v", i, err)
		}
	}
	per := map[string]int{}
	total := 0
	err := b.svc.ns.List(ctx, listPrefix("w/"), func(k string, _ []byte) error {
		o, _, _ := strings.Cut(strings.TrimPrefix(k, "w/"), "/")
		per[o]++
		total++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if total != maxParked {
		t.Errorf("%d messages parked, want %d", total, maxParked)
	}
	for o, n := range per {
		if n > maxParkedPerSender {
			t.Errorf("%d parked for one sender (%s), want at most %d", n, o, maxParkedPerSender)
		}
	}
}
