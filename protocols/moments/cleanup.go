package moments

import (
	"context"
	"errors"
	"fmt"

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

// deleteMedia deletes media with the proofs a tombstone carries. A blob
// already gone is deleted; a proof the blob store refuses is the
// tombstone's fault and is skipped. Any other failure is ErrUnavailable:
// the tombstone's retry deletes what is left.
func (s *Service) deleteMedia(ctx context.Context, proofs []blobProof) error {
	if s.media == nil {
		return nil
	}
	var errs []error
	for _, p := range proofs {
		err := s.media.DeleteSigned(ctx, p.id, p.sig)
		switch {
		case err == nil, errors.Is(err, blobs.ErrNotFound):
		case errors.Is(err, blobs.ErrUnauthorized):
			s.log.Debug("tombstone: a medium's deletion proof refused", "blob", p.id, "err", err)
		default:
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("delete a moment's media: %w: %w", ErrUnavailable, errors.Join(errs...))
	}
	return nil
}
