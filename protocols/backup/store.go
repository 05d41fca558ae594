package backup

import (
	"context"
	"errors"
	"fmt"

	"github.com/kinmesh/kinmesh/protocols/discovery"
	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/storage"
)

// Relay store layout, in namespace "backup". <A> is Opaque("a", the
// account's Ed25519 key) and <Y> is Opaque("y", the number's OPRF
// output): 32 characters that reveal nothing without the store key. No
// key or value holds a phone number or anything of a backup's plaintext.
//
//	a/<A>   StoredIndex: the number's output, the account's discovery name, time, size   (TTL)
//	b/<Y>   StoredBackup: <A>, the account's discovery name, the sealed backup, time    (TTL)
//
// Both records of a backup are written and deleted together, in one
// synced batch, with the TTL (DefaultTTL) renewed by every upload. An
// account has at most one backup and a number at most one.

func (s *Service) ownerKey(id e2ee.PublicIdentity) string { return s.ns.Opaque([]byte("a"), id.Sign) }
func (s *Service) outputKey(out discovery.Output) string {
	return s.ns.Opaque([]byte("y"), out[:])
}

func indexKey(owner string) string   { return "a/" + owner }
func backupKey(outKey string) string { return "b/" + outKey }

// countBackups counts the index records.
func (s *Service) countBackups(ctx context.Context) (int, error) {
	n := 0
	err := s.ns.List(ctx, storage.ListOptions{Prefix: "a/"}, func(string, []byte) error {
		n++
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("backup: count backups: %w", err)
	}
	return n, nil
}

func (s *Service) index(ctx context.Context, owner string) (*storedIndex, error) {
	b, err := s.ns.Get(ctx, indexKey(owner))
	if errors.Is(err, storage.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	idx, err := decodeStoredIndex(b)
	if err != nil {
		s.log.Warn("dropping an unreadable backup index", "err", err)
		return nil, nil
	}
	return &idx, nil
}

func (s *Service) backup(ctx context.Context, outKey string) (*storedBackup, error) {
	b, err := s.ns.Get(ctx, backupKey(outKey))
	if errors.Is(err, storage.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	sb, err := decodeStoredBackup(b)
	if err != nil {
		s.log.Warn("dropping an unreadable backup", "err", err)
		return nil, nil
	}
	return &sb, nil
}

// store1 stores blob as owner's backup under link's number, replacing
// owner's previous backup (of this or another number) and the backup a
// previous owner of the number left. Called without writeMu.
func (s *Service) store1(ctx context.Context, owner string, link discovery.Link, blob []byte) (*Status, Code, error) {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	now := s.cfg.now()
	outKey := s.outputKey(link.Output)
	idx, err := s.index(ctx, owner)
	if err != nil {
		return nil, CodeUnavailable, err
	}
	prev, err := s.backup(ctx, outKey)
	if err != nil {
		return nil, CodeUnavailable, err
	}
	count := s.count
	b := s.store.NewBatch()
	var errs []error
	if idx == nil {
		if count >= s.cfg.maxBackups {
			return nil, CodeQuota, nil
		}
		count++
	} else if idx.output != link.Output {
		// The account's number changed: its old backup goes.
		errs = append(errs, b.Delete(s.ns, backupKey(s.outputKey(idx.output))))
	}
	if prev != nil && prev.owner != owner {
		// The number moved to this account: the previous owner's backup
		// goes.
		errs = append(errs, b.Delete(s.ns, indexKey(prev.owner)))
		count--
	}
	sb := storedBackup{owner: owner, account: link.Account, blob: blob, updated: now}
	si := storedIndex{output: link.Output, account: link.Account, updated: now, size: len(blob)}
	errs = append(errs,
		b.PutTTL(s.ns, backupKey(outKey), sb.encode(), s.cfg.ttl),
		b.PutTTL(s.ns, indexKey(owner), si.encode(), s.cfg.ttl),
	)
	if err := errors.Join(errs...); err != nil {
		return nil, CodeUnavailable, err
	}
	if err := b.Commit(ctx); err != nil {
		return nil, CodeUnavailable, err
	}
	s.count = max(count, 0)
	s.tr.backups(s.count)
	return &Status{Verified: true, Held: true, UpdatedAt: sb.updated, Size: len(blob), ExpiresAt: now.Add(s.cfg.ttl)}, CodeOK, nil
}

// held reports owner's backup, dropping it if its number is no longer
// owner's (link is owner's current link, if verified).
func (s *Service) held(ctx context.Context, owner string, link discovery.Link, verified bool) (*Status, error) {
	idx, err := s.index(ctx, owner)
	if err != nil || idx == nil {
		return &Status{}, err
	}
	if !verified || idx.output != link.Output || idx.account != link.Account {
		if _, err := s.deleteOwner(ctx, owner); err != nil {
			return nil, err
		}
		return &Status{}, nil
	}
	return &Status{Held: true, UpdatedAt: idx.updated, Size: idx.size, ExpiresAt: idx.updated.Add(s.cfg.ttl)}, nil
}

// deleteOwner deletes owner's backup and reports whether there was one.
func (s *Service) deleteOwner(ctx context.Context, owner string) (bool, error) {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	idx, err := s.index(ctx, owner)
	if err != nil || idx == nil {
		return false, err
	}
	return true, s.deleteLocked(ctx, owner, idx.output)
}

// deleteLocked deletes owner's index and the backup under out if it is
// owner's. Called with writeMu held.
func (s *Service) deleteLocked(ctx context.Context, owner string, out discovery.Output) error {
	outKey := s.outputKey(out)
	sb, err := s.backup(ctx, outKey)
	if err != nil {
		return err
	}
	b := s.store.NewBatch()
	errs := []error{b.Delete(s.ns, indexKey(owner))}
	if sb == nil || sb.owner == owner {
		errs = append(errs, b.Delete(s.ns, backupKey(outKey)))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if err := b.Commit(ctx); err != nil {
		return err
	}
	s.count = max(s.count-1, 0)
	s.tr.backups(s.count)
	return nil
}

// lookup returns the backup held under out if the account that uploaded
// it is the one the number is linked to now; a backup whose link is gone
// is deleted instead.
func (s *Service) lookup(ctx context.Context, out discovery.Output) (*Fetched, error) {
	sb, err := s.backup(ctx, s.outputKey(out))
	if err != nil || sb == nil {
		return nil, err
	}
	acct, ok, err := s.links.LinkedAccount(ctx, out)
	if err != nil {
		return nil, err
	}
	if !ok || acct != sb.account {
		s.writeMu.Lock()
		err := s.deleteLocked(ctx, sb.owner, out)
		s.writeMu.Unlock()
		return nil, err
	}
	return &Fetched{Blob: sb.blob, UpdatedAt: sb.updated}, nil
}

// Sweep deletes every backup whose number is no longer linked to the
// account that uploaded it (the number was unlinked or verified by
// another account, or the account deleted its link), and recounts the
// backups held. It returns how many it deleted. The service sweeps every
// sweep interval (WithSweepInterval); operators and tests may call it.
func (s *Service) Sweep(ctx context.Context) (int, error) {
	type stale struct {
		owner string
		out   discovery.Output
	}
	var gone []stale
	err := s.ns.List(ctx, storage.ListOptions{Prefix: "a/"}, func(k string, v []byte) error {
		owner := k[len("a/"):]
		idx, err := decodeStoredIndex(v)
		if err != nil {
			gone = append(gone, stale{owner: owner})
			return nil
		}
		acct, ok, err := s.links.LinkedAccount(ctx, idx.output)
		if err != nil {
			return err
		}
		if !ok || acct != idx.account {
			gone = append(gone, stale{owner, idx.output})
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("backup: sweep: %w", err)
	}
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	n := 0
	for _, g := range gone {
		// Re-check under the lock: an upload may have renewed it since.
		idx, err := s.index(ctx, g.owner)
		if err != nil {
			return n, err
		}
		if idx != nil {
			acct, ok, err := s.links.LinkedAccount(ctx, idx.output)
			if err != nil {
				return n, err
			}
			if ok && acct == idx.account {
				continue
			}
			g.out = idx.output
		}
		if err := s.deleteLocked(ctx, g.owner, g.out); err != nil {
			return n, err
		}
		n++
	}
	if c, err := s.countBackups(ctx); err == nil {
		s.count = c
	}
	s.tr.backups(s.count)
	s.tr.swept(n)
	return n, nil
}
