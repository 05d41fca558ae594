package netkit

import (
	"fmt"
	"testing"
	"time"
)

// fakeNow is a clock tests move by hand.
type fakeNow struct{ t time.Time }

func (c *fakeNow) now() time.Time          { return c.t }
func (c *fakeNow) advance(d time.Duration) { c.t = c.t.Add(d) }

func TestLimiter(t *testing.T) {
	clk := &fakeNow{t: time.Unix(1000, 0)}
	l := NewLimiter[string](clk.now, 1, 10, 2) // 1 token a second, 10 at most, 2 keys
	if ok, _ := l.TakeN("a", 7); !ok {
		t.Fatal("takeN 7 of a full bucket of 10 refused")
	}
	if got := l.Left("a"); got != 3 {
		t.Fatalf("left %d, want 3", got)
	}
	if ok, wait := l.TakeN("a", 5); ok || wait != 2*time.Second {
		t.Fatalf("takeN 5 of 3: got %v, %v; want refused, 2s", ok, wait)
	}
	if ok, wait := l.Allow("a", 5); ok || wait != 2*time.Second {
		t.Fatalf("allow 5 of 3: got %v, %v; want refused, 2s", ok, wait)
	}
	if ok, wait := l.TakeN("a", 11); ok || wait != Never {
		t.Fatalf("takeN beyond the burst: got %v, %v; want refused, Never", ok, wait)
	}
	clk.advance(2 * time.Second)
	if ok, _ := l.TakeN("a", 5); !ok {
		t.Fatal("takeN 5 after refilling to 5 refused")
	}
	l.Refund("a", 2)
	if got := l.Left("a"); got != 2 {
		t.Fatalf("left after refund %d, want 2", got)
	}
	l.Refund("a", 100)
	if got := l.Left("a"); got != 10 {
		t.Fatalf("left after a large refund %d, want the burst 10", got)
	}
	if ok, _ := l.Allow("new", 10); !ok || l.Len() != 1 {
		t.Fatalf("allow on an unknown key: %v, %d keys tracked; want allowed, still 1", ok, l.Len())
	}
}

func TestLimiterTakeUpTo(t *testing.T) {
	clk := &fakeNow{t: time.Unix(1000, 0)}
	l := NewLimiter[string](clk.now, 10, 20, 2)
	for _, s := range []struct {
		name    string
		advance time.Duration
		key     string
		n, want int
	}{
		{"a's burst", 0, "a", 16, 16},
		{"a's burst runs out mid-frame", 0, "a", 16, 4},
		{"a has nothing left", 0, "a", 1, 0},
		{"half a second refills a by 5", 500 * time.Millisecond, "a", 64, 5},
		{"a refills to its burst, no more", 10 * time.Second, "a", 64, 20},
	} {
		clk.advance(s.advance)
		if got := l.TakeUpTo(s.key, s.n); got != s.want {
			t.Fatalf("%s: took %d of %d, want %d", s.name, got, s.n, s.want)
		}
	}
}

// TestLimiterFullTable: a table full of attacker keys whose buckets are
// all busy still admits an honest newcomer, in place of the key used
// least recently; the others keep their (empty) buckets.
func TestLimiterFullTable(t *testing.T) {
	clk := &fakeNow{t: time.Unix(1000, 0)}
	const tracked = 64
	l := NewLimiter[string](clk.now, 1.0/3600, 3, tracked) // 3 at once, one an hour back
	for i := range tracked {
		if ok, _ := l.TakeN(fmt.Sprint("attacker", i), 3); !ok {
			t.Fatalf("attacker key %d refused with room left", i)
		}
	}
	if ok, _ := l.Take("attacker1"); ok {
		t.Fatal("an empty bucket gave a token")
	}
	if ok, _ := l.Take("honest"); !ok {
		t.Fatal("a new key refused while the table is full of busy keys")
	}
	if got := l.Len(); got != tracked {
		t.Fatalf("%d keys tracked, want the cap %d", got, tracked)
	}
	// attacker0 was used least recently and is the one forgotten;
	// attacker1 was used since, and keeps its empty bucket.
	for k, want := range map[string]int{"attacker0": 3, "attacker1": 0, "attacker2": 0, "honest": 2} {
		if got := l.Left(k); got != want {
			t.Errorf("%s has %d tokens, want %d", k, got, want)
		}
	}
}
