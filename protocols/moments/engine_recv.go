package moments

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"

	"github.com/kinmesh/kinmesh/protocols/blobs"
	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/protocols/moments/pb"
	"github.com/kinmesh/kinmesh/storage"
)

// backfillAge is how old a backfilled frame may be: relays keep moments
// until their tombstone, so only the signature matters.
const backfillAge = 100 * 365 * 24 * time.Hour

// outcome is what applying a frame did.
type outcome uint8

const (
	applied outcome = iota // stored or acted on
	skipped                // a duplicate, or already deleted
	parked                 // waiting for a key or its moment
	dropped                // invalid here (blocked, forged inside, …)
)

// receive verifies and applies a frame of a joined topic.
func (e *Engine) receive(topic string, raw []byte, maxAge time.Duration) outcome {
	ti, ok := e.topicInfo(topic)
	if !ok {
		return dropped
	}
	return e.receiveAs(topic, ti, raw, maxAge, true)
}

func (e *Engine) receiveAs(topic string, ti topicInfo, raw []byte, maxAge time.Duration, park bool) outcome {
	f, err := checkFrame(raw, topic, ti.keys, e.cfg.Now(), maxAge)
	if err != nil {
		return dropped
	}
	ctx := e.ctx
	var evs []Event
	e.mu.Lock()
	res, retry := e.apply(ctx, topic, ti, raw, f, &evs)
	if res == parked && park {
		e.park(ctx, topic, raw)
	}
	e.mu.Unlock()
	for _, ev := range evs {
		e.emit(ev)
	}
	if retry && park {
		e.retryPending(ctx)
	}
	return res
}

// apply acts on a verified frame. Called with mu held. retry says parked
// frames may now apply.
func (e *Engine) apply(ctx context.Context, topic string, ti topicInfo, raw []byte, f *frame, evs *[]Event) (outcome, bool) {
	author := ti.author
	if !ti.own && e.cfg.Contacts.Blocked(author) {
		return dropped, false
	}
	// Everything a frame does stays within its topic's feed: the moment
	// it names is author's, whatever another feed holds under that id.
	deleted, _ := e.ns.Has(ctx, e.deletedKey(author, f.post))
	switch f.kind {
	case KindPost:
		return e.applyPost(ctx, ti, f, deleted, evs), true
	case KindReaction:
		if deleted {
			return skipped, false
		}
		return e.applyReaction(ctx, ti, f, evs), false
	case KindWithdraw:
		return e.applyWithdraw(ctx, ti, f, evs), false
	case KindTombstone:
		if deleted {
			return skipped, false
		}
		sp, _, _ := e.loadPost(ctx, author, f.post)
		b := e.cfg.Store.NewBatch()
		if err := e.deletePost(ctx, b, author, f.post); err != nil || b.Commit(ctx) != nil {
			return dropped, false
		}
		if sp != nil {
			*evs = append(*evs, Event{Type: "deleted", Moment: f.post.String(), Author: string(author)})
		}
		return applied, false
	}
	return dropped, false
}

