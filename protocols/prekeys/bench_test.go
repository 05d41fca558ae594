package prekeys

import (
	"bytes"
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"

	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/protocols/wire"
)

// rawProto is the baseline: a raw libp2p stream round trip of the same
// sizes as a fetch.
const rawProto = "/kinmesh-bench/raw/1.0.0"

// rawEcho answers every request frame with a frame of size bytes.
func rawEcho(size int) network.StreamHandler {
	resp := bytes.Repeat([]byte{0x42}, size)
	return func(s network.Stream) {
		defer s.Close()
		if _, err := wire.NewReader(s).ReadBytes(maxRequestFrame); err != nil {
			_ = s.Reset()
			return
		}
		_ = wire.WriteBytes(s, resp, maxResponseFrame)
	}
}

// rawRoundTrip is what Fetch does on the wire, without the prekey work:
// open a stream, write the request frame, read the answer, close.
func rawRoundTrip(ctx context.Context, c *Client, r *testRelay, req []byte) error {
	s, err := c.h.NewStream(ctx, r.ID(), rawProto)
	if err != nil {
		return err
	}
	if err := wire.WriteBytes(s, req, maxRequestFrame); err != nil {
		_ = s.Reset()
		return err
	}
	if _, err := wire.NewReader(s).ReadBytes(maxResponseFrame); err != nil {
		_ = s.Reset()
		return err
	}
	return s.Close()
}

// benchSetup starts a relay, publishes an account with full pools and
// returns what the benchmarks need, with the raw baseline registered.
func benchSetup(b *testing.B) (r *testRelay, owner *account, c *Client, req []byte) {
	clk := newClock()
	r = startRelay(b, clk, relaxed...)
	owner = newAccount(b, clk.Now(), e2ee.MaxOneTimePrekeys, e2ee.MaxOneTimePrekeys)
	c = newClient(b, r)
	mustPublish(b, c, r, owner, owner.store.Upload())
	// Size the baseline like a real fetch of this account.
	up := owner.store.Upload()
	bundle, err := (&e2ee.Bundle{Identity: up.Identity, SignedPrekey: up.SignedPrekey, PQPrekey: up.PQOneTime[0], OneTimePrekey: &up.OneTime[0]}).Marshal()
	if err != nil {
		b.Fatal(err)
	}
	var fetch request
	fetch.kind = reqFetch
	copy(fetch.account[:], up.Identity.Sign)
	req = marshal(encodeRequest(fetch))
	r.h.SetStreamHandler(rawProto, rawEcho(len(marshal(encodeResponse(response{bundle: bundle})))))
	b.Cleanup(func() { r.h.RemoveStreamHandler(rawProto) })
	return r, owner, c, req
}

// report adds the baseline's time per op and the ratio.
func report(b *testing.B, fetch, raw time.Duration) {
	n := float64(b.N)
	b.ReportMetric(float64(raw.Nanoseconds())/n, "raw-ns/op")
	b.ReportMetric(float64(fetch)/float64(raw), "x-vs-raw")
	b.ReportMetric(n/fetch.Seconds(), "fetches/s")
}

// BenchmarkPrekeysFetch: one fetch at a time (latency), over a real
// stream to a relay with a real store, against the raw round trip.
//
//   - one-time: every fetch hands out one one-time prekey of each kind,
//     deleted with a synced write before the answer (the relay is topped
//     up outside the timer);
//   - last-resort: the pools are empty, nothing is written.
func BenchmarkPrekeysFetch(b *testing.B) {
	for _, mode := range []string{"one-time", "last-resort"} {
		b.Run(mode, func(b *testing.B) {
			r, owner, c, req := benchSetup(b)
			ctx := context.Background()
			if mode == "last-resort" {
				drain(b, c, r, owner)
			}
			left := e2ee.MaxOneTimePrekeys
			if mode == "last-resort" {
				left = -1
			}
			var fetch time.Duration
			b.ResetTimer()
			for range b.N {
				if left == 0 {
					b.StopTimer()
					refill(b, c, r, owner)
					left = e2ee.MaxOneTimePrekeys
					b.StartTimer()
				}
				start := time.Now()
				bundle, err := c.Fetch(ctx, r.ID(), owner.ID())
				fetch += time.Since(start)
				if err != nil {
					b.Fatal(err)
				}
				if (mode == "one-time") != (bundle.OneTimePrekey != nil) {
					b.Fatalf("%s: bundle has one-time key %v", mode, bundle.OneTimePrekey != nil)
				}
				left--
			}
			b.StopTimer()
			start := time.Now()
			for range b.N {
				if err := rawRoundTrip(ctx, c, r, req); err != nil {
					b.Fatal(err)
				}
			}
			report(b, fetch, time.Since(start))
		})
	}
}

// BenchmarkPrekeysFetchParallel: throughput with many requesters at once
// (last-resort bundles of several accounts, so no fetch waits for
// another's lock or write), against the raw round trip at the same
// concurrency.
func BenchmarkPrekeysFetchParallel(b *testing.B) {
	r, owner, _, req := benchSetup(b)
	accounts := []*account{owner}
	pub := newClient(b, r)
	for range 7 {
		a := newAccount(b, time.Now(), 0, 0)
		mustPublish(b, pub, r, a, a.store.Upload())
		accounts = append(accounts, a)
	}
	drain(b, pub, r, owner)
	clients := make([]*Client, 8)
	for i := range clients {
		clients[i] = newClient(b, r)
	}
	ctx := context.Background()
	run := func(fn func(c *Client, a *account) error) time.Duration {
		var next atomic.Int64
		start := time.Now()
		b.RunParallel(func(pb *testing.PB) {
			i := int(next.Add(1))
			c, a := clients[i%len(clients)], accounts[i%len(accounts)]
			for pb.Next() {
				if err := fn(c, a); err != nil {
					b.Error(err)
					return
				}
			}
		})
		return time.Since(start)
	}
	b.SetParallelism(4)
	b.ResetTimer()
	fetch := run(func(c *Client, a *account) error {
		_, err := c.Fetch(ctx, r.ID(), a.ID())
		return err
	})
	b.StopTimer()
	raw := run(func(c *Client, _ *account) error { return rawRoundTrip(ctx, c, r, req) })
	report(b, fetch, raw)
}

// drain takes every one-time prekey of a off the relay.
func drain(b *testing.B, c *Client, r *testRelay, a *account) {
	b.Helper()
	for {
		bundle := mustFetch(b, c, r, a)
		if bundle.OneTimePrekey == nil && bundle.PQPrekey.LastResort {
			return
		}
	}
}

// refill replaces the owner's one-time prekeys with new ones and
// publishes them.
func refill(b *testing.B, c *Client, r *testRelay, a *account) {
	b.Helper()
	up := a.store.Upload()
	var used []e2ee.PrekeyID
	for _, k := range up.OneTime {
		used = append(used, k.ID)
	}
	for _, k := range up.PQOneTime {
		used = append(used, k.ID)
	}
	a.store = a.store.Consume(used...)
	newerKeys(b, a, e2ee.MaxOneTimePrekeys, e2ee.MaxOneTimePrekeys, time.Now())
	mustPublish(b, c, r, a, a.store.Upload())
}
