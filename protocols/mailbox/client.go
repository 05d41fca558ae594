package mailbox

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/kinmesh/kinmesh/protocols/wire"
)

// responseTimeout bounds the wait for each relay answer.
const responseTimeout = 30 * time.Second

// Client is the device side of the mailbox protocol: it deposits
// envelopes on relays and opens owner sessions. It holds no goroutines of
// its own and needs no Close; Sessions do.
type Client struct {
	h   host.Host
	cfg clientConfig
	log *slog.Logger
}

// NewClient returns a client that speaks from h.
//
// Defaults (see the ClientOption functions): 10 s to connect and open a
// stream; sessions ping an idle relay every minute; 4 deposit requests in
// flight per stream; 64 pushes buffered per session; slog.Default().
func NewClient(h host.Host, opts ...ClientOption) (*Client, error) {
	if h == nil {
		return nil, errors.New("mailbox: NewClient needs a host")
	}
	cfg := defaultClientConfig()
	for _, o := range opts {
		if err := o(&cfg); err != nil {
			return nil, err
		}
	}
	if cfg.logger == nil {
		cfg.logger = slog.Default()
	}
	return &Client{h: h, cfg: cfg, log: cfg.logger.With("component", "mailbox-client")}, nil
}

// newStream opens a mailbox stream to relay. Relays are dialed directly:
// a relay is never behind a circuit, so limited (relayed) connections are
// not used.
func (c *Client) newStream(ctx context.Context, relay peer.ID) (network.Stream, error) {
	dctx, cancel := context.WithTimeout(ctx, c.cfg.dialTimeout)
	defer cancel()
	st, err := c.h.NewStream(dctx, relay, ID)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("mailbox: open stream to relay %s: %w", relay, ctx.Err())
		}
		return nil, fmt.Errorf("mailbox: open stream to relay %s: %w", relay, err)
	}
	if err := st.Scope().SetService(ServiceName); err != nil {
		_ = st.Reset()
		return nil, fmt.Errorf("mailbox: open stream to relay %s: %w", relay, err)
	}
	return st, nil
}

// DepositResult is the outcome for one envelope of a Deposit.
type DepositResult struct {
	// Err is nil when the relay stored the envelope durably (synced to
	// disk before it answered). Otherwise it wraps ErrEnvelopeTooLarge,
	// ErrMailboxFull, ErrRateLimited, ErrMalformed, ErrUnavailable or
	// ErrUnconfirmed (no answer: it may or may not be stored).
	Err error
	// RetryAfter, with ErrRateLimited, is when the relay will take it.
	RetryAfter time.Duration
}

// Deposit stores envelopes in mailbox on relay and returns one result per
// envelope, in order. Anyone may deposit; the relay sees this host's peer
// id, the mailbox id and the envelopes' sizes, nothing else.
//
// Any number of envelopes may be passed: Deposit splits them into requests
// of at most MaxBatchItems envelopes and MaxBatchBytes bytes and pipelines
// them on one stream. Envelopes that can't be sent (empty, or larger than
// MaxEnvelopeSize) are reported without being sent. The relay stores them
// in order; when a quota refuses one envelope it refuses the rest of that
// request too.
//
// The error is non-nil when the exchange failed (no stream, a reset, a
// relay that broke the protocol); the results then tell which envelopes
// the relay confirmed before that, and the others carry ErrUnconfirmed.
// A relay never says whether an envelope was delivered.
func (c *Client) Deposit(ctx context.Context, relay peer.ID, mailbox MailboxID, envelopes [][]byte) ([]DepositResult, error) {
	raw, err := mailboxRaw(string(mailbox))
	if err != nil {
		return nil, err
	}
	results := make([]DepositResult, len(envelopes))
	batches := planBatches(envelopes, results)
	if len(batches) == 0 {
		return results, nil
	}
	answered := make([]bool, len(batches))
	unconfirmed := func(cause error) {
		for bi, b := range batches {
			if answered[bi] {
				continue
			}
			for _, i := range b {
				results[i].Err = fmt.Errorf("%w: %w", ErrUnconfirmed, cause)
			}
		}
	}
	st, err := c.newStream(ctx, relay)
	if err != nil {
		unconfirmed(err)
		return results, err
	}
	window := make(chan struct{}, c.cfg.window)
	bw := bufio.NewWriterSize(st, 64<<10)
	rd := wire.NewReader(bufio.NewReaderSize(st, 64<<10))

	write := func(ctx context.Context) error {
		for i, b := range batches {
			select {
			case window <- struct{}{}:
			case <-ctx.Done():
				return ctx.Err()
			}
			envs := make([][]byte, len(b))
			for j, k := range b {
				envs[j] = envelopes[k]
			}
			req := encodeRequest(request{id: uint64(i + 1), kind: reqDeposit, mbox: raw, envelopes: envs})
			_ = st.SetWriteDeadline(time.Now().Add(responseTimeout))
			if err := wire.Write(bw, req, maxRequestFrame); err != nil {
				return err
			}
			// Flush when the window is full or this was the last request:
			// then the relay has everything it can work on.
			if len(window) == cap(window) || i == len(batches)-1 {
				if err := bw.Flush(); err != nil {
					return err
				}
			}
		}
		return st.CloseWrite()
	}
	read := func(ctx context.Context) error {
		for n := 0; n < len(batches); n++ {
			_ = st.SetReadDeadline(time.Now().Add(responseTimeout))
			b, err := rd.ReadBytes(maxResponseFrame)
			if err != nil {
				return err
			}
			r, err := decodeResponse(b)
			if err != nil {
				return err
			}
			if r.kind == respError && r.id == 0 {
				return fmt.Errorf("mailbox: relay refused the stream: %w", r.code.Err())
			}
			if r.id == 0 || r.id > uint64(len(batches)) || answered[r.id-1] {
				return fmt.Errorf("mailbox: answer to unknown deposit %d: %w", r.id, ErrProtocol)
			}
			b0 := batches[r.id-1]
			answered[r.id-1] = true
			switch {
			case r.kind == respError:
				for _, i := range b0 {
					results[i] = DepositResult{Err: fmt.Errorf("mailbox: deposit: %w", r.code.Err()), RetryAfter: r.retryAfter}
				}
			case r.kind == respDeposit && len(r.codes) == len(b0):
				for j, i := range b0 {
					results[i] = resultFor(r.codes[j], r.retryAfter)
				}
			default:
				return fmt.Errorf("mailbox: unexpected answer to a deposit: %w", ErrProtocol)
			}
			<-window
		}
		return nil
	}
	err = runPair(ctx, st, read, write)
	if err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		err = fmt.Errorf("mailbox: deposit on relay %s: %w", relay, err)
		unconfirmed(err)
		return results, err
	}
	return results, nil
}

