package nattest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/kinmesh/kinmesh/node"
)

// BuildBinary builds cmd/kinmesh into dir and returns its path.
func BuildBinary(ctx context.Context, dir string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	bin := filepath.Join(dir, "kinmesh")
	out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/kinmesh/kinmesh/cmd/kinmesh").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build cmd/kinmesh: %w\n%s", err, out)
	}
	return bin, nil
}

// Proc is a kinmesh daemon running in a namespace.
type Proc struct {
	Name string
	Log  string // its stdout and stderr

	relay bool
	cmd   *exec.Cmd
	done  chan struct{} // closed when it exited

	mu    sync.Mutex
	lines []string // its first stdout lines
	seen  chan struct{}
}

// maxStdoutLines bounds what a Proc keeps of its stdout (the daemons print
// a few startup lines only).
const maxStdoutLines = 64

// stopTimeout is how long a daemon gets to shut down on SIGTERM.
const stopTimeout = 10 * time.Second

// start runs the kinmesh binary with args in namespace ns.
func (l *Lab) start(name, ns string, relay bool, args ...string) (*Proc, error) {
	logPath := filepath.Join(l.cfg.Dir, name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns, l.cfg.Binary}, args...)...)
	cmd.Stderr = logf
	// Own process group, so a Ctrl-C at the terminal reaches only the test
	// (which then stops the daemons in order); killed with the test process.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		logf.Close()
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Proc{Name: name, Log: logPath, relay: relay, cmd: cmd, done: make(chan struct{}), seen: make(chan struct{})}
	l.mu.Lock()
	l.procs = append(l.procs, p)
	l.mu.Unlock()
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(logf, line)
			p.mu.Lock()
			if len(p.lines) < maxStdoutLines {
				p.lines = append(p.lines, line)
				close(p.seen)
				p.seen = make(chan struct{})
			}
			p.mu.Unlock()
		}
	}()
	go func() {
		<-copied
		_ = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	return p, nil
}

