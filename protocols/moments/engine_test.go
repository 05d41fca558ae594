package moments

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kinmesh/kinmesh/storage"
)

func photo(t testing.TB, size int, marker string) []byte {
	t.Helper()
	b := make([]byte, size)
	_, _ = rand.Read(b)
	copy(b[size/2:], marker)
	return b
}

// TestOnlineDelivery: a moment with a photo reaches every online friend
// at once and no one else; likes, comments and a withdrawn like reach the
// author and the friends.
func TestOnlineDelivery(t *testing.T) {
	ctx := testCtx(t)
	r := startRelay(t)
	n := newNet()
	a := newDevice(t, n, "grandma", r)
	b := newDevice(t, n, "mia", r)
	c := newDevice(t, n, "leo", r)
	outsider := newDevice(t, n, "stranger", r)
	befriend(a, b)
	befriend(a, c)
	befriend(b, c)
	distribute(t, ctx, a, b, c)

	img := photo(t, 700<<10, "PHOTO-MARKER")
	m, err := a.engine().Post(ctx, "Sunday lunch 🍝", []MediaInput{{Type: "image/jpeg", Data: img}})
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Media) != 1 || !m.Mine || m.Text != "Sunday lunch 🍝" {
		t.Fatalf("posted %+v", m)
	}
	for _, d := range []*testDevice{b, c} {
		ms := waitMoments(t, ctx, d, "grandma's moment", has(m.ID))
		got := find(ms, m.ID)
		if got.Author != string(a.ID()) || got.Text != m.Text || got.Mine || len(got.Media) != 1 {
			t.Fatalf("%s sees %+v", d.name, got)
		}
		typ, data, err := d.engine().Media(ctx, m.ID, 0)
		if err != nil {
			t.Fatalf("%s fetches the photo: %v", d.name, err)
		}
		if typ != "image/jpeg" || !bytes.Equal(data, img) {
			t.Fatalf("%s got %s of %d bytes, want the photo", d.name, typ, len(data))
		}
	}
	if err := b.engine().Like(ctx, m.ID); err != nil {
		t.Fatal(err)
	}
	if err := b.engine().Like(ctx, m.ID); err != nil { // twice is once
		t.Fatal(err)
	}
	cm, err := c.engine().Comment(ctx, m.ID, "Yum!")
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []*testDevice{a, b, c} {
		waitMoments(t, ctx, d, "mia's like and leo's comment", func(ms []Moment) bool {
			x := find(ms, m.ID)
			return len(x.Likes) == 1 && x.Likes[0].From == string(b.ID()) && x.Likes[0].Name == "mia" &&
				len(x.Comments) == 1 && x.Comments[0].Text == "Yum!" && x.Comments[0].ID == cm.ID
		})
	}
	if err := b.engine().Unlike(ctx, m.ID); err != nil {
		t.Fatal(err)
	}
	if err := c.engine().DeleteComment(ctx, m.ID, cm.ID); err != nil {
		t.Fatal(err)
	}
	for _, d := range []*testDevice{a, b, c} {
		waitMoments(t, ctx, d, "the like and comment taken back", func(ms []Moment) bool {
			x := find(ms, m.ID)
			return len(x.Likes) == 0 && len(x.Comments) == 0
		})
	}
	// The outsider got nothing, and can't react to what it doesn't have.
	if ms, _ := outsider.engine().Moments(ctx, 0); len(ms) != 0 {
		t.Fatalf("the outsider sees %+v", ms)
	}
	if err := outsider.engine().Like(ctx, m.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("outsider likes: got %v, want ErrNotFound", err)
	}
	// Only the author deletes.
	if err := b.engine().Delete(ctx, m.ID); !errors.Is(err, ErrNotAuthor) {
		t.Fatalf("a friend deletes: got %v, want ErrNotAuthor", err)
	}
}

