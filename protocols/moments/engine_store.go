package moments

import (
	"context"
	"crypto/ed25519"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/kinmesh/kinmesh/protocols/blobs"
	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/protocols/moments/pb"
	"github.com/kinmesh/kinmesh/storage"
)

// A moment id, and a reaction id, is chosen by its author: nothing stops
// another friend from sending a frame with the same id on its own feed.
// So on a device every record of a moment, a tombstone, a reaction and a
// withdrawal is keyed by the feed's author (the topic the frame came on),
// and a reaction and a withdrawal by the reaction's delete key too: one
// friend's frames can never touch another author's moment or another
// reactor's reaction. The keys are in engine_keys.go.

// ErrAmbiguous means two authors have a moment with the id given (one of
// them copied the other's): name the one meant as "author:id".
var ErrAmbiguous = errors.New("moments: several moments have this id; name the author as author:id")

// storeVersion is the device store layout (key "v"): 2 keys moments,
// tombstones, reactions and withdrawals by author. Version 1 (no "v")
// keyed them by id alone; load migrates it.
const storeVersion = 2

// Layout 1 prefixes, read only by migrate.
const (
	v1Post     = "p/"
	v1PostIdx  = "pi/"
	v1Reaction = "r/"
	v1Deleted  = "d/"
	v1Withdraw = "w/"
)

// tag is A: an account's opaque tag in store keys.
func (e *Engine) tag(a e2ee.AccountID) string { return e.ns.Opaque([]byte(a)) }

// postListKey is a moment's "m/" key: newest first, then by id and author.
func (e *Engine) postListKey(a e2ee.AccountID, created int64, id []byte) string {
	return fmt.Sprintf("%s%016x/%s/%s", dkPost, uint64(math.MaxInt64-created), hex.EncodeToString(id), e.tag(a))
}

// postIdxKey is the "mi/" key of author a's moment id.
func (e *Engine) postIdxKey(a e2ee.AccountID, id itemID) string {
	return dkPostIdx + id.String() + "/" + e.tag(a)
}

// reactionPrefix starts the keys of the reactions to author a's moment.
func (e *Engine) reactionPrefix(a e2ee.AccountID, post itemID) string {
	return dkReaction + post.String() + "/" + e.tag(a) + "/"
}

// reactionKey is the key of one reaction to author a's moment: its item
// id and its delete key.
func (e *Engine) reactionKey(a e2ee.AccountID, post, item itemID, dk ed25519.PublicKey) string {
	return e.reactionPrefix(a, post) + item.String() + "/" + e.ns.Opaque(dk)
}

// deletedKey marks author a's moment id deleted.
func (e *Engine) deletedKey(a e2ee.AccountID, id itemID) string {
	return dkDeleted + e.tag(a) + "/" + id.String()
}

// withdrawnKey marks one reaction to author a's moment withdrawn.
func (e *Engine) withdrawnKey(a e2ee.AccountID, post, item itemID, dk ed25519.PublicKey) string {
	return dkWithdraw + e.tag(a) + "/" + post.String() + "/" + item.String() + "/" + e.ns.Opaque(dk)
}

// parseRef reads a moment as the API names it: "id", or "author:id".
func parseRef(ref string) (e2ee.AccountID, itemID, error) {
	author, id, ok := strings.Cut(ref, ":")
	if !ok {
		pid, err := parseItemID(ref)
		return "", pid, err
	}
	a, err := e2ee.ParseAccountID(author)
	if err != nil {
		return "", itemID{}, fmt.Errorf("moments: %q is not a moment (author:id): %w", ref, ErrNotFound)
	}
	pid, err := parseItemID(id)
	return a, pid, err
}

