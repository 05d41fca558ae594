package report

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/protocols/netkit"
	"github.com/kinmesh/kinmesh/protocols/wire"
	"github.com/kinmesh/kinmesh/storage"
)

// Relay store layout, in namespace "report". Keys that would name an
// account are opaque (storage's Opaque): nothing on disk says who reported
// whom, and every value is sealed under the store key.
//
//	r/<id>                                   StoredItem in the report queue      TTL retention
//	f/<id>                                   StoredItem in the feedback queue    TTL retention
//	x/<Opaque(reporter, submission id)>      the item's key, to recognise retries TTL retention
//	a/<Opaque(reporter)>/<r|f><id>           empty: the reporter's items, for purges TTL retention
//	q/<Opaque(reporter, class, UTC day)>     uvarint: submissions that day       TTL 48 h
//	s/<r|f><id>                              the item's source tags (shareTags)   TTL retention
//	seq                                      uvarint: the last item id issued
//
// <id> is 16 lowercase hex digits, so each queue lists oldest first.
const (
	keySeq      = "seq"
	quotaTTL    = 48 * time.Hour
	reportsPfx  = "r/"
	feedbackPfx = "f/"
)

// queues sizes arrays indexed by Queue.
const queues = QueueFeedback + 1

// queueCap is what a queue may hold.
type queueCap struct {
	items int
	bytes int64
}

// maxStoredItem bounds a stored item's encoding: a submit frame's worth,
// and the nonce and time.
const maxStoredItem = maxSubmitFrame + 256

// source is where a submission came from: the connection's peer and its
// IP address (netkit.MultiaddrSource), the keys of the rate limits.
type source struct {
	peer, ip string
}

// shareTags is what an item records of its source for the per-source
// shares of the queues: a 20-bit keyed hash of the peer id and one of the
// address (the first four characters of the namespace's Opaque). They are
// stored with the item, so the shares hold across restarts, and are too
// short to tell an address: about 4,000 IPv4 addresses share each tag.
// Two sources that share a tag share their shares (one chance in about a
// million for any two). The zero value (no tags: an item stored before
// tags, or whose tags are unreadable) counts towards no source's share.
type shareTags struct {
	peer, ip string
}

const shareTagLen = 4

// tags returns src's share tags.
func (s *Service) tags(src source) shareTags {
	var t shareTags
	if src.peer != "" {
		t.peer = s.ns.Opaque([]byte("share peer"), []byte(src.peer))[:shareTagLen]
	}
	if src.ip != "" {
		t.ip = s.ns.Opaque([]byte("share ip"), []byte(src.ip))[:shareTagLen]
	}
	return t
}

// encodeShareTags is the two tags, each shareTagLen characters ("-" for
// none).
func encodeShareTags(t shareTags) []byte {
	pad := func(s string) string {
		if s == "" {
			return strings.Repeat("-", shareTagLen)
		}
		return s
	}
	return []byte(pad(t.peer) + pad(t.ip))
}

// decodeShareTags decodes a stored shareTags; false if it isn't one.
func decodeShareTags(b []byte) (shareTags, bool) {
	if len(b) != 2*shareTagLen {
		return shareTags{}, false
	}
	var t shareTags
	for i, f := range []*string{&t.peer, &t.ip} {
		part := string(b[i*shareTagLen : (i+1)*shareTagLen])
		if part == strings.Repeat("-", shareTagLen) {
			continue
		}
		for _, c := range part {
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'v') {
				return shareTags{}, false
			}
		}
		*f = part
	}
	return t, true
}

// shareKey is where item key's share tags are kept.
func shareKey(key string) string { return "s/" + key[:1] + key[2:] }

func queuePrefix(q Queue) string {
	if q == QueueReports {
		return reportsPfx
	}
	return feedbackPfx
}