// TestPostLimits: bad posts are refused with typed errors before anything
// is sent.
func TestPostLimits(t *testing.T) {
	ctx := testCtx(t)
	r := startRelay(t)
	a := newDevice(t, newNet(), "a", r)
	for _, tc := range []struct {
		name  string
		text  string
		media []MediaInput
		want  error
	}{
		{"empty", "  ", nil, ErrEmpty},
		{"text too long", string(bytes.Repeat([]byte("x"), MaxTextLen+1)), nil, ErrTooLarge},
		{"photo too large", "", []MediaInput{{Type: "image/png", Data: make([]byte, MaxPhotoSize+1)}}, ErrTooLarge},
		{"too many media", "", slices.Repeat([]MediaInput{{Type: "image/png", Data: []byte{1}}}, MaxMedia+1), ErrTooLarge},
		{"not a medium", "", []MediaInput{{Type: "text/plain", Data: []byte{1}}}, ErrMediaType},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := a.engine().Post(ctx, tc.text, tc.media); !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
	if ms, _ := a.engine().Moments(ctx, 0); len(ms) != 0 {
		t.Fatalf("refused posts left %d moments", len(ms))
	}
}

// TestBackfillAfterOffline: a friend offline while moments, reactions and
// a deletion happen gets all of it from the relays when it comes back.
func TestBackfillAfterOffline(t *testing.T) {
	ctx := testCtx(t)
	r1, r2 := startRelay(t), startRelay(t)
	n := newNet()
	a := newDevice(t, n, "grandma", r1, r2)
	b := newDevice(t, n, "mia", r1)
	c := newDevice(t, n, "leo", r2)
	befriend(a, b)
	befriend(a, c)
	distribute(t, ctx, a, b, c)
	b.Stop()
	var ids []string
	for _, text := range []string{"one", "two", "three"} {
		m, err := a.engine().Post(ctx, text, nil)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, m.ID)
	}
	waitMoments(t, ctx, c, "all three", func(ms []Moment) bool { return len(ms) == 3 })
	if _, err := c.engine().Comment(ctx, ids[0], "first!"); err != nil {
		t.Fatal(err)
	}
	if err := a.engine().Delete(ctx, ids[1]); err != nil {
		t.Fatal(err)
	}
	// Every relay of a holds everything before b comes back.
	waitFor(t, ctx, "the relays keep the frames", func() bool {
		for _, r := range []*testRelay{r1, r2} {
			if _, items, _ := r.svc.Stats(); items < 3 { // two moments and a comment
				return false
			}
		}
		return true
	})
	b.Start()
	b.engine().Backfill(ctx)
	ms := waitMoments(t, ctx, b, "the moments it missed", func(ms []Moment) bool {
		return len(ms) == 2 && has(ids[0])(ms) && has(ids[2])(ms) && len(find(ms, ids[0]).Comments) == 1
	})
	if find(ms, ids[0]).Comments[0].From != string(c.ID()) {
		t.Fatalf("comment from %s, want leo", find(ms, ids[0]).Comments[0].From)
	}
}

// TestLateKeyCatchUp: a friend's key arrives before its author's moment
// reaches the relay, and the backfill the key starts finds nothing (here:
// the relay is down; under load: the frame is still on its way). Nothing
// else brings the moment (no gossip reaches the friend, no reconnection,
// the periodic backfill is an hour away): the catch-up backfills that
// follow a new key fetch it once the relay has it.
func TestLateKeyCatchUp(t *testing.T) {
	ctx := testCtx(t)
	r := startRelay(t)
	n := newNet()
	a := newDevice(t, n, "grandma", r)
	c := newDevice(t, n, "leo", r)
	befriend(a, c)
	r.Stop()
	distribute(t, ctx, a, c) // c follows a and joins its topic; its backfill fails
	m, err := a.engine().Post(ctx, "while the relay was down", nil)
	if err != nil {
		t.Fatal(err)
	}
	r.Start()
	waitFor(t, ctx, "the relay keeps the moment", func() bool {
		_, items, _ := r.svc.Stats()
		return items >= 1
	})
	waitMoments(t, ctx, c, "grandma's moment", has(m.ID))
}

