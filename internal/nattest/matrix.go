package nattest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/kinmesh/kinmesh/node"
)

// Path is how two devices end up connected.
type Path string

// Paths.
const (
	PathDirect Path = "direct" // a direct connection (DCUtR hole punch)
	PathRelay  Path = "relay"  // only a relay circuit
	PathNone   Path = "none"   // not connected
)

// Expect returns the path a pair of NAT types should end on. Linux NAT
// filters inbound packets by address and port (conntrack), so a hole
// opens only for the exact outside address the peer announced. A
// symmetric NAT picks a fresh random port per destination, so the port it
// announces (as a relay saw it) is never the one it uses towards the
// peer: it can only reach a peer that takes unsolicited inbound
// connections (no NAT, or the firewall's TCP); against an EIM or another
// symmetric NAT the devices stay on the relay.
func Expect(a, b NAT) Path {
	filters := func(n NAT) bool { return n == EIM || n == Symmetric }
	if a == Symmetric && filters(b) || b == Symmetric && filters(a) {
		return PathRelay
	}
	return PathDirect
}

// Pairs returns the matrix's pairs: every unordered pair of NAT types (a
// type with itself too), in NATs order, as devices of the lab. A type
// paired with itself needs two devices of that type.
func (l *Lab) Pairs() ([][2]*Device, error) {
	byNAT := map[NAT][]*Device{}
	for _, d := range l.Devices {
		byNAT[d.NAT] = append(byNAT[d.NAT], d)
	}
	var out [][2]*Device
	for i, a := range NATs {
		for _, b := range NATs[i:] {
			da, db := byNAT[a], byNAT[b]
			switch {
			case a == b && len(da) >= 2:
				out = append(out, [2]*Device{da[0], da[1]})
			case a != b && len(da) >= 1 && len(db) >= 1:
				// Spread the pairs over both devices of a type.
				out = append(out, [2]*Device{da[len(out)%len(da)], db[len(out)%len(db)]})
			default:
				return nil, fmt.Errorf("nattest: pair %s–%s needs more devices of those types", a, b)
			}
		}
	}
	return out, nil
}

// PairResult is what the matrix records for one pair of devices. A is
// the side that sends first, so it dials B (through B's relays), and
// calls B (calls.go).
type PairResult struct {
	A, B     *Device
	Expected Path
	// Connected: the devices had a connection (relayed or direct).
	Connected bool
	// Path is how they ended up connected.
	Path Path
	// FirstConn is from the pair's introduction (each adds the other's
	// invite, which already sends controls) to their first connection
	// (the relay circuit one dials); DirectAfter from the introduction to
	// their first direct connection (0: none).
	FirstConn, DirectAfter time.Duration
	// DirectVia lists the transports of the direct connections ("quic",
	// "tcp").
	DirectVia []string
	// HolePunch summarises the DCUtR outcome as the daemons report it.
	HolePunch string
	// MsgAB and MsgBA are from each send until the recipient had the
	// message and the sender its delivery receipt (0: didn't happen).
	MsgAB, MsgBA time.Duration
	// Call is the pair's call (A calls B after the messages): its path,
	// direct (ICE host/srflx/prflx) or relay (TURN), and media.
	Call CallResult
	// Settle is how long the pair took in all (until the path was final,
	// and the call ended).
	Settle time.Duration
	// Err says what went wrong, if anything.
	Err error
}

// OK reports whether the pair met the goal: connected, on the expected
// path, a message each way.
func (r PairResult) OK() bool {
	return r.Err == nil && r.Connected && r.Path == r.Expected && r.MsgAB > 0 && r.MsgBA > 0 && r.Call.OK()
}

// Timeouts bound each step of RunPair.
type Timeouts struct {
	// Message bounds one message's delivery (default 30s).
	Message time.Duration
	// Settle bounds, from the first send, the wait for the final path: a
	// direct connection, or the hole punch giving up (default 60s).
	Settle time.Duration
	// Interval is the polling interval (default 100ms).
	Interval time.Duration
}

func (t *Timeouts) defaults() {
	if t.Message == 0 {
		t.Message = 30 * time.Second
	}
	if t.Settle == 0 {
		t.Settle = 60 * time.Second
	}
	if t.Interval == 0 {
		t.Interval = 100 * time.Millisecond
	}
}

// maxPunchAttempts is how often go-libp2p v0.51's DCUtR initiator tries
// before it gives up (holepunch.maxRetries).
const maxPunchAttempts = 3

