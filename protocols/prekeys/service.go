package prekeys

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
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

// Service is the relay side of the prekey protocol: it keeps the prekeys
// accounts publish and hands out bundles. Create it with NewService;
// Close stops it.
type Service struct {
	h     host.Host
	local peer.ID
	store *storage.Store
	ns    *storage.Namespace
	cfg   config
	log   *slog.Logger
	tr    tracer

	fetchLim *netkit.Limiter[string] // per requester peer
	// oneTimeLim holds a bucket per target account: fetches that take
	// one-time prekeys. It gets keys only for accounts the relay holds
	// with one-time prekeys left, and tracks as many as the relay holds
	// accounts, so evicting one (which would reset its budget) takes
	// pushing a relay's worth of accounts through it, not made-up keys.
	oneTimeLim *netkit.Limiter[string]
	ownerLim   *netkit.Limiter[string] // per owner peer
	// budgets keeps oneTimeLim across restarts: a restart must not let
	// anyone take more of an account's one-time prekeys.
	budgets *netkit.Budgets

	locks    [64]sync.Mutex // per account, striped
	ownerSem chan struct{}  // owner operations being processed

	countMu  sync.Mutex // guards accounts and the stored count
	accounts int

	cacheMu sync.Mutex // guards cache (entries: see cached)
	cache   map[string]*cached

	ctx       context.Context // cancelled by Close
	cancel    context.CancelFunc
	streams   netkit.Streams
	closeOnce sync.Once
}

// NewService starts serving /kinmesh/prekeys/1.0.0 on h, keeping prekeys
// in st's "prekeys" namespace (Namespace). st must outlive the Service:
// close the Service first. The store, not only a namespace, is needed
// because a fetch deletes the one-time prekeys it hands out and updates
// the account's counters in one synced batch.
//
// Defaults (see the Option functions): the real clock; slog.Default(); no
// metrics; per requester DefaultFetchesPerMinute fetches a minute, bursts
// of DefaultFetchBurst; per target account DefaultOneTimePerHour fetches
// an hour that take one-time prekeys, bursts of DefaultOneTimeBurst; per
// owner peer DefaultOwnerOpsPerMinute owner operations a minute, bursts of
// DefaultOwnerBurst; DefaultMaxTracked keys per limiter; DefaultMaxAccounts
// accounts; fetch streams cut after 10 s, owner streams after 30 s; two
// owner operations verified at once.
func NewService(h host.Host, st *storage.Store, opts ...Option) (*Service, error) {
	if h == nil || st == nil {
		return nil, errors.New("prekeys: NewService needs a host and a store")
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
	ns := st.Namespace(Namespace)
	ctx, cancel := context.WithCancel(context.Background())
	n, err := loadAccountCount(ctx, ns)
	if err != nil {
		cancel()
		return nil, err
	}
	s := &Service{
		local:      local,
		store:      st,
		ns:         ns,
		cfg:        cfg,
		log:        cfg.logger.With("component", "prekeys"),
		tr:         tracer{cfg.tracer},
		fetchLim:   netkit.NewLimiter[string](cfg.now, cfg.fetchRate, cfg.fetchBurst, cfg.maxTracked),
		oneTimeLim: netkit.NewLimiter[string](cfg.now, cfg.oneTimeRate, cfg.oneTimeBurst, max(cfg.maxTracked, cfg.maxAccounts)),
		ownerLim:   netkit.NewLimiter[string](cfg.now, cfg.ownerRate, cfg.ownerBurst, cfg.maxTracked),
		ownerSem:   make(chan struct{}, cfg.maxOwnerOps),
		accounts:   n,
		cache:      make(map[string]*cached),
		ctx:        ctx,
		cancel:     cancel,
	}
	s.tr.accounts(n)
	s.budgets = netkit.KeepBudgets(st, Namespace, s.log, map[string]*netkit.Limiter[string]{"one_time_fetches": s.oneTimeLim})
	return s, nil
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
		s.budgets.Close()
	})
	return nil
}

// Accounts returns how many accounts the relay holds prekeys for.
func (s *Service) Accounts() int {
	s.countMu.Lock()
	defer s.countMu.Unlock()
	return s.accounts
}

func (s *Service) handle(st network.Stream) {
	s.streams.Handle(s.ctx, st, ServiceName, s.log, s.serve)
}

