package prekeys

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kinmesh/kinmesh/protocols/netkit"
	"github.com/kinmesh/kinmesh/protocols/wire"
)

// TestGoldenFrames pins the wire bytes of the fixed-layout frames.
func TestGoldenFrames(t *testing.T) {
	var fetch request
	fetch.kind = reqFetch
	for i := range fetch.account {
		fetch.account[i] = 0xaa
	}
	for _, tc := range []struct {
		name string
		m    []byte
		want string
	}{
		{"fetch", marshal(encodeRequest(fetch)), "24" + "0a22" + "0a20" + strings.Repeat("aa", 32)},
		{"hello", marshal(encodeRequest(request{kind: reqHello})), "02" + "1200"},
		{"challenge", marshal(encodeResponse(response{nonce: bytes.Repeat([]byte{1}, 32)})), "24" + "1a22" + "0a20" + strings.Repeat("01", 32)},
		{"rate limited", marshal(encodeResponse(response{code: CodeRateLimited, retryAfter: 1500 * time.Millisecond})), "05" + "0805" + "10dc0b"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := wire.WriteBytes(&buf, tc.m, maxOwnerFrame); err != nil {
				t.Fatal(err)
			}
			if got := hex.EncodeToString(buf.Bytes()); got != tc.want {
				t.Fatalf("frame\n got %s\nwant %s", got, tc.want)
			}
		})
	}
}

// TestAuthMessage checks the signed bytes against the layout in doc.go,
// built independently.
func TestAuthMessage(t *testing.T) {
	nonce := bytes.Repeat([]byte{0x11}, 32)
	relay, owner := peer.ID("relay-id"), peer.ID("owner")
	identity, upload := []byte("identity"), []byte("upload bytes")

	h := sha256.Sum256(append(append([]byte{byte(opPublish), byte(len(identity))}, identity...), upload...))
	var want []byte
	want = append(want, "kinmesh/prekeys/v1/auth"...)
	want = append(want, 0)
	want = append(want, nonce...)
	want = append(want, byte(len(relay)))
	want = append(want, relay...)
	want = append(want, byte(len(owner)))
	want = append(want, owner...)
	want = append(want, h[:]...)
	got := authMessage(nonce, relay, owner, requestHash(opPublish, identity, upload))
	if !bytes.Equal(got, want) {
		t.Fatalf("auth message\n got %x\nwant %x", got, want)
	}
	// Every input matters.
	for name, other := range map[string][]byte{
		"op":     authMessage(nonce, relay, owner, requestHash(opPurge, identity, upload)),
		"upload": authMessage(nonce, relay, owner, requestHash(opPublish, identity, []byte("upload byteS"))),
		"split":  authMessage(nonce, relay, owner, requestHash(opPublish, []byte("identityu"), []byte("pload bytes"))),
		"relay":  authMessage(nonce, owner, relay, requestHash(opPublish, identity, upload)),
	} {
		if bytes.Equal(other, got) {
			t.Errorf("changing the %s leaves the signed bytes unchanged", name)
		}
	}
}

func TestLimiter(t *testing.T) {
	clk := newClock()
	l := netkit.NewLimiter[string](clk.Now, 1, 3, 4)
	for i := range 3 {
		if ok, _ := l.Take("a"); !ok {
			t.Fatalf("take %d within the burst refused", i)
		}
	}
	ok, wait := l.Take("a")
	if ok || wait != time.Second {
		t.Fatalf("take beyond the burst: ok %v wait %v, want refused, 1s", ok, wait)
	}
	clk.Advance(time.Second)
	if ok, _ := l.Take("a"); !ok {
		t.Fatal("bucket did not refill")
	}
	// The map stays bounded under a flood of new keys, and each of them
	// still gets in, in place of the key used least recently: a full
	// table of busy keys locks no newcomer out.
	for i := range 3 {
		if ok, _ := l.Take(string(rune('b' + i))); !ok {
			t.Fatalf("new key %d refused with room left", i)
		}
	}
	for i := range 1000 {
		if ok, _ := l.Take(string(rune('z' + i))); !ok {
			t.Fatalf("new key %d refused by a full map of busy keys", i)
		}
	}
	if n := l.Len(); n != 4 {
		t.Fatalf("limiter tracks %d keys, want the cap 4", n)
	}
}

