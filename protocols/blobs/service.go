package blobs

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/kinmesh/kinmesh/protocols/netkit"
	"github.com/kinmesh/kinmesh/protocols/wire"
	"github.com/kinmesh/kinmesh/storage"
)

// Service is the relay side of the blob protocol: it stores encrypted
// blobs, serves them, and deletes them on a valid deletion proof. Create it
// with NewService; Close stops it.
type Service struct {
	h     host.Host
	store *storage.Store
	ns    *storage.Namespace
	cfg   config
	log   *slog.Logger
	tr    tracer

	putLim *netkit.Limiter[string] // per peer: uploads and deletions
	getLim *netkit.Limiter[string] // per peer: fetches and Has
	ipLim  *netkit.Limiter[string] // per source address: chunks uploaded

	budgets *netkit.Budgets // ipLim, kept across restarts

	seed  maphash.Seed
	locks [64]sync.Mutex // per blob, striped: check-and-claim, delete

	mu        sync.Mutex // guards total, reserved, inflight, uploading
	total     Usage
	reserved  uint64
	inflight  map[string]Usage // per uploader: reserved by uploads in progress
	uploading map[BlobID]bool

	ctx       context.Context // cancelled by Close
	cancel    context.CancelFunc
	streams   netkit.Streams
	closeOnce sync.Once
}

// Store keys, in the "blobs" namespace, with K = Opaque(blob id) and
// U = Opaque(uploader peer id):
//
//	"m/" K              pb.Meta: chunk hashes, delete key, uploader, complete
//	"p/" K              empty: an upload in progress (dropped at start)
//	"c/" K "/" %04x(i)  chunk i, ChunkSize bytes
//	"u/" U              pb.Usage of one uploader
//	"t"                 pb.Usage of the whole relay
const (
	keyMeta    = "m/"
	keyPending = "p/"
	keyChunk   = "c/"
	keyUser    = "u/"
	keyTotal   = "t"

	// chunksPerCommit is how many chunks an upload writes per batch.
	chunksPerCommit = 8
)

// NewService starts serving /kinmesh/blobs/1.0.0 on h, keeping blobs in
// st's "blobs" namespace (Namespace). st must outlive the Service: close
// the Service first. At start it drops uploads a crash interrupted.
//
// Defaults (see the Option functions): the real clock; slog.Default(); no
// metrics; per uploader DefaultUploaderMaxBytes bytes and
// DefaultUploaderMaxBlobs blobs; a relay budget of DefaultRelayMaxBytes;
// per peer DefaultPutsPerMinute uploads and deletions a minute (bursts of
// DefaultPutBurst) and DefaultGetsPerMinute fetches (bursts of
// DefaultGetBurst); per source address DefaultIPUploadBytesPerHour bytes
// uploaded an hour (bursts of DefaultIPUploadBurst); DefaultMaxTracked
// peers or addresses per limiter; 10 s for a request frame, 30 s for each
// chunk.
func NewService(h host.Host, st *storage.Store, opts ...Option) (*Service, error) {
	if h == nil || st == nil {
		return nil, errors.New("blobs: NewService needs a host and a store")
	}
	s, err := newService(st, opts...)
	if err != nil {
		return nil, err
	}
	s.h = h
	h.SetStreamHandler(ID, s.handle)
	return s, nil
}

// newService builds a Service without a host (fuzz tests drive serve
// directly).
func newService(st *storage.Store, opts ...Option) (*Service, error) {
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
		store:     st,
		ns:        st.Namespace(Namespace),
		cfg:       cfg,
		log:       cfg.logger.With("component", "blobs"),
		tr:        tracer{cfg.tracer},
		putLim:    netkit.NewLimiter[string](cfg.now, cfg.putRate, cfg.putBurst, cfg.maxTracked),
		getLim:    netkit.NewLimiter[string](cfg.now, cfg.getRate, cfg.getBurst, cfg.maxTracked),
		ipLim:     netkit.NewLimiter[string](cfg.now, cfg.ipRate, cfg.ipBurst, cfg.maxTracked),
		seed:      maphash.MakeSeed(),
		inflight:  map[string]Usage{},
		uploading: map[BlobID]bool{},
		ctx:       ctx,
		cancel:    cancel,
	}
	if err := s.load(ctx); err != nil {
		cancel()
		return nil, err
	}
	s.tr.stored(s.total)
	s.budgets = netkit.KeepBudgets(st, Namespace, s.log, map[string]*netkit.Limiter[string]{"source_upload": s.ipLim})
	return s, nil
}

