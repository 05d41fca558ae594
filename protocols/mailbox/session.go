package mailbox

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/kinmesh/kinmesh/protocols/mailbox/pb"
	"github.com/kinmesh/kinmesh/protocols/wire"
)

// Session is an authenticated owner session with one relay for one
// mailbox: one long-lived stream on which the owner fetches, acks and
// purges, and the relay pushes new deposits as they arrive. A Session is
// safe for concurrent use. When it ends (Close, the relay going away, a
// protocol error) Done is closed and Err says why; reconnecting is the
// caller's choice.
type Session struct {
	c     *Client
	st    network.Stream
	relay peer.ID
	mbox  MailboxID

	rd *wire.Reader
	bw *bufio.Writer

	reqs   chan *pb.Request
	nextID atomic.Uint64
	mu     sync.Mutex
	wait   map[uint64]chan response

	pushes *pushQueue
	cancel context.CancelFunc
	done   chan struct{}
	err    error // set before done is closed
	closed atomic.Bool
}

// Open authenticates to relay as the owner of key's mailbox and returns
// the session. The relay sends a challenge; the session signs it with key
// (binding the relay's and this host's peer ids, so the signature is good
// for this connection only). ErrUnauthorized means the relay refused the
// proof.
//
// New deposits arrive on Pushed from the moment Open returns; items
// deposited before are fetched with Fetch(ctx, 0, …).
func (c *Client) Open(ctx context.Context, relay peer.ID, key Key) (*Session, error) {
	if !key.valid() {
		return nil, fmt.Errorf("mailbox: open session: %w", ErrBadKey)
	}
	st, err := c.newStream(ctx, relay)
	if err != nil {
		return nil, err
	}
	s := &Session{
		c:      c,
		st:     st,
		relay:  relay,
		mbox:   key.ID(),
		rd:     wire.NewReader(bufio.NewReaderSize(st, 64<<10)),
		bw:     bufio.NewWriterSize(st, 16<<10),
		reqs:   make(chan *pb.Request),
		wait:   make(map[uint64]chan response),
		pushes: newPushQueue(c.cfg.pushBuffer),
		done:   make(chan struct{}),
	}
	stop := context.AfterFunc(ctx, func() { _ = st.Reset() })
	err = s.handshake(key)
	if !stop() {
		err = ctx.Err()
	}
	if err != nil {
		_ = st.Reset()
		return nil, fmt.Errorf("mailbox: open session on relay %s: %w", relay, err)
	}
	sctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	go s.run(sctx)
	return s, nil
}

func (s *Session) handshake(key Key) error {
	_ = s.st.SetDeadline(time.Now().Add(responseTimeout))
	defer s.st.SetDeadline(time.Time{})
	s.nextID.Store(2)
	if err := s.writeNow(encodeRequest(request{id: 1, kind: reqHello})); err != nil {
		return err
	}
	r, err := s.readAnswer(1)
	if err != nil {
		return err
	}
	if r.kind != respChallenge {
		return fmt.Errorf("expected a challenge: %w", ErrProtocol)
	}
	if peer.ID(r.relay) != s.relay {
		return fmt.Errorf("challenge names relay %s: %w", peer.ID(r.relay), ErrProtocol)
	}
	raw := rawIDFromPublicKey(key.Public())
	sig := ed25519.Sign(key.priv, authMessage(r.nonce, s.relay, s.c.h.ID(), raw))
	if err := s.writeNow(encodeRequest(request{id: 2, kind: reqAuth, pub: key.Public(), sig: sig})); err != nil {
		return err
	}
	r, err = s.readAnswer(2)
	if err != nil {
		return err
	}
	if r.kind != respAuth {
		return fmt.Errorf("expected auth ok: %w", ErrProtocol)
	}
	return nil
}

func (s *Session) writeNow(m *pb.Request) error {
	if err := wire.Write(s.bw, m, maxRequestFrame); err != nil {
		return err
	}
	return s.bw.Flush()
}