// waitLine waits until the daemon printed a line matching re and returns
// the lines so far.
func (p *Proc) waitLine(ctx context.Context, re *regexp.Regexp, timeout time.Duration) ([]string, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		p.mu.Lock()
		lines, seen := append([]string(nil), p.lines...), p.seen
		p.mu.Unlock()
		for _, l := range lines {
			if re.MatchString(l) {
				return lines, nil
			}
		}
		select {
		case <-seen:
		case <-p.done:
			return nil, fmt.Errorf("%s exited before printing %q:\n%s", p.Name, re, p.Tail(20))
		case <-t.C:
			return nil, fmt.Errorf("%s: no %q within %v:\n%s", p.Name, re, timeout, p.Tail(20))
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// Stop sends SIGTERM, waits up to stopTimeout, then SIGKILLs.
func (p *Proc) Stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(stopTimeout)
	defer t.Stop()
	select {
	case <-p.done:
	case <-t.C:
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// Tail returns the last n lines of the daemon's log.
func (p *Proc) Tail(n int) string {
	b, err := os.ReadFile(p.Log)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Relay is a kinmesh relay on the public segment.
type Relay struct {
	Name  string
	NS    string
	Addr  netip.Addr
	Addrs []string // full multiaddrs ending in /p2p/<id>, once started
	Proc  *Proc
	lab   *Lab
}

var (
	listenLine = regexp.MustCompile(`listening on (\S+)`)
	opsLine    = regexp.MustCompile(`ops endpoint`)
	apiLine    = regexp.MustCompile(`local API http://`)
)

// StartRelays starts every relay, each bootstrapping to the ones before it
// so they form the DHT, and waits until they listen.
func (l *Lab) StartRelays(ctx context.Context) error {
	var boot []string
	for _, r := range l.Relays {
		// The lab is 198.18.0.0/15, which a relay's TURN server refuses to
		// relay to by default (not globally reachable): allow it, as an
		// operator would for a private network.
		conf := filepath.Join(l.cfg.Dir, r.Name+".toml")
		if err := os.WriteFile(conf, []byte("turn_allow_peers = [\"198.18.0.0/15\"]\n"), 0o600); err != nil {
			return err
		}
		args := []string{"relay", "--config", conf, "--data", filepath.Join(l.cfg.Dir, r.Name),
			"--listen", fmt.Sprintf("/ip4/%s/tcp/4001", r.Addr),
			"--listen", fmt.Sprintf("/ip4/%s/udp/4001/quic-v1", r.Addr),
			"--http", "127.0.0.1:8080"}
		for _, b := range boot {
			args = append(args, "--bootstrap", b)
		}
		p, err := l.start(r.Name, r.NS, true, args...)
		if err != nil {
			return err
		}
		r.Proc = p
		lines, err := p.waitLine(ctx, opsLine, 30*time.Second)
		if err != nil {
			return err
		}
		for _, line := range lines {
			if m := listenLine.FindStringSubmatch(line); m != nil {
				r.Addrs = append(r.Addrs, m[1])
			}
		}
		if len(r.Addrs) == 0 {
			return fmt.Errorf("%s printed no addresses", r.Name)
		}
		boot = append(boot, r.Addrs...)
	}
	l.cfg.Logf("relays up: %d", len(l.Relays))
	return nil
}

// Device is a device daemon in its home network.
type Device struct {
	Name string
	NAT  NAT
	Home int
	NS   string // the device's namespace
	// Router is the home router's namespace ("" with no NAT).
	Router string
	// Addr is the device's own address; Outside the address the public
	// segment sees it from (its router's WAN address behind NAT).
	Addr, Outside netip.Addr
	Data          string
	Proc          *Proc
	// PeerID and Account are known once started and its account created.
	PeerID, Account string

	lab *Lab
}

// StartDevices starts every device daemon with the lab setting, creates
// its account, and waits until it holds a reservation on every relay and
// its DCUtR handler is registered (it knows its outside address), so
// hole punching can start the moment a peer reaches it.
func (l *Lab) StartDevices(ctx context.Context, timeout time.Duration) error {
	var boot []string
	for _, r := range l.Relays {
		boot = append(boot, r.Addrs...)
	}
	errs := make([]error, len(l.Devices))
	var wg sync.WaitGroup
	for i, d := range l.Devices {
		wg.Go(func() { errs[i] = d.start(ctx, boot, timeout) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	l.cfg.Logf("devices up: %d", len(l.Devices))
	return nil
}

func (d *Device) start(ctx context.Context, boot []string, timeout time.Duration) error {
	d.Data = filepath.Join(d.lab.cfg.Dir, d.Name)
	args := []string{"node", "--data", d.Data, "--api", "127.0.0.1:0",
		"--listen", "/ip4/0.0.0.0/tcp/4001", "--listen", "/ip4/0.0.0.0/udp/4001/quic-v1",
		"--lab-public-cidr", PublicCIDR.String()}
	for _, b := range boot {
		args = append(args, "--bootstrap", b)
	}
	p, err := d.lab.start(d.Name, d.NS, false, args...)
	if err != nil {
		return err
	}
	d.Proc = p
	if _, err := p.waitLine(ctx, apiLine, 30*time.Second); err != nil {
		return err
	}
	out, err := d.CLI(ctx, "account", "create", "--data", d.Data, "--name", d.Name,
		"--birth-date", "1980-01-01", "--accept-policy", node.PolicyVersion)
	if err != nil {
		return err
	}
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == "account" {
			d.Account = f[1]
		}
	}
	if d.Account == "" {
		return fmt.Errorf("%s: account create printed no id:\n%s", d.Name, out)
	}
	var st node.Status
	var pl node.PeerList
	err = Poll(ctx, timeout, 200*time.Millisecond, func(ctx context.Context) (bool, error) {
		if err := d.JSON(ctx, &st, "status"); err != nil {
			return false, err
		}
		if err := d.JSON(ctx, &pl, "peers"); err != nil {
			return false, err
		}
		reserved := 0
		for _, r := range st.Relays {
			if r.Reserved {
				reserved++
			}
		}
		return reserved == len(d.lab.Relays) && pl.HolePunching, nil
	})
	if err != nil {
		return fmt.Errorf("%s (%s) not ready (relays %+v, hole punching %v, observed %v): %w\n%s",
			d.Name, d.NAT, st.Relays, pl.HolePunching, pl.ObservedAddrs, err, d.Proc.Tail(20))
	}
	d.PeerID = st.PeerID
	return nil
}

// cliTimeout bounds one client verb.
const cliTimeout = 30 * time.Second

// CLI runs `kinmesh args…` inside the device's namespace and returns its
// output.
func (d *Device) CLI(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, cliTimeout)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", d.NS, d.lab.cfg.Binary}, args...)...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s: kinmesh %s: %w: %s", d.Name, strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return stdout.String(), nil
}

// JSON runs a client verb with --json (status, peers) and decodes its
// output into v.
func (d *Device) JSON(ctx context.Context, v any, verb string) error {
	out, err := d.CLI(ctx, verb, "--data", d.Data, "--json")
	if err != nil {
		return err
	}
	if err := json.NewDecoder(strings.NewReader(out)).Decode(v); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("%s: kinmesh %s --json: %w", d.Name, verb, err)
	}
	return nil
}

// Invite returns the device's invite string.
func (d *Device) Invite(ctx context.Context) (string, error) {
	out, err := d.CLI(ctx, "invite", "--data", d.Data)
	return strings.TrimSpace(out), err
}

// AddContact adds a contact from an invite.
func (d *Device) AddContact(ctx context.Context, invite string) error {
	_, err := d.CLI(ctx, "contacts", "add", invite, "--data", d.Data)
	return err
}

// Send sends text to a contact.
func (d *Device) Send(ctx context.Context, to, text string) error {
	_, err := d.CLI(ctx, "send", "--data", d.Data, "--to", to, text)
	return err
}

var inboxLine = regexp.MustCompile(`\[([^\]]*)\] (.*)$`)

// MessageState returns the state `kinmesh inbox` shows for the message
// with text in the conversation with contact ("" if it isn't there).
func (d *Device) MessageState(ctx context.Context, with, text string) (string, error) {
	out, err := d.CLI(ctx, "inbox", "--data", d.Data, "--with", with)
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(out, "\n") {
		if m := inboxLine.FindStringSubmatch(line); m != nil && m[2] == text {
			return m[1], nil
		}
	}
	return "", nil
}

// Peers returns the device's connected peers (kinmesh peers --json).
func (d *Device) Peers(ctx context.Context) (node.PeerList, error) {
	var pl node.PeerList
	err := d.JSON(ctx, &pl, "peers")
	return pl, err
}

// Poll calls cond every interval until it reports true or an error, or
// until timeout or ctx ends. It is for conditions in other processes (the
// daemons), which have no event to wait on from here.
func Poll(ctx context.Context, timeout, interval time.Duration, cond func(context.Context) (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	var last error
	for {
		ok, err := cond(ctx)
		if ok && err == nil {
			return nil
		}
		if err != nil {
			last = err
		}
		select {
		case <-ctx.Done():
			if last != nil {
				return fmt.Errorf("%w (last error: %v)", ctx.Err(), last)
			}
			return ctx.Err()
		case <-tick.C:
		}
	}
}
