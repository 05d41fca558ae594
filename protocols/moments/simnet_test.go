package moments

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/p2p/transport/quicreuse"
	"github.com/marcopolo/simnet"
	"github.com/quic-go/quic-go"
	"go.uber.org/fx"
)

// Propagation on go-libp2p's simulated network (github.com/marcopolo/simnet,
// the network under go-libp2p's x/simlibp2p) in virtual time
// (testing/synctest): real QUIC and gossipsub, every packet crossing a
// 25 ms link, deterministic, and no CPU cost counted. It runs in
// `make test-long` only (KINMESH_LONG=1): 2 × 500 nodes take minutes of
// real time.

// sourceIP is quicreuse's source-address selector for a simnet endpoint.
type sourceIP struct{ ip atomic.Pointer[net.IP] }

func (s *sourceIP) PreferredSourceIPForDestination(*net.UDPAddr) (net.IP, error) {
	return *s.ip.Load(), nil
}

// quicSimnet makes a host's QUIC transport speak through a simnet
// endpoint (as go-libp2p's x/simlibp2p.QUICSimnet does; that package is
// not used because it pulls testify into the build).
func quicSimnet(nw *simnet.Simnet, link simnet.NodeBiDiLinkSettings) libp2p.Option {
	sel := &sourceIP{}
	opts := []quicreuse.Option{
		quicreuse.OverrideSourceIPSelector(func() (quicreuse.SourceIPSelector, error) { return sel, nil }),
		quicreuse.OverrideListenUDP(func(_ string, addr *net.UDPAddr) (net.PacketConn, error) {
			sel.ip.Store(&addr.IP)
			return nw.NewEndpoint(addr, link), nil
		}),
	}
	return libp2p.QUICReuse(func(l fx.Lifecycle, reset quic.StatelessResetKey, token quic.TokenGeneratorKey, opts ...quicreuse.Option) (*quicreuse.ConnManager, error) {
		cm, err := quicreuse.NewConnManager(reset, token, opts...)
		if err != nil {
			return nil, err
		}
		l.Append(fx.StopHook(cm.Close))
		return cm, nil
	}, opts...)
}

func simHost(tb testing.TB, nw *simnet.Simnet, i int) host.Host {
	link := simnet.NodeBiDiLinkSettings{
		Downlink: simnet.LinkSettings{BitsPerSecond: 20 * simnet.Mibps},
		Uplink:   simnet.LinkSettings{BitsPerSecond: 20 * simnet.Mibps},
	}
	h, err := libp2p.New(
		libp2p.ListenAddrStrings(fmt.Sprintf("/ip4/%s/udp/8000/quic-v1", simnet.IntToPublicIPv4(i))),
		quicSimnet(nw, link),
		libp2p.DisableIdentifyAddressDiscovery(),
		libp2p.ResourceManager(&network.NullResourceManager{}),
		libp2p.DisableMetrics(),
	)
	if err != nil {
		tb.Fatal(err)
	}
	return h
}

// TestPropagationSimnet500: a moment to 500 nodes on the simulated network
// with 25 ms links, moments' router against raw gossipsub on the same
// topology; the goal is a p50 and p99 at most 1.2 times raw gossipsub's.
func TestPropagationSimnet500(t *testing.T) {
	if os.Getenv("KINMESH_LONG") == "" {
		t.Skip("500 simulated nodes: set KINMESH_LONG=1 (make test-long)")
	}
	n := 500
	if s := os.Getenv("KINMESH_SIM_NODES"); s != "" {
		fmt.Sscan(s, &n)
	}
	synctest.Test(t, func(t *testing.T) {
		nw := &simnet.Simnet{LatencyFunc: simnet.StaticLatency(25 * time.Millisecond), Logger: slog.New(slog.DiscardHandler)}
		nw.Start()
		defer nw.Close()
		next := 0
		base, ours := runPropagation(t, context.Background(), func(int) host.Host {
			next++
			return simHost(t, nw, next)
		}, n, 20)
		ratio50 := float64(ours[0]) / float64(base[0])
		ratio99 := float64(ours[1]) / float64(base[1])
		t.Logf("%d nodes, 25 ms links (virtual time): gossipsub p50 %v p99 %v; moments p50 %v p99 %v; ratios %.2f and %.2f",
			n, base[0], base[1], ours[0], ours[1], ratio50, ratio99)
		if ratio50 > 1.2 || ratio99 > 1.2 {
			t.Errorf("moments propagation is more than 1.2 times raw gossipsub's (p50 %.2f, p99 %.2f)", ratio50, ratio99)
		}
	})
}
