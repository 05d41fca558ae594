package turn

import (
	"errors"
	"fmt"
	"net"
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
)

// TestPeerShare: one peer asking for credentials for many throwaway
// accounts gets no more allocations than its peer share, and another peer
// still gets one, though the relay's cap is twice the peer share.
func TestPeerShare(t *testing.T) {
	s := startServer(t, WithMaxAllocations(2*DefaultPeerAllocations))
	ctx := testCtx(t)
	h := newHost(t) // the one peer, with a fresh account key every time
	h.Peerstore().AddAddrs(s.h.ID(), s.h.Addrs(), peerstore.PermanentAddrTTL)
	opened, refused := 0, 0
	for range DefaultIssueBurst {
		c, err := NewClient(h, newAccount(t))
		if err != nil {
			t.Fatal(err)
		}
		cr, err := c.Credentials(ctx, s.h.ID())
		if err != nil {
			t.Fatalf("credentials for a fresh account: %v", err)
		}
		for range 2 {
			_, done, err := allocate(t, s, cr.Username, cr.Password)
			if err != nil {
				refused++
				continue
			}
			t.Cleanup(done)
			opened++
		}
	}
	if opened != DefaultPeerAllocations || refused != 2*DefaultIssueBurst-DefaultPeerAllocations {
		t.Fatalf("one peer with %d accounts opened %d allocations (%d refused), want its share of %d", DefaultIssueBurst, opened, refused, DefaultPeerAllocations)
	}
	cr, err := newClient(t, s, newAccount(t)).Credentials(ctx, s.h.ID())
	if err != nil {
		t.Fatal(err)
	}
	_, done, err := allocate(t, s, cr.Username, cr.Password)
	if err != nil {
		t.Fatalf("another peer's allocation: %v", err)
	}
	t.Cleanup(done)
	if st := s.Stats(); st.Allocations != DefaultPeerAllocations+1 || st.Peers != 2 || st.Accounts != DefaultPeerAllocations/2+1 {
		t.Errorf("stats %+v: want %d allocations of 2 peers and %d accounts", st, DefaultPeerAllocations+1, DefaultPeerAllocations/2+1)
	}
}

// TestIPShare: clients from one IP address get no more allocations than
// the IP share, whatever peers and accounts their credentials are for;
// a client from another address still gets one.
func TestIPShare(t *testing.T) {
	s := startServer(t, WithIPQuota(3, DefaultIPBandwidth))
	opened := 0
	for i := range 5 {
		cr := s.IssueFor(accountKey(t, newAccount(t)), peer.ID(fmt.Sprintf("device-%d", i)))
		if _, done, err := allocate(t, s, cr.Username, cr.Password); err == nil {
			t.Cleanup(done)
			opened++
		}
	}
	if opened != 3 {
		t.Fatalf("5 peers from one address opened %d allocations, want the IP share of 3", opened)
	}
	cr := s.IssueFor(accountKey(t, newAccount(t)), peer.ID("elsewhere"))
	_, _, done, err := allocateFrom(t, s, "127.0.0.2", cr.Username, cr.Password)
	if err != nil {
		t.Fatalf("a client from another address: %v", err)
	}
	t.Cleanup(done)
	if st := s.Stats(); st.Allocations != 4 || st.Sources != 2 {
		t.Errorf("stats %+v: want 4 allocations from 2 sources", st)
	}
}

// TestPeerBandwidthShare: the accounts of one peer share its bandwidth.
func TestPeerBandwidthShare(t *testing.T) {
	s := startServer(t, WithPeerQuota(8, 10_000), allowLoopback)
	dev := peer.ID("device")
	sink, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	pkt := make([]byte, 1000)
	for range 2 { // two accounts, 25 kB each at once, against 10 kB/s for the peer
		cr := s.IssueFor(accountKey(t, newAccount(t)), dev)
		relay, done, err := allocate(t, s, cr.Username, cr.Password)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(done)
		for range 25 {
			if _, err := relay.WriteTo(pkt, sink.LocalAddr()); err != nil {
				t.Fatal(err)
			}
		}
	}
	waitFor(t, func() bool {
		st := s.Stats()
		return st.RelayedBytes+st.DroppedBytes >= 50_000
	}, "all 50 packets to be relayed or dropped")
	if st := s.Stats(); st.RelayedBytes > 12_000 || st.DroppedBytes < 38_000 {
		t.Fatalf("relayed %d, dropped %d bytes: want at most ~10 kB through for the peer", st.RelayedBytes, st.DroppedBytes)
	}
}

// TestCredentialsPerIP: peers connecting from one address share a
// credential request budget, so fresh peer ids don't buy fresh requests.
func TestCredentialsPerIP(t *testing.T) {
	s := startServer(t, WithIPIssueRate(60, 3))
	ctx := testCtx(t)
	for i := range 4 {
		_, err := newClient(t, s, newAccount(t)).Credentials(ctx, s.h.ID())
		switch {
		case i < 3 && err != nil:
			t.Fatalf("peer %d: %v", i, err)
		case i == 3 && !errors.Is(err, ErrRateLimited):
			t.Fatalf("a 4th peer from the same address at once: got %v, want ErrRateLimited", err)
		}
	}
}