func (e *Engine) applyPost(ctx context.Context, ti topicInfo, f *frame, deleted bool, evs *[]Event) outcome {
	if deleted {
		return skipped
	}
	if has, _ := e.ns.Has(ctx, e.postIdxKey(ti.author, f.post)); has {
		return skipped
	}
	if ti.own {
		return skipped // our own moment: stored when posted
	}
	fol := e.follows[ti.author]
	if fol == nil {
		return parked
	}
	now := e.cfg.Now()
	pt, next, err := fol.state.Decrypt(f.wrappedKey, now)
	switch {
	case errors.Is(err, e2ee.ErrSenderKeyUnknown), errors.Is(err, e2ee.ErrSenderKeySkipLimit):
		e.requestKey(ti.author)
		return parked
	case err != nil:
		return dropped
	}
	pk, err := decodePostKey(pt)
	if err != nil || pk.post != f.post {
		return dropped
	}
	bb, err := open(&pk.key, postBodyLabel, postAD(f.post), f.sealed)
	if err != nil {
		return dropped
	}
	var body pb.PostBody
	if proto.Unmarshal(bb, &body) != nil || len(body.GetText()) > MaxTextLen || !utf8.ValidString(body.GetText()) || len(body.GetMedia()) > MaxMedia {
		return dropped
	}
	if len(body.GetMedia()) != len(f.media) {
		return dropped
	}
	for i, m := range body.GetMedia() {
		if string(m.GetBlob()) != string(f.media[i][:]) || m.GetIndex() != uint32(i) || len(m.GetMime()) > 100 {
			return dropped
		}
	}
	nf := *fol
	nf.state = next
	sp := &pb.StoredPost{Id: f.post[:], Author: string(ti.author), CreatedMs: f.created.UnixMilli(), Text: body.GetText(),
		Media: body.GetMedia(), PostKey: pk.key[:], ReceivedMs: now.UnixMilli()}
	b := e.cfg.Store.NewBatch()
	_ = b.Put(e.ns, e.followKey(ti.author), nf.encode())
	e.putPost(b, sp)
	if err := b.Commit(ctx); err != nil {
		return dropped
	}
	e.follows[ti.author] = &nf
	*evs = append(*evs, Event{Type: "posted", Moment: f.post.String(), Author: string(ti.author)})
	return applied
}

func (e *Engine) applyReaction(ctx context.Context, ti topicInfo, f *frame, evs *[]Event) outcome {
	rk := e.reactionKey(ti.author, f.post, f.item, f.deleteKey)
	if w, _ := e.ns.Has(ctx, e.withdrawnKey(ti.author, f.post, f.item, f.deleteKey)); w {
		return skipped
	}
	if has, _ := e.ns.Has(ctx, rk); has {
		return skipped
	}
	// Only a moment of the topic's feed: another feed's moment with
	// this id is not this reaction's.
	_, pk, err := e.loadPost(ctx, ti.author, f.post)
	if err != nil {
		return parked
	}
	bb, err := open(&pk, reactionLabel, reactionAD(f.post, f.item, f.deleteKey), f.sealed)
	if err != nil {
		return dropped
	}
	var rb pb.ReactionBody
	if proto.Unmarshal(bb, &rb) != nil {
		return dropped
	}
	id, err := e2ee.ParsePublicIdentity(rb.GetIdentity())
	if err != nil || id.Verify(reactionSigned(f.post, f.item, f.deleteKey, &rb), rb.GetSignature()) != nil {
		return dropped
	}
	from := id.AccountID()
	switch {
	case e.cfg.Contacts.Blocked(from):
		return dropped
	case rb.GetKind() == pb.ReactionKind_REACTION_LIKE && rb.GetText() != "":
		return dropped
	case rb.GetKind() == pb.ReactionKind_REACTION_COMMENT && (rb.GetText() == "" || len(rb.GetText()) > MaxCommentLen):
		return dropped
	case rb.GetKind() != pb.ReactionKind_REACTION_LIKE && rb.GetKind() != pb.ReactionKind_REACTION_COMMENT:
		return dropped
	case !utf8.ValidString(rb.GetText()) || utf8.RuneCountInString(rb.GetName()) > 64:
		return dropped
	}
	sr := &pb.StoredReaction{Item: f.item[:], Post: f.post[:], From: string(from), Name: rb.GetName(), Kind: rb.GetKind(),
		Text: rb.GetText(), CreatedMs: rb.GetCreatedMs(), DeleteKey: f.deleteKey}
	if err := e.ns.Put(ctx, rk, marshal(sr)); err != nil {
		return dropped
	}
	*evs = append(*evs, Event{Type: "reaction", Moment: f.post.String(), Author: string(ti.author), From: string(from)})
	return applied
}