// lookup finds the moment ref names: the author's if ref names one, else
// the one moment with that id (ErrAmbiguous if several authors, not
// blocked, have one).
func (e *Engine) lookup(ctx context.Context, ref string) (*pb.StoredPost, [32]byte, error) {
	author, id, err := parseRef(ref)
	if err != nil {
		return nil, [32]byte{}, err
	}
	if author != "" {
		return e.loadPost(ctx, author, id)
	}
	var keys []string
	err = e.ns.List(ctx, storage.ListOptions{Prefix: dkPostIdx + id.String() + "/"}, func(_ string, v []byte) error {
		keys = append(keys, string(v))
		return nil
	})
	if err != nil {
		return nil, [32]byte{}, err
	}
	var found *pb.StoredPost
	for _, k := range keys {
		sp, err := e.readPost(ctx, k, id)
		if err != nil {
			continue
		}
		if a := e2ee.AccountID(sp.GetAuthor()); a != e.me && e.cfg.Contacts.Blocked(a) {
			continue
		}
		if found != nil {
			return nil, [32]byte{}, fmt.Errorf("moments: moment %s: %w", id, ErrAmbiguous)
		}
		found = sp
	}
	if found == nil {
		return nil, [32]byte{}, fmt.Errorf("moments: moment %s: %w", id, ErrNotFound)
	}
	return found, [32]byte(found.GetPostKey()), nil
}

