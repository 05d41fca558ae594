//go:build !unix

package turn

import (
	"net"
	"testing"
	"time"
)

// queued returns a datagram waiting in c's receive queue, if there is
// one (here: one that arrives within 100 ms).
func queued(t testing.TB, c net.PacketConn) ([]byte, bool) {
	t.Helper()
	buf := make([]byte, 1500)
	_ = c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	n, _, err := c.ReadFrom(buf)
	return buf[:n], err == nil
}
