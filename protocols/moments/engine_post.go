package moments

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"

	"github.com/kinmesh/kinmesh/protocols/blobs"
	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/protocols/moments/pb"
	"github.com/kinmesh/kinmesh/storage"
)

func newItemID() itemID {
	var id itemID
	if _, err := rand.Read(id[:]); err != nil {
		panic("moments: read random: " + err.Error())
	}
	return id
}

// checkMedia validates media to post.
func checkMedia(media []MediaInput) error {
	if len(media) > MaxMedia {
		return fmt.Errorf("moments: %d media (max %d): %w", len(media), MaxMedia, ErrTooLarge)
	}
	for i, m := range media {
		switch {
		case strings.HasPrefix(m.Type, "image/"):
			if len(m.Data) > MaxPhotoSize {
				return fmt.Errorf("moments: photo %d of %d bytes (max %d MiB): %w", i, len(m.Data), MaxPhotoSize>>20, ErrTooLarge)
			}
		case strings.HasPrefix(m.Type, "video/"):
			if len(m.Data) > MaxVideoSize {
				return fmt.Errorf("moments: video %d of %d bytes (max %d MiB): %w", i, len(m.Data), MaxVideoSize>>20, ErrTooLarge)
			}
		default:
			return fmt.Errorf("moments: medium %d of type %q: %w", i, m.Type, ErrMediaType)
		}
		if len(m.Data) == 0 || len(m.Type) > 100 {
			return fmt.Errorf("moments: medium %d: %w", i, ErrMalformed)
		}
	}
	return nil
}

// Post publishes a moment with text and media to the audience: media are
// sealed under keys derived from a fresh post key and uploaded to every
// home relay (at least one must take each); the moment is sealed under
// the post key, the post key under the feed's sender key, and the signed
// frame goes on the feed's topic and to every home relay (retried until
// each confirms).
func (e *Engine) Post(ctx context.Context, text string, media []MediaInput) (*Moment, error) {
	return e.post(ctx, newItemID(), text, media)
}

// post is Post with the moment id given.
func (e *Engine) post(ctx context.Context, id itemID, text string, media []MediaInput) (*Moment, error) {
	text = strings.TrimSpace(text)
	switch {
	case text == "" && len(media) == 0:
		return nil, ErrEmpty
	case len(text) > MaxTextLen || !utf8.ValidString(text):
		return nil, fmt.Errorf("moments: text of %d bytes (max %d): %w", len(text), MaxTextLen, ErrTooLarge)
	}
	if err := checkMedia(media); err != nil {
		return nil, err
	}
	if err := e.syncAudience(ctx); err != nil {
		e.log.Warn("moments audience", "err", err)
		e.mu.Lock()
		none := e.own == nil
		e.mu.Unlock()
		if none {
			return nil, err
		}
	}
	var key [32]byte
	if _, err := rand.Read(key[:]); err != nil {
		return nil, err
	}
	now := e.cfg.Now()
	body := &pb.PostBody{Text: text, CreatedMs: now.UnixMilli()}
	var blobIDs []blobs.BlobID
	for i, m := range media {
		s, err := blobs.Seal(mediaKey(&key, uint32(i)), m.Data)
		if err != nil {
			return nil, err
		}
		if err := e.upload(ctx, s); err != nil {
			return nil, err
		}
		blobIDs = append(blobIDs, s.ID)
		body.Media = append(body.Media, &pb.Media{Blob: s.ID[:], Size: uint64(len(m.Data)), Mime: m.Type, Index: uint32(i)})
	}
	e.mu.Lock()
	o := e.own
	if o == nil {
		e.mu.Unlock()
		return nil, ErrClosed
	}
	wrapped, next, err := o.sk.Encrypt(postKey{post: id, key: key}.encode())
	if err != nil {
		e.mu.Unlock()
		return nil, fmt.Errorf("moments: wrap the post key: %w", err)
	}
	f := &frame{kind: KindPost, item: id, post: id, created: now, wrappedKey: wrapped,
		sealed: seal(&key, postBodyLabel, postAD(id), marshal(body)), media: blobIDs}
	raw, err := encodeFrame(o.cur.topic, f, e.owner)
	if err != nil {
		e.mu.Unlock()
		return nil, err
	}
	sp := &pb.StoredPost{Id: id[:], Author: string(e.me), CreatedMs: now.UnixMilli(), Text: text, Media: body.Media, PostKey: key[:], ReceivedMs: now.UnixMilli()}
	o.sk = next
	b := e.cfg.Store.NewBatch()
	_ = b.Put(e.ns, dkOwn, o.encode())
	e.putPost(b, sp)
	topic := o.cur.topic
	e.queueOutbox(b, topic, raw, e.me, true, e.cfg.HomeRelays())
	err = b.Commit(ctx)
	e.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("moments: store the moment: %w", err)
	}
	e.publish(ctx, topic, raw)
	e.emit(Event{Type: "posted", Moment: id.String(), Author: string(e.me)})
	return e.Moment(ctx, string(e.me)+":"+id.String())
}