// Service is the relay side of the report protocol: it verifies and
// queues submissions, and lets the operator read and clear the queues.
// Create it with NewService; Close stops it.
type Service struct {
	h     host.Host
	local peer.ID
	ns    *storage.Namespace
	store *storage.Store
	cfg   config
	log   *slog.Logger
	tr    tracer
	lim   *netkit.Limiter[string] // submissions per peer
	ipLim *netkit.Limiter[string] // submissions per source IP
	sem   chan struct{}           // submissions being verified and stored

	// mu serializes accepting submissions (retry check, quota, queue
	// caps, sequence number and the write) and marking items done.
	mu    sync.Mutex
	seq   uint64
	items map[string]queued // item key → size, expiry and source

	ctx       context.Context // cancelled by Close
	cancel    context.CancelFunc
	streams   netkit.Streams
	closeOnce sync.Once
}

type queued struct {
	size    int
	expires time.Time
	src     shareTags // zero for items stored without
}

// NewService starts serving /kinmesh/report/1.0.0 on h, keeping the queues
// in st's "report" namespace (Namespace). st must outlive the Service:
// close the Service first.
//
// Defaults (see the Option functions): the real clock; slog.Default(); no
// metrics; items kept DefaultRetention (30 days) unless marked done;
// DefaultReportsPerDay reports and DefaultFeedbackPerDay feedback or
// support requests per account and UTC day; the report queue capped at
// DefaultMaxItems items and DefaultMaxBytes bytes, DefaultUrgentReserve
// percent of it kept for urgent reports; the feedback queue capped apart
// at DefaultFeedbackMaxItems and DefaultFeedbackMaxBytes; one peer's
// submissions holding at most DefaultPeerShare percent of a queue, one IP
// address's DefaultIPShare; per peer DefaultRequestsPerMinute
// submissions a minute, bursts of DefaultRequestBurst, per IP address
// DefaultIPRequestsPerMinute, bursts of DefaultIPRequestBurst;
// DefaultMaxTracked peers and addresses tracked; streams cut after 30 s;
// four submissions verified at once.
func NewService(h host.Host, st *storage.Store, opts ...Option) (*Service, error) {
	if h == nil || st == nil {
		return nil, errors.New("report: NewService needs a host and a store")
	}
	s, err := newService(h.ID(), st, opts...)
	if err != nil {
		return nil, err
	}
	s.h = h
	h.SetStreamHandler(ID, s.handle)
	return s, nil
}

