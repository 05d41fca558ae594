package moments

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/kinmesh/kinmesh/protocols/blobs"
	"github.com/kinmesh/kinmesh/protocols/moments/pb"
	"github.com/kinmesh/kinmesh/storage"
)

// Deleting what belongs to a moment, on the relay. Every step is a batch
// that also writes the feed's counters, so a failure (or a crash) between
// batches leaves the store consistent, and doing it again finishes it.

// removeBatch is how many of a moment's items one batch deletes.
const removeBatch = 256

// removeMoment deletes moment P of feed cp (its post, reactions and
// withdrawals, wherever their epochs are), their index and reaction keys
// and its reaction counter, and counts them off. onPost, if set, adds to
// the batch that deletes the post (what must go with it). Called with the
// feed's lock held; idempotent.
func (s *Service) removeMoment(ctx context.Context, cp *feedState, P string, commit func(*storage.Batch) error, onPost func(*storage.Batch, *pb.Stored)) error {
	F := cp.key
	prefix := keyIndex + F + "/" + P + "/"
	for {
		var idx, items []string
		err := s.ns.List(ctx, storage.ListOptions{Prefix: prefix, Limit: removeBatch}, func(k string, v []byte) error {
			idx = append(idx, k)
			items = append(items, string(v))
			return nil
		})
		if err != nil {
			return fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		if len(idx) == 0 {
			break
		}
		b := s.store.NewBatch()
		var n, size int64
		for i, ik := range items {
			v, err := s.ns.Get(ctx, ik)
			if err != nil && !errors.Is(err, storage.ErrNotFound) {
				return fmt.Errorf("%w: %w", ErrUnavailable, err)
			}
			if err == nil {
				var st pb.Stored
				if proto.Unmarshal(v, &st) == nil {
					if counted(&st) {
						n++
						size += int64(len(st.GetFrame()))
					}
					switch st.GetKind() {
					case pb.Kind_KIND_REACTION, pb.Kind_KIND_WITHDRAW:
						_ = b.Delete(s.ns, keyReaction+F+"/"+s.ns.Opaque(st.GetItem()))
					case pb.Kind_KIND_POST:
						if onPost != nil {
							onPost(b, &st)
						}
					}
				}
			}
			_ = b.Delete(s.ns, ik)
			_ = b.Delete(s.ns, idx[i])
		}
		s.countOff(cp, n, size)
		_ = b.Put(s.ns, keyFeed+F, cp.encode())
		if err := commit(b); err != nil {
			return fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		s.setCounters(cp, -n, -size)
	}
	if err := s.ns.Delete(ctx, keyCount+F+"/"+P); err != nil {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return nil
}

// counted reports whether a kept frame counts against its feed's quota:
// posts, reactions and withdrawals (withdrawals kept before they were
// counted are not marked; posts and reactions always were).
func counted(st *pb.Stored) bool {
	k := st.GetKind()
	return st.GetCounted() || k == pb.Kind_KIND_POST || k == pb.Kind_KIND_REACTION
}

// countOff takes n items of size bytes off cp's counters.
func (s *Service) countOff(cp *feedState, n, size int64) {
	cp.items -= min(uint64(n), cp.items)
	cp.bytes -= min(uint64(size), cp.bytes)
}

// deleteMedia deletes media of feed F with the proofs a tombstone
// carries, and takes them off the feed's media list. A blob already gone
// is deleted; a proof the blob store refuses is the tombstone's fault and
// is skipped. Any other failure is ErrUnavailable: the tombstone's retry
// deletes what is left.
func (s *Service) deleteMedia(ctx context.Context, F string, proofs []blobProof) error {
	if s.media == nil {
		return nil
	}
	var errs []error
	b := s.store.NewBatch()
	for _, p := range proofs {
		err := s.media.DeleteSigned(ctx, p.id, p.sig)
		switch {
		case err == nil, errors.Is(err, blobs.ErrNotFound):
			_ = b.Delete(s.ns, listedKey(s.ns, F, p.id[:]))
		case errors.Is(err, blobs.ErrUnauthorized):
			s.log.Debug("tombstone: a medium's deletion proof refused", "blob", p.id, "err", err)
		default:
			errs = append(errs, err)
		}
	}
	if err := b.Commit(ctx); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return fmt.Errorf("delete a moment's media: %w: %w", ErrUnavailable, errors.Join(errs...))
	}
	return nil
}

// listedKey is the key of medium id on feed F's media list.
func listedKey(ns *storage.Namespace, F string, id []byte) string {
	return keyMedia + F + "/" + ns.Opaque(id)
}

func dropKey(F string, epoch uint32) string { return fmt.Sprintf("%s%s/%04x", keyDropping, F, epoch) }

// listMedia returns a function that puts a post's media on its feed's
// media list, in the batch that deletes the post: a medium the relay no
// longer lists can't be reported by Purge.
func (s *Service) listMedia(F string) func(*storage.Batch, *pb.Stored) {
	return func(b *storage.Batch, st *pb.Stored) {
		for _, m := range st.GetMedia() {
			if _, err := blobs.BlobIDFromBytes(m); err == nil {
				_ = b.Put(s.ns, listedKey(s.ns, F, m), m)
			}
		}
	}
}

// dropEpoch deletes an epoch of feed fk dropped beyond WithMaxEpochs:
// every frame kept on its topic, and every moment posted there with its
// reactions and withdrawals wherever they were kept, counting them off.
// The moments' media go on the feed's media list, which Purge reports
// (the relay can't delete them: their proofs are the owner's). It works in
// batches under the feed's lock and deletes the epoch's marker last, so a
// drop that fails or is cut short by a restart is finished by the janitor.
func (s *Service) dropEpoch(ctx context.Context, fk string, epoch uint32) error {
	marker := dropKey(fk, epoch)
	s.mu.Lock()
	busy := s.dropping[marker]
	s.dropping[marker] = true
	s.mu.Unlock()
	if busy {
		return nil
	}
	defer func() {
		s.mu.Lock()
		delete(s.dropping, marker)
		s.mu.Unlock()
	}()
	prefix := fmt.Sprintf("%s%s/%04x/", keyItem, fk, epoch)
	for {
		done, err := s.dropBatch(ctx, fk, prefix, marker)
		if err != nil {
			return fmt.Errorf("drop epoch %d: %w", epoch, err)
		}
		if done {
			return nil
		}
	}
}

// dropBatch deletes up to removeBatch frames kept under prefix, and what
// goes with them; done means there were none left.
func (s *Service) dropBatch(ctx context.Context, fk, prefix, marker string) (done bool, err error) {
	l := s.lock(fk)
	l.Lock()
	defer l.Unlock()
	s.mu.Lock()
	fs, ok := s.feeds[fk]
	var cp feedState
	if ok {
		cp = *fs
	}
	s.mu.Unlock()
	if !ok { // purged meanwhile
		return true, s.ns.Delete(ctx, marker)
	}
	var keys []string
	var posts []string
	err = s.ns.List(ctx, storage.ListOptions{Prefix: prefix, Limit: removeBatch}, func(k string, v []byte) error {
		keys = append(keys, k)
		var st pb.Stored
		if proto.Unmarshal(v, &st) == nil && st.GetKind() == pb.Kind_KIND_POST {
			posts = append(posts, s.ns.Opaque(st.GetPost()))
		}
		return nil
	})
	if err != nil {
		return false, err
	}
	if len(keys) == 0 {
		return true, s.ns.Delete(ctx, marker)
	}
	commit := func(b *storage.Batch) error { return b.Commit(ctx) }
	// Moments posted in the epoch go whole.
	for _, P := range posts {
		if err := s.removeMoment(ctx, &cp, P, commit, s.listMedia(fk)); err != nil {
			return false, err
		}
	}
	// What is left: frames of moments posted in other epochs (reactions
	// to them, their withdrawals and tombstones), and whatever the
	// moments' index missed.
	b := s.store.NewBatch()
	var n, size int64
	counts := map[string]uint64{} // reaction counts to write back
	for _, k := range keys {
		v, err := s.ns.Get(ctx, k)
		if errors.Is(err, storage.ErrNotFound) {
			continue
		}
		if err != nil {
			return false, err
		}
		_ = b.Delete(s.ns, k)
		var st pb.Stored
		if proto.Unmarshal(v, &st) != nil {
			continue
		}
		if counted(&st) {
			n++
			size += int64(len(st.GetFrame()))
		}
		P, I := s.ns.Opaque(st.GetPost()), s.ns.Opaque(st.GetItem())
		switch st.GetKind() {
		case pb.Kind_KIND_POST:
			s.listMedia(fk)(b, &st)
			_ = b.Delete(s.ns, keyIndex+fk+"/"+P+"/"+I)
		case pb.Kind_KIND_REACTION, pb.Kind_KIND_WITHDRAW:
			_ = b.Delete(s.ns, keyIndex+fk+"/"+P+"/"+I)
			if st.GetKind() == pb.Kind_KIND_REACTION {
				_ = b.Delete(s.ns, keyReaction+fk+"/"+I)
			} else if st.GetCounted() {
				// Its moment is still held: the reaction must not come back.
				_ = b.PutTTL(s.ns, keyReaction+fk+"/"+I, []byte(withdrawnVal), MarkerTTL)
			}
			if st.GetKind() == pb.Kind_KIND_REACTION || st.GetCounted() {
				c, seen := counts[P]
				if !seen {
					if c, err = s.count(ctx, fk, P); err != nil {
						return false, err
					}
				}
				counts[P] = c - min(c, 1)
			}
		}
	}
	for P, c := range counts {
		_ = b.Put(s.ns, keyCount+fk+"/"+P, encodeCount(c))
	}
	s.countOff(&cp, n, size)
	_ = b.Put(s.ns, keyFeed+fk, cp.encode())
	if err := commit(b); err != nil {
		return false, err
	}
	s.setCounters(&cp, -n, -size)
	return false, nil
}

// resumeDrops finishes the epoch drops whose markers are still there.
func (s *Service) resumeDrops() {
	type drop struct {
		fk    string
		epoch uint32
	}
	var drops []drop
	err := s.ns.List(s.ctx, storage.ListOptions{Prefix: keyDropping}, func(k string, _ []byte) error {
		fk, ep, ok := strings.Cut(strings.TrimPrefix(k, keyDropping), "/")
		e, err := strconv.ParseUint(ep, 16, 32)
		if ok && err == nil {
			drops = append(drops, drop{fk, uint32(e)})
		}
		return nil
	})
	if err != nil {
		s.log.Warn("list the epoch drops to finish", "err", err)
		return
	}
	for _, d := range drops {
		if err := s.dropEpoch(s.ctx, d.fk, d.epoch); err != nil {
			s.log.Warn("finish an epoch drop", "err", err)
		}
	}
}
