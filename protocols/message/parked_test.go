package message

import (
	"context"
	"crypto/rand"
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