// newService builds a Service without a host (fuzz tests drive its stream
// handling directly).
func newService(local peer.ID, st *storage.Store, opts ...Option) (*Service, error) {
	cfg := defaultConfig()
	for _, o := range opts {
		if err := o(&cfg); err != nil {
			return nil, err
		}
	}
	if cfg.logger == nil {
		cfg.logger = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Service{
		local:  local,
		store:  st,
		ns:     st.Namespace(Namespace),
		cfg:    cfg,
		log:    cfg.logger.With("component", "report"),
		tr:     tracer{cfg.tracer},
		lim:    netkit.NewLimiter[string](cfg.now, cfg.rate, cfg.burst, cfg.maxTracked),
		ipLim:  netkit.NewLimiter[string](cfg.now, cfg.ipRate, cfg.ipBurst, cfg.maxTracked),
		sem:    make(chan struct{}, cfg.maxVerify),
		items:  map[string]queued{},
		ctx:    ctx,
		cancel: cancel,
	}
	if err := s.load(ctx); err != nil {
		cancel()
		return nil, err
	}
	return s, nil
}

// load reads the sequence number and the queues' sizes at start.
func (s *Service) load(ctx context.Context) error {
	b, err := s.ns.Get(ctx, keySeq)
	switch {
	case errors.Is(err, storage.ErrNotFound):
	case err != nil:
		return fmt.Errorf("report: load sequence: %w", err)
	default:
		v, n := binary.Uvarint(b)
		if n <= 0 {
			return fmt.Errorf("report: stored sequence: %w", ErrMalformed)
		}
		s.seq = v
	}
	for _, q := range []Queue{QueueReports, QueueFeedback} {
		err := s.ns.List(ctx, storage.ListOptions{Prefix: queuePrefix(q)}, func(k string, v []byte) error {
			exp := s.cfg.now().Add(s.cfg.retention)
			if it, err := decodeStoredItem(v); err == nil {
				exp = it.received.Add(s.cfg.retention)
			}
			s.items[k] = queued{size: len(v), expires: exp}
			return nil
		})
		if err != nil {
			return fmt.Errorf("report: load %s queue: %w", q, err)
		}
	}
	// The items' share tags, so that a restart gives no source a fresh
	// share of the queues.
	err = s.ns.List(ctx, storage.ListOptions{Prefix: "s/"}, func(k string, v []byte) error {
		if len(k) < 4 {
			return nil
		}
		key := k[2:3] + "/" + k[3:]
		it, ok := s.items[key]
		if t, valid := decodeShareTags(v); ok && valid {
			it.src = t
			s.items[key] = it
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("report: load share tags: %w", err)
	}
	s.traceQueues()
	return nil
}

// Close stops serving: it removes the stream handler, resets the streams
// being served and waits for their handlers. It does not close the store.
// It is safe to call more than once.
func (s *Service) Close() error {
	s.closeOnce.Do(func() {
		s.streams.Close()
		if s.h != nil {
			s.h.RemoveStreamHandler(ID)
		}
		s.cancel()
		s.streams.Wait()
	})
	return nil
}

func (s *Service) handle(st network.Stream) {
	ip := netkit.MultiaddrSource(st.Conn().RemoteMultiaddr())
	s.streams.Handle(s.ctx, st, ServiceName, s.log, func(ctx context.Context, ns netkit.Stream, scope netkit.MemScope, remote peer.ID) error {
		return s.serve(ctx, ns, scope, source{peer: string(remote), ip: ip})
	})
}

func (s *Service) reply(st netkit.Stream, r response) error {
	return wire.Write(st, encodeResponse(r), maxResponseFrame)
}

// refuse answers with a code, counted against an unknown kind.
func (s *Service) refuse(st netkit.Stream, code Code) error {
	s.tr.submission(0, code)
	return s.reply(st, response{code: code})
}

// serve runs the one submission a stream carries, from src: hello,
// challenge, signed submission, answer.
func (s *Service) serve(ctx context.Context, st netkit.Stream, scope netkit.MemScope, src source) error {
	if err := st.SetDeadline(time.Now().Add(s.cfg.timeout)); err != nil {
		return err
	}
	rd := wire.NewReader(st)
	b, err := rd.ReadBytes(maxHelloFrame)
	if err != nil {
		if errors.Is(err, wire.ErrTooLarge) {
			return s.refuse(st, CodeTooLarge)
		}
		return err
	}
	if req, code := decodeRequest(b); code != CodeOK || req.kind != reqHello {
		return s.refuse(st, CodeMalformed)
	}
	if ok, wait := s.lim.Take(src.peer); !ok {
		s.tr.submission(0, CodeRateLimited)
		return s.reply(st, response{code: CodeRateLimited, retryAfter: wait})
	}
	if ok, wait := s.ipLim.Take(src.ip); !ok {
		s.tr.submission(0, CodeRateLimited)
		return s.reply(st, response{code: CodeRateLimited, retryAfter: wait})
	}
	nonce := make([]byte, nonceSize)
	_, _ = rand.Read(nonce)
	if err := s.reply(st, response{nonce: nonce}); err != nil {
		return err
	}
	if scope != nil {
		if err := scope.ReserveMemory(maxSubmitFrame, network.ReservationPriorityMedium); err != nil {
			s.log.Debug("submission refused by resource manager", "err", err)
			return s.refuse(st, CodeUnavailable)
		}
		defer scope.ReleaseMemory(maxSubmitFrame)
	}
	b, err = rd.ReadBytes(maxSubmitFrame)
	if err != nil {
		if errors.Is(err, wire.ErrTooLarge) {
			return s.refuse(st, CodeTooLarge)
		}
		return err
	}
	req, code := decodeRequest(b)
	if code == CodeOK && req.kind != reqSubmit && req.kind != reqPurge {
		code = CodeMalformed
	}
	if code != CodeOK {
		return s.refuse(st, code)
	}
	select {
	case s.sem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	var r response
	if req.kind == reqPurge {
		r = s.purge(ctx, req, nonce)
	} else {
		r = s.accept(ctx, req, nonce, src)
	}
	<-s.sem
	return s.reply(st, r)
}

// accept verifies a submission from src and queues it. Nothing is stored
// unless every check passes.
func (s *Service) accept(ctx context.Context, req request, nonce []byte, src source) response {
	id, err := e2ee.ParsePublicIdentity(req.identity)
	if err != nil {
		return s.refused(0, CodeMalformed, "identity", err)
	}
	if len(req.sig) == 0 {
		return s.refused(0, CodeUnauthorized, "unsigned submission", nil)
	}
	if err := id.Verify(authMessage(nonce, s.local, submitHash(req.identity, req.submission)), req.sig); err != nil {
		return s.refused(0, CodeUnauthorized, "signature", err)
	}
	sub, err := decodeSubmission(req.submission)
	if err != nil {
		return s.refused(0, CodeOf(err), "submission", err)
	}
	reporter := id.AccountID()
	if sub.Kind == KindReport && sub.Reported == reporter {
		return s.refused(sub.Kind, CodeMalformed, "self-report", nil)
	}
	rec, code, err := s.store1(ctx, sub, req, nonce, id.Sign, src)
	if err != nil {
		s.log.Warn("store submission", "err", err)
		return s.refused(sub.Kind, CodeUnavailable, "store", err)
	}
	if code != CodeOK {
		return s.refused(sub.Kind, code, "limits", nil)
	}
	s.tr.submission(sub.Kind, CodeOK)
	return response{receipt: rec}
}

func (s *Service) refused(k Kind, code Code, what string, err error) response {
	s.log.Debug("submission refused", "what", what, "code", code, "err", err)
	s.tr.submission(k, code)
	return response{code: code}
}

// store1 stores one verified submission from src, unless it is a retry,
// or the reporter's quota, the queue's caps or src's share of the queue
// forbid.
func (s *Service) store1(ctx context.Context, sub Submission, req request, nonce, reporterKey []byte, src source) (*Receipt, Code, error) {
	retryKey := s.retryKey(reporterKey, sub.ID)
	class := byte('r')
	limit := s.cfg.reportsPerDay
	if sub.Kind != KindReport {
		class, limit = 'f', s.cfg.feedbackPerDay
	}
	now := s.cfg.now()
	quotaKey := s.quotaKey(reporterKey, class, now)

	s.mu.Lock()
	defer s.mu.Unlock()
	// A retry of a submission the relay holds gets the same answer.
	if b, err := s.ns.Get(ctx, retryKey); err == nil {
		key := string(b)
		if _, ok := s.items[key]; ok && len(key) > 2 {
			if has, err := s.ns.Has(ctx, key); err == nil && has {
				return &Receipt{ID: key[2:], Duplicate: true}, CodeOK, nil
			}
		}
	} else if !errors.Is(err, storage.ErrNotFound) {
		return nil, CodeUnavailable, err
	}
	used, err := s.count(ctx, quotaKey)
	if err != nil {
		return nil, CodeUnavailable, err
	}
	if used >= limit {
		return nil, CodeQuota, nil
	}
	it := &storedItem{submission: req.submission, identity: req.identity, sig: req.sig, nonce: nonce, received: now}
	val := it.encode()
	tags := s.tags(src)
	if !s.roomFor(now, len(val), sub.Kind.Queue(), sub.Kind == KindReport && sub.Reason.Urgent(), tags) {
		return nil, CodeQueueFull, nil
	}
	seq := s.seq + 1
	key := queuePrefix(sub.Kind.Queue()) + itemID(seq)
	b := s.store.NewBatch()
	for _, op := range []struct {
		key string
		v   []byte
		ttl time.Duration
	}{
		{key, val, s.cfg.retention},
		{shareKey(key), encodeShareTags(tags), s.cfg.retention},
		{retryKey, []byte(key), s.cfg.retention},
		{s.ownerKey(reporterKey, key), []byte{1}, s.cfg.retention},
		{quotaKey, binary.AppendUvarint(nil, uint64(used+1)), quotaTTL},
	} {
		if err := b.PutTTL(s.ns, op.key, op.v, op.ttl); err != nil {
			return nil, CodeUnavailable, err
		}
	}
	if err := b.Put(s.ns, keySeq, binary.AppendUvarint(nil, seq)); err != nil {
		return nil, CodeUnavailable, err
	}
	if err := b.Commit(ctx); err != nil {
		return nil, CodeUnavailable, err
	}
	s.seq = seq
	s.items[key] = queued{size: len(val), expires: now.Add(s.cfg.retention), src: tags}
	s.traceQueuesLocked(now)
	return &Receipt{ID: itemID(seq)}, CodeOK, nil
}

func (s *Service) retryKey(reporterKey []byte, subID string) string {
	return "x/" + s.ns.Opaque(reporterKey, []byte(subID))
}

func (s *Service) quotaKey(reporterKey []byte, class byte, day time.Time) string {
	return "q/" + s.ns.Opaque(reporterKey, []byte{class}, []byte(day.UTC().Format("20060102")))
}

func (s *Service) ownerPrefix(reporterKey []byte) string {
	return "a/" + s.ns.Opaque(reporterKey) + "/"
}

// ownerKey indexes an item (key "r/<id>" or "f/<id>") under its reporter.
func (s *Service) ownerKey(reporterKey []byte, key string) string {
	return s.ownerPrefix(reporterKey) + key[:1] + key[2:]
}

// indexKeys returns the retry and owner keys of a stored item, if its
// record can be read.
func (s *Service) indexKeys(key string, v []byte) (retry, owner string, ok bool) {
	it, err := decodeStoredItem(v)
	if err != nil {
		return "", "", false
	}
	sub, err := decodeSubmission(it.submission)
	if err != nil {
		return "", "", false
	}
	ident, err := e2ee.ParsePublicIdentity(it.identity)
	if err != nil {
		return "", "", false
	}
	return s.retryKey(ident.Sign, sub.ID), s.ownerKey(ident.Sign, key), true
}

// count reads a quota counter.
func (s *Service) count(ctx context.Context, key string) (int, error) {
	b, err := s.ns.Get(ctx, key)
	if errors.Is(err, storage.ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	v, n := binary.Uvarint(b)
	if n <= 0 {
		return 0, fmt.Errorf("quota counter: %w", ErrMalformed)
	}
	return int(min(v, 1<<31)), nil
}

// roomFor forgets expired items and reports whether one more of size
// bytes from src fits queue q: its caps (less the urgent reserve, for a
// report that is not urgent), and src's peer and IP shares of it. Called
// with mu held.
func (s *Service) roomFor(now time.Time, size int, q Queue, urgent bool, src shareTags) bool {
	s.pruneLocked(now)
	pfx := queuePrefix(q)
	var all, peer, ip queueCap
	for k, it := range s.items {
		if k[:2] != pfx {
			continue
		}
		all.add(it.size)
		if src.peer != "" && it.src.peer == src.peer {
			peer.add(it.size)
		}
		if src.ip != "" && it.src.ip == src.ip {
			ip.add(it.size)
		}
	}
	c := s.cfg.caps[q]
	limit := c
	if q == QueueReports && !urgent {
		limit = queueCap{c.items - c.items*s.cfg.urgentReserve/100, c.bytes - c.bytes*int64(s.cfg.urgentReserve)/100}
	}
	return all.fits(limit, size) && peer.fits(c.share(s.cfg.peerShare), size) && ip.fits(c.share(s.cfg.ipShare), size)
}

func (u *queueCap) add(size int) {
	u.items++
	u.bytes += int64(size)
}

// fits reports whether one more item of size bytes keeps u within limit.
func (u queueCap) fits(limit queueCap, size int) bool {
	return u.items+1 <= limit.items && u.bytes+int64(size) <= limit.bytes
}

// share is percent of c, but room for one item at least.
func (c queueCap) share(percent int) queueCap {
	return queueCap{max(1, c.items*percent/100), max(maxStoredItem, c.bytes*int64(percent)/100)}
}

// pruneLocked drops expired items from the accounting (the store's sweep
// deletes them) and returns what is left. Called with mu held.
func (s *Service) pruneLocked(now time.Time) (items int, bytes int64) {
	for k, q := range s.items {
		if !now.Before(q.expires) {
			delete(s.items, k)
			continue
		}
		bytes += int64(q.size)
	}
	return len(s.items), bytes
}

func (s *Service) traceQueues() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.traceQueuesLocked(s.cfg.now())
}

func (s *Service) traceQueuesLocked(now time.Time) {
	if s.tr.t == nil {
		return
	}
	s.pruneLocked(now)
	var r, f int
	for k := range s.items {
		if k[:2] == reportsPfx {
			r++
		} else {
			f++
		}
	}
	s.tr.queue(QueueReports, r)
	s.tr.queue(QueueFeedback, f)
}

// Len returns how many items each queue holds.
func (s *Service) Len() (reports, feedback int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pruneLocked(s.cfg.now())
	for k := range s.items {
		if k[:2] == reportsPfx {
			reports++
		} else {
			feedback++
		}
	}
	return reports, feedback
}

// ListOptions pages through a queue.
type ListOptions struct {
	// After resumes after this item id (exclusive): pass the last id of
	// the previous page.
	After string
	// Limit is the most items returned; 0 means 100.
	Limit int
}

// MaxListLimit caps ListOptions.Limit.
const MaxListLimit = 1000

// List returns a queue's items, oldest first. Items whose record can't be
// read (a store written by a newer version) are skipped and logged.
func (s *Service) List(ctx context.Context, q Queue, opts ListOptions) ([]Item, error) {
	if !q.valid() {
		return nil, fmt.Errorf("report: list queue %d: %w", q, ErrMalformed)
	}
	if opts.After != "" && !validItemID(opts.After) {
		return nil, fmt.Errorf("report: list after %q: want an item id (16 hex digits): %w", opts.After, ErrMalformed)
	}
	limit := opts.Limit
	if limit <= 0 {
		limit = 100
	}
	limit = min(limit, MaxListLimit)
	pfx := queuePrefix(q)
	lo := storage.ListOptions{Prefix: pfx, Limit: limit}
	if opts.After != "" {
		lo.StartAfter = pfx + opts.After
	}
	out := []Item{}
	err := s.ns.List(ctx, lo, func(k string, v []byte) error {
		it, err := decodeStoredItem(v)
		if err == nil {
			var item Item
			if item, err = it.item(k[len(pfx):]); err == nil {
				out = append(out, item)
				return nil
			}
		}
		s.log.Warn("unreadable queue item skipped", "key", k, "err", err)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("report: list %s: %w", q, err)
	}
	return out, nil
}

// Get returns one item of a queue, or ErrNotFound.
func (s *Service) Get(ctx context.Context, q Queue, id string) (*Item, error) {
	if !q.valid() || !validItemID(id) {
		return nil, fmt.Errorf("report: item %q: %w", id, ErrNotFound)
	}
	b, err := s.ns.Get(ctx, queuePrefix(q)+id)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, fmt.Errorf("report: %s item %s: %w", q, id, ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	it, err := decodeStoredItem(b)
	if err != nil {
		return nil, err
	}
	item, err := it.item(id)
	if err != nil {
		return nil, err
	}
	return &item, nil
}

// Done marks an item handled: it is deleted at once, with the record
// that recognises retries of it. ErrNotFound if the queue holds no such
// item.
func (s *Service) Done(ctx context.Context, q Queue, id string) error {
	if !q.valid() || !validItemID(id) {
		return fmt.Errorf("report: item %q: %w", id, ErrNotFound)
	}
	key := queuePrefix(q) + id
	s.mu.Lock()
	defer s.mu.Unlock()
	v, err := s.ns.Get(ctx, key)
	if errors.Is(err, storage.ErrNotFound) {
		delete(s.items, key)
		return fmt.Errorf("report: %s item %s: %w", q, id, ErrNotFound)
	}
	if err != nil {
		return err
	}
	b := s.store.NewBatch()
	keys := []string{key, shareKey(key)}
	if retry, owner, ok := s.indexKeys(key, v); ok {
		keys = append(keys, retry, owner)
	}
	for _, k := range keys {
		if err := b.Delete(s.ns, k); err != nil {
			return err
		}
	}
	if err := b.Commit(ctx); err != nil {
		return fmt.Errorf("report: mark %s item %s done: %w", q, id, err)
	}
	delete(s.items, key)
	s.tr.done(q)
	s.traceQueuesLocked(s.cfg.now())
	return nil
}

// purge deletes every item an account submitted, when the account proves
// it (account deletion).
func (s *Service) purge(ctx context.Context, req request, nonce []byte) response {
	id, err := e2ee.ParsePublicIdentity(req.identity)
	if err != nil {
		return s.refused(0, CodeMalformed, "purge identity", err)
	}
	if len(req.sig) == 0 {
		return s.refused(0, CodeUnauthorized, "unsigned purge", nil)
	}
	if err := id.Verify(purgeMessage(nonce, s.local, req.identity), req.sig); err != nil {
		return s.refused(0, CodeUnauthorized, "purge signature", err)
	}
	n, err := s.purgeAccount(ctx, id.Sign)
	if err != nil {
		s.log.Warn("purge", "err", err)
		return s.refused(0, CodeUnavailable, "purge", err)
	}
	s.tr.purged(n)
	return response{purged: &n}
}

// purgeBatch bounds the items deleted in one batch (three keys each).
const purgeBatch = 200

// purgeAccount deletes the items of the account whose signing key is
// reporterKey, their index entries and its quota counters.
func (s *Service) purgeAccount(ctx context.Context, reporterKey []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	pfx := s.ownerPrefix(reporterKey)
	var owned []string
	err := s.ns.List(ctx, storage.ListOptions{Prefix: pfx}, func(k string, _ []byte) error {
		owned = append(owned, k)
		return nil
	})
	if err != nil {
		return 0, err
	}
	now := s.cfg.now()
	var quota []string
	for _, day := range []time.Time{now, now.Add(-24 * time.Hour)} {
		quota = append(quota, s.quotaKey(reporterKey, 'r', day), s.quotaKey(reporterKey, 'f', day))
	}
	purged := 0
	for len(owned) > 0 || len(quota) > 0 {
		chunk := owned[:min(len(owned), purgeBatch)]
		owned = owned[len(chunk):]
		b := s.store.NewBatch()
		var gone []string
		for _, ok := range chunk {
			rest := ok[len(pfx):]
			if len(rest) != 17 || (rest[0] != 'r' && rest[0] != 'f') {
				continue
			}
			key := rest[:1] + "/" + rest[1:]
			keys := []string{ok, key, shareKey(key)}
			if v, err := s.ns.Get(ctx, key); err == nil {
				if retry, _, ok := s.indexKeys(key, v); ok {
					keys = append(keys, retry)
				}
				gone = append(gone, key)
			}
			for _, k := range keys {
				if err := b.Delete(s.ns, k); err != nil {
					return purged, err
				}
			}
		}
		for _, k := range quota {
			if err := b.Delete(s.ns, k); err != nil {
				return purged, err
			}
		}
		quota = nil
		if err := b.Commit(ctx); err != nil {
			return purged, err
		}
		for _, k := range gone {
			delete(s.items, k)
		}
		purged += len(gone)
	}
	s.traceQueuesLocked(now)
	return purged, nil
}
