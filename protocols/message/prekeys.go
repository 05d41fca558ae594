package message

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"

	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/protocols/prekeys"
	"github.com/kinmesh/kinmesh/storage"
)

// initPrekeys stores cfg.InitialPrekeys when the engine has none yet.
func (s *Service) initPrekeys() error {
	_, err := s.ns.Get(s.ctx, keyPrekeys)
	if err == nil {
		return nil
	}
	if !errors.Is(err, storage.ErrNotFound) {
		return fmt.Errorf("message: load prekeys: %w", err)
	}
	if s.cfg.InitialPrekeys == nil {
		return errors.New("message: no prekeys: pass Config.InitialPrekeys on the first start")
	}
	b := s.cfg.Store.NewBatch()
	if err := b.Put(s.ns, keyPrekeys, s.cfg.InitialPrekeys.Marshal()); err != nil {
		return err
	}
	return b.Commit(s.ctx)
}

func (s *Service) maintainLoop() {
	backoff := 5 * time.Second
	for {
		ctx, cancel := context.WithTimeout(s.ctx, 2*time.Minute)
		err := s.MaintainPrekeys(ctx)
		cancel()
		wait := s.cfg.MaintainInterval
		if err != nil && s.ctx.Err() == nil {
			s.log.Debug("prekey maintenance", "err", err)
			wait, backoff = backoff, min(2*backoff, s.cfg.MaintainInterval)
		} else {
			backoff = 5 * time.Second
		}
		t := time.NewTimer(wait)
		select {
		case <-s.ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// MaintainPrekeys checks our prekeys on every home relay: rotates the
// signed and last-resort prekeys when due, tops up one-time prekeys where
// a relay runs low (each relay its own disjoint share), and publishes.
// The new prekey store is persisted before any relay sees a new key.
func (s *Service) MaintainPrekeys(ctx context.Context) error {
	// One round at a time: two rounds from the same store would each
	// publish keys the other's result forgets.
	s.maintainMu.Lock()
	defer s.maintainMu.Unlock()
	var relays []peer.ID
	for _, r := range s.record().Relays() {
		s.cfg.Host.Peerstore().AddAddrs(r.ID, r.Addrs, peerstore.PermanentAddrTTL)
		relays = append(relays, r.ID)
	}
	if len(relays) == 0 {
		return nil
	}
	s.mu.Lock()
	store, err := s.begin().Prekeys()
	s.tracking, s.consumed = true, nil
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.tracking, s.consumed = false, nil
		s.mu.Unlock()
	}()
	if err != nil {
		return err
	}
	plan, err := s.cfg.Prekeys.Maintain(ctx, s.cfg.Account.Identity, store, relays, prekeys.MaintainOptions{Now: s.cfg.Now})
	if err != nil {
		return err
	}
	if plan.Changed {
		s.mu.Lock()
		t := s.begin()
		t.setPrekeys(plan.Store.Consume(s.consumed...))
		err := t.commit()
		s.mu.Unlock()
		if err != nil {
			return err
		}
	}
	_, err = plan.Publish(ctx)
	var errs []error
	for r, e := range plan.Errors {
		errs = append(errs, fmt.Errorf("relay %s: %w", r, e))
	}
	return errors.Join(append(errs, err)...)
}

// Prekeys returns our current prekey store (for invites).
func (s *Service) Prekeys() (*e2ee.PrekeyStore, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.begin().Prekeys()
}