// load reads the relay's totals and drops uploads a crash interrupted.
func (s *Service) load(ctx context.Context) error {
	b, err := s.ns.Get(ctx, keyTotal)
	switch {
	case err == nil:
		if s.total, err = decodeUsage(b); err != nil {
			return err
		}
	case !errors.Is(err, storage.ErrNotFound):
		return fmt.Errorf("blobs: load totals: %w", err)
	}
	var stale []string
	err = s.ns.List(ctx, storage.ListOptions{Prefix: keyPending}, func(k string, _ []byte) error {
		stale = append(stale, strings.TrimPrefix(k, keyPending))
		return nil
	})
	if err != nil {
		return fmt.Errorf("blobs: list interrupted uploads: %w", err)
	}
	for _, k := range stale {
		if err := s.dropUpload(ctx, k); err != nil {
			return err
		}
	}
	if len(stale) > 0 {
		s.log.Info("dropped interrupted uploads", "count", len(stale))
	}
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
		s.budgets.Close()
	})
	return nil
}

// Usage returns what the relay stores, all uploaders together.
func (s *Service) Usage() Usage {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.total
}

func (s *Service) handle(st network.Stream) {
	src := netkit.MultiaddrSource(st.Conn().RemoteMultiaddr())
	s.streams.Handle(s.ctx, st, ServiceName, s.log, func(ctx context.Context, ns netkit.Stream, scope netkit.MemScope, remote peer.ID) error {
		return s.serve(ctx, ns, scope, remote, src)
	})
}

// serve answers the one operation a stream carries, from remote connected
// from src (netkit.MultiaddrSource).
func (s *Service) serve(ctx context.Context, st netkit.Stream, scope netkit.MemScope, remote peer.ID, src string) error {
	if err := st.SetDeadline(time.Now().Add(s.cfg.requestTimeout)); err != nil {
		return err
	}
	rd := wire.NewReader(st)
	b, err := rd.ReadBytes(maxRequestFrame)
	if err != nil {
		if errors.Is(err, wire.ErrTooLarge) {
			s.tr.request("unknown", CodeTooLarge, 0)
			return s.reply(st, response{code: CodeTooLarge})
		}
		return err
	}
	req, code := decodeRequest(b)
	if code != CodeOK {
		s.tr.request(req.kind.String(), code, 0)
		return s.reply(st, response{code: code})
	}
	switch req.kind {
	case reqPut:
		return s.put(ctx, st, rd, scope, remote, src, req)
	case reqGet:
		return s.get(ctx, st, remote, req)
	case reqDelete:
		if ok, wait := s.putLim.Take(string(remote)); !ok {
			s.tr.request("delete", CodeRateLimited, 0)
			return s.reply(st, response{code: CodeRateLimited, retryAfter: wait})
		}
		code := CodeOf(s.DeleteSigned(ctx, req.id, req.sig))
		s.tr.request("delete", code, 0)
		return s.reply(st, response{code: code})
	case reqHas:
		return s.has(ctx, st, remote, req)
	}
	return s.reply(st, response{code: CodeMalformed})
}

func (s *Service) reply(st netkit.Stream, r response) error {
	return wire.Write(st, encodeResponse(r), maxResponseFrame)
}

func (s *Service) lock(id BlobID) *sync.Mutex {
	return &s.locks[maphash.Bytes(s.seed, id[:])%uint64(len(s.locks))]
}

func (s *Service) key(id BlobID) string { return s.ns.Opaque(id[:]) }

func chunkKey(k string, i int) string { return fmt.Sprintf("%s%s/%04x", keyChunk, k, i) }

func (s *Service) loadMeta(ctx context.Context, k string) (meta, bool, error) {
	b, err := s.ns.Get(ctx, keyMeta+k)
	if errors.Is(err, storage.ErrNotFound) {
		return meta{}, false, nil
	}
	if err != nil {
		return meta{}, false, err
	}
	m, err := decodeMeta(b)
	return m, err == nil, err
}

// loadUsage reads an uploader's usage. Called with mu held.
func (s *Service) loadUsage(ctx context.Context, uploader string) (Usage, error) {
	b, err := s.ns.Get(ctx, keyUser+uploader)
	if errors.Is(err, storage.ErrNotFound) {
		return Usage{}, nil
	}
	if err != nil {
		return Usage{}, err
	}
	return decodeUsage(b)
}

