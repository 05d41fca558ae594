package discovery

import (
	"testing"
	"time"
)

func TestLimiter(t *testing.T) {
	clk := newClock()
	l := newLimiter(clk.Now, 1, 10, 2) // 1 token a second, 10 at most, 2 keys
	if ok, _ := l.takeN("a", 7); !ok {
		t.Fatal("7 of 10 refused")
	}
	if got := l.left("a"); got != 3 {
		t.Fatalf("left %d, want 3", got)
	}
	ok, wait := l.takeN("a", 5)
	if ok || wait != 2*time.Second {
		t.Fatalf("5 of 3: %v, wait %v; want refused, 2s", ok, wait)
	}
	if ok, wait := l.allow("a", 5); ok || wait != 2*time.Second {
		t.Fatalf("allow 5 of 3: %v, wait %v; want refused, 2s", ok, wait)
	}
	if ok, wait := l.takeN("a", 11); ok || wait != never {
		t.Fatalf("11 of a burst of 10: %v, %v; want never", ok, wait)
	}
	clk.Advance(2 * time.Second)
	if ok, _ := l.allow("a", 5); !ok {
		t.Fatal("allow 5 refused after refilling")
	}
	if ok, _ := l.takeN("a", 5); !ok {
		t.Fatal("5 refused after refilling")
	}
	l.refund("a", 2)
	if got := l.left("a"); got != 2 {
		t.Fatalf("left %d after a refund of 2, want 2", got)
	}
	l.refund("a", 100)
	if got := l.left("a"); got != 10 {
		t.Fatalf("left %d after a large refund, want the burst", got)
	}
	if got := l.left("new"); got != 10 {
		t.Fatalf("an unknown key has %d, want the burst", got)
	}
	if ok, _ := l.allow("new", 10); !ok || l.tracked() != 1 {
		t.Fatalf("allow on an unknown key: %v, %d keys tracked; want allowed, still 1", ok, l.tracked())
	}
	if ok, _ := l.take("b"); !ok {
		t.Fatal("second key refused")
	}
	if ok, _ := l.take("a"); !ok { // a is now used more recently than b
		t.Fatal("a refused")
	}
}

// TestLimiterFullTable: a table full of busy keys still admits a new key,
// in place of the key used least recently; it never holds more than its
// size.
func TestLimiterFullTable(t *testing.T) {
	clk := newClock()
	l := newLimiter(clk.Now, 1.0/3600, 3, 4) // 3 at once, one an hour back
	for _, k := range []string{"a", "b", "c", "d"} {
		if ok, _ := l.takeN(k, 3); !ok {
			t.Fatalf("%s refused", k)
		}
	}
	if ok, _ := l.take("a"); ok {
		t.Fatal("a's empty bucket gave a token")
	}
	// Full of busy keys, none refilled: a newcomer still gets in, and b
	// (used least recently) is the one forgotten.
	if ok, _ := l.take("newcomer"); !ok {
		t.Fatal("a new key refused while the table is full of busy keys")
	}
	if got := l.tracked(); got != 4 {
		t.Fatalf("%d keys tracked, want 4", got)
	}
	for k, want := range map[string]int{"a": 0, "b": 3, "c": 0, "d": 0, "newcomer": 2} {
		if got := l.left(k); got != want {
			t.Errorf("%s has %d tokens, want %d", k, got, want)
		}
	}
}