// RunPair makes a and b contacts, sends a message each way (a first) with
// the kinmesh CLI, and watches their connection until its path is final.
func RunPair(ctx context.Context, a, b *Device, to Timeouts) (res PairResult) {
	to.defaults()
	res = PairResult{A: a, B: b, Expected: Expect(a.NAT, b.NAT), Path: PathNone}
	start := time.Now()
	defer func() { res.Settle = time.Since(start) }()
	// The pair's connection is timed from the introduction: adding each
	// other as contacts already sends controls (the moments key), which
	// may connect them before the first message.
	w := &pairWatch{a: a, b: b, t0: start}
	if err := introduce(ctx, a, b); err != nil {
		res.Err = err
		return res
	}
	textAB := fmt.Sprintf("hello %s from %s", b.Name, a.Name)
	textBA := fmt.Sprintf("hello %s from %s", a.Name, b.Name)
	t0 := time.Now()
	if err := a.Send(ctx, b.Account, textAB); err != nil {
		res.Err = err
		return res
	}
	res.MsgAB, res.Err = w.deliver(ctx, to, a, b, textAB, t0)
	if res.Err == nil {
		t1 := time.Now()
		if err := b.Send(ctx, a.Account, textBA); err != nil {
			res.Err = err
		} else {
			res.MsgBA, res.Err = w.deliver(ctx, to, b, a, textBA, t1)
		}
	}
	// Wait for the final path: direct, or the hole punch given up.
	remaining := to.Settle - time.Since(t0)
	if remaining > 0 {
		_ = Poll(ctx, remaining, to.Interval, func(ctx context.Context) (bool, error) {
			if err := w.observe(ctx); err != nil {
				return false, err
			}
			return w.settled(), nil
		})
	}
	res.Connected = !w.firstConn.IsZero()
	res.Path = w.path()
	if res.Connected {
		res.FirstConn = w.firstConn.Sub(start)
	}
	if !w.firstDirect.IsZero() {
		res.DirectAfter = w.firstDirect.Sub(start)
	}
	res.HolePunch = w.holePunch()
	for t := range w.via {
		res.DirectVia = append(res.DirectVia, t)
	}
	slices.Sort(res.DirectVia)
	if res.Err == nil {
		res.Call = RunCall(ctx, a, b, to.Interval)
	} else {
		res.Call = CallResult{Expected: ExpectCall(a.NAT, b.NAT), Path: PathNone, Err: errors.New("skipped: the messages failed")}
	}
	return res
}

// transport names a direct connection's transport from its address.
func transport(addr string) string {
	switch {
	case strings.Contains(addr, "/quic-v1"):
		return "quic"
	case strings.Contains(addr, "/tcp/"):
		return "tcp"
	}
	return addr
}

func introduce(ctx context.Context, a, b *Device) error {
	for _, p := range [][2]*Device{{a, b}, {b, a}} {
		inv, err := p[0].Invite(ctx)
		if err != nil {
			return err
		}
		if err := p[1].AddContact(ctx, inv); err != nil {
			return err
		}
	}
	return nil
}

// pairWatch follows the connection between a and b from both sides.
type pairWatch struct {
	a, b                   *Device
	t0                     time.Time
	firstConn, firstDirect time.Time
	via                    map[string]bool // transports of direct connections
	// latest views: a's of b and b's of a (nil: not connected)
	viewA, viewB *node.PeerInfo
}

// deliver waits until to has text from from and from has its delivery
// receipt, watching the connection meanwhile.
func (w *pairWatch) deliver(ctx context.Context, to Timeouts, from, dst *Device, text string, sent time.Time) (time.Duration, error) {
	var got time.Duration
	err := Poll(ctx, to.Message, to.Interval, func(ctx context.Context) (bool, error) {
		if err := w.observe(ctx); err != nil {
			return false, err
		}
		if got == 0 {
			st, err := dst.MessageState(ctx, from.Account, text)
			if err != nil || st == "" {
				return false, err
			}
			got = time.Since(sent)
		}
		st, err := from.MessageState(ctx, dst.Account, text)
		if err != nil {
			return false, err
		}
		return st == "delivered" || st == "read", nil
	})
	if err != nil {
		return got, fmt.Errorf("message %s → %s: %w", from.Name, dst.Name, err)
	}
	return got, nil
}

