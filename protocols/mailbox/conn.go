package mailbox

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"golang.org/x/sync/errgroup"

	"github.com/kinmesh/kinmesh/protocols/mailbox/pb"
	"github.com/kinmesh/kinmesh/protocols/wire"
)

// stream is what the relay needs of a libp2p stream (tests drive conns
// over in-memory pipes).
type stream interface {
	io.Reader
	io.Writer
	SetReadDeadline(time.Time) error
	SetWriteDeadline(time.Time) error
	Close() error
	Reset() error
}

// memScope is what the relay needs of a stream's resource scope; nil
// means no accounting.
type memScope interface {
	ReserveMemory(size int, prio uint8) error
	ReleaseMemory(size int)
}

// maxAuthFailures is how many refused Auths end a stream.
const maxAuthFailures = 3

// conn is the relay's side of one stream: a deposit stream, or an owner
// session once authenticated. A reader goroutine decodes requests, answers
// the quick ones and hands changes to the committer; a writer goroutine
// writes every answer and push. Up to maxInflight requests of one stream
// are with the committer at once (pipelining).
type conn struct {
	s      *Service
	st     stream
	scope  memScope
	remote peer.ID
	local  peer.ID
	src    string // the remote's source address (netkit.MultiaddrSource)

	br *bufio.Reader
	rd *wire.Reader
	bw *bufio.Writer

	out      chan outMsg   // answers from the reader; closed when it is done
	results  chan *op      // answers from the committer
	inflight chan struct{} // one token per request with the committer
	sub      *subscription

	// Reader only.
	nonce     []byte
	nonceAt   time.Time
	authFails int
	authed    bool
	mbox      [idRawSize]byte
	opened    time.Time
}

type outMsg struct {
	resp *pb.Response
	mem  int // memory to release once written
}

func (s *Service) newConn(st stream, scope memScope, remote, local peer.ID) *conn {
	br := bufio.NewReaderSize(st, 16<<10)
	return &conn{
		s:        s,
		st:       st,
		scope:    scope,
		remote:   remote,
		local:    local,
		br:       br,
		rd:       wire.NewReader(br),
		bw:       bufio.NewWriterSize(st, 16<<10),
		out:      make(chan outMsg, 8),
		results:  make(chan *op, s.cfg.maxInflight),
		inflight: make(chan struct{}, s.cfg.maxInflight),
		sub:      newSubscription(s.cfg.pushItems, s.cfg.pushBytes),
	}
}

// serve runs the stream until the client is done, an error, or Close.
func (c *conn) serve() {
	err := runPair(c.s.ctx, c.st, c.readLoop, c.writeLoop)
	if c.authed {
		c.s.unsubscribe(c.mbox, c.sub)
		c.s.tagPeer(c.remote, -10)
		c.s.tr.sessionClosed(time.Since(c.opened))
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		c.s.log.Debug("mailbox stream ended", "peer", c.remote, "err", err)
	}
}

// runPair runs a stream's read loop and write loop until both return.
// The first error, or the end of parent, resets the stream so the other
// loop unblocks; when both succeed the stream is closed.
func runPair(parent context.Context, st stream, read, write func(context.Context) error) error {
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { _ = st.Reset() })
	var g errgroup.Group
	loop := func(f func(context.Context) error) func() error {
		return func() error {
			err := f(ctx)
			if err != nil {
				cancel()
			}
			return err
		}
	}
	g.Go(loop(read))
	g.Go(loop(write))
	err := g.Wait()
	if stop() {
		if err != nil {
			_ = st.Reset()
		} else {
			_ = st.Close()
		}
	}
	return err
}

func (c *conn) reserve(n int) bool {
	if c.scope == nil || n == 0 {
		return true
	}
	return c.scope.ReserveMemory(n, network.ReservationPriorityHigh) == nil
}

func (c *conn) release(n int) {
	if c.scope != nil && n > 0 {
		c.scope.ReleaseMemory(n)
	}
}

// send queues an answer for the writer.
func (c *conn) send(ctx context.Context, m outMsg) error {
	select {
	case c.out <- m:
		return nil
	case <-ctx.Done():
		c.release(m.mem)
		return ctx.Err()
	}
}

func (c *conn) sendErr(ctx context.Context, id uint64, code Code, retry time.Duration) error {
	return c.send(ctx, outMsg{resp: &pb.Response{Id: id, Body: &pb.Response_Error{Error: &pb.Error{
		Code: code.wire(), RetryAfterMs: wire.RetryAfterMs(retry),
	}}}})
}