// serve answers the one operation a stream carries.
func (s *Service) serve(ctx context.Context, st netkit.Stream, scope netkit.MemScope, remote peer.ID) error {
	if err := st.SetDeadline(time.Now().Add(s.cfg.fetchTimeout)); err != nil {
		return err
	}
	rd := wire.NewReader(st)
	b, err := rd.ReadBytes(maxRequestFrame)
	if err != nil {
		if errors.Is(err, wire.ErrTooLarge) {
			s.tr.fetch(FetchFailed)
			return s.reply(st, response{code: CodeTooLarge})
		}
		return err
	}
	req, code := decodeRequest(b)
	if code == CodeOK && req.kind == reqOwner {
		code = CodeMalformed // an owner request comes after a challenge
	}
	if code != CodeOK {
		s.tr.fetch(FetchFailed)
		return s.reply(st, response{code: code})
	}
	if req.kind == reqFetch {
		return s.reply(st, s.fetch(ctx, remote, req.account[:]))
	}
	return s.owner(ctx, st, rd, scope, remote)
}

func (s *Service) reply(st netkit.Stream, r response) error {
	return wire.Write(st, encodeResponse(r), maxResponseFrame)
}

// fetch hands out a bundle of the account.
func (s *Service) fetch(ctx context.Context, remote peer.ID, account []byte) response {
	if ok, wait := s.fetchLim.Take(string(remote)); !ok {
		s.tr.fetch(FetchLimited)
		return response{code: CodeRateLimited, retryAfter: wait}
	}
	k := s.keys(account)
	l := s.lock(k)
	defer l.Unlock()
	e, err := s.cachedAccount(ctx, k)
	if err != nil {
		s.log.Warn("fetch: load account", "err", err)
		s.tr.fetch(FetchFailed)
		return response{code: CodeUnavailable}
	}
	if e == nil {
		s.tr.fetch(FetchNotFound)
		return response{code: CodeNotFound}
	}
	result := FetchEmpty
	if e.c.oneTime+e.c.pqs > 0 {
		if ok, _ := s.oneTimeLim.Take(k.base); !ok {
			result = FetchRationed
		} else {
			return s.fetchOneTime(ctx, k, e)
		}
	}
	// No one-time prekeys: the same bundle every time, encoded once.
	if e.lastResort == nil {
		b := e2ee.Bundle{Identity: e.acct.identity, SignedPrekey: e.acct.signed, PQPrekey: e.acct.lastResort}
		out, err := b.Marshal()
		if err != nil || len(out) > MaxBundleSize {
			s.log.Warn("fetch: marshal bundle", "err", err, "size", len(out))
			s.tr.fetch(FetchFailed)
			return response{code: CodeUnavailable}
		}
		e.lastResort = out
	}
	s.tr.fetch(result)
	return response{bundle: e.lastResort}
}