// applyWithdraw withdraws the reaction with the frame's item id and delete
// key (the proof checkFrame verified is that key's) on a moment of the
// topic's feed, or marks it withdrawn before it arrives. Another reactor's
// reaction with the same item id has another delete key: untouched.
func (e *Engine) applyWithdraw(ctx context.Context, ti topicInfo, f *frame, evs *[]Event) outcome {
	wk := e.withdrawnKey(ti.author, f.post, f.item, f.deleteKey)
	if w, _ := e.ns.Has(ctx, wk); w {
		return skipped
	}
	rk := e.reactionKey(ti.author, f.post, f.item, f.deleteKey)
	b := e.cfg.Store.NewBatch()
	v, err := e.ns.Get(ctx, rk)
	var sr pb.StoredReaction
	found := err == nil && proto.Unmarshal(v, &sr) == nil
	if found {
		if !bytes.Equal(f.deleteKey, sr.GetDeleteKey()) {
			return dropped // not the reaction's author
		}
		_ = b.Delete(e.ns, rk)
	}
	_ = b.PutTTL(e.ns, wk, nil, MarkerTTL)
	if err := b.Commit(ctx); err != nil {
		return dropped
	}
	if found {
		*evs = append(*evs, Event{Type: "reaction", Moment: f.post.String(), Author: string(ti.author), From: sr.GetFrom()})
	}
	return applied
}

// park keeps a frame that can't apply yet (its key or its moment has not
// arrived) for a day. Called with mu held.
func (e *Engine) park(ctx context.Context, topic string, raw []byte) {
	n := 0
	_ = e.ns.List(ctx, storage.ListOptions{Prefix: dkPending, Limit: maxPending}, func(string, []byte) error { n++; return nil })
	if n >= maxPending {
		return
	}
	_ = e.ns.PutTTL(ctx, dkPending+e.nextSeq(), marshal(&pb.Pending{Topic: topic, Frame: raw, ReceivedMs: e.cfg.Now().UnixMilli()}), pendingTTL)
}

// retryPending applies the parked frames that can apply now.
func (e *Engine) retryPending(ctx context.Context) {
	for range 4 { // a moment unparks its reactions: a few rounds at most
		type item struct {
			key string
			p   *pb.Pending
		}
		var items []item
		_ = e.ns.List(ctx, storage.ListOptions{Prefix: dkPending}, func(k string, v []byte) error {
			it := item{key: k, p: &pb.Pending{}}
			if proto.Unmarshal(v, it.p) == nil {
				items = append(items, it)
			}
			return nil
		})
		progress := false
		for _, it := range items {
			ti, ok := e.topicInfo(it.p.GetTopic())
			res := dropped
			if ok {
				res = e.receiveAs(it.p.GetTopic(), ti, it.p.GetFrame(), backfillAge, false)
			}
			if res != parked {
				_ = e.ns.Delete(ctx, it.key)
				progress = progress || res == applied
			}
		}
		if !progress {
			return
		}
	}
}

// Backfill reads, from the home relays of every followed feed (and of our
// own), the frames kept since the last backfill: moments, reactions and
// tombstones this device missed while offline. It also runs at start,
// every BackfillInterval, when a key arrives, after gossipsub dropped a
// frame of ours and, for CatchUpWindow, after a topic is joined; a failed
// one is retried.
func (e *Engine) Backfill(ctx context.Context) { e.backfillAll(ctx) }

type backfillTarget struct {
	author e2ee.AccountID
	epochs []epochKeys
}

// backfillAll backfills every feed from every relay of it. complete
// reports whether every relay answered.
func (e *Engine) backfillAll(ctx context.Context) (complete bool) { return e.backfillTopics(ctx, nil) }

