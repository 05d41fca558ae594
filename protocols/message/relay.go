package message

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"golang.org/x/sync/errgroup"

	"github.com/kinmesh/kinmesh/protocols/mailbox"
)

// relayLink is our owner session on one of our home relays: it drains
// the mailbox, then takes pushes, and reconnects with backoff.
type relayLink struct {
	relay     peer.AddrInfo
	connected bool
	lastErr   string
	stop      context.CancelFunc
}

// RelayState is the state of our mailbox on one home relay.
type RelayState struct {
	Relay     peer.ID
	Connected bool   // an owner session is open: new mail is pushed at once
	LastError string // why it is not, if it is not
}

// Relays returns the state of our mailbox sessions.
func (s *Service) Relays() []RelayState {
	s.relayMu.Lock()
	defer s.relayMu.Unlock()
	var out []RelayState
	for _, r := range s.record().Relays() {
		l := s.relays[r.ID]
		if l == nil {
			continue
		}
		out = append(out, RelayState{Relay: r.ID, Connected: l.connected, LastError: l.lastErr})
	}
	return out
}

func (s *Service) startRelay(r peer.AddrInfo) {
	ctx, cancel := context.WithCancel(s.ctx)
	l := &relayLink{relay: r, stop: cancel}
	s.relayMu.Lock()
	s.relays[r.ID] = l
	s.relayMu.Unlock()
	s.wg.Go(func() { s.relayLoop(ctx, l) })
}

// stopRelay ends our mailbox session on a relay that is no longer a home.
func (s *Service) stopRelay(id peer.ID) {
	s.relayMu.Lock()
	defer s.relayMu.Unlock()
	if l, ok := s.relays[id]; ok {
		l.stop()
		delete(s.relays, id)
	}
}

func (s *Service) setLink(l *relayLink, connected bool, err error) {
	s.relayMu.Lock()
	l.connected = connected
	l.lastErr = ""
	if err != nil {
		l.lastErr = err.Error()
	}
	s.relayMu.Unlock()
}

func (s *Service) relayLoop(ctx context.Context, l *relayLink) {
	backoff := 500 * time.Millisecond
	for ctx.Err() == nil {
		err := s.relaySession(ctx, l)
		s.setLink(l, false, err)
		if ctx.Err() != nil {
			return
		}
		s.log.Debug("mailbox session ended", "relay", l.relay.ID, "err", err)
		t := time.NewTimer(time.Duration(float64(backoff) * (0.8 + 0.4*rand.Float64())))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

// relaySession runs one owner session until it ends.
func (s *Service) relaySession(ctx context.Context, l *relayLink) error {
	s.cfg.Host.Peerstore().AddAddrs(l.relay.ID, l.relay.Addrs, peerstore.PermanentAddrTTL)
	octx, cancel := context.WithTimeout(ctx, 20*time.Second)
	sess, err := s.cfg.Mailbox.Open(octx, l.relay.ID, s.cfg.Account.MailboxAuth)
	cancel()
	if err != nil {
		return err
	}
	defer sess.Close()
	s.setLink(l, true, nil)
	if err := s.drainOne(sess, 0); err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-sess.Done():
			return sess.Err()
		case p, ok := <-sess.Pushed():
			if !ok { // the session ended
				<-sess.Done()
				return sess.Err()
			}
			if p.Missed {
				if err := s.drainOne(sess, p.FetchAfter); err != nil {
					return err
				}
				continue
			}
			if err := s.take(sess, p.Items); err != nil {
				return err
			}
		}
	}
}

// RetireRelay empties our mailbox on a relay that is no longer one of our
// homes (a move replaced it): it drains what contacts deposited there
// before they learned of the move, processing and acking it as a home's
// mail, and then purges the mailbox, with whatever could not be processed
// (a message too far ahead of its chain, whose copies on the homes still
// come) or arrived after the drain's last page. It returns how many items
// the purge deleted. A failed drain purges nothing: call it again later.
func (s *Service) RetireRelay(ctx context.Context, relay peer.AddrInfo) (int, error) {
	s.cfg.Host.Peerstore().AddAddrs(relay.ID, relay.Addrs, peerstore.TempAddrTTL)
	octx, cancel := context.WithTimeout(ctx, 20*time.Second)
	sess, err := s.cfg.Mailbox.Open(octx, relay.ID, s.cfg.Account.MailboxAuth)
	cancel()
	if err != nil {
		return 0, err
	}
	defer sess.Close()
	if err := s.drainOne(sess, 0); err != nil {
		return 0, err
	}
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return sess.Purge(pctx)
}