// claim checks that id is neither stored nor being uploaded, and reserves
// size bytes of the uploader's quota, of the relay's budget and of the
// upload budget of src, the uploader's address. With CodeRateLimited it
// returns when src may upload size bytes again. Anything but CodeOK
// reserves nothing.
func (s *Service) claim(ctx context.Context, id BlobID, k, uploader, src string, size uint64) (Code, time.Duration, error) {
	l := s.lock(id)
	l.Lock()
	defer l.Unlock()
	m, ok, err := s.loadMeta(ctx, k)
	if err != nil {
		return CodeUnavailable, 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.uploading[id]:
		return CodeUnavailable, 0, nil
	case ok && m.complete:
		return CodeExists, 0, nil
	case ok:
		return CodeUnavailable, 0, nil // an upload the crash sweep will drop
	}
	u, err := s.loadUsage(ctx, uploader)
	if err != nil {
		return CodeUnavailable, 0, err
	}
	in := s.inflight[uploader]
	if u.Bytes+in.Bytes+size > s.cfg.uploaderBytes || u.Blobs+in.Blobs+1 > s.cfg.uploaderBlobs {
		return CodeQuota, 0, nil
	}
	if s.total.Bytes+s.reserved+size > s.cfg.relayBytes || s.store.LowOnSpace() {
		return CodeRelayFull, 0, nil
	}
	// Last, so that a refused upload takes nothing of the address's
	// budget; put gives it back if the upload fails.
	if ok, wait := s.ipLim.TakeN(src, int(size/ChunkSize)); !ok {
		return CodeRateLimited, wait, nil
	}
	s.inflight[uploader] = Usage{Bytes: in.Bytes + size, Blobs: in.Blobs + 1}
	s.reserved += size
	s.uploading[id] = true
	return CodeOK, 0, nil
}

// unclaim releases what claim reserved.
func (s *Service) unclaim(id BlobID, uploader string, size uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.release(id, uploader, size)
}

// release is unclaim with mu held.
func (s *Service) release(id BlobID, uploader string, size uint64) {
	in := s.inflight[uploader]
	in.Bytes -= size
	in.Blobs--
	if in.Blobs == 0 {
		delete(s.inflight, uploader)
	} else {
		s.inflight[uploader] = in
	}
	s.reserved -= size
	delete(s.uploading, id)
}

// put receives an upload from remote, connected from src: claim, chunks
// checked one by one against their hashes, then the record that makes the
// blob visible, in one synced batch with the uploader's usage and the
// relay's totals. An upload that fails gives back what its claim took.
func (s *Service) put(ctx context.Context, st netkit.Stream, rd *wire.Reader, scope netkit.MemScope, remote peer.ID, src string, req request) error {
	if ok, wait := s.putLim.Take(string(remote)); !ok {
		s.tr.request("put", CodeRateLimited, 0)
		return s.reply(st, response{code: CodeRateLimited, retryAfter: wait})
	}
	k := s.key(req.id)
	uploader := s.ns.Opaque([]byte(remote))
	n := len(req.hashes)
	size := uint64(n) * ChunkSize
	code, wait, err := s.claim(ctx, req.id, k, uploader, src, size)
	if err != nil {
		s.log.Warn("put: claim", "err", err)
	}
	if code != CodeOK {
		if code == CodeRateLimited {
			s.tr.ipLimited()
		}
		s.tr.request("put", code, 0)
		return s.reply(st, response{code: code, retryAfter: wait})
	}
	// An upload that doesn't commit gives its reservation back before
	// the answer goes out, so that the uploader's retry finds it free.
	done := false
	release := func() {
		if !done {
			done = true
			s.unclaim(req.id, uploader, size)
			s.ipLim.Refund(src, int(size/ChunkSize))
		}
	}
	defer release()
	m := meta{hashes: req.hashes, deleteKey: req.deleteKey, uploader: uploader, created: s.cfg.now()}
	b := s.store.NewBatch()
	_ = b.Put(s.ns, keyMeta+k, m.encode())
	_ = b.Put(s.ns, keyPending+k, nil)
	if err := b.CommitUnsynced(ctx); err != nil {
		s.log.Warn("put: record upload", "err", err)
		s.tr.request("put", CodeUnavailable, 0)
		release()
		return s.reply(st, response{code: CodeUnavailable})
	}
	code, err = s.receive(ctx, st, rd, scope, k, m, n)
	if code != CodeOK || err != nil {
		if derr := s.dropUpload(context.WithoutCancel(ctx), k); derr != nil {
			s.log.Warn("put: drop failed upload", "err", derr)
		}
		release()
		if err != nil {
			s.tr.request("put", CodeUnavailable, 0)
			return err
		}
		s.tr.request("put", code, 0)
		return s.reply(st, response{code: code})
	}
	s.tr.request("put", CodeOK, int(size))
	u, err := s.commitPut(ctx, req.id, k, m)
	if err != nil {
		s.log.Warn("put: commit", "err", err)
		_ = s.dropUpload(context.WithoutCancel(ctx), k)
		release()
		return s.reply(st, response{code: CodeUnavailable})
	}
	done = true // commitPut took the reservation over
	return s.reply(st, response{code: CodeOK, usage: &u})
}