// backfillTopics backfills the topics in only (nil: every topic of every
// feed) from every relay of their feed. complete reports whether every
// relay answered.
func (e *Engine) backfillTopics(ctx context.Context, only map[string]bool) (complete bool) {
	complete = true
	var targets []backfillTarget
	e.mu.Lock()
	if o := e.own; o != nil {
		t := backfillTarget{author: e.me, epochs: []epochKeys{o.cur}}
		for _, p := range o.previous {
			t.epochs = append(t.epochs, p.epochKeys)
		}
		targets = append(targets, t)
	}
	for _, f := range e.follows {
		t := backfillTarget{author: f.author}
		for _, ep := range f.epochs {
			t.epochs = append(t.epochs, ep.epochKeys)
		}
		targets = append(targets, t)
	}
	e.mu.Unlock()
	slices.SortFunc(targets, func(a, b backfillTarget) int { return strings.Compare(string(a.author), string(b.author)) })
	for _, t := range targets {
		if t.author != e.me && e.cfg.Contacts.Blocked(t.author) {
			continue
		}
		relays := e.relaysOf(t.author)
		// Oldest epoch first: its moments come before the reactions that
		// later epochs carry.
		for i := len(t.epochs) - 1; i >= 0; i-- {
			if only != nil && !only[t.epochs[i].topic] {
				continue
			}
			for _, r := range relays {
				if ctx.Err() != nil {
					return false
				}
				if err := e.backfillTopic(ctx, t.author, t.epochs[i], r); err != nil {
					e.log.Debug("backfill moments", "relay", r.ID, "err", err)
					// A refusal (a topic the relay doesn't keep, a retired
					// epoch) stands; an unreachable or busy relay is
					// asked again.
					complete = complete && refused(err)
				}
			}
		}
	}
	return complete
}

// refused reports whether a relay answered a request with a refusal that
// asking again won't change.
func refused(err error) bool {
	return errors.Is(err, ErrNotFound) || errors.Is(err, ErrUnauthorized) || errors.Is(err, ErrMalformed) || errors.Is(err, ErrStale)
}

func (e *Engine) cursorKey(relay peer.ID, topic string) string {
	return dkCursor + e.ns.Opaque([]byte(relay), []byte(topic))
}

func (e *Engine) backfillTopic(ctx context.Context, author e2ee.AccountID, ep epochKeys, r peer.AddrInfo) error {
	ck := e.cursorKey(r.ID, ep.topic)
	var after uint64
	if v, err := e.ns.Get(ctx, ck); err == nil {
		after, _ = binary.Uvarint(v)
	}
	ti := topicInfo{author: author, own: author == e.me, epoch: ep.epoch, audience: ep.audience}
	if ti.own {
		ti = e.ownInfo(ep)
	} else {
		e.mu.Lock()
		f := e.follows[author]
		e.mu.Unlock()
		if f == nil {
			return nil
		}
		ti.keys = feedKeys{owner: f.owner, audience: ep.audience.Public().(ed25519.PublicKey)}
	}
	e.cfg.Host.Peerstore().AddAddrs(r.ID, r.Addrs, time.Hour)
	for range 1000 {
		page, err := e.cfg.Relays.Backfill(ctx, r.ID, ep.topic, ep.audience, after, 0)
		if err != nil {
			return err
		}
		for _, raw := range page.Frames {
			e.receiveAs(ep.topic, ti, raw, backfillAge, true)
		}
		if page.Next != after {
			after = page.Next
			_ = e.ns.Put(ctx, ck, binary.AppendUvarint(nil, after))
		}
		if !page.More {
			return nil
		}
	}
	return nil
}

// Moments lists the moments on this device, newest first, without those
// of blocked accounts. limit 0 means all.
func (e *Engine) Moments(ctx context.Context, limit int) ([]Moment, error) {
	var out []Moment
	var sps []*pb.StoredPost
	err := e.ns.List(ctx, storage.ListOptions{Prefix: dkPost}, func(_ string, v []byte) error {
		var sp pb.StoredPost
		if proto.Unmarshal(v, &sp) != nil {
			return nil
		}
		if sp.GetAuthor() != string(e.me) && e.cfg.Contacts.Blocked(e2ee.AccountID(sp.GetAuthor())) {
			return nil
		}
		sps = append(sps, &sp)
		if limit > 0 && len(sps) >= limit {
			return errStop
		}
		return nil
	})
	if err != nil && !errors.Is(err, errStop) {
		return nil, err
	}
	for _, sp := range sps {
		m, err := e.view(ctx, sp)
		if err != nil {
			return nil, err
		}
		out = append(out, *m)
	}
	return out, nil
}

