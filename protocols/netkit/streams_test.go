package netkit

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/core/protocol"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("github.com/ipfs/go-log/v2/writer.(*MirrorWriter).logRoutine"),
		goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"),
		goleak.IgnoreAnyFunction("github.com/libp2p/go-libp2p/p2p/transport/quicreuse.(*reuse).gc"),
	)
}

const (
	testProto   = protocol.ID("/kinmesh/netkit-test/1.0.0")
	testService = "kinmesh.netkit-test"
)

func newTestHost(t *testing.T, opts ...libp2p.Option) host.Host {
	t.Helper()
	opts = append([]libp2p.Option{libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableMetrics()}, opts...)
	h, err := libp2p.New(opts...)
	if err != nil {
		t.Fatalf("libp2p.New: %v", err)
	}
	t.Cleanup(func() { _ = h.Close() })
	return h
}

// open opens a stream from a new client host to server and sends a line,
// so the server's handler runs.
func open(t *testing.T, server host.Host) network.Stream {
	t.Helper()
	client := newTestHost(t)
	client.Peerstore().AddAddrs(server.ID(), server.Addrs(), peerstore.PermanentAddrTTL)
	st, err := client.NewStream(t.Context(), server.ID(), testProto)
	if err != nil {
		t.Fatalf("NewStream: %v", err)
	}
	t.Cleanup(func() { _ = st.Reset() })
	if err := st.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Write([]byte("ping\n")); err != nil {
		t.Fatalf("write: %v", err)
	}
	return st
}

// echo answers the line it reads and checks the stream is charged to
// testService.
func echo(rm network.ResourceManager) ServeFunc {
	return func(_ context.Context, st Stream, _ MemScope, _ peer.ID) error {
		line, err := bufio.NewReader(st).ReadString('\n')
		if err != nil {
			return err
		}
		var inbound int
		_ = rm.ViewService(testService, func(s network.ServiceScope) error {
			inbound = s.Stat().NumStreamsInbound
			return nil
		})
		if inbound != 1 {
			return errors.New("stream not charged to the service")
		}
		_, err = st.Write([]byte(line))
		return err
	}
}

func TestStreamsHandle(t *testing.T) {
	errServe := errors.New("serve failed")
	tests := []struct {
		name      string
		serve     func(rm network.ResourceManager) ServeFunc
		wantReply string
		wantReset bool
	}{
		{"served: closed", echo, "ping\n", false},
		{"serve failed: reset", func(network.ResourceManager) ServeFunc {
			return func(context.Context, Stream, MemScope, peer.ID) error { return errServe }
		}, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			server := newTestHost(t)
			var g Streams
			serve := tt.serve(server.Network().ResourceManager())
			server.SetStreamHandler(testProto, func(st network.Stream) {
				g.Handle(t.Context(), st, testService, slog.New(slog.DiscardHandler), serve)
			})
			st := open(t, server)
			got, err := io.ReadAll(st)
			if string(got) != tt.wantReply {
				t.Errorf("got reply %q, want %q", got, tt.wantReply)
			}
			if gotReset := errors.Is(err, network.ErrReset); gotReset != tt.wantReset || (err != nil && !gotReset) {
				t.Errorf("got read error %v, want reset %v", err, tt.wantReset)
			}
			g.Close()
			g.Wait()
		})
	}
}

func TestStreamsCloseResetsAndWaits(t *testing.T) {
	server := newTestHost(t)
	var g Streams
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	started := make(chan struct{})
	var served atomic.Int32
	server.SetStreamHandler(testProto, func(st network.Stream) {
		g.Handle(ctx, st, testService, nil, func(ctx context.Context, _ Stream, _ MemScope, _ peer.ID) error {
			served.Add(1)
			close(started)
			<-ctx.Done()
			return ctx.Err()
		})
	})
	running := open(t, server)
	<-started

	g.Close()
	if !g.Closed() {
		t.Fatal("got Closed false after Close, want true")
	}
	late := open(t, server)
	if _, err := io.ReadAll(late); !errors.Is(err, network.ErrReset) {
		t.Errorf("stream opened after Close: got read error %v, want a reset", err)
	}

	cancel()
	g.Wait()
	if _, err := io.ReadAll(running); !errors.Is(err, network.ErrReset) {
		t.Errorf("stream served at Close: got read error %v, want a reset", err)
	}
	if n := served.Load(); n != 1 {
		t.Errorf("got %d streams served, want 1", n)
	}
}

func TestStreamsEnter(t *testing.T) {
	var g Streams
	if !g.Enter() {
		t.Fatal("got Enter false on a new Streams, want true")
	}
	g.Close()
	g.Close() // twice is fine
	if g.Enter() {
		t.Fatal("got Enter true after Close, want false")
	}
	waited := make(chan struct{})
	go func() {
		g.Wait()
		close(waited)
	}()
	g.Leave()
	<-waited
}

func TestServeStreamRefusedByResourceManager(t *testing.T) {
	limits := rcmgr.PartialLimitConfig{
		Service: map[string]rcmgr.ResourceLimits{
			testService: {Streams: rcmgr.BlockAllLimit, StreamsInbound: rcmgr.BlockAllLimit},
		},
	}.Build(rcmgr.DefaultLimits.AutoScale())
	rm, err := rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(limits))
	if err != nil {
		t.Fatal(err)
	}
	server := newTestHost(t, libp2p.ResourceManager(rm))
	var served atomic.Int32
	server.SetStreamHandler(testProto, func(st network.Stream) {
		ServeStream(t.Context(), st, testService, nil, func(context.Context, Stream, MemScope, peer.ID) error {
			served.Add(1)
			return nil
		})
	})
	st := open(t, server)
	if _, err := io.ReadAll(st); !errors.Is(err, network.ErrReset) {
		t.Errorf("got read error %v, want a reset", err)
	}
	if n := served.Load(); n != 0 {
		t.Errorf("got %d streams served, want 0", n)
	}
}
