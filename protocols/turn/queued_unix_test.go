//go:build unix

package turn

import (
	"errors"
	"net"
	"syscall"
	"testing"
)

// queued returns a datagram waiting in c's receive queue, if there is
// one, without waiting for one.
func queued(t testing.TB, c net.PacketConn) ([]byte, bool) {
	t.Helper()
	rc, err := c.(*net.UDPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1500)
	n, rerr := -1, error(nil)
	if err := rc.Read(func(fd uintptr) bool {
		n, _, rerr = syscall.Recvfrom(int(fd), buf, syscall.MSG_DONTWAIT)
		return true // never wait for readiness
	}); err != nil {
		t.Fatal(err)
	}
	if errors.Is(rerr, syscall.EAGAIN) || errors.Is(rerr, syscall.EWOULDBLOCK) {
		return nil, false
	}
	if rerr != nil {
		t.Fatal(rerr)
	}
	return buf[:n], true
}