// loadPost returns author's moment id and its key, or ErrNotFound.
func (e *Engine) loadPost(ctx context.Context, author e2ee.AccountID, id itemID) (*pb.StoredPost, [32]byte, error) {
	k, err := e.ns.Get(ctx, e.postIdxKey(author, id))
	if errors.Is(err, storage.ErrNotFound) {
		return nil, [32]byte{}, fmt.Errorf("moments: moment %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, [32]byte{}, err
	}
	sp, err := e.readPost(ctx, string(k), id)
	if err != nil {
		return nil, [32]byte{}, err
	}
	if sp.GetAuthor() != string(author) {
		return nil, [32]byte{}, fmt.Errorf("moments: moment %s: %w", id, ErrMalformed)
	}
	return sp, [32]byte(sp.GetPostKey()), nil
}

// readPost reads the moment under its "m/" key k.
func (e *Engine) readPost(ctx context.Context, k string, id itemID) (*pb.StoredPost, error) {
	v, err := e.ns.Get(ctx, k)
	if err != nil {
		return nil, fmt.Errorf("moments: moment %s: %w", id, ErrNotFound)
	}
	var sp pb.StoredPost
	if err := proto.Unmarshal(v, &sp); err != nil || len(sp.GetPostKey()) != 32 {
		return nil, fmt.Errorf("moments: moment %s: %w", id, ErrMalformed)
	}
	return &sp, nil
}

// putPost adds a moment to b.
func (e *Engine) putPost(b *storage.Batch, sp *pb.StoredPost) {
	a := e2ee.AccountID(sp.GetAuthor())
	id, _ := itemFromBytes(sp.GetId())
	k := e.postListKey(a, sp.GetCreatedMs(), sp.GetId())
	_ = b.Put(e.ns, k, marshal(sp))
	_ = b.Put(e.ns, e.postIdxKey(a, id), []byte(k))
}

// deletePost adds the deletion of author's moment id and its reactions to
// b, and the marker that keeps it deleted. Called with mu held.
func (e *Engine) deletePost(ctx context.Context, b *storage.Batch, author e2ee.AccountID, id itemID) error {
	k, err := e.ns.Get(ctx, e.postIdxKey(author, id))
	if err == nil {
		_ = b.Delete(e.ns, string(k))
		_ = b.Delete(e.ns, e.postIdxKey(author, id))
	} else if !errors.Is(err, storage.ErrNotFound) {
		return err
	}
	err = e.ns.List(ctx, storage.ListOptions{Prefix: e.reactionPrefix(author, id)}, func(k string, _ []byte) error {
		return b.Delete(e.ns, k)
	})
	if err != nil {
		return err
	}
	return b.PutTTL(e.ns, e.deletedKey(author, id), nil, MarkerTTL)
}

// OwnMedia lists the blob ids of the media of account id's own moments in
// st, a device store (the moments namespace; either layout). PurgeRelay
// deletes those a relay holds besides its feed's.
func OwnMedia(ctx context.Context, st *storage.Store, id e2ee.AccountID) ([]blobs.BlobID, error) {
	ns := st.Namespace(Namespace)
	var out []blobs.BlobID
	for _, prefix := range []string{dkPost, v1Post} {
		err := ns.List(ctx, storage.ListOptions{Prefix: prefix}, func(_ string, v []byte) error {
			var sp pb.StoredPost
			if proto.Unmarshal(v, &sp) != nil || sp.GetAuthor() != string(id) {
				return nil
			}
			for _, m := range sp.GetMedia() {
				if b, err := blobs.BlobIDFromBytes(m.GetBlob()); err == nil {
					out = append(out, b)
				}
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("moments: list own media: %w", err)
		}
	}
	return out, nil
}

// migrateBatch is how many keys one migration batch changes at most.
const migrateBatch = 256

// migrate brings a store of layout 1 (moments, tombstones, reactions and
// withdrawals keyed by id alone) to layout 2. Moments and reactions move
// to their author's keys (the stored moment names its author; a reaction
// goes with its moment, and is dropped if that is gone). The old deletion
// and withdrawal markers can't be tied to an author — a friend could have
// planted one for another author's id — so they are dropped, and every
// backfill cursor with them: relays keep tombstones and withdrawals for
// MarkerTTL, as long as the markers lived, so the next backfill fetches
// them again and writes the markers under their authors. Each step is
// idempotent: a migration cut short runs again at the next start.
func (e *Engine) migrate(ctx context.Context) error {
	if v, err := e.ns.Get(ctx, dkVersion); err == nil {
		if n, _ := binary.Uvarint(v); n >= storeVersion {
			return nil
		}
	} else if !errors.Is(err, storage.ErrNotFound) {
		return err
	}
	// Reactions first: they find their moment by the old index.
	postAuthor := func(post []byte) (e2ee.AccountID, bool) {
		k, err := e.ns.Get(ctx, v1PostIdx+hex.EncodeToString(post))
		if err != nil {
			return "", false
		}
		v, err := e.ns.Get(ctx, string(k))
		var sp pb.StoredPost
		if err != nil || proto.Unmarshal(v, &sp) != nil {
			return "", false
		}
		return e2ee.AccountID(sp.GetAuthor()), true
	}
	err := e.rewrite(ctx, v1Reaction, func(b *storage.Batch, _ string, v []byte) {
		var sr pb.StoredReaction
		if proto.Unmarshal(v, &sr) != nil {
			return
		}
		post, ok1 := itemFromBytes(sr.GetPost())
		item, ok2 := itemFromBytes(sr.GetItem())
		author, ok3 := postAuthor(sr.GetPost())
		if ok1 && ok2 && ok3 && len(sr.GetDeleteKey()) == ed25519.PublicKeySize {
			_ = b.Put(e.ns, e.reactionKey(author, post, item, sr.GetDeleteKey()), v)
		}
	})
	if err != nil {
		return err
	}
	err = e.rewrite(ctx, v1Post, func(b *storage.Batch, _ string, v []byte) {
		var sp pb.StoredPost
		if proto.Unmarshal(v, &sp) == nil && len(sp.GetId()) == idSize && sp.GetAuthor() != "" {
			e.putPost(b, &sp)
		}
	})
	if err != nil {
		return err
	}
	for _, p := range []string{v1PostIdx, v1Deleted, v1Withdraw, dkCursor} {
		if err := e.rewrite(ctx, p, func(*storage.Batch, string, []byte) {}); err != nil {
			return err
		}
	}
	return e.ns.Put(ctx, dkVersion, binary.AppendUvarint(nil, storeVersion))
}

// rewrite deletes every key under prefix, in batches, after f added what
// replaces it to the same batch.
func (e *Engine) rewrite(ctx context.Context, prefix string, f func(b *storage.Batch, k string, v []byte)) error {
	for {
		type kv struct {
			k string
			v []byte
		}
		var page []kv
		err := e.ns.List(ctx, storage.ListOptions{Prefix: prefix, Limit: migrateBatch}, func(k string, v []byte) error {
			page = append(page, kv{k, v})
			return nil
		})
		if err != nil {
			return fmt.Errorf("moments: migrate %q: %w", prefix, err)
		}
		if len(page) == 0 {
			return nil
		}
		b := e.cfg.Store.NewBatch()
		for _, p := range page {
			f(b, p.k, p.v)
			_ = b.Delete(e.ns, p.k)
		}
		if err := b.Commit(ctx); err != nil {
			return fmt.Errorf("moments: migrate %q: %w", prefix, err)
		}
	}
}