// Page lists at most limit moments (1 to 200; 0 means 50) newest first,
// without those of blocked accounts, starting after cursor ("" for the
// newest). next is the cursor of the following page, "" after the last.
// A cursor stays valid when moments are added or deleted.
func (e *Engine) Page(ctx context.Context, cursor string, limit int) (ms []Moment, next string, err error) {
	switch {
	case limit == 0:
		limit = 50
	case limit < 0 || limit > 200:
		return nil, "", fmt.Errorf("moments: page of %d (1 to 200): %w", limit, ErrMalformed)
	}
	opts := storage.ListOptions{Prefix: dkPost}
	if cursor != "" {
		if len(cursor) > 96 || strings.ContainsAny(cursor, "\x00") {
			return nil, "", fmt.Errorf("moments: cursor %q: %w", cursor, ErrMalformed)
		}
		opts.StartAfter = dkPost + cursor
	}
	var sps []*pb.StoredPost
	last := ""
	more := false
	err = e.ns.List(ctx, opts, func(k string, v []byte) error {
		if len(sps) == limit {
			more = true
			return errStop
		}
		last = k
		var sp pb.StoredPost
		if proto.Unmarshal(v, &sp) != nil {
			return nil
		}
		if sp.GetAuthor() != string(e.me) && e.cfg.Contacts.Blocked(e2ee.AccountID(sp.GetAuthor())) {
			return nil
		}
		sps = append(sps, &sp)
		return nil
	})
	if err != nil && !errors.Is(err, errStop) {
		return nil, "", err
	}
	ms = []Moment{}
	for _, sp := range sps {
		m, err := e.view(ctx, sp)
		if err != nil {
			return nil, "", err
		}
		ms = append(ms, *m)
	}
	if more {
		next = strings.TrimPrefix(last, dkPost)
	}
	return ms, next, nil
}

// Moment returns one moment: id is its id, or "author:id" (needed only if
// two authors have a moment with that id: ErrAmbiguous).
func (e *Engine) Moment(ctx context.Context, id string) (*Moment, error) {
	sp, _, err := e.lookup(ctx, id)
	if err != nil {
		return nil, err
	}
	if sp.GetAuthor() != string(e.me) && e.cfg.Contacts.Blocked(e2ee.AccountID(sp.GetAuthor())) {
		return nil, fmt.Errorf("moments: moment %s: %w", id, ErrNotFound)
	}
	return e.view(ctx, sp)
}

