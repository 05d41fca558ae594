package netkit

import (
	"context"
	"fmt"
	"math"
	"reflect"
	"testing"
	"time"

	"github.com/kinmesh/kinmesh/storage"
)

func openRelayStore(t *testing.T, dir string, now func() time.Time) *storage.Store {
	t.Helper()
	st, err := storage.Open(dir, storage.WithProfile(storage.ProfileRelay), storage.WithClock(now))
	if err != nil {
		t.Fatalf("storage.Open: %v", err)
	}
	return st
}

// TestBudgetsSurviveRestart: what an address spent is still spent after the
// relay restarts (the store closed and opened again, new limiters), and
// refills from where it was; full buckets are not kept.
func TestBudgetsSurviveRestart(t *testing.T) {
	dir := t.TempDir()
	clk := &fakeNow{t: time.Unix(1_000_000, 0)}
	newLims := func() (*Limiter[string], *Limiter[string]) {
		return NewLimiter[string](clk.now, 1, 100, 16), NewLimiter[string](clk.now, 0.5, 10, 16)
	}

	st := openRelayStore(t, dir, clk.now)
	bytes, regs := newLims()
	b := KeepBudgets(st, "mailbox", nil, map[string]*Limiter[string]{"bytes": bytes, "regs": regs})
	bytes.TakeN("198.18.0.1", 90)
	bytes.TakeN("198.18.0.2", 40)
	regs.TakeN("198.18.0.1", 10)
	regs.TakeN("198.18.0.3", 1)
	bytes.Take("198.18.0.4")
	clk.advance(time.Second) // 198.18.0.4 is full again
	b.Close()
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	clk.advance(2 * time.Second) // while the relay was down
	st = openRelayStore(t, dir, clk.now)
	defer st.Close()
	bytes, regs = newLims()
	b = KeepBudgets(st, "mailbox", nil, map[string]*Limiter[string]{"bytes": bytes, "regs": regs})
	defer b.Close()
	for _, c := range []struct {
		l    *Limiter[string]
		key  string
		want int
	}{
		{bytes, "198.18.0.1", 13}, // 10 left, +3 s at 1/s
		{bytes, "198.18.0.2", 63},
		{bytes, "198.18.0.4", 100},
		{regs, "198.18.0.1", 1}, // 0 left, +3 s at 0.5/s
		{regs, "198.18.0.3", 10},
		{regs, "198.18.0.9", 10},
	} {
		if got := c.l.Left(c.key); got != c.want {
			t.Errorf("%s has %d tokens after the restart, want %d", c.key, got, c.want)
		}
	}
	if got, _ := bytes.Export(MaxSavedBuckets); len(got) != 2 {
		t.Errorf("restored %d non-full buckets, want 2 (a full one is not kept)", len(got))
	}
}

// TestBudgetsSavedWhileRunning: the periodic save keeps what was spent for
// a relay that is killed before Close, and a record expires once every
// bucket in it would be full again.
func TestBudgetsSavedWhileRunning(t *testing.T) {
	dir := t.TempDir()
	clk := &fakeNow{t: time.Unix(1_000_000, 0)}
	st := openRelayStore(t, dir, clk.now)
	defer st.Close()
	l := NewLimiter[string](clk.now, 1.0/60, 5, 16) // 5 at once, one a minute
	b := KeepBudgets(st, "blobs", nil, map[string]*Limiter[string]{"ip": l})
	defer b.Close()
	l.TakeN("198.18.0.7", 5)
	b.save(context.Background()) // what the ticker does once a minute

	restored := func() int {
		l2 := NewLimiter[string](clk.now, 1.0/60, 5, 16)
		b2 := KeepBudgets(st, "blobs", nil, map[string]*Limiter[string]{"ip": l2})
		defer b2.Close()
		return l2.Left("198.18.0.7")
	}
	if got := restored(); got != 0 {
		t.Fatalf("restored %d tokens from the periodic save, want 0", got)
	}
	clk.advance(5*time.Minute + budgetSaveInterval + time.Second)
	v, err := st.Namespace(budgetsNamespace).Get(context.Background(), "blobs/ip")
	if err == nil {
		t.Fatalf("record still there (%d bytes) once every bucket is full again", len(v))
	}
}

// TestBudgetsUnreadable: a damaged record costs its budgets, nothing else.
func TestBudgetsUnreadable(t *testing.T) {
	clk := &fakeNow{t: time.Unix(1_000_000, 0)}
	st := openRelayStore(t, t.TempDir(), clk.now)
	defer st.Close()
	ns := st.Namespace(budgetsNamespace)
	if err := ns.Put(context.Background(), "report/ip", []byte{budgetsVersion, 200, 1}); err != nil {
		t.Fatal(err)
	}
	good := encodeBudgets([]Bucket[string]{{Key: "k", Tokens: 1, Last: clk.t}})
	if err := ns.Put(context.Background(), "report/peer", good); err != nil {
		t.Fatal(err)
	}
	ip, peer := NewLimiter[string](clk.now, 1, 10, 4), NewLimiter[string](clk.now, 1, 10, 4)
	b := KeepBudgets(st, "report", nil, map[string]*Limiter[string]{"ip": ip, "peer": peer})
	defer b.Close()
	if ip.Len() != 0 || peer.Left("k") != 1 {
		t.Fatalf("after a damaged record: %d ip buckets, k has %d; want 0 and 1", ip.Len(), peer.Left("k"))
	}
}

