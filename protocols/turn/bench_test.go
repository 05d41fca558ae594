package turn

import (
	"net"
	"testing"
	"time"
)

// BenchmarkTURNRelay: media packets per second through the relay's TURN
// server (a pion client's allocation on loopback, 1200-byte packets to a
// peer socket, at most 256 in flight) against the same packets sent
// straight from one UDP socket to the peer (docs/benchmarks.md, "Calls").
//
//	go test -run '^$' -bench BenchmarkTURNRelay ./protocols/turn/
func BenchmarkTURNRelay(b *testing.B) {
	// Every budget out of the way (the client, its peer and its address
	// are all one here), and the peer socket is on loopback, which a relay
	// doesn't relay to by default.
	s := startServer(b, WithAccountQuota(8, 1<<30), WithPeerQuota(8, 1<<30), WithIPQuota(8, 1<<30), allowLoopback)
	cr := s.Issue(make([]byte, 32))
	relay, done, err := allocate(b, s, cr.Username, cr.Password)
	if err != nil {
		b.Fatal(err)
	}
	defer done()
	direct, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer direct.Close()
	const packets = 20_000
	var turnRate, rawRate float64
	var lostTURN, lostRaw int
	for b.Loop() {
		r, l := pump(b, relay, packets)
		turnRate, lostTURN = turnRate+r, lostTURN+l
		r, l = pump(b, direct, packets)
		rawRate, lostRaw = rawRate+r, lostRaw+l
	}
	n := float64(b.N)
	b.ReportMetric(turnRate/n, "turn-pkts/s")
	b.ReportMetric(rawRate/n, "raw-pkts/s")
	b.ReportMetric(turnRate/rawRate, "pkts-x-vs-raw")
	b.ReportMetric(float64(lostTURN)/n, "turn-lost/op")
	b.ReportMetric(float64(lostRaw)/n, "raw-lost/op")
}

// pump sends count packets from conn to a fresh peer socket, at most 256
// unacknowledged, and returns the delivered packets per second and how
// many were lost. A packet is given up on after 100 ms without room in
// the window; the peer stops counting after a second without a packet,
// and then the sender stops too, so a path that stops delivering ends the
// run within seconds. It fails if not one packet arrived.
func pump(b *testing.B, conn net.PacketConn, count int) (float64, int) {
	peer, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer peer.Close()
	_ = peer.(*net.UDPConn).SetReadBuffer(4 << 20)
	window := make(chan struct{}, 256)
	got := make(chan int, 1)
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		buf := make([]byte, 1500)
		n := 0
		defer func() { got <- n }()
		for n < count {
			_ = peer.SetReadDeadline(time.Now().Add(time.Second))
			if _, _, err := peer.ReadFrom(buf); err != nil {
				return
			}
			n++
			select {
			case <-window:
			default:
			}
		}
	}()
	pkt := make([]byte, 1200)
	start := time.Now()
send:
	for range count {
		select {
		case window <- struct{}{}:
		case <-time.After(100 * time.Millisecond):
		case <-stopped:
			break send
		}
		if _, err := conn.WriteTo(pkt, peer.LocalAddr()); err != nil {
			b.Fatal(err)
		}
	}
	n := <-got
	el := time.Since(start)
	if n == 0 {
		b.Fatalf("no packet of %d arrived from %v", count, conn.LocalAddr())
	}
	return float64(n) / el.Seconds(), count - n
}
