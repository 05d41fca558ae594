package discovery

import (
	"context"
	"crypto/rand"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/cloudflare/circl/oprf"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/kinmesh/kinmesh/protocols/contact"
	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/protocols/netkit"
	"github.com/kinmesh/kinmesh/protocols/wire"
	"github.com/kinmesh/kinmesh/storage"
)

// Service is the relay side: phone verification through an SMSGateway,
// the OPRF evaluations and the directory. Create it with NewService;
// Close stops it.
type Service struct {
	h     host.Host
	local peer.ID
	store *storage.Store
	ns    *storage.Namespace
	gw    SMSGateway
	cfg   config
	log   *slog.Logger
	tr    tracer

	server  oprf.VerifiableServer // evaluates blinded elements
	numbers oprf.VerifiableServer // evaluates numbers being verified
	pub     PublicKey

	opLim       *netkit.Limiter[string] // per peer: account operations started
	listLim     *netkit.Limiter[string] // per peer: directory pages
	sendLim     *netkit.Limiter[string] // per account: codes sent
	numberLim   *netkit.Limiter[string] // per number (directory id): codes sent
	smsHour     *netkit.Limiter[string] // relay-wide (one key): texts sent this hour
	smsDay      *netkit.Limiter[string] // relay-wide (one key): texts sent today
	guessLim    *netkit.Limiter[string] // per number: codes submitted
	evalLim     *netkit.Limiter[string] // per account: elements evaluated
	evalNumLim  *netkit.Limiter[string] // per verified number (directory id): elements evaluated
	budgets     *netkit.Budgets         // the limiters that budget texts, guesses and evaluations, kept across restarts
	locks       [64]sync.Mutex
	opSem       chan struct{}
	dirMu       sync.Mutex // guards meta, lastCompact and every directory write
	meta        meta
	lastCompact time.Time

	ctx       context.Context // cancelled by Close
	cancel    context.CancelFunc
	streams   netkit.Streams
	closeOnce sync.Once
}

// NewService starts serving /kinmesh/discovery/1.0.0 on h, keeping its
// OPRF key, verifications and directory in st's "discovery" namespace
// (Namespace), and sending verification codes through gw. A new store
// gets a new OPRF key. st must outlive the Service: close the Service
// first.
//
// Defaults (see the Option functions and their Default constants): the
// real clock; slog.Default(); no metrics; codes valid DefaultCodeTTL (10
// min), DefaultMaxAttempts (5) wrong codes lock verification for
// DefaultLockout (1 h); per account DefaultSendsPerDay (5) codes a day,
// DefaultSendBurst (3) at once, and DefaultEvaluationsPerDay (1000)
// lookups a day, DefaultEvaluationBurst (2000) at once (and as many per
// verified number, whichever accounts verify it); per number
// DefaultNumberSendsPerDay (5) codes a day, DefaultNumberSendBurst (3) at
// once, and DefaultGuessesPerNumberPerDay (10) codes submitted; relay-wide
// DefaultSMSPerHour (100) and DefaultSMSPerDay (1000) texts; per peer
// DefaultListsPerMinute (60) directory pages a minute, DefaultListBurst
// (120) at once, and DefaultAccountOpsPerMinute (30) account operations,
// DefaultAccountOpBurst (30) at once; lookups need a verified number;
// DefaultMaxEntries directory entries; deletions remembered
// DefaultTombstoneTTL (30 days); DefaultMaxTracked keys per limiter;
// hello and list streams cut after 10 s, account operation streams after
// 30 s; four account operations processed at once.
func NewService(h host.Host, st *storage.Store, gw SMSGateway, opts ...Option) (*Service, error) {
	if h == nil || st == nil || gw == nil {
		return nil, errors.New("discovery: NewService needs a host, a store and an SMS gateway")
	}
	s, err := newService(h.ID(), st, gw, opts...)
	if err != nil {
		return nil, err
	}
	s.h = h
	h.SetStreamHandler(ID, s.handle)
	return s, nil
}

