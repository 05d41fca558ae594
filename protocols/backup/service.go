package backup

import (
	"context"
	"crypto/rand"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/kinmesh/kinmesh/protocols/discovery"
	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/protocols/netkit"
	"github.com/kinmesh/kinmesh/protocols/wire"
	"github.com/kinmesh/kinmesh/storage"
)

// Links is what the service needs of the relay's phone links: the
// discovery service (*discovery.Service) of the same relay.
type Links interface {
	// LinkOf returns the number id's account verified on this relay.
	LinkOf(ctx context.Context, id e2ee.PublicIdentity) (discovery.Link, bool, error)
	// LinkedAccount returns the account a number is linked to now.
	LinkedAccount(ctx context.Context, out discovery.Output) (string, bool, error)
	// RedeemCode checks and consumes id's pending code, returning the
	// number's output, without linking it.
	RedeemCode(ctx context.Context, id e2ee.PublicIdentity, code string) (discovery.Output, discovery.Status, error)
}

// Service is the relay side: it keeps accounts' sealed backups under
// their verified numbers and hands one out to whoever proves the number
// again. Create it with NewService; Close stops it.
type Service struct {
	h     host.Host
	local peer.ID
	store *storage.Store
	ns    *storage.Namespace
	links Links
	cfg   config
	log   *slog.Logger
	tr    tracer

	opLim   *netkit.Limiter[string] // per peer: operations started
	putLim  *netkit.Limiter[string] // per account: uploads
	budgets *netkit.Budgets         // putLim, kept across restarts
	opSem   chan struct{}

	writeMu sync.Mutex // guards count and every write
	count   int        // backups held (index records)

	ctx       context.Context // cancelled by Close
	cancel    context.CancelFunc
	streams   netkit.Streams
	wg        sync.WaitGroup // the sweep loop
	closeOnce sync.Once
}

// NewService starts serving /kinmesh/backup/1.0.0 on h, keeping backups
// in st's "backup" namespace (Namespace), under the numbers links (the
// relay's discovery service, on the same store) holds. st must outlive
// the Service: close the Service first, then links' service.
//
// Defaults (see the Option functions and their Default constants): the
// real clock; slog.Default(); no metrics; backups kept DefaultTTL (180
// days) after their last upload; at most DefaultMaxBackups (100,000);
// per account DefaultPutsPerDay (48) uploads a day, DefaultPutBurst (12)
// at once; per peer DefaultOpsPerMinute (20) operations a minute,
// DefaultOpBurst (20) at once; stale backups swept every
// DefaultSweepInterval (1 h); DefaultMaxTracked keys per limiter; 10 s
// until the signed request is in, 60 s per stream; four operations
// processed at once.
func NewService(h host.Host, st *storage.Store, links Links, opts ...Option) (*Service, error) {
	if h == nil || st == nil || links == nil {
		return nil, errors.New("backup: NewService needs a host, a store and the relay's phone links")
	}
	s, err := newService(h.ID(), st, links, opts...)
	if err != nil {
		return nil, err
	}
	s.h = h
	h.SetStreamHandler(ID, s.handle)
	s.wg.Go(s.sweepLoop)
	return s, nil
}

// newService builds a Service without a host or sweep loop (fuzz tests
// drive its stream handling directly).
func newService(local peer.ID, st *storage.Store, links Links, opts ...Option) (*Service, error) {
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
		links:  links,
		cfg:    cfg,
		log:    cfg.logger.With("component", "backup"),
		tr:     tracer{cfg.tracer},
		opLim:  netkit.NewLimiter[string](cfg.now, cfg.opRate, cfg.opBurst, cfg.maxTracked),
		putLim: netkit.NewLimiter[string](cfg.now, cfg.putRate, cfg.putBurst, cfg.maxTracked),
		opSem:  make(chan struct{}, cfg.maxOps),
		ctx:    ctx,
		cancel: cancel,
	}
	n, err := s.countBackups(ctx)
	if err != nil {
		cancel()
		return nil, err
	}
	s.count = n
	s.tr.backups(n)
	s.budgets = netkit.KeepBudgets(st, Namespace, s.log, map[string]*netkit.Limiter[string]{"account_uploads": s.putLim})
	return s, nil
}