// receive tells the client to send, and stores the n chunks it sends.
// A code other than CodeOK is the client's fault; an error the stream's.
func (s *Service) receive(ctx context.Context, st netkit.Stream, rd *wire.Reader, scope netkit.MemScope, k string, m meta, n int) (Code, error) {
	if err := s.reply(st, response{code: CodeOK}); err != nil {
		return CodeOK, err
	}
	if scope != nil {
		if err := scope.ReserveMemory(maxChunkFrame, network.ReservationPriorityMedium); err != nil {
			return CodeUnavailable, nil
		}
		defer scope.ReleaseMemory(maxChunkFrame)
	}
	b := s.store.NewBatch()
	for i := range n {
		if err := st.SetDeadline(time.Now().Add(s.cfg.chunkTimeout)); err != nil {
			return CodeOK, err
		}
		frame, err := rd.ReadBytes(maxChunkFrame)
		if err != nil {
			if errors.Is(err, wire.ErrTooLarge) {
				return CodeMalformed, nil
			}
			return CodeOK, err
		}
		data, code := decodeChunk(frame, i)
		if code != CodeOK {
			return code, nil
		}
		if sha256.Sum256(data) != m.hashes[i] {
			return CodeCorrupt, nil
		}
		if err := b.Put(s.ns, chunkKey(k, i), data); err != nil {
			return CodeUnavailable, nil
		}
		if b.Len() >= chunksPerCommit || i == n-1 {
			if err := b.CommitUnsynced(ctx); err != nil {
				s.log.Warn("put: store chunks", "err", err)
				return CodeUnavailable, nil
			}
			b = s.store.NewBatch()
		}
	}
	return CodeOK, st.SetDeadline(time.Now().Add(s.cfg.requestTimeout))
}

// commitPut makes an uploaded blob visible and counts it, in one synced
// batch (which also syncs the chunks written before). The upload's claim
// turns into usage under the same lock, before the uploader hears OK, so
// its next upload never sees the blob counted twice.
func (s *Service) commitPut(ctx context.Context, id BlobID, k string, m meta) (Usage, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	u, err := s.loadUsage(ctx, m.uploader)
	if err != nil {
		return Usage{}, err
	}
	u.Bytes += m.size()
	u.Blobs++
	total := Usage{Bytes: s.total.Bytes + m.size(), Blobs: s.total.Blobs + 1}
	m.complete = true
	b := s.store.NewBatch()
	_ = b.Put(s.ns, keyMeta+k, m.encode())
	_ = b.Delete(s.ns, keyPending+k)
	_ = b.Put(s.ns, keyUser+m.uploader, encodeUsage(u))
	_ = b.Put(s.ns, keyTotal, encodeUsage(total))
	if err := b.Commit(ctx); err != nil {
		return Usage{}, err
	}
	s.total = total
	s.release(id, m.uploader, m.size())
	s.tr.stored(total)
	return u, nil
}

// dropUpload deletes an incomplete upload: its chunks, record and marker.
func (s *Service) dropUpload(ctx context.Context, k string) error {
	m, ok, err := s.loadMeta(ctx, k)
	if err != nil && !errors.Is(err, ErrMalformed) {
		return fmt.Errorf("blobs: drop upload: %w", err)
	}
	n := MaxChunks
	if ok {
		if m.complete {
			return s.ns.Delete(ctx, keyPending+k)
		}
		n = len(m.hashes)
	}
	b := s.store.NewBatch()
	for i := range n {
		_ = b.Delete(s.ns, chunkKey(k, i))
	}
	_ = b.Delete(s.ns, keyMeta+k)
	_ = b.Delete(s.ns, keyPending+k)
	if err := b.CommitUnsynced(ctx); err != nil {
		return fmt.Errorf("blobs: drop upload: %w", err)
	}
	return nil
}