// upload puts a sealed medium on every home relay in parallel; at least
// one must take it.
func (e *Engine) upload(ctx context.Context, s *blobs.Sealed) error {
	relays := e.cfg.HomeRelays()
	if len(relays) == 0 {
		return ErrNoRelays
	}
	dk := blobDeleteKey(e.mediaSecret, s.ID).Public().(ed25519.PublicKey)
	var wg sync.WaitGroup
	errs := make([]error, len(relays))
	for i, r := range relays {
		e.cfg.Host.Peerstore().AddAddrs(r.ID, r.Addrs, time.Hour)
		wg.Go(func() {
			_, errs[i] = e.cfg.Blobs.Put(ctx, r.ID, s, dk)
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err == nil {
			return nil
		}
	}
	return fmt.Errorf("%w: %w", ErrNoRelays, errors.Join(errs...))
}

// publish sends a frame on its topic. A failure is not fatal: the frame
// is in the outbox, and the relays republish it when they keep it.
func (e *Engine) publish(ctx context.Context, topic string, raw []byte) {
	if err := e.cfg.Router.Publish(ctx, topic, raw); err != nil {
		e.log.Debug("publish a moments frame", "err", err)
	}
	wake(e.wakeOutbox)
}

// Delete deletes one of this account's moments (id as for Moment; a bare
// id means ours): a signed tombstone, with the deletion proofs of its
// media, goes on the topic and to every home relay; relays purge the
// moment, its reactions and media, friends their copies.
func (e *Engine) Delete(ctx context.Context, id string) error {
	author, pid, err := parseRef(id)
	if err != nil {
		return err
	}
	if author != "" && author != e.me {
		return ErrNotAuthor
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	sp, _, err := e.loadPost(ctx, e.me, pid)
	if errors.Is(err, ErrNotFound) {
		if _, _, oerr := e.lookup(ctx, pid.String()); oerr == nil || errors.Is(oerr, ErrAmbiguous) {
			return ErrNotAuthor // someone else's
		}
	}
	if err != nil {
		return err
	}
	if e.own == nil {
		return ErrClosed
	}
	f := &frame{kind: KindTombstone, item: pid, post: pid, created: e.cfg.Now()}
	for _, m := range sp.GetMedia() {
		bid, err := blobs.BlobIDFromBytes(m.GetBlob())
		if err != nil {
			continue
		}
		f.proofs = append(f.proofs, blobProof{id: bid, sig: blobs.SignDelete(blobDeleteKey(e.mediaSecret, bid), bid)})
	}
	topic := e.own.cur.topic
	raw, err := encodeFrame(topic, f, e.owner)
	if err != nil {
		return err
	}
	b := e.cfg.Store.NewBatch()
	if err := e.deletePost(ctx, b, e.me, pid); err != nil {
		return err
	}
	e.queueOutbox(b, topic, raw, e.me, true, e.cfg.HomeRelays())
	if err := b.Commit(ctx); err != nil {
		return fmt.Errorf("moments: delete the moment: %w", err)
	}
	go e.publish(e.ctx, topic, raw)
	e.emit(Event{Type: "deleted", Moment: pid.String(), Author: string(e.me)})
	return nil
}

// Like likes a moment (once: liking again changes nothing).
func (e *Engine) Like(ctx context.Context, id string) error {
	_, err := e.react(ctx, id, pb.ReactionKind_REACTION_LIKE, "")
	return err
}

// Comment comments on a moment.
func (e *Engine) Comment(ctx context.Context, id, text string) (*Comment, error) {
	text = strings.TrimSpace(text)
	switch {
	case text == "":
		return nil, ErrEmpty
	case len(text) > MaxCommentLen || !utf8.ValidString(text):
		return nil, fmt.Errorf("moments: comment of %d bytes (max %d): %w", len(text), MaxCommentLen, ErrTooLarge)
	}
	r, err := e.react(ctx, id, pb.ReactionKind_REACTION_COMMENT, text)
	if err != nil {
		return nil, err
	}
	c := commentOf(r)
	return &c, nil
}

// feedTopic returns the topic and audience key to react on author's feed.
// Called with mu held.
func (e *Engine) feedTopic(author e2ee.AccountID) (string, ed25519.PrivateKey, bool) {
	if author == e.me {
		if e.own == nil {
			return "", nil, false
		}
		return e.own.cur.topic, e.own.cur.audience, true
	}
	f := e.follows[author]
	if f == nil || len(f.epochs) == 0 {
		return "", nil, false
	}
	return f.epochs[0].topic, f.epochs[0].audience, true
}

func (e *Engine) react(ctx context.Context, id string, kind pb.ReactionKind, text string) (*pb.StoredReaction, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	sp, pk, err := e.lookup(ctx, id)
	if err != nil {
		return nil, err
	}
	pid, _ := itemFromBytes(sp.GetId())
	author := e2ee.AccountID(sp.GetAuthor())
	if kind == pb.ReactionKind_REACTION_LIKE {
		if mine := e.myReactions(ctx, author, pid, kind); len(mine) > 0 {
			return mine[0], nil
		}
	}
	topic, audience, ok := e.feedTopic(author)
	if !ok {
		return nil, fmt.Errorf("moments: no key for %s's feed: %w", author, ErrNotFound)
	}
	item := newItemID()
	dk := reactionDeleteKey(e.cfg.Identity, item)
	dpub := dk.Public().(ed25519.PublicKey)
	now := e.cfg.Now()
	rb := &pb.ReactionBody{Identity: e.cfg.Identity.Public().Marshal(), Name: e.cfg.Name(), Kind: kind, Text: text, CreatedMs: now.UnixMilli()}
	rb.Signature = e.cfg.Identity.Sign(reactionSigned(pid, item, dpub, rb))
	f := &frame{kind: KindReaction, item: item, post: pid, created: now, deleteKey: dpub,
		sealed: seal(&pk, reactionLabel, reactionAD(pid, item, dpub), marshal(rb))}
	raw, err := encodeFrame(topic, f, audience)
	if err != nil {
		return nil, err
	}
	sr := &pb.StoredReaction{Item: item[:], Post: pid[:], From: string(e.me), Name: rb.Name, Kind: kind, Text: text, CreatedMs: now.UnixMilli(), DeleteKey: dpub}
	b := e.cfg.Store.NewBatch()
	_ = b.Put(e.ns, e.reactionKey(author, pid, item, dpub), marshal(sr))
	e.queueOutbox(b, topic, raw, author, author == e.me, e.relaysOf(author))
	if err := b.Commit(ctx); err != nil {
		return nil, fmt.Errorf("moments: store the reaction: %w", err)
	}
	go e.publish(e.ctx, topic, raw)
	e.emit(Event{Type: "reaction", Moment: pid.String(), Author: string(author), From: string(e.me)})
	return sr, nil
}

// reactionSigned is what a reactor's identity signs:
//
//	"kinmesh/moments/reaction/v1" || 0x00 || post (16) || item (16) || delete key (32)
//	|| kind (1) || u32be(len(text)) || text || i64be(created ms)
func reactionSigned(post, item itemID, dk ed25519.PublicKey, rb *pb.ReactionBody) []byte {
	m := append([]byte(reactionSigLabel), 0)
	m = append(m, post[:]...)
	m = append(m, item[:]...)
	m = append(m, dk...)
	m = append(m, byte(rb.GetKind()))
	m = binary.BigEndian.AppendUint32(m, uint32(len(rb.GetText())))
	m = append(m, rb.GetText()...)
	return binary.BigEndian.AppendUint64(m, uint64(rb.GetCreatedMs()))
}

// Unlike takes back this account's like of a moment.
func (e *Engine) Unlike(ctx context.Context, id string) error {
	return e.withdrawMine(ctx, id, "", pb.ReactionKind_REACTION_LIKE)
}

// DeleteComment takes back one of this account's comments.
func (e *Engine) DeleteComment(ctx context.Context, id, commentID string) error {
	if _, err := parseItemID(commentID); err != nil {
		return err
	}
	return e.withdrawMine(ctx, id, commentID, pb.ReactionKind_REACTION_COMMENT)
}

func (e *Engine) withdrawMine(ctx context.Context, id, itemHex string, kind pb.ReactionKind) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	sp, _, err := e.lookup(ctx, id)
	if err != nil {
		return err
	}
	pid, _ := itemFromBytes(sp.GetId())
	author := e2ee.AccountID(sp.GetAuthor())
	mine := e.myReactions(ctx, author, pid, kind)
	if itemHex != "" {
		mine = slices.DeleteFunc(mine, func(r *pb.StoredReaction) bool { return hex.EncodeToString(r.GetItem()) != itemHex })
	}
	if len(mine) == 0 {
		return fmt.Errorf("moments: no such %s of yours: %w", strings.ToLower(strings.TrimPrefix(kind.String(), "REACTION_")), ErrNotFound)
	}
	topic, audience, ok := e.feedTopic(author)
	if !ok {
		return fmt.Errorf("moments: no key for %s's feed: %w", author, ErrNotFound)
	}
	b := e.cfg.Store.NewBatch()
	var raws [][]byte
	for _, r := range mine {
		item, _ := itemFromBytes(r.GetItem())
		dk := reactionDeleteKey(e.cfg.Identity, item)
		dpub := dk.Public().(ed25519.PublicKey)
		f := &frame{kind: KindWithdraw, item: item, post: pid, created: e.cfg.Now(), deleteKey: dpub,
			proof: ed25519.Sign(dk, withdrawMessage(pid, item))}
		raw, err := encodeFrame(topic, f, audience)
		if err != nil {
			return err
		}
		raws = append(raws, raw)
		_ = b.Delete(e.ns, e.reactionKey(author, pid, item, dpub))
		_ = b.PutTTL(e.ns, e.withdrawnKey(author, pid, item, dpub), nil, MarkerTTL)
		e.queueOutbox(b, topic, raw, author, author == e.me, e.relaysOf(author))
	}
	if err := b.Commit(ctx); err != nil {
		return err
	}
	for _, raw := range raws {
		go e.publish(e.ctx, topic, raw)
	}
	e.emit(Event{Type: "reaction", Moment: pid.String(), Author: string(author), From: string(e.me)})
	return nil
}

// myReactions lists this account's reactions of kind on author's moment.
// Called with mu held.
func (e *Engine) myReactions(ctx context.Context, author e2ee.AccountID, pid itemID, kind pb.ReactionKind) []*pb.StoredReaction {
	var out []*pb.StoredReaction
	_ = e.ns.List(ctx, storage.ListOptions{Prefix: e.reactionPrefix(author, pid)}, func(_ string, v []byte) error {
		var r pb.StoredReaction
		if proto.Unmarshal(v, &r) == nil && r.GetFrom() == string(e.me) && r.GetKind() == kind {
			out = append(out, &r)
		}
		return nil
	})
	return out
}

// queueOutbox adds a frame to keep on relays to b.
func (e *Engine) queueOutbox(b *storage.Batch, topic string, raw []byte, author e2ee.AccountID, own bool, relays []peer.AddrInfo) {
	o := &pb.Outbox{Topic: topic, Frame: raw, CreatedMs: e.cfg.Now().UnixMilli(), Own: own, Author: string(author)}
	for _, r := range relays {
		o.Relays = append(o.Relays, r.ID.String())
	}
	if len(o.Relays) == 0 {
		return
	}
	_ = b.Put(e.ns, dkOutbox+e.nextSeq(), marshal(o))
}

// outboxLoop keeps frames on relays until each confirms, retrying with
// backoff.
func (e *Engine) outboxLoop() {
	var wait time.Duration
	for {
		if e.drainOutbox(e.ctx) {
			wait = 0
		} else {
			wait = e.backoff(wait)
		}
		var timer <-chan time.Time
		var t *time.Timer
		if wait > 0 {
			t = time.NewTimer(wait)
			timer = t.C
		}
		select {
		case <-e.ctx.Done():
		case <-e.wakeOutbox:
		case <-timer:
		}
		if t != nil {
			t.Stop()
		}
		if e.ctx.Err() != nil {
			return
		}
	}
}

// drainOutbox tries every queued frame on every relay still to confirm it;
// it reports whether the outbox is empty.
func (e *Engine) drainOutbox(ctx context.Context) bool {
	type entry struct {
		key string
		o   *pb.Outbox
	}
	var entries []entry
	err := e.ns.List(ctx, storage.ListOptions{Prefix: dkOutbox}, func(k string, v []byte) error {
		var o pb.Outbox
		if proto.Unmarshal(v, &o) == nil {
			entries = append(entries, entry{k, &o})
		}
		return nil
	})
	if err != nil || len(entries) == 0 {
		return err == nil
	}
	now := e.cfg.Now()
	// Group frames by (relay, topic) so each relay gets one Keep per batch.
	type target struct {
		relay peer.ID
		topic string
	}
	batches := map[target][]int{}
	addrs := map[peer.ID]peer.AddrInfo{}
	own := map[peer.ID]bool{}
	gone := map[int]map[string]bool{} // own frames' relays that are no homes any more
	for i, en := range entries {
		if now.Sub(time.UnixMilli(en.o.GetCreatedMs())) > MaxKeepAge {
			_ = e.ns.Delete(ctx, en.key)
			continue
		}
		known := map[peer.ID]peer.AddrInfo{}
		for _, r := range e.relaysOf(e2ee.AccountID(en.o.GetAuthor())) {
			known[r.ID] = r
		}
		for _, rs := range en.o.GetRelays() {
			id, err := peer.Decode(rs)
			if err != nil {
				continue
			}
			if _, ok := known[id]; !ok && en.o.GetOwn() && len(known) > 0 {
				// No home relay of ours any more: the whole feed is
				// purged there (the node purges a replaced home relay),
				// so keeping this frame there is moot.
				if gone[i] == nil {
					gone[i] = map[string]bool{}
				}
				gone[i][rs] = true
				continue
			}
			if ai, ok := known[id]; ok {
				addrs[id] = ai
			}
			t := target{id, en.o.GetTopic()}
			if len(batches[t]) < MaxKeepFrames {
				batches[t] = append(batches[t], i)
			}
			if en.o.GetOwn() {
				own[id] = true
			}
		}
	}
	done := map[int]map[string]bool{}
	for t, idx := range batches {
		if ai, ok := addrs[t.relay]; ok {
			e.cfg.Host.Peerstore().AddAddrs(ai.ID, ai.Addrs, time.Hour)
			if own[t.relay] {
				if err := e.register(ctx, ai); err != nil {
					e.log.Debug("register before keep", "relay", t.relay, "err", err)
				}
			}
		}
		frames := make([][]byte, len(idx))
		for j, i := range idx {
			frames[j] = entries[i].o.GetFrame()
		}
		results, err := e.cfg.Relays.Keep(ctx, t.relay, t.topic, frames)
		if err != nil {
			if errors.Is(err, ErrNotFound) && own[t.relay] {
				e.forgetRegistration(ctx, t.relay)
			}
			e.log.Debug("keep moments frames on a relay", "relay", t.relay, "err", err)
			continue
		}
		for j, rerr := range results {
			// Anything but "unavailable", "rate limited" or "moment not
			// held" is final. A reaction can reach a relay before its
			// moment does: it is kept once the moment is (the outbox
			// backs off, and gives up after its 30 days).
			if rerr != nil && (errors.Is(rerr, ErrUnavailable) || errors.Is(rerr, ErrRateLimited) || errors.Is(rerr, ErrNotHeld)) {
				continue
			}
			if rerr != nil {
				e.log.Debug("relay refused a moments frame", "relay", t.relay, "err", rerr)
			}
			i := idx[j]
			if done[i] == nil {
				done[i] = map[string]bool{}
			}
			done[i][t.relay.String()] = true
		}
	}
	empty := true
	e.mu.Lock()
	defer e.mu.Unlock()
	for i, en := range entries {
		left := slices.DeleteFunc(slices.Clone(en.o.GetRelays()), func(r string) bool { return done[i][r] || gone[i][r] })
		switch {
		case len(left) == 0:
			_ = e.ns.Delete(ctx, en.key)
		case len(left) != len(en.o.GetRelays()):
			en.o.Relays = left
			_ = e.ns.Put(ctx, en.key, marshal(en.o))
			empty = false
		default:
			empty = false
		}
		if en.o.GetOwn() && len(done[i]) > 0 {
			if pid, ok := postOfFrame(en.o.GetFrame()); ok {
				e.countKept(ctx, pid, len(done[i]))
			}
		}
	}
	return empty
}

// forgetRegistration makes the next Keep register the topic again (the
// relay lost it).
func (e *Engine) forgetRegistration(ctx context.Context, relay peer.ID) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.own != nil && e.own.registered[relay] {
		delete(e.own.registered, relay)
		_ = e.ns.Put(ctx, dkOwn, e.own.encode())
	}
}

// postOfFrame returns the moment a post frame carries.
func postOfFrame(raw []byte) (itemID, bool) {
	f, err := parseFrame(raw)
	if err != nil || f.kind != KindPost {
		return itemID{}, false
	}
	return f.post, true
}

// countKept records how many relays confirmed one of our moments. Called
// with mu held.
func (e *Engine) countKept(ctx context.Context, id itemID, n int) {
	sp, _, err := e.loadPost(ctx, e.me, id)
	if err != nil {
		return
	}
	sp.Relays += uint32(n)
	b := e.cfg.Store.NewBatch()
	e.putPost(b, sp)
	_ = b.CommitUnsynced(ctx)
}