// readAnswer reads frames until the answer to id, queueing pushes that
// come first.
func (s *Session) readAnswer(id uint64) (response, error) {
	for {
		b, err := s.rd.ReadBytes(maxResponseFrame)
		if err != nil {
			return response{}, err
		}
		r, err := decodeResponse(b)
		if err != nil {
			return response{}, err
		}
		if s.handlePush(r) {
			continue
		}
		if r.id != id {
			return response{}, fmt.Errorf("answer to unknown request %d: %w", r.id, ErrProtocol)
		}
		if r.kind == respError {
			return response{}, r.code.Err()
		}
		return r, nil
	}
}

func (s *Session) handlePush(r response) bool {
	switch r.kind {
	case respPush:
		s.pushes.add(r.items)
		return true
	case respMore:
		s.pushes.addMissed(r.after)
		return true
	}
	return false
}

func (s *Session) run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Go(func() { s.pushes.deliver(ctx) })
	err := runPair(ctx, s.st, s.readLoop, s.writeLoop)
	if s.closed.Load() || err == nil {
		err = ErrSessionClosed
	} else {
		err = fmt.Errorf("%w: %w", ErrSessionClosed, err)
	}
	s.err = err
	s.cancel()
	wg.Wait()
	close(s.done)
}

func (s *Session) readLoop(ctx context.Context) error {
	idle := s.c.cfg.keepAlive * 5 / 2
	for {
		_ = s.st.SetReadDeadline(time.Now().Add(idle))
		b, err := s.rd.ReadBytes(maxResponseFrame)
		if err != nil {
			return err
		}
		r, err := decodeResponse(b)
		if err != nil {
			return err
		}
		if s.handlePush(r) {
			continue
		}
		if r.id == 0 {
			// An error about no request: the relay is ending the stream.
			return fmt.Errorf("relay: %w", r.code.Err())
		}
		if r.id > s.nextID.Load() {
			return fmt.Errorf("answer to unknown request %d: %w", r.id, ErrProtocol)
		}
		s.mu.Lock()
		ch := s.wait[r.id]
		delete(s.wait, r.id)
		s.mu.Unlock()
		if ch != nil {
			ch <- r // buffered
		}
	}
}

func (s *Session) writeLoop(ctx context.Context) error {
	ka := time.NewTimer(s.c.cfg.keepAlive)
	defer ka.Stop()
	for {
		var m *pb.Request
		select {
		case <-ctx.Done():
			return ctx.Err()
		case m = <-s.reqs:
		case <-ka.C:
			m = encodeRequest(request{id: s.nextID.Add(1), kind: reqPing})
		}
		_ = s.st.SetWriteDeadline(time.Now().Add(responseTimeout))
		if err := wire.Write(s.bw, m, maxRequestFrame); err != nil {
			return err
		}
		if len(s.reqs) == 0 {
			if err := s.bw.Flush(); err != nil {
				return err
			}
		}
		ka.Reset(s.c.cfg.keepAlive)
	}
}

// roundTrip sends r and waits for its answer (an error answer is
// returned as its sentinel).
func (s *Session) roundTrip(ctx context.Context, r request) (response, error) {
	r.id = s.nextID.Add(1)
	ch := make(chan response, 1)
	s.mu.Lock()
	s.wait[r.id] = ch
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.wait, r.id)
		s.mu.Unlock()
	}()
	timer := time.NewTimer(responseTimeout)
	defer timer.Stop()
	select {
	case s.reqs <- encodeRequest(r):
	case <-s.done:
		return response{}, s.Err()
	case <-ctx.Done():
		return response{}, ctx.Err()
	case <-timer.C:
		return response{}, fmt.Errorf("relay %s did not take the request in %v: %w", s.relay, responseTimeout, ErrUnavailable)
	}
	select {
	case a := <-ch:
		if a.kind == respError {
			return a, a.code.Err()
		}
		return a, nil
	case <-s.done:
		return response{}, s.Err()
	case <-ctx.Done():
		return response{}, ctx.Err()
	case <-timer.C:
		return response{}, fmt.Errorf("relay %s did not answer in %v: %w", s.relay, responseTimeout, ErrUnavailable)
	}
}

