package turn

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"os/exec"
	"regexp"
	"strconv"
	"testing"
	"time"
)

// Cross-checks with coturn's test client, turnutils_uclient (Debian
// package coturn; .ci/run installs it): a TURN client nobody here wrote
// allocates on our server with the credentials we issue, relays packets
// between pairs of its own clients (-y), and is refused with bad ones.

// uclient runs turnutils_uclient against s with args, skipping the test
// when coturn isn't installed.
func uclient(t *testing.T, s *Server, args ...string) (string, error) {
	t.Helper()
	bin, err := exec.LookPath("turnutils_uclient")
	if err != nil {
		t.Skip("turnutils_uclient not found: apt-get install -y coturn (the CI installs it)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	udp := s.UDPAddr()
	// -c: no RTCP allocation pairs. With them the client asks for an even
	// port and a reservation of the next one (RFC 8656 EVEN-PORT), which
	// pion/turn v5.1.3 answers by reserving the same port again: the
	// second allocation then fails with 508. Calls never use EVEN-PORT.
	all := append([]string{"-c", "-p", strconv.Itoa(int(udp.Port()))}, args...)
	all = append(all, udp.Addr().String())
	out, err := exec.CommandContext(ctx, bin, all...).CombinedOutput()
	return string(out), err
}

var (
	lostRe = regexp.MustCompile(`Total lost packets (\d+) \(`)
	sentRe = regexp.MustCompile(`tot_send_msgs=(\d+)`)
	recvRe = regexp.MustCompile(`tot_recv_msgs=(\d+)`)
)

// uclientTotals reads the sent and received message counts of a run.
func uclientTotals(out string) (sent, recv, lost int, ok bool) {
	ms, mr, ml := sentRe.FindAllStringSubmatch(out, -1), recvRe.FindAllStringSubmatch(out, -1), lostRe.FindStringSubmatch(out)
	if len(ms) == 0 || len(mr) == 0 || ml == nil {
		return 0, 0, 0, false
	}
	sent, _ = strconv.Atoi(ms[len(ms)-1][1])
	recv, _ = strconv.Atoi(mr[len(mr)-1][1])
	lost, _ = strconv.Atoi(ml[1])
	return sent, recv, lost, true
}

func TestCoturnClient(t *testing.T) {
	s := startServer(t)
	cr := s.Issue(accountKey(t, newAccount(t)))
	// Two clients (-m 2) relaying to each other (-y) over UDP, 20
	// messages each.
	out, err := uclient(t, s, "-y", "-m", "2", "-n", "20", "-l", "200", "-z", "5", "-u", cr.Username, "-w", cr.Password)
	if err != nil {
		t.Fatalf("turnutils_uclient: %v\n%s", err, out)
	}
	sent, recv, lost, ok := uclientTotals(out)
	if !ok || sent < 40 || recv < 40 || lost != 0 {
		t.Fatalf("uclient sent %d, received %d, lost %d (parsed %v):\n%s", sent, recv, lost, ok, out)
	}
	if st := s.Stats(); st.AllocationsTotal < 2 || st.RelayedPackets < 80 {
		t.Errorf("server stats %+v: want the client's 2 allocations and its packets", st)
	}
	t.Logf("uclient: %d sent, %d received, %d lost; server %+v", sent, recv, lost, s.Stats())

	// Over TCP to the server (-t), relayed as UDP.
	out, err = uclient(t, s, "-t", "-y", "-m", "2", "-n", "10", "-u", cr.Username, "-w", cr.Password)
	if err != nil {
		t.Fatalf("turnutils_uclient -t: %v\n%s", err, out)
	}
	if sent, recv, lost, ok := uclientTotals(out); !ok || sent < 20 || recv < 20 || lost != 0 {
		t.Fatalf("over TCP: sent %d, received %d, lost %d:\n%s", sent, recv, lost, out)
	}
}

// TestCoturnRESTSecret: coturn's client derives the password from the
// shared secret itself (-W, the TURN REST API), an independent check of
// our HMAC-SHA1 derivation and username format. The secret goes on the
// command line, which can't carry a NUL byte (exec fails with EINVAL), so
// it is a random one in hex here.
func TestCoturnRESTSecret(t *testing.T) {
	s := startServerSecret(t, []byte(hex.EncodeToString(testSecret(t))))
	tag := accountTag(s.secret, accountKey(t, newAccount(t)), s.h.ID())
	out, err := uclient(t, s, "-y", "-m", "2", "-n", "5", "-u", tag, "-W", string(s.secret))
	if err != nil {
		t.Fatalf("turnutils_uclient -W: %v\n%s", err, out)
	}
	if _, recv, _, ok := uclientTotals(out); !ok || recv < 10 {
		t.Fatalf("with the REST secret: received %d:\n%s", recv, out)
	}
}

func TestCoturnRefused(t *testing.T) {
	s := startServer(t)
	cr := s.Issue(accountKey(t, newAccount(t)))
	bad := base64.StdEncoding.EncodeToString([]byte("not the password"))
	out, _ := uclient(t, s, "-y", "-m", "2", "-n", "5", "-u", cr.Username, "-w", bad)
	if _, recv, _, ok := uclientTotals(out); ok && recv > 0 {
		t.Fatalf("bad password relayed %d messages:\n%s", recv, out)
	}
	if st := s.Stats(); st.AllocationsTotal != 0 || st.AuthFailures == 0 {
		t.Fatalf("stats %+v: want no allocation and counted failures", st)
	}
}