// TestRemovedFriend: a friend taken out of the audience can't read what
// is posted afterwards, though it still holds the old keys.
func TestRemovedFriend(t *testing.T) {
	ctx := testCtx(t)
	r := startRelay(t)
	n := newNet()
	a := newDevice(t, n, "grandma", r)
	b := newDevice(t, n, "mia", r)
	c := newDevice(t, n, "ex", r)
	befriend(a, b)
	befriend(a, c)
	distribute(t, ctx, a, b, c)
	before, err := a.engine().Post(ctx, "before", nil)
	if err != nil {
		t.Fatal(err)
	}
	waitMoments(t, ctx, c, "the moment before", has(before.ID))
	oldTopic := a.engine().currentTopic()
	if err := a.engine().SetAudience(ctx, Audience{All: true, Exclude: []string{string(c.ID())}}); err != nil {
		t.Fatal(err)
	}
	if a.engine().currentTopic() == oldTopic {
		t.Fatal("removing a friend did not rotate the topic")
	}
	waitFor(t, ctx, "mia gets the new key", func() bool {
		e := b.engine()
		e.mu.Lock()
		defer e.mu.Unlock()
		f := e.follows[a.ID()]
		return f != nil && f.epochs[0].topic == a.engine().currentTopic()
	})
	after, err := a.engine().Post(ctx, "after", nil)
	if err != nil {
		t.Fatal(err)
	}
	waitMoments(t, ctx, b, "the moment after", has(after.ID))
	c.engine().Backfill(ctx)
	if ms, _ := c.engine().Moments(ctx, 0); has(after.ID)(ms) {
		t.Fatal("the removed friend reads the new moment")
	}
	// Even given the frame, its sender-key state can't open the post key.
	be := b.engine()
	be.mu.Lock()
	audience := be.follows[a.ID()].epochs[0].audience
	be.mu.Unlock()
	page, err := be.cfg.Relays.Backfill(ctx, r.h.ID(), a.engine().currentTopic(), audience, 0, 0)
	if err != nil || len(page.Frames) == 0 {
		t.Fatalf("backfill the new topic: %v, %d frames", err, len(page.Frames))
	}
	f, err := parseFrame(page.Frames[0])
	if err != nil {
		t.Fatal(err)
	}
	ce := c.engine()
	ce.mu.Lock()
	state := ce.follows[a.ID()].state
	ce.mu.Unlock()
	if _, _, err := state.Decrypt(f.wrappedKey, ce.cfg.Now()); err == nil {
		t.Fatal("the removed friend's state decrypts the new post key")
	}
}

// TestStoreControlWhileStopped: a key that arrives while a friend's engine
// is stopped (StoreControl, as the node does before its engine runs) is
// applied when it starts, and the friend then reads the author's moments.
func TestStoreControlWhileStopped(t *testing.T) {
	ctx := testCtx(t)
	r := startRelay(t)
	n := newNet()
	a := newDevice(t, n, "grandma", r)
	b := newDevice(t, n, "mia", r)
	befriend(a, b)
	b.Stop()
	// a's key goes nowhere (mia is stopped); the node would have kept it
	// with StoreControl.
	if err := a.engine().SyncAudience(ctx); err != nil {
		t.Fatal(err)
	}
	e := a.engine()
	e.mu.Lock()
	o := e.own
	key := keyDistribution{senderKey: o.sk.Distribution().Marshal(), epoch: o.cur.epoch, secret: o.cur.secret, owner: e.owner.Public().(ed25519.PublicKey)}.encode()
	e.mu.Unlock()
	st, err := storage.Open(b.dir, storage.WithLogger(discard))
	if err != nil {
		t.Fatal(err)
	}
	if err := StoreControl(ctx, st, a.ID(), ControlKey, key); err != nil {
		t.Fatal(err)
	}
	if err := StoreControl(ctx, st, a.ID(), "something/else", []byte{1}); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	m, err := a.engine().Post(ctx, "while mia was away", nil)
	if err != nil {
		t.Fatal(err)
	}
	b.Start()
	waitMoments(t, ctx, b, "the moment, with the key stored while stopped", has(m.ID))
}

// TestPage: pages of the feed, newest first, with cursors that survive a
// deletion.
func TestPage(t *testing.T) {
	ctx := testCtx(t)
	r := startRelay(t)
	n := newNet()
	a := newDevice(t, n, "grandma", r)
	var ids []string
	for i := range 5 {
		m, err := a.engine().Post(ctx, fmt.Sprintf("moment %d", i), nil)
		if err != nil {
			t.Fatal(err)
		}
		ids = append([]string{m.ID}, ids...) // newest first
		// The feed orders by the millisecond a post was made (then by id):
		// the next one is made in a later one.
		for !time.Now().Truncate(time.Millisecond).After(m.CreatedAt) {
			runtime.Gosched()
		}
	}
	var got []string
	cursor := ""
	for range 10 {
		ms, next, err := a.engine().Page(ctx, cursor, 2)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range ms {
			got = append(got, m.ID)
		}
		if cursor == "" && len(ms) == 2 {
			// Delete the first of the next page: the cursor still works.
			if err := a.engine().Delete(ctx, ids[2]); err != nil {
				t.Fatal(err)
			}
		}
		if next == "" {
			break
		}
		cursor = next
	}
	want := []string{ids[0], ids[1], ids[3], ids[4]}
	if !slices.Equal(got, want) {
		t.Fatalf("pages gave %v, want %v", got, want)
	}
	for _, tc := range []struct {
		name   string
		cursor string
		limit  int
	}{
		{"limit too high", "", 201},
		{"negative limit", "", -1},
		{"cursor too long", strings.Repeat("a", 97), 1},
	} {
		if _, _, err := a.engine().Page(ctx, tc.cursor, tc.limit); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v, want ErrMalformed", tc.name, err)
		}
	}
}
