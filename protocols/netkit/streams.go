package netkit

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Stream is what a protocol's server needs of an inbound stream; fuzz
// tests drive a server over in-memory buffers that have just this.
type Stream interface {
	io.Reader
	io.Writer
	SetDeadline(time.Time) error
}

// MemScope is what a server needs of a stream's resource scope to reserve
// memory for a large frame; nil means no accounting.
type MemScope interface {
	ReserveMemory(size int, prio uint8) error
	ReleaseMemory(size int)
}

// ServeFunc serves one inbound stream: st is the stream, scope its
// resource scope and remote the peer that opened it. An error resets the
// stream; nil closes it.
type ServeFunc func(ctx context.Context, st Stream, scope MemScope, remote peer.ID) error

// Streams tracks a service's inbound stream handlers, so that the
// service's Close can refuse new streams, cancel the context the running
// ones are served under (which resets them) and wait for them, in that
// order:
//
//	s.streams.Close()
//	s.h.RemoveStreamHandler(ID)
//	s.cancel()
//	s.streams.Wait()
//
// The zero value admits handlers.
type Streams struct {
	mu     sync.Mutex // guards closed, and orders every Add before Wait
	closed bool
	wg     sync.WaitGroup
}

// Enter registers a handler run (or any goroutine the service's Close
// must wait for); it returns false once Close has been called. Every true
// must be matched by a Leave.
func (g *Streams) Enter() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return false
	}
	g.wg.Add(1)
	return true
}

// Leave ends a run registered by Enter.
func (g *Streams) Leave() { g.wg.Done() }

// Handle is a whole stream handler: it resets st once Close has been
// called, and otherwise serves it with ServeStream as a registered run.
func (g *Streams) Handle(ctx context.Context, st network.Stream, service string, log *slog.Logger, serve ServeFunc) {
	if !g.Enter() {
		_ = st.Reset()
		return
	}
	defer g.Leave()
	ServeStream(ctx, st, service, log, serve)
}

// Close refuses new handlers: from now on Enter returns false and Handle
// resets the stream. It does not wait for the running ones (Wait does),
// so the service can cancel them in between. It is safe to call more
// than once.
func (g *Streams) Close() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.closed = true
}

// Closed reports whether Close has been called.
func (g *Streams) Closed() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.closed
}

// Wait waits for the runs registered by Enter to Leave. Call it after
// Close, or new runs may keep it waiting.
func (g *Streams) Wait() { g.wg.Wait() }

// ServeStream serves st with serve on behalf of service: it charges st to
// service in the resource manager (a refusal resets st), resets st when
// ctx ends, and after serve resets st if serve failed, else closes it. A
// non-nil log gets the refusal and serve's error at debug level.
func ServeStream(ctx context.Context, st network.Stream, service string, log *slog.Logger, serve ServeFunc) {
	if err := st.Scope().SetService(service); err != nil {
		if log != nil {
			log.Debug("stream refused by resource manager", "err", err)
		}
		_ = st.Reset()
		return
	}
	stop := context.AfterFunc(ctx, func() { _ = st.Reset() })
	defer stop()
	remote := st.Conn().RemotePeer()
	if err := serve(ctx, st, st.Scope(), remote); err != nil {
		if log != nil {
			log.Debug("stream ended", "peer", remote, "err", err)
		}
		_ = st.Reset()
		return
	}
	_ = st.Close()
}
