// Package netkit is the libp2p plumbing that kinmesh's two kinds of host —
// the device node and the bootstrap relay — share: the persisted host key,
// the transports, the kinmesh DHT's protocol prefix, and parsing of
// bootstrap multiaddrs into dialable peers with errors a person can act on,
// and the inbound-stream lifecycle every protocol service uses (Streams:
// charge the stream to the service, reset it on shutdown, close or reset
// it after serving, and let Close wait for the running handlers), the
// per-key token-bucket Limiter every protocol's rate limits use, and
// Budgets, which keeps a relay's long-running limiters in its store across
// restarts.
//
// It holds no protocol of its own.
package netkit

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
	quic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/kinmesh/kinmesh/storage"
)

// DHTPrefix is the protocol prefix of kinmesh's own Kademlia DHT. It keeps
// kinmesh hosts out of the public IPFS DHT (/ipfs/kad/1.0.0): relays serve
// /kinmesh/kad/1.0.0 and devices query it.
const DHTPrefix = "/kinmesh"

// hostKeyName is the key under which a host's libp2p private key is kept.
const hostKeyName = "p2p-host-key"

// ErrBadAddr means a multiaddr given by the user could not be used.
var ErrBadAddr = errors.New("bad multiaddr")

// HostKey loads the host's libp2p key from ns, creating and storing an
// Ed25519 key on first use. The key names the host on the network (its peer
// id); it is deliberately not the account identity, so relays that see
// connections can't read an account from them.
func HostKey(ctx context.Context, ns *storage.Namespace) (crypto.PrivKey, error) {
	b, err := ns.Get(ctx, hostKeyName)
	switch {
	case err == nil:
		k, err := crypto.UnmarshalPrivateKey(b)
		if err != nil {
			return nil, fmt.Errorf("load host key: %w", err)
		}
		return k, nil
	case !errors.Is(err, storage.ErrNotFound):
		return nil, fmt.Errorf("load host key: %w", err)
	}
	k, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		return nil, fmt.Errorf("generate host key: %w", err)
	}
	b, err = crypto.MarshalPrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("marshal host key: %w", err)
	}
	if err := ns.Put(ctx, hostKeyName, b); err != nil {
		return nil, fmt.Errorf("store host key: %w", err)
	}
	return k, nil
}

// Transports returns the options every kinmesh host uses: TCP and QUIC,
// Noise, yamux.
func Transports() libp2p.Option {
	return libp2p.ChainOptions(
		libp2p.Transport(tcp.NewTCPTransport),
		libp2p.Transport(quic.NewTransport),
		libp2p.Security(noise.ID, noise.New),
		libp2p.Muxer(yamux.ID, yamux.DefaultTransport),
	)
}

// ParseListen checks listen multiaddrs.
func ParseListen(addrs []string) ([]ma.Multiaddr, error) {
	out := make([]ma.Multiaddr, 0, len(addrs))
	for _, s := range addrs {
		a, err := ma.NewMultiaddr(strings.TrimSpace(s))
		if err != nil {
			return nil, fmt.Errorf("listen address %q: %w (want e.g. /ip4/0.0.0.0/tcp/4001)", s, ErrBadAddr)
		}
		out = append(out, a)
	}
	return out, nil
}

// ParsePeers turns multiaddrs ending in /p2p/<peer id> into peers, merging
// several addresses of one peer. The error names the bad address and what a
// good one looks like.
func ParsePeers(addrs []string) ([]peer.AddrInfo, error) {
	var out []peer.AddrInfo
	index := map[peer.ID]int{}
	for _, s := range addrs {
		a, err := ma.NewMultiaddr(strings.TrimSpace(s))
		if err != nil {
			return nil, fmt.Errorf("peer address %q: %w (want e.g. /ip4/198.18.0.1/tcp/4001/p2p/12D3Koo…)", s, ErrBadAddr)
		}
		ai, err := peer.AddrInfoFromP2pAddr(a)
		if err != nil {
			return nil, fmt.Errorf("peer address %q: %w: it must end in /p2p/<peer id>, as printed by the relay's /healthz", s, ErrBadAddr)
		}
		if i, ok := index[ai.ID]; ok {
			out[i].Addrs = append(out[i].Addrs, ai.Addrs...)
			continue
		}
		index[ai.ID] = len(out)
		out = append(out, *ai)
	}
	return out, nil
}

// P2PAddrs returns each of addrs with /p2p/<id> appended, the form other
// hosts (and --bootstrap flags) take.
func P2PAddrs(id peer.ID, addrs []ma.Multiaddr) []string {
	out := make([]string, 0, len(addrs))
	suffix := ma.StringCast("/p2p/" + id.String())
	for _, a := range addrs {
		out = append(out, a.Encapsulate(suffix).String())
	}
	return out
}

// Version is kinmesh's version, reported in libp2p's identify user agent and
// by `kinmesh version`. Release builds set it with
// -ldflags "-X github.com/kinmesh/kinmesh/protocols/netkit.Version=…".
var Version = "0.1.0-dev"