func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	tr := NewMetricsTracer(reg)
	clk := newClock()
	r := startRelay(t, clk, WithMetricsTracer(tr), WithOneTimeRate(60, 1))
	bob := newAccount(t, clk.Now(), 1, 1)
	c := newClient(t, r)
	mustPublish(t, c, r, bob, bob.store.Upload())
	mustFetch(t, c, r, bob) // ok
	mustFetch(t, c, r, bob) // empty
	carol := newAccount(t, clk.Now(), 2, 0)
	mustPublish(t, c, r, carol, carol.store.Upload())
	mustFetch(t, c, r, carol) // ok
	mustFetch(t, c, r, carol) // rationed
	_, _ = c.Fetch(testCtx(t), r.ID(), newAccount(t, clk.Now(), 0, 0).ID())

	got := gather(t, reg)
	for name, want := range map[string]float64{
		`kinmesh_prekeys_fetches_total{result="ok"}`:                2,
		`kinmesh_prekeys_fetches_total{result="empty"}`:             1,
		`kinmesh_prekeys_fetches_total{result="rationed"}`:          1,
		`kinmesh_prekeys_fetches_total{result="not_found"}`:         1,
		`kinmesh_prekeys_handed_out_total{kind="x25519"}`:           2,
		`kinmesh_prekeys_handed_out_total{kind="mlkem"}`:            1,
		`kinmesh_prekeys_added_total{kind="x25519"}`:                3,
		`kinmesh_prekeys_added_total{kind="mlkem"}`:                 1,
		`kinmesh_prekeys_owner_ops_total{op="publish",result="ok"}`: 2,
		`kinmesh_prekeys_accounts`:                                  2,
	} {
		if got[name] != want {
			t.Errorf("%s = %v, want %v", name, got[name], want)
		}
	}

	// A nil tracer is fine everywhere.
	var nt tracer
	nt.fetch(FetchOK)
	nt.handedOut(1, 1)
	nt.ownerOp("publish", CodeOK)
	nt.added(1, 1)
	nt.accounts(1)
}

// TestCloseResetsStreams: Close ends streams being served and is safe
// twice; new streams are refused.
func TestCloseResetsStreams(t *testing.T) {
	r := startRelay(t, nil)
	c := newClient(t, r)
	// A stream that says hello and then stalls is cut by Close.
	st, err := c.h.NewStream(testCtx(t), r.ID(), ID)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Reset()
	if err := wire.Write(st, encodeRequest(request{kind: reqHello}), maxRequestFrame); err != nil {
		t.Fatal(err)
	}
	if _, err := readResponse(wire.NewReader(st)); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := st.Read(make([]byte, 1))
		done <- err
	}()
	if err := r.svc.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.svc.Close(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("stalled stream still open after Close")
		}
	case <-ctx.Done():
		t.Fatal("Close did not end the stalled stream")
	}
	if _, err := c.Fetch(testCtx(t), r.ID(), newAccount(t, time.Now(), 0, 0).ID()); err == nil {
		t.Fatal("fetch after Close succeeded")
	}
}

// gather returns every sample of reg as "name{k="v",…}" → value.
func gather(t testing.TB, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, f := range fams {
		for _, m := range f.GetMetric() {
			name := f.GetName()
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+"=\""+l.GetValue()+"\"")
			}
			if len(labels) > 0 {
				name += "{" + strings.Join(labels, ",") + "}"
			}
			switch {
			case m.Counter != nil:
				out[name] = m.GetCounter().GetValue()
			case m.Gauge != nil:
				out[name] = m.GetGauge().GetValue()
			}
		}
	}
	return out
}