// Close stops serving: it removes the stream handler, stops the sweep,
// resets the streams being served and waits for their handlers. It does
// not close the store. It is safe to call more than once.
func (s *Service) Close() error {
	s.closeOnce.Do(func() {
		s.streams.Close()
		if s.h != nil {
			s.h.RemoveStreamHandler(ID)
		}
		s.cancel()
		s.streams.Wait()
		s.wg.Wait()
		s.budgets.Close()
	})
	return nil
}

// Backups returns how many backups the relay holds.
func (s *Service) Backups() int {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	return s.count
}

func (s *Service) handle(st network.Stream) {
	s.streams.Handle(s.ctx, st, ServiceName, s.log, s.serve)
}

// read reads one client frame, handing it to the test recorder if any.
func (s *Service) read(rd *wire.Reader, max int) ([]byte, error) {
	b, err := rd.ReadBytes(max)
	if err == nil && s.cfg.recordRequest != nil {
		s.cfg.recordRequest(b)
	}
	return b, err
}

func (s *Service) reply(st netkit.Stream, r response) error {
	return wire.Write(st, encodeResponse(r), maxResponseFrame)
}

// serve answers the one operation a stream carries: hello, challenge,
// signed request, answer.
func (s *Service) serve(ctx context.Context, st netkit.Stream, scope netkit.MemScope, remote peer.ID) error {
	start := time.Now()
	if err := st.SetDeadline(start.Add(s.cfg.helloTimeout)); err != nil {
		return err
	}
	rd := wire.NewReader(st)
	b, err := s.read(rd, maxRequestFrame)
	if err != nil {
		if errors.Is(err, wire.ErrTooLarge) {
			s.tr.request("auth", CodeTooLarge)
			return s.reply(st, response{code: CodeTooLarge})
		}
		return err
	}
	req, code := decodeRequest(b)
	if code == CodeOK && req.kind != reqHello {
		code = CodeMalformed // an operation comes after a challenge
	}
	if code != CodeOK {
		s.tr.request("auth", code)
		return s.reply(st, response{code: code})
	}
	if ok, wait := s.opLim.Take(string(remote)); !ok {
		s.tr.request("auth", CodeRateLimited)
		return s.reply(st, response{code: CodeRateLimited, retryAfter: wait})
	}
	nonce := make([]byte, nonceSize)
	_, _ = rand.Read(nonce)
	if err := s.reply(st, response{nonce: nonce}); err != nil {
		return err
	}
	if err := st.SetDeadline(start.Add(s.cfg.opTimeout)); err != nil {
		return err
	}
	if scope != nil {
		if err := scope.ReserveMemory(maxOwnerFrame, network.ReservationPriorityMedium); err != nil {
			s.log.Debug("request refused by resource manager", "err", err)
			s.tr.request("auth", CodeUnavailable)
			return s.reply(st, response{code: CodeUnavailable})
		}
		defer scope.ReleaseMemory(maxOwnerFrame)
	}
	b, err = s.read(rd, maxOwnerFrame)
	if err != nil {
		if errors.Is(err, wire.ErrTooLarge) {
			s.tr.request("auth", CodeTooLarge)
			return s.reply(st, response{code: CodeTooLarge})
		}
		return err
	}
	req, code = decodeRequest(b)
	if code == CodeOK && req.kind != reqOwner {
		code = CodeMalformed
	}
	if code != CodeOK {
		s.tr.request("auth", code)
		return s.reply(st, response{code: code})
	}
	select {
	case s.opSem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	r := s.ownerOp(ctx, req, nonce, remote)
	<-s.opSem
	return s.reply(st, r)
}

// ownerOp checks the proof and runs the operation.
func (s *Service) ownerOp(ctx context.Context, req request, nonce []byte, remote peer.ID) response {
	id, err := e2ee.ParsePublicIdentity(req.identity)
	if err != nil {
		s.tr.request("auth", CodeMalformed)
		return response{code: CodeMalformed}
	}
	if err := id.Verify(authMessage(nonce, s.local, remote, requestHash(req.identity, req.body)), req.sig); err != nil {
		s.tr.request("auth", CodeUnauthorized)
		s.log.Debug("account proof refused", "peer", remote)
		return response{code: CodeUnauthorized}
	}
	b, code := decodeBody(req.body)
	if code != CodeOK {
		s.tr.request(b.op.String(), code)
		return response{code: code}
	}
	var r response
	switch b.op {
	case opPut:
		r = s.put(ctx, id, b.blob)
	case opStatus:
		r = s.status(ctx, id)
	case opDelete:
		r = s.remove(ctx, id)
	case opFetch:
		r = s.fetch(ctx, id, b.code)
	}
	s.tr.request(b.op.String(), r.code)
	return r
}

// unavailable logs a failure and answers CodeUnavailable.
func (s *Service) unavailable(what string, err error) response {
	s.log.Warn(what, "err", err)
	return response{code: CodeUnavailable}
}

// put stores blob as the backup of id's account, under its verified
// number.
func (s *Service) put(ctx context.Context, id e2ee.PublicIdentity, blob []byte) response {
	link, ok, err := s.links.LinkOf(ctx, id)
	if err != nil {
		return s.unavailable("put: read link", err)
	}
	if !ok {
		return response{code: CodeNotVerified}
	}
	owner := s.ownerKey(id)
	if ok, wait := s.putLim.Take(owner); !ok {
		return response{code: CodeRateLimited, retryAfter: wait}
	}
	st, code, err := s.store1(ctx, owner, link, blob)
	if err != nil {
		return s.unavailable("put: store", err)
	}
	if code != CodeOK {
		return response{code: code}
	}
	return response{status: st}
}

// status reports what the relay holds for id's account.
func (s *Service) status(ctx context.Context, id e2ee.PublicIdentity) response {
	link, verified, err := s.links.LinkOf(ctx, id)
	if err != nil {
		return s.unavailable("status: read link", err)
	}
	st, err := s.held(ctx, s.ownerKey(id), link, verified)
	if err != nil {
		return s.unavailable("status", err)
	}
	st.Verified = verified
	return response{status: st}
}

// remove deletes id's account's backup.
func (s *Service) remove(ctx context.Context, id e2ee.PublicIdentity) response {
	removed, err := s.deleteOwner(ctx, s.ownerKey(id))
	if err != nil {
		return s.unavailable("delete", err)
	}
	_, verified, err := s.links.LinkOf(ctx, id)
	if err != nil {
		return s.unavailable("delete: read link", err)
	}
	return response{status: &Status{Verified: verified, Removed: removed}}
}

// fetch redeems the code id asked for, then hands out the backup held
// under the number it proved, if its uploader still owns the number.
func (s *Service) fetch(ctx context.Context, id e2ee.PublicIdentity, code string) response {
	out, st, err := s.links.RedeemCode(ctx, id, code)
	if err != nil {
		var de *discovery.Error
		if !errors.As(err, &de) {
			return s.unavailable("fetch: redeem code", err)
		}
		r := response{retryAfter: de.RetryAfter}
		switch de.Code {
		case discovery.CodeMalformed:
			r.code = CodeMalformed
		case discovery.CodeNoCode:
			r.code = CodeNoCode
		case discovery.CodeCodeExpired:
			r.code = CodeCodeExpired
		case discovery.CodeWrongCode:
			r.code, r.status = CodeWrongCode, &Status{AttemptsLeft: st.AttemptsLeft}
		case discovery.CodeTooManyAttempts:
			r.code = CodeTooManyAttempts
		case discovery.CodeRateLimited:
			r.code = CodeRateLimited
		default:
			r.code = CodeUnavailable
		}
		return r
	}
	f, err := s.lookup(ctx, out)
	if err != nil {
		return s.unavailable("fetch: read backup", err)
	}
	if f == nil {
		return response{code: CodeNoBackup}
	}
	return response{fetched: f}
}

// sweepLoop deletes stale backups every sweep interval.
func (s *Service) sweepLoop() {
	t := time.NewTicker(s.cfg.sweepInterval)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
			if n, err := s.Sweep(s.ctx); err != nil && s.ctx.Err() == nil {
				s.log.Warn("sweep backups", "err", err)
			} else if n > 0 {
				s.log.Info("swept backups whose number link is gone", "count", n)
			}
		}
	}
}