// get streams a blob: its chunk hashes, then its chunks from req.from on.
func (s *Service) get(ctx context.Context, st netkit.Stream, remote peer.ID, req request) error {
	if ok, wait := s.getLim.Take(string(remote)); !ok {
		s.tr.request("get", CodeRateLimited, 0)
		return s.reply(st, response{code: CodeRateLimited, retryAfter: wait})
	}
	k := s.key(req.id)
	m, ok, err := s.loadMeta(ctx, k)
	if err != nil {
		s.log.Warn("get: load record", "err", err)
		s.tr.request("get", CodeUnavailable, 0)
		return s.reply(st, response{code: CodeUnavailable})
	}
	if !ok || !m.complete {
		s.tr.request("get", CodeNotFound, 0)
		return s.reply(st, response{code: CodeNotFound})
	}
	if int(req.from) >= len(m.hashes) {
		s.tr.request("get", CodeMalformed, 0)
		return s.reply(st, response{code: CodeMalformed})
	}
	if err := s.reply(st, response{code: CodeOK, hashes: m.hashes}); err != nil {
		return err
	}
	sent := 0
	for i := int(req.from); i < len(m.hashes); i++ {
		data, err := s.ns.Get(ctx, chunkKey(k, i))
		if err != nil {
			s.tr.request("get", CodeUnavailable, sent)
			return fmt.Errorf("chunk %d: %w", i, err) // deleted meanwhile, or the store failed
		}
		if err := st.SetDeadline(time.Now().Add(s.cfg.chunkTimeout)); err != nil {
			return err
		}
		if err := wire.Write(st, encodeChunk(i, data), maxChunkFrame); err != nil {
			return err
		}
		sent += len(data)
	}
	s.tr.request("get", CodeOK, sent)
	return nil
}

func (s *Service) has(ctx context.Context, st netkit.Stream, remote peer.ID, req request) error {
	if ok, wait := s.getLim.Take(string(remote)); !ok {
		s.tr.request("has", CodeRateLimited, 0)
		return s.reply(st, response{code: CodeRateLimited, retryAfter: wait})
	}
	present := make([]bool, len(req.ids))
	for i, id := range req.ids {
		m, ok, err := s.loadMeta(ctx, s.key(id))
		if err != nil {
			s.tr.request("has", CodeUnavailable, 0)
			return s.reply(st, response{code: CodeUnavailable})
		}
		present[i] = ok && m.complete
	}
	s.tr.request("has", CodeOK, 0)
	return s.reply(st, response{code: CodeOK, present: present})
}

// DeleteSigned deletes blob id if sig is a deletion proof under the key
// registered with its upload (SignDelete), and frees its bytes from the
// uploader's quota and the relay's budget, in one synced batch. It is how
// the stream protocol deletes, and how other relay services act on proofs
// they received (a moment's tombstone carries its media's proofs). Errors
// wrap ErrNotFound, ErrUnauthorized or ErrUnavailable (also while the blob
// is being uploaded).
func (s *Service) DeleteSigned(ctx context.Context, id BlobID, sig []byte) error {
	l := s.lock(id)
	l.Lock()
	defer l.Unlock()
	k := s.key(id)
	m, ok, err := s.loadMeta(ctx, k)
	if err != nil {
		return fmt.Errorf("blobs: delete %s: %w: %w", id, ErrUnavailable, err)
	}
	if !ok {
		return fmt.Errorf("blobs: delete %s: %w", id, ErrNotFound)
	}
	if !m.complete {
		return fmt.Errorf("blobs: delete %s: being uploaded: %w", id, ErrUnavailable)
	}
	if !VerifyDelete(m.deleteKey, id, sig) {
		return fmt.Errorf("blobs: delete %s: %w", id, ErrUnauthorized)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	u, err := s.loadUsage(ctx, m.uploader)
	if err != nil {
		return fmt.Errorf("blobs: delete %s: %w: %w", id, ErrUnavailable, err)
	}
	size := m.size()
	u.Bytes -= min(u.Bytes, size)
	u.Blobs -= min(u.Blobs, 1)
	total := Usage{Bytes: s.total.Bytes - min(s.total.Bytes, size), Blobs: s.total.Blobs - min(s.total.Blobs, 1)}
	b := s.store.NewBatch()
	for i := range m.hashes {
		_ = b.Delete(s.ns, chunkKey(k, i))
	}
	_ = b.Delete(s.ns, keyMeta+k)
	if u.Blobs == 0 {
		_ = b.Delete(s.ns, keyUser+m.uploader)
	} else {
		_ = b.Put(s.ns, keyUser+m.uploader, encodeUsage(u))
	}
	_ = b.Put(s.ns, keyTotal, encodeUsage(total))
	if err := b.Commit(ctx); err != nil {
		return fmt.Errorf("blobs: delete %s: %w: %w", id, ErrUnavailable, err)
	}
	s.total = total
	s.tr.stored(total)
	return nil
}