// fetchOneTime hands out the account's lowest one-time prekeys, deleted
// for good before the bundle is encoded. Called with the account's lock
// held.
func (s *Service) fetchOneTime(ctx context.Context, k accountKeys, e *cached) response {
	x, q, next, err := s.takeOneTime(ctx, k, e.c)
	if err != nil {
		s.forget(k)
		s.log.Warn("fetch: hand out one-time prekeys", "err", err)
		s.tr.fetch(FetchFailed)
		return response{code: CodeUnavailable}
	}
	e.c = next
	b := e2ee.Bundle{Identity: e.acct.identity, SignedPrekey: e.acct.signed, PQPrekey: e.acct.lastResort, OneTimePrekey: x}
	if q != nil {
		b.PQPrekey = *q
	}
	out, err := b.Marshal()
	if err != nil || len(out) > MaxBundleSize {
		// The keys are gone either way: better lost than handed out twice.
		s.log.Warn("fetch: marshal bundle", "err", err, "size", len(out))
		s.tr.fetch(FetchFailed)
		return response{code: CodeUnavailable}
	}
	result := FetchEmpty
	if x != nil || q != nil {
		result = FetchOK
		s.tr.handedOut(btoi(x != nil), btoi(q != nil))
	}
	s.tr.fetch(result)
	return response{bundle: out}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// owner runs an owner operation: challenge, proof, operation.
func (s *Service) owner(ctx context.Context, st netkit.Stream, rd *wire.Reader, scope netkit.MemScope, remote peer.ID) error {
	if err := st.SetDeadline(time.Now().Add(s.cfg.ownerTimeout)); err != nil {
		return err
	}
	if ok, wait := s.ownerLim.Take(string(remote)); !ok {
		s.tr.ownerOp("auth", CodeRateLimited)
		return s.reply(st, response{code: CodeRateLimited, retryAfter: wait})
	}
	nonce := make([]byte, nonceSize)
	_, _ = rand.Read(nonce)
	if err := s.reply(st, response{nonce: nonce}); err != nil {
		return err
	}
	if scope != nil {
		if err := scope.ReserveMemory(maxOwnerFrame, network.ReservationPriorityMedium); err != nil {
			s.log.Debug("owner request refused by resource manager", "err", err)
			s.tr.ownerOp("auth", CodeUnavailable)
			return s.reply(st, response{code: CodeUnavailable})
		}
		defer scope.ReleaseMemory(maxOwnerFrame)
	}
	b, err := rd.ReadBytes(maxOwnerFrame)
	if err != nil {
		if errors.Is(err, wire.ErrTooLarge) {
			s.tr.ownerOp("auth", CodeTooLarge)
			return s.reply(st, response{code: CodeTooLarge})
		}
		return err
	}
	req, code := decodeRequest(b)
	if code == CodeOK && req.kind != reqOwner {
		code = CodeMalformed
	}
	if code != CodeOK {
		s.tr.ownerOp("auth", code)
		return s.reply(st, response{code: code})
	}
	select {
	case s.ownerSem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	r := s.ownerOp(ctx, req, nonce, remote)
	<-s.ownerSem
	return s.reply(st, r)
}

// ownerOp checks the proof and runs the operation.
func (s *Service) ownerOp(ctx context.Context, req request, nonce []byte, remote peer.ID) response {
	id, err := e2ee.ParsePublicIdentity(req.identity)
	if err != nil {
		s.tr.ownerOp("auth", CodeMalformed)
		return response{code: CodeMalformed}
	}
	if err := id.Verify(authMessage(nonce, s.local, remote, requestHash(req.op, req.identity, req.upload)), req.sig); err != nil {
		s.tr.ownerOp("auth", CodeUnauthorized)
		s.log.Debug("owner proof refused", "peer", remote)
		return response{code: CodeUnauthorized}
	}
	var up *e2ee.Upload
	if req.op == opPublish {
		if up, err = e2ee.ParseUpload(req.upload); err != nil {
			code := CodeMalformed
			if errors.Is(err, e2ee.ErrTooLarge) {
				code = CodeTooLarge
			}
			s.tr.ownerOp(req.op.String(), code)
			return response{code: code}
		}
		if !up.Identity.Equal(id) {
			s.tr.ownerOp(req.op.String(), CodeUnauthorized)
			return response{code: CodeUnauthorized}
		}
	}
	k := s.keys(id.Sign)
	l := s.lock(k)
	st, code, err := s.runOp(ctx, req, k, up)
	s.forget(k)
	l.Unlock()
	if err != nil {
		s.log.Warn("owner operation failed", "op", req.op, "err", err)
		code, st = CodeUnavailable, nil
	}
	s.tr.ownerOp(req.op.String(), code)
	return response{code: code, status: st}
}

// runOp runs an authenticated owner operation with the account's lock
// held.
func (s *Service) runOp(ctx context.Context, req request, k accountKeys, up *e2ee.Upload) (*Status, Code, error) {
	switch req.op {
	case opPublish:
		return s.applyUpload(ctx, k, up)
	case opStatus:
		acct, c, err := s.load(ctx, k)
		if err != nil {
			return nil, CodeUnavailable, err
		}
		if acct == nil {
			return nil, CodeNotFound, nil
		}
		st, err := s.status(ctx, k, acct, c)
		return st, CodeOK, err
	case opPurge:
		n, err := s.purge(ctx, k)
		if err != nil {
			return nil, CodeUnavailable, err
		}
		return &Status{Purged: n}, CodeOK, nil
	}
	return nil, CodeMalformed, fmt.Errorf("unknown op %d", req.op)
}