// observe reads both sides' peer lists.
func (w *pairWatch) observe(ctx context.Context) error {
	for _, s := range []struct {
		self, other *Device
		view        **node.PeerInfo
	}{{w.a, w.b, &w.viewA}, {w.b, w.a, &w.viewB}} {
		pl, err := s.self.Peers(ctx)
		if err != nil {
			return err
		}
		*s.view = nil
		for i := range pl.Peers {
			p := &pl.Peers[i]
			if p.PeerID != s.other.PeerID {
				continue
			}
			*s.view = p
			for _, c := range p.Conns {
				if c.Opened.Before(w.t0) {
					continue // not this pair's doing
				}
				if w.firstConn.IsZero() || c.Opened.Before(w.firstConn) {
					w.firstConn = c.Opened
				}
				if c.Relayed {
					continue
				}
				if w.firstDirect.IsZero() || c.Opened.Before(w.firstDirect) {
					w.firstDirect = c.Opened
				}
				if w.via == nil {
					w.via = map[string]bool{}
				}
				w.via[transport(c.Addr)] = true
			}
		}
	}
	return nil
}

// path is the current path between the two.
func (w *pairWatch) path() Path {
	for _, v := range []*node.PeerInfo{w.viewA, w.viewB} {
		if v != nil && v.Path == string(PathDirect) {
			return PathDirect
		}
	}
	for _, v := range []*node.PeerInfo{w.viewA, w.viewB} {
		if v != nil {
			return PathRelay
		}
	}
	return PathNone
}

// settled: direct, or a side reports the hole punch given up.
func (w *pairWatch) settled() bool {
	if w.path() == PathDirect {
		return true
	}
	for _, v := range []*node.PeerInfo{w.viewA, w.viewB} {
		if v == nil || v.HolePunch == nil {
			continue
		}
		hp := v.HolePunch
		if hp.Result == node.HolePunchFailed && (hp.Attempts >= maxPunchAttempts || hp.Attempts == 0) {
			return true
		}
	}
	return false
}

// holePunch summarises both sides' hole punch reports, a final result
// (direct, then failed) before a running one.
func (w *pairWatch) holePunch() string {
	rank := map[string]int{node.HolePunchDirect: 2, node.HolePunchFailed: 1}
	var best *node.HolePunch
	for _, v := range []*node.PeerInfo{w.viewA, w.viewB} {
		if v == nil || v.HolePunch == nil {
			continue
		}
		hp := v.HolePunch
		if best == nil || rank[hp.Result] > rank[best.Result] ||
			rank[hp.Result] == rank[best.Result] && hp.Attempts > best.Attempts {
			best = hp
		}
	}
	if best == nil {
		return "not attempted"
	}
	s := fmt.Sprintf("%s after %d attempt", best.Result, best.Attempts)
	if best.Attempts != 1 {
		s += "s"
	}
	return s
}

// column is one column of the matrix table. Calls add theirs here.
type column struct {
	title string
	cell  func(PairResult) string
}