// Fetch returns up to limit items with seq greater than after, in seq
// order (limit 0 or above MaxPageItems: MaxPageItems; a page also stops
// at MaxPageBytes), and whether more follow. Fetching a mailbox nobody
// deposited to returns nothing, like an empty one. Items may also arrive
// as pushes: dedup by Seq.
func (s *Session) Fetch(ctx context.Context, after uint64, limit int) (items []Item, more bool, err error) {
	if limit < 0 || limit > MaxPageItems {
		limit = MaxPageItems
	}
	r, err := s.roundTrip(ctx, request{kind: reqFetch, after: after, limit: limit})
	if err != nil {
		return nil, false, fmt.Errorf("mailbox: fetch: %w", err)
	}
	if r.kind != respFetch {
		return nil, false, fmt.Errorf("mailbox: fetch: %w", ErrProtocol)
	}
	if len(r.items) > 0 && r.items[0].Seq <= after {
		return nil, false, fmt.Errorf("mailbox: fetch: item %d not after %d: %w", r.items[0].Seq, after, ErrProtocol)
	}
	return r.items, r.more, nil
}

// Ack deletes items from the mailbox, at once and durably. It returns one
// result per seq: nil when deleted, ErrNotFound when the mailbox does not
// hold it (never deposited, already acked, expired, purged), which never
// affects the other seqs. The error is for the request as a whole.
func (s *Session) Ack(ctx context.Context, seqs ...uint64) ([]error, error) {
	out := make([]error, 0, len(seqs))
	for len(seqs) > 0 {
		chunk := seqs[:min(len(seqs), MaxAckSeqs)]
		seqs = seqs[len(chunk):]
		r, err := s.roundTrip(ctx, request{kind: reqAck, seqs: chunk})
		if err != nil {
			return nil, fmt.Errorf("mailbox: ack: %w", err)
		}
		if r.kind != respAck || len(r.codes) != len(chunk) {
			return nil, fmt.Errorf("mailbox: ack: %w", ErrProtocol)
		}
		for _, c := range r.codes {
			if c == CodeOK {
				out = append(out, nil)
			} else {
				out = append(out, fmt.Errorf("mailbox: ack: %w", c.Err()))
			}
		}
	}
	return out, nil
}

// Purge deletes the whole mailbox from the relay (for account deletion)
// and returns how many items it held. Deposits after it start the mailbox
// anew. A relay takes a few purges per minute from one peer: over that it
// answers ErrRateLimited, and the error says when to retry.
func (s *Session) Purge(ctx context.Context) (int, error) {
	r, err := s.roundTrip(ctx, request{kind: reqPurge})
	if err != nil && r.retryAfter > 0 {
		return 0, fmt.Errorf("mailbox: purge: retry after %v: %w", r.retryAfter, err)
	}
	if err != nil {
		return 0, fmt.Errorf("mailbox: purge: %w", err)
	}
	if r.kind != respPurge {
		return 0, fmt.Errorf("mailbox: purge: %w", ErrProtocol)
	}
	return int(min(r.deleted, 1<<31)), nil
}

// Pushed returns the channel on which new deposits arrive while the
// session is open, and notices of dropped pushes (Push.Missed). It is
// closed when the session ends.
func (s *Session) Pushed() <-chan Push { return s.pushes.out }

// Done is closed when the session has ended.
func (s *Session) Done() <-chan struct{} { return s.done }

// Err returns nil while the session is open, then why it ended: an error
// wrapping ErrSessionClosed, and the cause unless Close ended it.
func (s *Session) Err() error {
	select {
	case <-s.done:
		return s.err
	default:
		return nil
	}
}

// Mailbox returns the session's mailbox.
func (s *Session) Mailbox() MailboxID { return s.mbox }

// Relay returns the session's relay.
func (s *Session) Relay() peer.ID { return s.relay }

// Close ends the session (resetting its stream) and waits for its
// goroutines. It is safe to call more than once.
func (s *Session) Close() error {
	s.closed.Store(true)
	s.cancel()
	<-s.done
	return nil
}
