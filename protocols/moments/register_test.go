package moments

import (
	"crypto/ed25519"
	"errors"
	"testing"
	"time"
)

// TestTopicSquatting: one who knows a topic's name and its audience
// public key (friends and relays do; names travel in plain gossipsub
// subscriptions) can't register it first and lock its author out of a
// relay: only a holder of the epoch's audience private key can register
// the topic it names.
func TestTopicSquatting(t *testing.T) {
	ctx := testCtx(t)
	r := startRelay(t)
	author := newFeedOwner(t, ctx, r)
	squatter := newFeedOwner(t, ctx, r)
	secret, err := newEpochSecret()
	if err != nil {
		t.Fatal(err)
	}
	ep := deriveEpoch(1, secret)
	audPub := ep.audience.Public().(ed25519.PublicKey)
	_, ownAud, _ := ed25519.GenerateKey(nil)
	legacy := deriveEpochVersion(2, secret, topicVersionLegacy)

	sqPub := squatter.owner.Public().(ed25519.PublicKey)
	tests := []struct {
		name     string
		topic    string
		audience ed25519.PublicKey
		audKey   ed25519.PrivateKey // signs as the audience key; nil: no signature
	}{
		{name: "author's audience key, no audience signature", topic: ep.topic, audience: audPub},
		{name: "author's audience key, signed by another key", topic: ep.topic, audience: audPub, audKey: ownAud},
		{name: "own audience key, author's topic", topic: ep.topic, audience: ownAud.Public().(ed25519.PublicKey), audKey: ownAud},
		{name: "legacy topic of the secret", topic: legacy.topic, audience: audPub, audKey: ep.audience},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			now := time.Now()
			msg := registerMessage(r.h.ID(), sqPub, tt.topic, tt.audience, now)
			req := request{kind: reqRegister, owner: sqPub, topic: tt.topic, audience: tt.audience, time: now,
				sig: ed25519.Sign(squatter.owner, msg)}
			if tt.audKey != nil {
				req.audSig = ed25519.Sign(tt.audKey, msg)
			}
			if _, err := squatter.c.do(ctx, r.h.ID(), req); !errors.Is(err, ErrUnauthorized) {
				t.Fatalf("squatter's register: got %v, want ErrUnauthorized", err)
			}
		})
	}

	// The author registers its topic and keeps a moment there.
	if err := author.c.Register(ctx, r.h.ID(), author.owner, ep.topic, ep.audience); err != nil {
		t.Fatalf("author's register: %v", err)
	}
	author.epochs = append(author.epochs, ep)
	_, post := author.post(ep)
	author.mustKeep(ctx, ep, post)
	if got := author.backfill(ctx, ep); len(got) != 1 {
		t.Fatalf("backfill: got %d frames, want 1", len(got))
	}
	fk := r.svc.ns.Opaque(sqPub)
	r.svc.mu.Lock()
	_, squatted := r.svc.feeds[fk]
	r.svc.mu.Unlock()
	if squatted {
		t.Fatal("the relay keeps a feed for the squatter")
	}
}

// TestLegacyTopicRotated: a device whose current epoch has a legacy topic
// (derived from the secret, before topics were bound to the audience key)
// keeps it across restarts; when a relay refuses to register it, the
// device starts a new epoch, whose topic the relay takes.
func TestLegacyTopicRotated(t *testing.T) {
	ctx := testCtx(t)
	r := startRelay(t)
	n := newNet()
	a := newDevice(t, n, "ann", r)
	ownEpoch := func() (epochKeys, []oldEpoch) {
		e := a.engine()
		e.mu.Lock()
		defer e.mu.Unlock()
		if e.own == nil {
			return epochKeys{}, nil
		}
		return e.own.cur, e.own.previous
	}
	waitFor(t, ctx, "ann's feed started", func() bool { cur, _ := ownEpoch(); return cur.topic != "" })

	// Make the current epoch legacy, registered nowhere, as an older
	// version stored it.
	e := a.engine()
	e.mu.Lock()
	e.own.cur = deriveEpochVersion(e.own.cur.epoch, e.own.cur.secret, 0)
	clear(e.own.registered)
	err := e.ns.Put(ctx, dkOwn, e.own.encode())
	e.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	a.Stop()
	a.Start()
	old, _ := ownEpoch()
	if !old.legacy || old.topic != deriveEpochVersion(0, old.secret, topicVersionLegacy).topic {
		t.Fatalf("after a restart the epoch is legacy=%v, topic %s; want the legacy topic", old.legacy, old.topic)
	}

	if err := a.engine().register(ctx, r.info()); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("register the legacy topic: got %v, want ErrUnauthorized", err)
	}
	waitFor(t, ctx, "a new epoch registered", func() bool {
		cur, _ := ownEpoch()
		r.svc.mu.Lock()
		_, ok := r.svc.topics[cur.topic]
		r.svc.mu.Unlock()
		return cur.epoch > old.epoch && ok
	})
	cur, prev := ownEpoch()
	if cur.legacy || cur.topic != TopicOf(cur.audience.Public().(ed25519.PublicKey)) {
		t.Fatalf("new epoch: legacy=%v, topic %s; want the audience key's", cur.legacy, cur.topic)
	}
	if len(prev) == 0 || prev[0].epoch != old.epoch || prev[0].topic != old.topic {
		t.Fatalf("previous epochs %v, want the legacy one listened to", prev)
	}
}