func (e *Engine) view(ctx context.Context, sp *pb.StoredPost) (*Moment, error) {
	m := &Moment{
		ID: fmt.Sprintf("%x", sp.GetId()), Author: sp.GetAuthor(), Text: sp.GetText(),
		CreatedAt: time.UnixMilli(sp.GetCreatedMs()).UTC(), Mine: sp.GetAuthor() == string(e.me),
		Likes: []Like{}, Comments: []Comment{}, Media: []Media{}, Relays: int(sp.GetRelays()),
	}
	for _, md := range sp.GetMedia() {
		m.Media = append(m.Media, Media{N: int(md.GetIndex()), Type: md.GetMime(), Size: int64(md.GetSize()), Blob: fmt.Sprintf("%x", md.GetBlob())})
	}
	liked := map[string]bool{}
	pid, _ := itemFromBytes(sp.GetId())
	err := e.ns.List(ctx, storage.ListOptions{Prefix: e.reactionPrefix(e2ee.AccountID(sp.GetAuthor()), pid)}, func(_ string, v []byte) error {
		var r pb.StoredReaction
		if proto.Unmarshal(v, &r) != nil || (r.GetFrom() != string(e.me) && e.cfg.Contacts.Blocked(e2ee.AccountID(r.GetFrom()))) {
			return nil
		}
		switch r.GetKind() {
		case pb.ReactionKind_REACTION_LIKE:
			if !liked[r.GetFrom()] {
				liked[r.GetFrom()] = true
				m.Likes = append(m.Likes, Like{From: r.GetFrom(), Name: r.GetName(), At: time.UnixMilli(r.GetCreatedMs()).UTC()})
			}
		case pb.ReactionKind_REACTION_COMMENT:
			m.Comments = append(m.Comments, commentOf(&r))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(m.Likes, func(a, b Like) int { return a.At.Compare(b.At) })
	slices.SortFunc(m.Comments, func(a, b Comment) int { return a.At.Compare(b.At) })
	return m, nil
}

func commentOf(r *pb.StoredReaction) Comment {
	return Comment{ID: fmt.Sprintf("%x", r.GetItem()), From: r.GetFrom(), Name: r.GetName(), Text: r.GetText(), At: time.UnixMilli(r.GetCreatedMs()).UTC()}
}

// Media fetches medium n of a moment (id as for Moment) from its author's
// relays and decrypts it. It returns its MIME type and bytes.
func (e *Engine) Media(ctx context.Context, id string, n int) (string, []byte, error) {
	sp, pk, err := e.lookup(ctx, id)
	if err != nil {
		return "", nil, err
	}
	if n < 0 || n >= len(sp.GetMedia()) {
		return "", nil, fmt.Errorf("moments: moment %s has no medium %d: %w", id, n, ErrNotFound)
	}
	md := sp.GetMedia()[n]
	bid, err := blobs.BlobIDFromBytes(md.GetBlob())
	if err != nil {
		return "", nil, err
	}
	var errs []error
	for _, r := range e.relaysOf(e2ee.AccountID(sp.GetAuthor())) {
		e.cfg.Host.Peerstore().AddAddrs(r.ID, r.Addrs, time.Hour)
		chunks, err := e.cfg.Blobs.Get(ctx, r.ID, bid)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		data, err := blobs.Open(mediaKey(&pk, md.GetIndex()), chunks)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		return md.GetMime(), data, nil
	}
	return "", nil, fmt.Errorf("%w: %w", ErrMediaUnavailable, errors.Join(errs...))
}

// PurgeRelay deletes everything of id's moments on relay: the feed (every
// moment, reaction and tombstone) and the media its moments had, and the
// media in extra that the relay holds (OwnMedia: a medium uploaded to a
// relay that never kept its moment is not in the feed). It needs nothing
// but the identity (the keys derive from it), so it works after the
// device's data is wiped. Account deletion runs it on every relay the
// account kept data on; the node runs it on a home relay a move replaced.
func PurgeRelay(ctx context.Context, c *Client, bc *blobs.Client, relay peer.ID, id *e2ee.Identity, extra ...blobs.BlobID) error {
	media, err := c.Purge(ctx, relay, OwnerKey(id))
	if err != nil && !errors.Is(err, ErrNotFound) { // not found: no feed here, maybe media
		return err
	}
	listed := slices.Clone(media) // the relay reports these until confirmed
	var errs []error
	for chunk := range slices.Chunk(extra, blobs.MaxHasIDs) {
		held, err := bc.Has(ctx, relay, chunk)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for i, h := range held {
			if h && !slices.Contains(media, chunk[i]) {
				media = append(media, chunk[i])
			}
		}
	}
	secret := MediaSecret(id)
	var gone []blobs.BlobID
	for _, m := range media {
		err := bc.Delete(ctx, relay, m, blobs.SignDelete(blobDeleteKey(secret, m), m))
		switch {
		case err == nil || errors.Is(err, blobs.ErrNotFound):
			if slices.Contains(listed, m) {
				gone = append(gone, m)
			}
		default:
			errs = append(errs, err)
		}
	}
	if len(gone) > 0 {
		if err := c.ConfirmPurge(ctx, relay, OwnerKey(id), gone); err != nil {
			errs = append(errs, fmt.Errorf("confirm the purged media: %w", err))
		}
	}
	return errors.Join(errs...)
}