// maxAcksInFlight is how many acks (each a synced delete on the relay) a
// drain has outstanding at once.
const maxAcksInFlight = 4

// drainOne drains one relay's backlog while no other relay's is drained.
// Each relay holds the sender's messages in the sender's order, but not
// always in the same envelopes (a relay that missed a round gets its jobs
// batched anew), so backlogs drained side by side could run ahead of one
// another by more than a ratchet chain can skip (e2ee.MaxSkipPerChain).
// One after the other, the first drain decrypts in order and the others
// mostly find what they hold already seen.
func (s *Service) drainOne(sess *mailbox.Session, after uint64) error {
	s.drainMu.Lock()
	defer s.drainMu.Unlock()
	return s.drain(sess, after)
}

// drain fetches and processes everything after seq. It pipelines: the
// next page is fetched while the current one is processed, and pages'
// acks (each a synced delete on the relay, which shares fsyncs between
// acks that arrive together) run while the following pages are
// processed, up to maxAcksInFlight at once. An ack is sent only for items
// whose processing is on disk; acks may complete in any order.
func (s *Service) drain(sess *mailbox.Session, after uint64) error {
	acks, actx := errgroup.WithContext(s.ctx)
	acks.SetLimit(maxAcksInFlight)
	next := s.fetchPage(sess, after)
	for {
		p := <-next
		next = nil
		if p.err != nil {
			return errors.Join(p.err, acks.Wait())
		}
		if p.more && len(p.items) > 0 {
			next = s.fetchPage(sess, p.items[len(p.items)-1].Seq)
		}
		seqs, transient := s.process(p.items)
		if len(seqs) > 0 && actx.Err() == nil {
			acks.Go(func() error { return s.ack(sess, seqs) })
		}
		if transient != nil || actx.Err() != nil || next == nil {
			if next != nil {
				<-next
			}
			return errors.Join(transient, acks.Wait())
		}
	}
}

// page is one fetched page of a mailbox.
type page struct {
	items []mailbox.Item
	more  bool
	err   error
}

// fetchPage fetches the page after seq in the background.
func (s *Service) fetchPage(sess *mailbox.Session, after uint64) <-chan page {
	out := make(chan page, 1)
	go func() {
		ctx, cancel := context.WithTimeout(s.ctx, 30*time.Second)
		defer cancel()
		items, more, err := sess.Fetch(ctx, after, mailbox.MaxPageItems)
		out <- page{items, more, err}
	}()
	return out
}

// take processes items and acks (deletes on the relay) the ones handled
// for good. A transient failure ends the session, so the items come again.
func (s *Service) take(sess *mailbox.Session, items []mailbox.Item) error {
	acks, transient := s.process(items)
	if err := s.ack(sess, acks); err != nil {
		return err
	}
	return transient
}

// process receives items and returns the seqs to ack and, if some failed
// for now, a transient error.
func (s *Service) process(items []mailbox.Item) ([]uint64, error) {
	if len(items) == 0 {
		return nil, nil
	}
	envs := make([][]byte, len(items))
	for i, it := range items {
		envs[i] = it.Envelope
	}
	var acks []uint64
	var transient error
	for i, err := range s.receive(envs, nil, nil) {
		if errors.Is(err, errTransient) {
			transient = err
			continue
		}
		if errors.Is(err, errLater) {
			continue // left on the relay: the next drain brings it again
		}
		acks = append(acks, items[i].Seq)
	}
	return acks, transient
}

func (s *Service) ack(sess *mailbox.Session, seqs []uint64) error {
	if len(seqs) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(s.ctx, 30*time.Second)
	defer cancel()
	_, err := sess.Ack(ctx, seqs...)
	return err
}
