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
	if ok, wait := l.takeN("a", 11); ok || wait != never {
		t.Fatalf("11 of a burst of 10: %v, %v; want never", ok, wait)
	}
	clk.Advance(2 * time.Second)
	if ok, _ := l.takeN("a", 5); !ok {
		t.Fatal("5 refused after refilling")
	}
	if got := l.left("new"); got != 10 {
		t.Fatalf("an unknown key has %d, want the burst", got)
	}
	if ok, _ := l.take("b"); !ok {
		t.Fatal("second key refused")
	}
	// The table is full of busy keys: a third is refused, not let in by
	// evicting one.
	if ok, _ := l.take("c"); ok {
		t.Fatal("third key admitted while the table is full of busy keys")
	}
	clk.Advance(20 * time.Second) // everyone refilled: forgotten
	if ok, _ := l.take("c"); !ok {
		t.Fatal("third key refused after the others refilled")
	}
}