var columns = []column{
	{"A (sends first)", func(r PairResult) string { return string(r.A.NAT) }},
	{"B", func(r PairResult) string { return string(r.B.NAT) }},
	{"expected", func(r PairResult) string { return string(r.Expected) }},
	{"connected", func(r PairResult) string { return yesNo(r.Connected) }},
	{"path", func(r PairResult) string { return string(r.Path) }},
	{"first connection", func(r PairResult) string { return ms(r.FirstConn, r.Connected) }},
	{"direct after", func(r PairResult) string { return ms(r.DirectAfter, r.DirectAfter > 0) }},
	{"direct via", func(r PairResult) string {
		if len(r.DirectVia) == 0 {
			return "–"
		}
		return strings.Join(r.DirectVia, ", ")
	}},
	{"hole punch (DCUtR)", func(r PairResult) string { return r.HolePunch }},
	{"message A→B", func(r PairResult) string { return ms(r.MsgAB, r.MsgAB > 0) }},
	{"message B→A", func(r PairResult) string { return ms(r.MsgBA, r.MsgBA > 0) }},
	callColumns[0], callColumns[1], callColumns[2], callColumns[3],
	{"pair took", func(r PairResult) string { return r.Settle.Round(100 * time.Millisecond).String() }},
	{"result", func(r PairResult) string {
		if r.OK() {
			return "ok"
		}
		return "FAIL"
	}},
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func ms(d time.Duration, ok bool) string {
	if !ok {
		return "–"
	}
	return fmt.Sprintf("%d ms", d.Milliseconds())
}

// WriteTable writes the results as a Markdown table.
func WriteTable(w io.Writer, results []PairResult) {
	titles := make([]string, len(columns))
	rule := make([]string, len(columns))
	for i, c := range columns {
		titles[i], rule[i] = c.title, "---"
	}
	fmt.Fprintf(w, "| %s |\n| %s |\n", strings.Join(titles, " | "), strings.Join(rule, " | "))
	for _, r := range results {
		cells := make([]string, len(columns))
		for i, c := range columns {
			cells[i] = c.cell(r)
		}
		fmt.Fprintf(w, "| %s |\n", strings.Join(cells, " | "))
	}
}

// Report is the whole matrix run, for docs/nat-matrix.md.
type Report struct {
	Results []PairResult
	// Setup is how long building the lab and starting the daemons took;
	// Total the whole run.
	Setup, Total time.Duration
	// Machine describes where it ran (kernel, iptables).
	Machine string
}

// WriteMarkdown writes the report as the docs/nat-matrix.md page.
func (r Report) WriteMarkdown(w io.Writer) {
	fmt.Fprintln(w, "# NAT matrix")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Generated by `make test-nat` (internal/nattest, TestNATMatrix): real kinmesh")
	fmt.Fprintln(w, "daemons in Linux network namespaces behind kernel NAT, two relays on a")
	fmt.Fprintln(w, "\"public\" segment, addresses from 198.18.0.0/15 only. Do not edit by hand.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "For each pair, A and B become contacts (`kinmesh invite`, `contacts add`),")
	fmt.Fprintln(w, "A sends B a message, then B answers (`kinmesh send`, checked with `kinmesh")
	fmt.Fprintln(w, "inbox` on both sides: received, and delivered per the E2EE receipt). A")
	fmt.Fprintln(w, "reaches B through B's relays (`<relay>/p2p-circuit/p2p/<B>`); B starts a")
	fmt.Fprintln(w, "DCUtR hole punch over that circuit. The path is read from both daemons")
	fmt.Fprintln(w, "(`kinmesh peers --json`, i.e. `GET /v1/node/peers`): *direct* once a")
	fmt.Fprintln(w, "non-relayed connection exists, *relay* if only the circuit remains after")
	fmt.Fprintln(w, "the hole punch gave up (3 attempts). Connection times are from the")
	fmt.Fprintln(w, "introduction (adding a contact already sends it controls, such as the")
	fmt.Fprintln(w, "moments key, so either side may dial first; the daemons' own open times);")
	fmt.Fprintln(w, "message times from A's `kinmesh send` (polled every 100 ms, so add up to")
	fmt.Fprintln(w, "~100 ms plus a CLI round trip).")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Then A calls B (`kinmesh call`, `kinmesh answer`: WebRTC, both daemons")
	fmt.Fprintln(w, "playing their test clips, Opus and VP8 320×240 at 15 fps) and holds the")
	fmt.Fprintln(w, "call until B has received two seconds of A's video. Each device gets STUN")
	fmt.Fprintln(w, "and TURN from its first relay (short-lived credentials over libp2p). The")
	fmt.Fprintln(w, "call path is A's daemon's view (`kinmesh calls ID --json`): *direct* when")
	fmt.Fprintln(w, "ICE connected host, server-reflexive (srflx) or peer-reflexive (prflx)")
	fmt.Fprintln(w, "candidates, *relay* when one end is a TURN relay candidate; the candidate")
	fmt.Fprintln(w, "types of A's selected pair are in brackets (A's ↔ B's). Call media is UDP")
	fmt.Fprintln(w, "only, so unlike the libp2p connection (which may use TCP) a symmetric NAT")
	fmt.Fprintln(w, "stays on TURN against a firewall that drops unsolicited UDP. Call setup is")
	fmt.Fprintln(w, "from the offer to connected (ICE + DTLS), as A's daemon measured it;")
	fmt.Fprintln(w, "media is what B measured (RTT from RTCP).")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| NAT type | router |")
	fmt.Fprintln(w, "| --- | --- |")
	for _, n := range NATs {
		fmt.Fprintf(w, "| %s | %s |\n", n, n.Describe())
	}
	fmt.Fprintln(w)
	WriteTable(w, r.Results)
	fmt.Fprintln(w)
	ok := 0
	for _, res := range r.Results {
		if res.OK() {
			ok++
		}
	}
	fmt.Fprintf(w, "%d of %d pairs as expected. Lab setup %s, whole run %s. %s\n\n",
		ok, len(r.Results), r.Setup.Round(time.Second), r.Total.Round(time.Second), r.Machine)
	failed := false
	for _, res := range r.Results {
		if res.Err != nil {
			fmt.Fprintf(w, "- %s–%s: %v\n", res.A.NAT, res.B.NAT, res.Err)
			failed = true
		}
		if res.Call.Err != nil {
			fmt.Fprintf(w, "- %s–%s call: %v\n", res.A.NAT, res.B.NAT, res.Call.Err)
			failed = true
		}
	}
	if failed {
		fmt.Fprintln(w)
	}
}