func TestLimiterExportImport(t *testing.T) {
	clk := &fakeNow{t: time.Unix(1000, 0)}
	l := NewLimiter[string](clk.now, 1, 10, 3)
	for i, k := range []string{"a", "b", "c"} {
		l.TakeN(k, 5+i)
	}
	got, changes := l.Export(2)
	want := []Bucket[string]{{Key: "c", Tokens: 3, Last: clk.t}, {Key: "b", Tokens: 4, Last: clk.t}}
	if !reflect.DeepEqual(got, want) || changes != 3 {
		t.Fatalf("Export(2) = %v, %d changes; want %v, 3", got, changes, want)
	}

	// Into a smaller table, with values a damaged or old record could hold.
	m := NewLimiter[string](clk.now, 1, 10, 2)
	m.Import([]Bucket[string]{
		{Key: "newest", Tokens: math.NaN(), Last: clk.t},
		{Key: "future", Tokens: 99, Last: clk.t.Add(time.Hour)},
		{Key: "oldest", Tokens: -5, Last: clk.t.Add(-time.Second)},
	})
	clk.advance(2 * time.Second)
	for k, want := range map[string]int{"newest": 2, "future": 10, "oldest": 10} {
		if got := m.Left(k); got != want {
			t.Errorf("%s: %d tokens, want %d", k, got, want)
		}
	}
	if m.Len() != 2 {
		t.Errorf("%d buckets, want the table's 2 (the least recent dropped)", m.Len())
	}
}

func TestBudgetsRecord(t *testing.T) {
	at := time.Unix(1_700_000_000, 123)
	in := []Bucket[string]{{Key: "198.18.0.1", Tokens: 1.5, Last: at}, {Key: "", Tokens: 0, Last: at}}
	long := Bucket[string]{Key: string(make([]byte, maxBudgetKey+1)), Tokens: 1, Last: at}
	got, err := decodeBudgets(encodeBudgets(append(in, long)), 2)
	if err != nil || !reflect.DeepEqual(got, in) {
		t.Fatalf("round trip: %v, %v; want %v (the overlong key left out)", got, err, in)
	}
	enc := encodeBudgets(in)
	for name, b := range map[string][]byte{
		"empty":           nil,
		"unknown version": append([]byte{2}, enc[1:]...),
		"truncated":       enc[:len(enc)-1],
		"too many":        encodeBudgets(append(in, in[0])),
		"overlong key":    append([]byte{budgetsVersion}, fmt.Append(nil, "\x81\x01")...),
	} {
		if _, err := decodeBudgets(b, 2); err == nil {
			t.Errorf("%s: decoded", name)
		}
	}
}

func FuzzDecodeBudgets(f *testing.F) {
	at := time.Unix(1_700_000_000, 0)
	f.Add(encodeBudgets([]Bucket[string]{{Key: "198.18.0.1", Tokens: 2, Last: at}, {Key: "x", Tokens: -1, Last: at}}))
	f.Add([]byte{budgetsVersion})
	f.Add([]byte{budgetsVersion, 0x80})
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := decodeBudgets(b, 64)
		if err != nil {
			return
		}
		if len(got) > 64 {
			t.Fatalf("%d buckets past the cap", len(got))
		}
		again, err := decodeBudgets(encodeBudgets(got), 64)
		if err != nil || len(again) != len(got) {
			t.Fatalf("re-encoded record: %v, %d buckets of %d", err, len(again), len(got))
		}
		l := NewLimiter[string](time.Now, 1, 10, 8)
		l.Import(got)
		for _, bk := range got {
			if n := l.Left(bk.Key); n < 0 || n > 10 {
				t.Fatalf("imported bucket holds %d tokens, outside [0, 10]", n)
			}
		}
	})
}

// TestBudgetsIntoSmallerTable: budgets saved by a relay that tracked more
// keys than it does now come back for the most recently used keys.
func TestBudgetsIntoSmallerTable(t *testing.T) {
	clk := &fakeNow{t: time.Unix(1_000_000, 0)}
	st := openRelayStore(t, t.TempDir(), clk.now)
	defer st.Close()
	big := NewLimiter[string](clk.now, 1.0/3600, 10, 16)
	for i := range 5 {
		big.TakeN(fmt.Sprint("198.18.0.", i), 10)
	}
	KeepBudgets(st, "mailbox", nil, map[string]*Limiter[string]{"src": big}).Close()

	small := NewLimiter[string](clk.now, 1.0/3600, 10, 2)
	b := KeepBudgets(st, "mailbox", nil, map[string]*Limiter[string]{"src": small})
	defer b.Close()
	for i, want := range []int{10, 10, 10, 0, 0} { // 3 and 4 used last
		if got := small.Left(fmt.Sprint("198.18.0.", i)); got != want {
			t.Errorf("198.18.0.%d: %d tokens, want %d", i, got, want)
		}
	}
}