// errEnd ends reading gracefully: answers already queued are still written.
var errEnd = errors.New("end of requests")

func (c *conn) readLoop(ctx context.Context) error {
	err := c.readRequests(ctx)
	if err != nil && !errors.Is(err, errEnd) {
		return err
	}
	// Wait for every request still with the committer to be answered.
	for range cap(c.inflight) {
		select {
		case c.inflight <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	close(c.out)
	return nil
}

func (c *conn) readRequests(ctx context.Context) error {
	for {
		timeout := c.s.cfg.streamTimeout
		if c.authed {
			timeout = c.s.cfg.sessionTimeout
		}
		_ = c.st.SetReadDeadline(time.Now().Add(timeout))
		n, err := peekUvarint(c.br)
		if errors.Is(err, io.EOF) {
			return errEnd
		}
		if err != nil {
			return err
		}
		if n > maxRequestFrame {
			// Can't skip it without reading it: answer and stop.
			_ = c.sendErr(ctx, 0, CodeBatchTooLarge, 0)
			return errEnd
		}
		mem := int(n)
		if !c.reserve(mem) {
			_ = c.sendErr(ctx, 0, CodeUnavailable, time.Second)
			return errEnd
		}
		b, err := c.rd.ReadBytes(maxRequestFrame)
		if err != nil {
			c.release(mem)
			return err
		}
		req, code := decodeRequest(b)
		if code != CodeOK {
			c.release(mem)
			if req.kind == reqDeposit {
				c.s.tr.rejected(code, max(1, len(req.envelopes)))
			}
			if req.kind == reqAuth && !c.authed {
				// A malformed Auth is a refused one: it takes the
				// challenge and counts towards ending the stream.
				if err := c.refuseAuth(ctx, req.id, code); err != nil {
					return err
				}
				continue
			}
			if err := c.sendErr(ctx, req.id, code, 0); err != nil {
				return err
			}
			continue
		}
		if req.kind != reqDeposit {
			// Only deposits keep their frame's bytes (the envelopes)
			// beyond this point.
			c.release(mem)
			mem = 0
		}
		if err := c.dispatch(ctx, req, mem); err != nil {
			return err
		}
	}
}

// peekUvarint returns the length prefix of the next frame without
// consuming it.
func peekUvarint(br *bufio.Reader) (uint64, error) {
	for i := 1; i <= binary.MaxVarintLen64; i++ {
		b, err := br.Peek(i)
		if len(b) < i {
			if errors.Is(err, io.EOF) && i > 1 {
				return 0, io.ErrUnexpectedEOF
			}
			return 0, err
		}
		if b[i-1] < 0x80 {
			v, n := binary.Uvarint(b)
			if n <= 0 {
				return 0, fmt.Errorf("frame length: %w", wire.ErrMalformed)
			}
			return v, nil
		}
	}
	return 0, fmt.Errorf("frame length: %w", wire.ErrMalformed)
}

func (c *conn) dispatch(ctx context.Context, req request, mem int) error {
	switch req.kind {
	case reqDeposit:
		return c.deposit(ctx, req, mem)
	case reqHello:
		return c.hello(ctx, req)
	case reqAuth:
		return c.auth(ctx, req)
	case reqPing:
		return c.send(ctx, outMsg{resp: &pb.Response{Id: req.id, Body: &pb.Response_Pong{Pong: &pb.Pong{}}}})
	}
	if !c.authed {
		return c.sendErr(ctx, req.id, CodeUnauthorized, 0)
	}
	switch req.kind {
	case reqFetch:
		return c.fetch(ctx, req)
	case reqAck:
		return c.submit(ctx, &op{kind: opAck, mbox: c.mbox, id: req.id, seqs: req.seqs, known: c.sub.takeDelivered(req.seqs)})
	case reqPurge:
		// A purge runs alone in the committer: bound how often one peer
		// makes it.
		if n, wait := c.s.purges.take(c.remote, []int{0}); n == 0 {
			return c.sendErr(ctx, req.id, CodeRateLimited, wait)
		}
		return c.submit(ctx, &op{kind: opPurge, mbox: c.mbox, id: req.id})
	}
	return c.sendErr(ctx, req.id, CodeMalformed, 0)
}

// submit hands o to the committer, holding an inflight token until the
// writer has written its answer.
func (c *conn) submit(ctx context.Context, o *op) error {
	select {
	case c.inflight <- struct{}{}:
	case <-ctx.Done():
		c.release(o.mem)
		return ctx.Err()
	}
	o.done = func(o *op) { c.results <- o } // never blocks: one slot per token
	if !c.s.submit(o) {
		<-c.inflight
		c.release(o.mem)
		return c.sendErr(ctx, o.id, CodeUnavailable, 0)
	}
	return nil
}

// deposit checks a deposit request, envelope by envelope, before the
// committer sees it: the relay's free disk space, each envelope's size,
// then the rate budgets of the depositor's address and of the depositor
// (the longest prefix both allow). What passes goes to the committer.
func (c *conn) deposit(ctx context.Context, req request, mem int) error {
	pre := make([]Code, len(req.envelopes))
	sizes := make([]int, 0, len(req.envelopes))
	idx := make([]int, 0, len(req.envelopes))
	full := c.s.store.LowOnSpace()
	for i, e := range req.envelopes {
		switch {
		case full:
			pre[i] = CodeRelayFull
			c.s.tr.rejected(CodeRelayFull, 1)
			continue
		case len(e) > MaxEnvelopeSize:
			pre[i] = CodeTooLarge
			c.s.tr.rejected(CodeTooLarge, 1)
			continue
		}
		sizes = append(sizes, len(e))
		idx = append(idx, i)
	}
	// The address's budget first; what the depositor's own buckets then
	// refuse is given back to it.
	var wait time.Duration
	n := 0
	for ; n < len(sizes); n++ {
		ok, w := c.s.srcLim.TakeN(c.src, sizes[n])
		if !ok {
			wait = w
			break
		}
	}
	m, w := c.s.lim.take(c.remote, sizes[:n])
	if m < n {
		wait = w
		for _, sz := range sizes[m:n] {
			c.s.srcLim.Refund(c.src, sz)
		}
		n = m
	}
	for _, i := range idx[n:] {
		pre[i] = CodeRateLimited
	}
	c.s.tr.rejected(CodeRateLimited, len(idx)-n)
	o := &op{kind: opDeposit, mbox: req.mbox, id: req.id, envelopes: req.envelopes, pre: pre, mem: mem}
	if n < len(idx) {
		o.retryAfter = wait
	}
	if n == 0 {
		// Nothing to store: answer at once.
		c.release(mem)
		return c.send(ctx, outMsg{resp: depositResponse(o.id, pre, o.retryAfter)})
	}
	return c.submit(ctx, o)
}

func depositResponse(id uint64, codes []Code, retry time.Duration) *pb.Response {
	d := &pb.DepositResult{Codes: codesToWire(codes)}
	for _, c := range codes {
		if c == CodeRateLimited {
			d.RetryAfterMs = wire.RetryAfterMs(retry)
		}
	}
	return &pb.Response{Id: id, Body: &pb.Response_Deposit{Deposit: d}}
}

func (c *conn) hello(ctx context.Context, req request) error {
	if c.authed {
		return c.sendErr(ctx, req.id, CodeMalformed, 0)
	}
	c.nonce = make([]byte, nonceSize)
	rand.Read(c.nonce)
	c.nonceAt = time.Now()
	return c.send(ctx, outMsg{resp: &pb.Response{Id: req.id, Body: &pb.Response_Challenge{Challenge: &pb.Challenge{
		Nonce: c.nonce, Relay: []byte(c.local), TimeUnixMs: c.s.cfg.now().UnixMilli(),
	}}}})
}

func (c *conn) auth(ctx context.Context, req request) error {
	if c.authed {
		return c.sendErr(ctx, req.id, CodeMalformed, 0)
	}
	nonce := c.nonce
	c.nonce = nil // one attempt per challenge
	ok := nonce != nil && time.Since(c.nonceAt) < c.s.cfg.streamTimeout
	mbox := rawIDFromPublicKey(req.pub)
	if ok {
		ok = ed25519.Verify(req.pub, authMessage(nonce, c.local, c.remote, mbox), req.sig)
	}
	if !ok {
		return c.refuseAuth(ctx, req.id, CodeUnauthorized)
	}
	// The owner is here: the mailbox is registered (or stays so), on disk
	// before the answer.
	done := make(chan *op, 1)
	o := &op{kind: opRegister, mbox: mbox, id: req.id, src: c.src, done: func(o *op) { done <- o }}
	if !c.s.submit(o) {
		return c.sendErr(ctx, req.id, CodeUnavailable, 0)
	}
	select {
	case o = <-done:
	case <-ctx.Done():
		return ctx.Err()
	}
	if o.err != CodeOK {
		return c.sendErr(ctx, req.id, o.err, o.retryAfter)
	}
	c.authed, c.mbox, c.opened = true, mbox, time.Now()
	// Subscribe before answering: every deposit committed after the
	// client reads AuthOK is pushed; older ones it fetches.
	c.s.subscribe(mbox, c.sub)
	c.s.tagPeer(c.remote, 10)
	c.s.tr.sessionOpened()
	return c.send(ctx, outMsg{resp: &pb.Response{Id: req.id, Body: &pb.Response_Auth{Auth: &pb.AuthOK{}}}})
}

// refuseAuth answers a refused Auth with code. The challenge is used up
// whatever the outcome, and maxAuthFailures refusals end the stream.
func (c *conn) refuseAuth(ctx context.Context, id uint64, code Code) error {
	c.nonce = nil
	c.s.tr.authFailed()
	c.authFails++
	if err := c.sendErr(ctx, id, code, 0); err != nil {
		return err
	}
	if c.authFails >= maxAuthFailures {
		return errEnd
	}
	return nil
}

// fetchMem is what a fetch reserves for its page.
const fetchMem = MaxPageBytes + MaxEnvelopeSize

func (c *conn) fetch(ctx context.Context, req request) error {
	if !c.reserve(fetchMem) {
		return c.sendErr(ctx, req.id, CodeUnavailable, time.Second)
	}
	gen := c.sub.deliveredGen()
	items, more, _, err := c.s.fetch(ctx, c.mbox, req.after, req.limit)
	if err != nil {
		c.release(fetchMem)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		c.s.log.Warn("mailbox fetch failed", "err", err)
		return c.sendErr(ctx, req.id, CodeUnavailable, 0)
	}
	c.sub.remember(items, gen)
	res := &pb.FetchResult{Items: make([]*pb.Item, len(items)), More: more}
	for i, it := range items {
		res.Items[i] = itemToWire(it)
	}
	return c.send(ctx, outMsg{resp: &pb.Response{Id: req.id, Body: &pb.Response_Fetch{Fetch: res}}, mem: fetchMem})
}

func (c *conn) writeLoop(ctx context.Context) error {
	for {
		select {
		case m, ok := <-c.out:
			if !ok {
				// The reader is done and every answer is written.
				return c.flush()
			}
			err := c.write(m.resp)
			c.release(m.mem)
			if err != nil {
				return err
			}
		case o := <-c.results:
			err := c.write(opResponse(o))
			c.release(o.mem)
			<-c.inflight
			if err != nil {
				return err
			}
		case <-c.sub.signal:
			if err := c.writePushes(); err != nil {
				return err
			}
		case <-ctx.Done():
			return ctx.Err()
		}
		if len(c.out) == 0 && len(c.results) == 0 {
			if err := c.flush(); err != nil {
				return err
			}
		}
	}
}

func (c *conn) write(r *pb.Response) error {
	_ = c.st.SetWriteDeadline(time.Now().Add(c.s.cfg.writeTimeout))
	return wire.Write(c.bw, r, maxResponseFrame)
}

func (c *conn) flush() error {
	if c.bw.Buffered() == 0 {
		return nil
	}
	_ = c.st.SetWriteDeadline(time.Now().Add(c.s.cfg.writeTimeout))
	return c.bw.Flush()
}

func opResponse(o *op) *pb.Response {
	if o.err != CodeOK {
		return &pb.Response{Id: o.id, Body: &pb.Response_Error{Error: &pb.Error{Code: o.err.wire()}}}
	}
	switch o.kind {
	case opDeposit:
		return depositResponse(o.id, o.codes, o.retryAfter)
	case opAck:
		return &pb.Response{Id: o.id, Body: &pb.Response_Ack{Ack: &pb.AckResult{Codes: codesToWire(o.codes)}}}
	default:
		return &pb.Response{Id: o.id, Body: &pb.Response_Purge{Purge: &pb.PurgeResult{Deleted: uint64(o.deleted)}}}
	}
}

// writePushes writes the queued pushes (dropping any that expired in the
// queue), then the "more" notice if the queue overflowed.
func (c *conn) writePushes() error {
	gen := c.sub.deliveredGen()
	items, missedFrom := c.sub.take()
	now := c.s.cfg.now()
	var frame []*pb.Item
	bytes, pushed := 0, 0
	flush := func() error {
		if len(frame) == 0 {
			return nil
		}
		err := c.write(&pb.Response{Body: &pb.Response_Push{Push: &pb.Push{Items: frame}}})
		pushed += len(frame)
		frame, bytes = nil, 0
		return err
	}
	for _, it := range items {
		if c.s.expired(it.deposited, now) {
			continue
		}
		if len(frame) == MaxPageItems || (len(frame) > 0 && bytes+len(it.envelope) > MaxPageBytes) {
			if err := flush(); err != nil {
				return err
			}
		}
		frame = append(frame, itemToWire(it))
		bytes += len(it.envelope)
		c.sub.remember([]storedItem{it}, gen)
	}
	if err := flush(); err != nil {
		return err
	}
	c.s.tr.pushed(pushed)
	if missedFrom != 0 {
		return c.write(&pb.Response{Body: &pb.Response_More{More: &pb.More{After: missedFrom - 1}}})
	}
	return nil
}

// subscription is an owner session's push queue, filled by the committer
// and drained by the session's writer. It is bounded; on overflow it
// keeps only the first seq it dropped, and the writer then sends a "more"
// notice so the owner fetches from there.
//
// It also remembers the items the session fetched or had pushed, until
// acked (at most maxDelivered), so acking them needs no read; a purge of
// the mailbox makes it forget them.
type subscription struct {
	maxItems, maxBytes int
	signal             chan struct{}

	mu         sync.Mutex
	items      []storedItem
	bytes      int
	missedFrom uint64

	deliveredMu sync.Mutex
	delivered   map[uint64]known
	gen         uint64 // counts forget calls
}

// maxDelivered bounds the items a session remembers for its acks.
const maxDelivered = 1024

// deliveredGen returns the generation to pass to remember for items read
// from now on: a purge in between makes remember drop them.
func (u *subscription) deliveredGen() uint64 {
	u.deliveredMu.Lock()
	defer u.deliveredMu.Unlock()
	return u.gen
}

// remember notes items delivered on the session, read at generation gen.
func (u *subscription) remember(items []storedItem, gen uint64) {
	u.deliveredMu.Lock()
	defer u.deliveredMu.Unlock()
	if gen != u.gen {
		return
	}
	if u.delivered == nil || len(u.delivered)+len(items) > maxDelivered {
		u.delivered = make(map[uint64]known, len(items))
	}
	for _, it := range items {
		u.delivered[it.seq] = known{deposited: it.deposited, size: len(it.envelope), ok: true}
	}
}

// takeDelivered returns (and forgets) what the session knows of seqs.
func (u *subscription) takeDelivered(seqs []uint64) []known {
	u.deliveredMu.Lock()
	defer u.deliveredMu.Unlock()
	if len(u.delivered) == 0 {
		return nil
	}
	out := make([]known, len(seqs))
	for i, seq := range seqs {
		if k, ok := u.delivered[seq]; ok {
			out[i] = k
			delete(u.delivered, seq)
		}
	}
	return out
}

// forget drops every remembered item, and those being read: the mailbox
// was purged.
func (u *subscription) forget() {
	u.deliveredMu.Lock()
	defer u.deliveredMu.Unlock()
	u.delivered = nil
	u.gen++
}

func newSubscription(maxItems, maxBytes int) *subscription {
	return &subscription{maxItems: maxItems, maxBytes: maxBytes, signal: make(chan struct{}, 1)}
}

// push queues items; true if this overflowed the queue.
func (u *subscription) push(items []storedItem) (overflowed bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, it := range items {
		if u.missedFrom != 0 {
			break
		}
		if len(u.items) >= u.maxItems || u.bytes+len(it.envelope) > u.maxBytes {
			u.missedFrom = it.seq
			overflowed = true
			break
		}
		u.items = append(u.items, it)
		u.bytes += len(it.envelope)
	}
	select {
	case u.signal <- struct{}{}:
	default:
	}
	return overflowed
}

func (u *subscription) take() (items []storedItem, missedFrom uint64) {
	u.mu.Lock()
	defer u.mu.Unlock()
	items, missedFrom = u.items, u.missedFrom
	u.items, u.bytes, u.missedFrom = nil, 0, 0
	return items, missedFrom
}
