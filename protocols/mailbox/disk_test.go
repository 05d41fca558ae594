package mailbox

import (
	"bytes"
	"encoding/base32"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/kinmesh/kinmesh/storage"
)

// TestNothingReadableOnDisk: neither the envelope bytes nor the mailbox
// id (in any encoding) appear in any file of the relay's store.
func TestNothingReadableOnDisk(t *testing.T) {
	r := startRelay(t)
	c := newClient(t, r)
	k := ownerKey(t, r)
	marker := []byte("PLAINTEXT-MARKER-7f3a9c")
	small := append([]byte(nil), marker...)                     // stays in the LSM tree
	large := append(bytes.Repeat([]byte{'x'}, 4096), marker...) // goes to the value log
	mustDeposit(t, c, r, k.ID(), [][]byte{small, large})
	s := openSession(t, c, r, k)
	items := fetchAll(t, s)
	if _, err := s.Ack(testCtx(t), items[0].Seq); err != nil {
		t.Fatal(err)
	}

	raw := rawID(k.ID())
	needles := map[string][]byte{
		"marker":              marker,
		"mailbox id":          []byte(k.ID()),
		"mailbox id (raw)":    raw,
		"mailbox id (base32)": []byte(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(raw)),
		"auth public key":     k.Public(),
	}
	scan := func(when string) {
		t.Helper()
		files := 0
		err := filepath.WalkDir(r.dir, func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			files++
			for name, n := range needles {
				if bytes.Contains(b, n) {
					t.Errorf("%s: %s found in %s", when, name, filepath.Base(path))
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if files < 3 {
			t.Fatalf("%s: scanned only %d files", when, files)
		}
	}
	scan("store open")
	_ = s.Close()
	_ = r.svc.Close()
	if err := r.st.Close(); err != nil {
		t.Fatal(err)
	}
	scan("store closed")
}

// TestNoLeaks: a session's goroutines, on both sides, end with the
// session; the service's end with Close.
func TestNoLeaks(t *testing.T) {
	clk := newClock()
	st, err := storage.Open(t.TempDir(), storage.WithProfile(storage.ProfileRelay), storage.WithClock(clk.Now))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	r := &testRelay{h: newHost(t), st: st, clock: clk}
	c := newClient(t, r)
	if err := c.h.Connect(testCtx(t), r.info()); err != nil {
		t.Fatal(err)
	}
	// The hosts outlive the checks below; a host's identify service starts
	// its push goroutine a little after the host, so it may not be running
	// yet at the snapshots.
	hostPush := goleak.IgnoreAnyFunction("github.com/libp2p/go-libp2p/p2p/protocol/identify.(*idService).loop.func1")
	beforeService := goleak.IgnoreCurrent()

	r.svc, err = NewService(r.h, st, WithClock(clk.Now))
	if err != nil {
		t.Fatal(err)
	}
	k := newKey(t)
	register(t, c, r, k)
	mustDeposit(t, c, r, k.ID(), envelopes(3, 100, "leak"))
	beforeSession := goleak.IgnoreCurrent()

	s, err := c.Open(testCtx(t), r.h.ID(), k)
	if err != nil {
		t.Fatal(err)
	}
	mustDeposit(t, c, r, k.ID(), envelopes(1, 100, "pushed"))
	nextPush(t, s)
	if got := fetchAll(t, s); len(got) != 4 {
		t.Fatalf("fetched %d", len(got))
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	goleak.VerifyNone(t, append(leakIgnores(), beforeSession, hostPush)...)
	if n := r.svc.Sessions(); n != 0 {
		t.Fatalf("relay still counts %d sessions", n)
	}

	// An open session at Close ends too.
	s2, err := c.Open(testCtx(t), r.h.ID(), k)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.svc.Close(); err != nil {
		t.Fatal(err)
	}
	<-s2.Done()
	goleak.VerifyNone(t, append(leakIgnores(), beforeService, hostPush)...)
}

func TestPrometheusTracer(t *testing.T) {
	reg := prometheus.NewRegistry()
	r := startRelay(t, WithMetricsTracer(NewMetricsTracer(reg)), WithMailboxQuota(2, 1<<20))
	c := newClient(t, r)
	k := ownerKey(t, r)
	res, _ := c.Deposit(testCtx(t), r.h.ID(), k.ID(), envelopes(3, 100, "m"))
	wantErrs(t, res, nil, nil, ErrMailboxFull)
	s := openSession(t, c, r, k)
	items := fetchAll(t, s)
	if _, err := s.Ack(testCtx(t), items[0].Seq); err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name, label string
		want        float64
	}{
		{"kinmesh_mailbox_deposits_total", "ok", 2},
		{"kinmesh_mailbox_deposits_total", "mailbox_full", 1},
		{"kinmesh_mailbox_deposit_bytes_total", "", 200},
		{"kinmesh_mailbox_fetched_total", "", 2},
		{"kinmesh_mailbox_acked_total", "", 1},
		{"kinmesh_mailbox_sessions", "", 1},
	}
	for _, ch := range checks {
		if got := gathered(t, reg, ch.name, ch.label); got != ch.want {
			t.Errorf("%s{%s} = %v, want %v", ch.name, ch.label, got, ch.want)
		}
	}
}

// gathered returns the value of the metric name (with a label value, if
// any) from reg.
func gathered(t *testing.T, reg *prometheus.Registry, name, label string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label != "" && (len(m.GetLabel()) == 0 || m.GetLabel()[0].GetValue() != label) {
				continue
			}
			switch {
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue()
			}
		}
	}
	return -1
}