// newService builds a Service without a host (fuzz tests drive its stream
// handling directly).
func newService(local peer.ID, st *storage.Store, gw SMSGateway, opts ...Option) (*Service, error) {
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
	key := cfg.key
	if key == nil {
		var err error
		if key, err = loadKey(ctx, ns); err != nil {
			cancel()
			return nil, err
		}
	}
	evalKey := key
	if cfg.evalKey != nil {
		evalKey = cfg.evalKey
	}
	pub, err := publicKeyOf(key)
	if err != nil {
		cancel()
		return nil, err
	}
	m, err := loadMeta(ctx, ns)
	if err != nil {
		cancel()
		return nil, err
	}
	s := &Service{
		local:      local,
		store:      st,
		ns:         ns,
		gw:         gw,
		cfg:        cfg,
		log:        cfg.logger.With("component", "discovery"),
		tr:         tracer{cfg.tracer},
		server:     oprf.NewVerifiableServer(suite, evalKey),
		numbers:    oprf.NewVerifiableServer(suite, key),
		pub:        pub,
		opLim:      netkit.NewLimiter[string](cfg.now, cfg.opRate, cfg.opBurst, cfg.maxTracked),
		listLim:    netkit.NewLimiter[string](cfg.now, cfg.listRate, cfg.listBurst, cfg.maxTracked),
		sendLim:    netkit.NewLimiter[string](cfg.now, cfg.sendRate, cfg.sendBurst, cfg.maxTracked),
		numberLim:  netkit.NewLimiter[string](cfg.now, cfg.numberSendRate, cfg.numberSendBurst, cfg.maxTracked),
		smsHour:    netkit.NewLimiter[string](cfg.now, cfg.smsPerHour/3600, cfg.smsPerHour, 1),
		smsDay:     netkit.NewLimiter[string](cfg.now, cfg.smsPerDay/day, cfg.smsPerDay, 1),
		guessLim:   netkit.NewLimiter[string](cfg.now, cfg.guessRate, cfg.guessBurst, cfg.maxTracked),
		evalLim:    netkit.NewLimiter[string](cfg.now, cfg.evalRate, cfg.evalBurst, cfg.maxTracked),
		evalNumLim: netkit.NewLimiter[string](cfg.now, cfg.evalRate, cfg.evalBurst, cfg.maxTracked),
		opSem:      make(chan struct{}, cfg.maxOps),
		meta:       m,
		ctx:        ctx,
		cancel:     cancel,
	}
	s.tr.entries(m.entries)
	// Texts cost money and reach people; guesses and evaluations are what
	// stands between an attacker and someone's code or a list of who uses
	// kinmesh: a restart must not refill them.
	s.budgets = netkit.KeepBudgets(st, Namespace, s.log, map[string]*netkit.Limiter[string]{
		"account_texts": s.sendLim, "number_texts": s.numberLim, "relay_texts_hour": s.smsHour,
		"relay_texts_day": s.smsDay, "number_guesses": s.guessLim, "account_evaluations": s.evalLim,
		"number_evaluations": s.evalNumLim,
	})
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

// PublicKey returns the relay's OPRF public key.
func (s *Service) PublicKey() PublicKey { return s.pub }

// Entries returns how many live entries the directory holds.
func (s *Service) Entries() int {
	s.dirMu.Lock()
	defer s.dirMu.Unlock()
	return s.meta.entries
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

// serve answers the one operation a stream carries.
func (s *Service) serve(ctx context.Context, st netkit.Stream, scope netkit.MemScope, remote peer.ID) error {
	if err := st.SetDeadline(time.Now().Add(s.cfg.requestTimeout)); err != nil {
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
	if code == CodeOK && req.kind == reqOwner {
		code = CodeMalformed // an account operation comes after a challenge
	}
	if code != CodeOK {
		s.tr.request("auth", code)
		return s.reply(st, response{code: code})
	}
	if req.kind == reqList {
		r := s.list(ctx, remote, Listing{Since: req.since, Base: req.base}, req.limit)
		s.tr.request("list", r.code)
		return s.reply(st, r)
	}
	return s.account(ctx, st, rd, scope, remote)
}

func (s *Service) reply(st netkit.Stream, r response) error {
	return wire.Write(st, encodeResponse(r), maxResponseFrame)
}

// account runs an account operation: challenge, proof, operation.
func (s *Service) account(ctx context.Context, st netkit.Stream, rd *wire.Reader, scope netkit.MemScope, remote peer.ID) error {
	if err := st.SetDeadline(time.Now().Add(s.cfg.accountTimeout)); err != nil {
		return err
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
	if scope != nil {
		if err := scope.ReserveMemory(maxOwnerFrame, network.ReservationPriorityMedium); err != nil {
			s.log.Debug("account request refused by resource manager", "err", err)
			s.tr.request("auth", CodeUnavailable)
			return s.reply(st, response{code: CodeUnavailable})
		}
		defer scope.ReleaseMemory(maxOwnerFrame)
	}
	b, err := s.read(rd, maxOwnerFrame)
	if err != nil {
		if errors.Is(err, wire.ErrTooLarge) {
			s.tr.request("auth", CodeTooLarge)
			return s.reply(st, response{code: CodeTooLarge})
		}
		return err
	}
	req, code := decodeRequest(b)
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
	body, code := decodeOwnerBody(req.body)
	if code != CodeOK {
		s.tr.request(body.op.String(), code)
		return response{code: code}
	}
	acct := s.accountKey(id.Sign)
	now := s.cfg.now()
	var r response
	switch body.op {
	case opSendCode:
		r = s.sendCode(ctx, acct, body.number, now)
	case opVerifyCode:
		r = s.verifyCode(ctx, acct, id, body.code, body.record, now)
	case opStatus:
		r = s.statusOf(ctx, acct, now)
	case opUpdateRecord:
		r = s.updateRecord(ctx, acct, id, body.record, now)
	case opUnenrol:
		r = s.unenrol(ctx, acct, now)
	case opEvaluate:
		r = s.evaluate(ctx, acct, body.blinded)
	}
	s.tr.request(body.op.String(), r.code)
	return r
}

// unavailable logs a store failure and answers CodeUnavailable.
func (s *Service) unavailable(what string, err error) response {
	s.log.Warn(what, "err", err)
	return response{code: CodeUnavailable}
}

// lockAccount serializes everything that touches one account's
// verification state.
func (s *Service) lockAccount(acct string) *sync.Mutex {
	var h uint32 = 2166136261
	for i := 0; i < len(acct); i++ {
		h = (h ^ uint32(acct[i])) * 16777619
	}
	l := &s.locks[h%uint32(len(s.locks))]
	l.Lock()
	return l
}

// lockedUntil returns when the account's lockout ends (zero if none).
func (s *Service) lockedUntil(ctx context.Context, acct string, now time.Time) (time.Time, error) {
	b, err := s.ns.Get(ctx, lockKey(acct))
	if errors.Is(err, storage.ErrNotFound) {
		return time.Time{}, nil
	}
	if err != nil {
		return time.Time{}, err
	}
	until, derr := decodeLock(b)
	if derr != nil || !until.After(now) {
		return time.Time{}, nil // an unreadable lock is no lock
	}
	return until, nil
}

// sendCode sends a new code to number and keeps it pending for the
// account. The number is used for the SMS and the OPRF evaluation, then
// forgotten: only its OPRF output is stored.
func (s *Service) sendCode(ctx context.Context, acct, raw string, now time.Time) response {
	l := s.lockAccount(acct)
	defer l.Unlock()
	until, err := s.lockedUntil(ctx, acct, now)
	if err != nil {
		return s.unavailable("send code: read lock", err)
	}
	if !until.IsZero() {
		return response{code: CodeTooManyAttempts, retryAfter: until.Sub(now)}
	}
	number, err := ParseNumber(raw)
	if err != nil {
		return response{code: CodeInvalidNumber}
	}
	if ok, wait := s.sendLim.Allow(acct, 1); !ok {
		return response{code: CodeRateLimited, retryAfter: wait}
	}
	out, err := s.output(number)
	if err != nil {
		return s.unavailable("send code: evaluate", err)
	}
	if r, ok := s.takeSendBudgets(acct, out.ID().String()); !ok {
		return r
	}
	prev, err := s.pending(ctx, acct)
	if err != nil {
		return s.unavailable("send code: read pending", err)
	}
	p := storedPending{output: out, code: newCode(), expires: now.Add(s.cfg.codeTTL)}
	if prev != nil {
		p.attempts = prev.attempts // a new code does not buy new guesses
	}
	gctx, cancel := context.WithTimeout(ctx, s.cfg.accountTimeout*2/3)
	err = s.gw.Send(gctx, number, codeText(p.code, s.cfg.codeTTL))
	cancel()
	if err != nil {
		s.tr.sms(false)
		s.log.Warn("SMS gateway failed", "err", err)
		return response{code: CodeSMSFailed}
	}
	s.tr.sms(true)
	if err := s.ns.PutTTL(ctx, pendingKey(acct), p.encode(), s.cfg.codeTTL+24*time.Hour); err != nil {
		return s.unavailable("send code: store pending", err)
	}
	st, err := s.status(ctx, acct, now)
	if err != nil {
		return s.unavailable("send code: status", err)
	}
	return response{status: st}
}

// takeSendBudgets takes one text from the account's, the number's and the
// relay's budgets, or none of them. Every budget is checked before any is
// taken, and the per-key tables get an entry only for a request that
// will send: a request refused by one budget (a flood of fresh accounts
// asking for one number, say) leaves no trace in the others, and pushing
// a key out of a full table costs a table's worth of texts from the
// relay's budget. Called with the account's lock held, so its bucket
// can't change between the check and the take.
func (s *Service) takeSendBudgets(acct, number string) (response, bool) {
	refused := func(wait time.Duration) (response, bool) {
		return response{code: CodeRateLimited, retryAfter: wait}, false
	}
	if ok, wait := s.numberLim.Allow(number, 1); !ok {
		return refused(wait)
	}
	okH, waitH := s.smsHour.Allow("", 1)
	okD, waitD := s.smsDay.Allow("", 1)
	if !okH || !okD {
		s.log.Debug("relay-wide SMS budget spent", "retry_after", max(waitH, waitD))
		return refused(max(waitH, waitD))
	}
	// The number's and the relay's buckets may have been drained by other
	// accounts since: take them with care, giving back what a later
	// refusal leaves unused.
	if ok, wait := s.smsHour.Take(""); !ok {
		return refused(wait)
	}
	if ok, wait := s.smsDay.Take(""); !ok {
		s.smsHour.Refund("", 1)
		return refused(wait)
	}
	if ok, wait := s.numberLim.Take(number); !ok {
		s.smsHour.Refund("", 1)
		s.smsDay.Refund("", 1)
		return refused(wait)
	}
	if ok, wait := s.sendLim.Take(acct); !ok {
		s.smsHour.Refund("", 1)
		s.smsDay.Refund("", 1)
		s.numberLim.Refund(number, 1)
		return refused(wait)
	}
	return response{}, true
}

// output evaluates the OPRF on number with the relay's key.
func (s *Service) output(number Number) (Output, error) {
	y, err := s.numbers.FullEvaluate(number.input())
	if err != nil {
		return Output{}, err
	}
	var o Output
	if len(y) != OutputSize {
		return o, errors.New("OPRF output of unexpected size")
	}
	copy(o[:], y)
	return o, nil
}

// newCode returns CodeDigits uniformly random digits.
func newCode() string {
	var b [CodeDigits]byte
	for i := range b {
		b[i] = '0' + byte(randBelow(10))
	}
	return string(b[:])
}

// randBelow returns a uniform random number in [0, n), n ≤ 256.
func randBelow(n int) int {
	limit := 256 - 256%n
	var b [1]byte
	for {
		_, _ = rand.Read(b[:])
		if int(b[0]) < limit {
			return int(b[0]) % n
		}
	}
}

// pending reads the account's pending verification (nil if none).
func (s *Service) pending(ctx context.Context, acct string) (*storedPending, error) {
	b, err := s.ns.Get(ctx, pendingKey(acct))
	if errors.Is(err, storage.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	p, err := decodeStoredPending(b)
	if err != nil {
		s.log.Warn("dropping unreadable pending verification", "err", err)
		return nil, nil
	}
	return &p, nil
}

// checkRecord parses a contact record and checks it is the account's.
func checkRecord(raw []byte, id e2ee.PublicIdentity) bool {
	rec, err := contact.Parse(raw)
	return err == nil && rec.Identity.Equal(id)
}

// verifyCode checks a submitted code; on success it links the number to
// the account and enrols the record in the directory.
func (s *Service) verifyCode(ctx context.Context, acct string, id e2ee.PublicIdentity, code string, record []byte, now time.Time) response {
	if !checkRecord(record, id) {
		return response{code: CodeMalformed}
	}
	l := s.lockAccount(acct)
	defer l.Unlock()
	until, err := s.lockedUntil(ctx, acct, now)
	if err != nil {
		return s.unavailable("verify code: read lock", err)
	}
	if !until.IsZero() {
		return response{code: CodeTooManyAttempts, retryAfter: until.Sub(now)}
	}
	p, err := s.pending(ctx, acct)
	if err != nil {
		return s.unavailable("verify code: read pending", err)
	}
	if p == nil {
		return response{code: CodeNoCode}
	}
	if now.After(p.expires) {
		if err := s.ns.Delete(ctx, pendingKey(acct)); err != nil {
			return s.unavailable("verify code: delete expired", err)
		}
		return response{code: CodeCodeExpired}
	}
	if ok, wait := s.guessLim.Take(p.output.ID().String()); !ok {
		// This number has had its share of guesses today: void the code.
		if err := s.ns.Delete(ctx, pendingKey(acct)); err != nil {
			return s.unavailable("verify code: void code", err)
		}
		return response{code: CodeTooManyAttempts, retryAfter: wait}
	}
	if !codesEqual(code, p.code) {
		p.attempts++
		if p.attempts >= s.cfg.maxAttempts {
			b := s.store.NewBatch()
			err := errors.Join(
				b.Delete(s.ns, pendingKey(acct)),
				b.PutTTL(s.ns, lockKey(acct), encodeLock(now.Add(s.cfg.lockout)), s.cfg.lockout),
			)
			if err == nil {
				err = b.Commit(ctx)
			}
			if err != nil {
				return s.unavailable("verify code: lock", err)
			}
			s.log.Info("account locked out of phone verification", "for", s.cfg.lockout)
			return response{code: CodeTooManyAttempts, retryAfter: s.cfg.lockout}
		}
		if err := s.ns.PutTTL(ctx, pendingKey(acct), p.encode(), p.expires.Sub(now)+24*time.Hour); err != nil {
			return s.unavailable("verify code: store attempt", err)
		}
		st, err := s.status(ctx, acct, now)
		if err != nil {
			return s.unavailable("verify code: status", err)
		}
		return response{code: CodeWrongCode, status: st}
	}
	if code, err := s.enrol(ctx, acct, p.output, record, now); err != nil {
		return s.unavailable("verify code: enrol", err)
	} else if code != CodeOK {
		return response{code: code}
	}
	st, err := s.status(ctx, acct, now)
	if err != nil {
		return s.unavailable("verify code: status", err)
	}
	return response{status: st}
}

// codesEqual compares two codes in constant time.
func codesEqual(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	var d byte
	for i := 0; i < len(a); i++ {
		d |= a[i] ^ b[i]
	}
	return d == 0
}

// updateRecord replaces the record in the account's directory entry.
func (s *Service) updateRecord(ctx context.Context, acct string, id e2ee.PublicIdentity, record []byte, now time.Time) response {
	if !checkRecord(record, id) {
		return response{code: CodeMalformed}
	}
	l := s.lockAccount(acct)
	defer l.Unlock()
	link, err := s.link(ctx, acct)
	if err != nil {
		return s.unavailable("update record: read link", err)
	}
	if link == nil {
		return response{code: CodeNotVerified}
	}
	if code, err := s.enrol(ctx, acct, link.output, record, link.verifiedAt); err != nil {
		return s.unavailable("update record: enrol", err)
	} else if code != CodeOK {
		return response{code: code}
	}
	st, err := s.status(ctx, acct, now)
	if err != nil {
		return s.unavailable("update record: status", err)
	}
	return response{status: st}
}

// unenrol removes the account's link, directory entry and pending
// verification (not its lockout).
func (s *Service) unenrol(ctx context.Context, acct string, now time.Time) response {
	l := s.lockAccount(acct)
	defer l.Unlock()
	n, err := s.removeAccount(ctx, acct, now)
	if err != nil {
		return s.unavailable("unenrol", err)
	}
	st, err := s.status(ctx, acct, now)
	if err != nil {
		return s.unavailable("unenrol: status", err)
	}
	st.Removed = n
	return response{status: st}
}

// statusOf answers a status request.
func (s *Service) statusOf(ctx context.Context, acct string, now time.Time) response {
	st, err := s.status(ctx, acct, now)
	if err != nil {
		return s.unavailable("status", err)
	}
	return response{status: st}
}

// status reports what the relay holds for the account.
func (s *Service) status(ctx context.Context, acct string, now time.Time) (*Status, error) {
	st := &Status{PublicKey: s.pub, EvaluationsLeft: s.evalLim.Left(acct)}
	link, err := s.link(ctx, acct)
	if err != nil {
		return nil, err
	}
	if link != nil {
		st.Verified, st.VerifiedAt = true, link.verifiedAt
		st.EvaluationsLeft = min(st.EvaluationsLeft, s.evalNumLim.Left(link.output.ID().String()))
	}
	p, err := s.pending(ctx, acct)
	if err != nil {
		return nil, err
	}
	if p != nil && !now.After(p.expires) {
		st.Pending, st.CodeExpires, st.AttemptsLeft = true, p.expires, max(s.cfg.maxAttempts-p.attempts, 0)
	}
	if st.LockedUntil, err = s.lockedUntil(ctx, acct, now); err != nil {
		return nil, err
	}
	return st, nil
}

// takeEvalBudgets takes n lookups from the account's budget and, if
// number is not empty, from the budget of the account's verified number
// (its directory id), or from neither. The number's budget is what keeps
// one SIM at its daily lookups: verifying it again on a fresh account
// moves the number, not a fresh budget. wait is never if n exceeds a
// whole budget.
func (s *Service) takeEvalBudgets(acct, number string, n int) (ok bool, wait time.Duration) {
	okA, waitA := s.evalLim.Allow(acct, n)
	okN, waitN := true, time.Duration(0)
	if number != "" {
		okN, waitN = s.evalNumLim.Allow(number, n)
	}
	if !okA || !okN {
		return false, max(waitA, waitN)
	}
	if number != "" {
		if ok, wait := s.evalNumLim.TakeN(number, n); !ok {
			return false, wait
		}
	}
	if ok, wait := s.evalLim.TakeN(acct, n); !ok {
		if number != "" {
			s.evalNumLim.Refund(number, n)
		}
		return false, wait
	}
	return true, 0
}

// evaluate answers an OPRF evaluation request.
func (s *Service) evaluate(ctx context.Context, acct string, blinded [][]byte) response {
	link, err := s.link(ctx, acct)
	if err != nil {
		return s.unavailable("evaluate: read link", err)
	}
	if link == nil && s.cfg.requireVerified {
		return response{code: CodeNotVerified}
	}
	elems, err := parseElements(blinded)
	if err != nil {
		return response{code: CodeMalformed}
	}
	number := "" // the verified number's budget, if the account has one
	if link != nil {
		number = link.output.ID().String()
	}
	if ok, wait := s.takeEvalBudgets(acct, number, len(elems)); !ok {
		if wait == netkit.Never {
			return response{code: CodeTooLarge}
		}
		return response{code: CodeRateLimited, retryAfter: wait}
	}
	ev, err := s.server.Evaluate(&oprf.EvaluationRequest{Elements: elems})
	if err != nil {
		return s.unavailable("evaluate", err)
	}
	out, err := marshalElements(ev.Elements)
	if err != nil {
		return s.unavailable("evaluate: encode", err)
	}
	proof, err := ev.Proof.MarshalBinary()
	if err != nil {
		return s.unavailable("evaluate: encode proof", err)
	}
	s.tr.evaluated(len(out))
	return response{eval: &evaluation{elements: out, proof: proof}}
}