func resultFor(c Code, retry time.Duration) DepositResult {
	if c == CodeOK {
		return DepositResult{}
	}
	r := DepositResult{Err: fmt.Errorf("mailbox: deposit: %w", c.Err())}
	if c == CodeRateLimited {
		r.RetryAfter = retry
	}
	return r
}

// planBatches splits the sendable envelopes into requests (lists of
// indexes) and records the unsendable ones in results.
func planBatches(envelopes [][]byte, results []DepositResult) [][]int {
	var (
		batches [][]int
		cur     []int
		bytes   int
	)
	for i, e := range envelopes {
		switch {
		case len(e) == 0:
			results[i].Err = fmt.Errorf("mailbox: deposit: empty envelope: %w", ErrMalformed)
			continue
		case len(e) > MaxEnvelopeSize:
			results[i].Err = fmt.Errorf("mailbox: deposit: envelope of %d bytes (max %d): %w", len(e), MaxEnvelopeSize, ErrEnvelopeTooLarge)
			continue
		}
		if len(cur) == MaxBatchItems || bytes+len(e) > MaxBatchBytes {
			batches = append(batches, cur)
			cur, bytes = nil, 0
		}
		cur = append(cur, i)
		bytes += len(e)
	}
	if len(cur) > 0 {
		batches = append(batches, cur)
	}
	return batches
}

// Push is what an open session delivers without being asked.
type Push struct {
	// Items are new deposits, in seq order.
	Items []Item
	// Missed says pushes were dropped because they came faster than they
	// were consumed (by the relay's or this session's bounded queue):
	// Fetch the items after FetchAfter. Items is empty then.
	Missed     bool
	FetchAfter uint64
}

// pushQueue buffers pushes between the session's reader and the caller.
// It is bounded: when full it drops pushes and remembers only where to
// fetch from, and reports that (Push.Missed) after what it still holds.
type pushQueue struct {
	max    int
	signal chan struct{}
	out    chan Push

	mu          sync.Mutex
	q           []Push
	missed      bool
	missedAfter uint64
}

func newPushQueue(max int) *pushQueue {
	return &pushQueue{max: max, signal: make(chan struct{}, 1), out: make(chan Push)}
}

func (p *pushQueue) add(items []Item) {
	p.mu.Lock()
	switch {
	case p.missed:
	case len(p.q) >= p.max:
		p.missed, p.missedAfter = true, items[0].Seq-1
	default:
		p.q = append(p.q, Push{Items: items})
	}
	p.mu.Unlock()
	p.wake()
}

func (p *pushQueue) addMissed(after uint64) {
	p.mu.Lock()
	if !p.missed || after < p.missedAfter {
		p.missedAfter = after
	}
	p.missed = true
	p.mu.Unlock()
	p.wake()
}

func (p *pushQueue) wake() {
	select {
	case p.signal <- struct{}{}:
	default:
	}
}

func (p *pushQueue) next() (Push, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.q) > 0 {
		x := p.q[0]
		p.q[0] = Push{}
		p.q = p.q[1:]
		return x, true
	}
	if p.missed {
		p.missed = false
		return Push{Missed: true, FetchAfter: p.missedAfter}, true
	}
	return Push{}, false
}

// deliver hands pushes to the caller until ctx ends, then closes out.
func (p *pushQueue) deliver(ctx context.Context) {
	defer close(p.out)
	for {
		x, ok := p.next()
		if !ok {
			select {
			case <-p.signal:
				continue
			case <-ctx.Done():
				return
			}
		}
		select {
		case p.out <- x:
		case <-ctx.Done():
			return
		}
	}
}
