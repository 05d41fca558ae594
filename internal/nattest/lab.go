package nattest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// NAT is the kind of router a home network has.
type NAT string

// The NAT types of the testbed (see the package comment).
const (
	EIM       NAT = "eim"
	Symmetric NAT = "symmetric"
	Firewall  NAT = "firewall"
	NoNAT     NAT = "none"
)

// NATs lists every NAT type, in matrix order.
var NATs = []NAT{EIM, Symmetric, Firewall, NoNAT}

// Describe says what the router does, for the matrix legend.
func (n NAT) Describe() string {
	switch n {
	case EIM:
		return "NAT, endpoint-independent mapping (iptables MASQUERADE), drops unsolicited inbound"
	case Symmetric:
		return "NAT, address/port-dependent mapping (MASQUERADE --random-fully), drops unsolicited inbound"
	case Firewall:
		return "no NAT, public address behind a stateful firewall that drops unsolicited inbound UDP (TCP allowed)"
	case NoNAT:
		return "no NAT, no firewall: the device is on the public segment"
	}
	return string(n)
}

// Address plan (see the package comment).
var (
	// PublicCIDR is the lab's public internet; nodes get it as their lab
	// setting.
	PublicCIDR = netip.MustParsePrefix("198.18.0.0/16")
	// LANCIDR holds the home LANs behind NAT routers.
	LANCIDR = netip.MustParsePrefix("198.19.0.0/16")

	wanGateway = netip.AddrFrom4([4]byte{198, 18, 0, 1})
)

// maxHomes keeps the address plan unambiguous (198.18.0.(50+H) and
// 198.18.0.(100+H) must not meet).
const (
	maxHomes  = 40
	maxRelays = 9
)

func relayAddr(i int) netip.Addr     { return netip.AddrFrom4([4]byte{198, 18, 0, byte(10 + i)}) }
func noNATAddr(h int) netip.Addr     { return netip.AddrFrom4([4]byte{198, 18, 0, byte(50 + h)}) }
func routerWANAddr(h int) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, 0, byte(100 + h)}) }

// homeLAN is home h's LAN: private for NAT homes, public for the firewall.
func homeLAN(h int, n NAT) netip.Prefix {
	if n == Firewall {
		return netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(h), 0}), 24)
	}
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 19, byte(h), 0}), 24)
}

func hostIn(p netip.Prefix, host byte) netip.Addr {
	b := p.Addr().As4()
	b[3] = host
	return netip.AddrFrom4(b)
}

// routerRules is the iptables-restore input for a home router of type n.
// Unsolicited inbound WAN traffic is dropped silently, never answered.
func routerRules(n NAT) string {
	var b strings.Builder
	b.WriteString("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n")
	switch n {
	case EIM:
		b.WriteString("-A POSTROUTING -o wan0 -j MASQUERADE\n")
	case Symmetric:
		b.WriteString("-A POSTROUTING -o wan0 -j MASQUERADE --random-fully\n")
	}
	b.WriteString("COMMIT\n")
	b.WriteString("*filter\n:INPUT DROP [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n")
	b.WriteString("-A INPUT -i lo -j ACCEPT\n")
	b.WriteString("-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n")
	b.WriteString("-A INPUT -i lan0 -j ACCEPT\n")
	b.WriteString("-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n")
	b.WriteString("-A FORWARD -i lan0 -o wan0 -j ACCEPT\n")
	if n == Firewall {
		b.WriteString("-A FORWARD -i wan0 -o lan0 -p udp -j DROP\n")
		b.WriteString("-A FORWARD -i wan0 -o lan0 -j ACCEPT\n")
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

// Config describes a lab.
type Config struct {
	// Binary is the kinmesh binary to run (see BuildBinary).
	Binary string
	// Dir holds the daemons' data directories and logs.
	Dir string
	// Relays is how many relays the public segment gets (default 2).
	Relays int
	// Homes lists the home networks, one device each.
	Homes []NAT
	// Logf, if set, receives progress lines.
	Logf func(format string, args ...any)
}

// Lab is a built testbed. Close tears it down.
type Lab struct {
	cfg    Config
	Prefix string // namespace name prefix of this run

	wan     string
	mu      sync.Mutex
	ns      []string // namespaces created, in order
	procs   []*Proc
	Relays  []*Relay
	Devices []*Device

	closeOnce sync.Once
	closeErr  error
	stopSig   func()
}

// namePrefix is what every testbed namespace name starts with.
const namePrefix = "kmnat-"

var staleName = regexp.MustCompile(`^` + namePrefix + `(\d+)-[0-9a-f]+-`)

// cmdTimeout bounds every ip/iptables/sysctl command.
const cmdTimeout = 20 * time.Second

// New builds the lab's namespaces, links, addresses, routes and router
// rules (no daemons yet: StartRelays, StartDevices). It first removes
// namespaces left behind by runs whose process is gone. On error it tears
// down what it built. Until Close, SIGINT and SIGTERM tear the lab down
// and exit the process.
func New(ctx context.Context, cfg Config) (_ *Lab, err error) {
	if cfg.Relays == 0 {
		cfg.Relays = 2
	}
	if cfg.Relays < 1 || cfg.Relays > maxRelays {
		return nil, fmt.Errorf("nattest: %d relays; want 1 to %d", cfg.Relays, maxRelays)
	}
	if len(cfg.Homes) > maxHomes {
		return nil, fmt.Errorf("nattest: %d homes; at most %d", len(cfg.Homes), maxHomes)
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	if cfg.Binary == "" || cfg.Dir == "" {
		return nil, errors.New("nattest: Config needs Binary and Dir")
	}
	if err := CleanupStale(ctx); err != nil {
		cfg.Logf("cleaning up stale namespaces: %v", err)
	}
	var rnd [3]byte
	_, _ = rand.Read(rnd[:])
	l := &Lab{cfg: cfg, Prefix: fmt.Sprintf("%s%d-%s-", namePrefix, os.Getpid(), hex.EncodeToString(rnd[:]))}
	l.catchSignals()
	defer func() {
		if err != nil {
			err = errors.Join(err, l.Close())
		}
	}()
	if err := l.build(ctx); err != nil {
		return nil, err
	}
	return l, nil
}

// catchSignals tears the lab down on SIGINT/SIGTERM (Ctrl-C during a test
// run would otherwise leave namespaces behind) and exits.
func (l *Lab) catchSignals() {
	sig := make(chan os.Signal, 1)
	done := make(chan struct{})
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		select {
		case s := <-sig:
			fmt.Fprintf(os.Stderr, "nattest: %v: tearing down the lab %s*\n", s, l.Prefix)
			_ = l.Close()
			os.Exit(130)
		case <-done:
		}
	}()
	var once sync.Once
	l.stopSig = func() {
		once.Do(func() {
			signal.Stop(sig)
			close(done)
		})
	}
}

func (l *Lab) addNS(ctx context.Context, role string) (string, error) {
	name := l.Prefix + role
	if err := run(ctx, nil, "ip", "netns", "add", name); err != nil {
		return "", err
	}
	l.mu.Lock()
	l.ns = append(l.ns, name)
	l.mu.Unlock()
	// Loopback for the local API; no IPv6 (the lab is IPv4 only, and
	// link-local addresses would only add noise).
	if err := run(ctx, nil, "ip", "-n", name, "link", "set", "lo", "up"); err != nil {
		return "", err
	}
	if err := sysctl(ctx, name, "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"); err != nil {
		return "", err
	}
	return name, nil
}

// plug connects namespace ns to the public bridge as ifname with addr.
func (l *Lab) plug(ctx context.Context, port int, ns, ifname string, addr netip.Addr) error {
	p := fmt.Sprintf("p%d", port)
	if err := ipBatch(ctx, l.wan,
		fmt.Sprintf("link add %s type veth peer name %s netns %s", p, ifname, ns),
		fmt.Sprintf("link set %s master br0", p),
		fmt.Sprintf("link set %s up", p),
	); err != nil {
		return err
	}
	return ipBatch(ctx, ns,
		fmt.Sprintf("addr add %s/24 dev %s", addr, ifname),
		fmt.Sprintf("link set %s up", ifname),
		fmt.Sprintf("route add default via %s", wanGateway),
	)
}

func (l *Lab) build(ctx context.Context) error {
	var err error
	if l.wan, err = l.addNS(ctx, "wan"); err != nil {
		return err
	}
	if err := ipBatch(ctx, l.wan,
		"link add br0 type bridge",
		fmt.Sprintf("addr add %s/24 dev br0", wanGateway),
		"link set br0 up",
	); err != nil {
		return err
	}
	// The public segment routes to the firewall homes' public LANs; no
	// redirects, so every such packet takes the same path.
	if err := sysctl(ctx, l.wan, "net.ipv4.ip_forward=1", "net.ipv4.conf.all.send_redirects=0", "net.ipv4.conf.br0.send_redirects=0"); err != nil {
		return err
	}
	port := 0
	for i := 1; i <= l.cfg.Relays; i++ {
		ns, err := l.addNS(ctx, fmt.Sprintf("relay%d", i))
		if err != nil {
			return err
		}
		port++
		if err := l.plug(ctx, port, ns, "eth0", relayAddr(i)); err != nil {
			return err
		}
		l.Relays = append(l.Relays, &Relay{Name: fmt.Sprintf("relay%d", i), NS: ns, Addr: relayAddr(i), lab: l})
	}
	for i, nat := range l.cfg.Homes {
		h := i + 1
		d := &Device{Name: fmt.Sprintf("d%d-%s", h, nat), NAT: nat, lab: l, Home: h}
		if d.NS, err = l.addNS(ctx, fmt.Sprintf("d%d", h)); err != nil {
			return err
		}
		port++
		switch nat {
		case NoNAT:
			d.Addr = noNATAddr(h)
			d.Outside = d.Addr
			if err := l.plug(ctx, port, d.NS, "eth0", d.Addr); err != nil {
				return err
			}
		case EIM, Symmetric, Firewall:
			if err := l.buildHome(ctx, port, h, d); err != nil {
				return err
			}
		default:
			return fmt.Errorf("nattest: unknown NAT type %q", nat)
		}
		l.Devices = append(l.Devices, d)
	}
	l.cfg.Logf("lab %s*: %d relays, homes %v", l.Prefix, l.cfg.Relays, l.cfg.Homes)
	return nil
}

// buildHome builds home h: router namespace, its WAN port on the bridge,
// the LAN link to the device, and the router's rules.
func (l *Lab) buildHome(ctx context.Context, port, h int, d *Device) error {
	r, err := l.addNS(ctx, fmt.Sprintf("r%d", h))
	if err != nil {
		return err
	}
	d.Router = r
	wan := routerWANAddr(h)
	if err := l.plug(ctx, port, r, "wan0", wan); err != nil {
		return err
	}
	lan := homeLAN(h, d.NAT)
	gw := hostIn(lan, 1)
	d.Addr = hostIn(lan, 2)
	d.Outside = wan
	if d.NAT == Firewall {
		d.Outside = d.Addr
		if err := ipBatch(ctx, l.wan, fmt.Sprintf("route add %s via %s", lan, wan)); err != nil {
			return err
		}
	}
	if err := ipBatch(ctx, r,
		fmt.Sprintf("link add lan0 type veth peer name eth0 netns %s", d.NS),
		fmt.Sprintf("addr add %s/24 dev lan0", gw),
		"link set lan0 up",
	); err != nil {
		return err
	}
	if err := ipBatch(ctx, d.NS,
		fmt.Sprintf("addr add %s/24 dev eth0", d.Addr),
		"link set eth0 up",
		fmt.Sprintf("route add default via %s", gw),
	); err != nil {
		return err
	}
	if err := sysctl(ctx, r, "net.ipv4.ip_forward=1"); err != nil {
		return err
	}
	return run(ctx, strings.NewReader(routerRules(d.NAT)), "ip", "netns", "exec", r, "iptables-restore")
}

// Close stops every daemon and deletes every namespace of the lab. It is
// safe to call more than once.
func (l *Lab) Close() error {
	l.closeOnce.Do(func() {
		var errs []error
		l.mu.Lock()
		procs := append([]*Proc(nil), l.procs...)
		names := append([]string(nil), l.ns...)
		l.mu.Unlock()
		// Devices first, then relays: each group stopped in parallel.
		var wg sync.WaitGroup
		for _, p := range procs {
			if !p.relay {
				wg.Go(func() { p.Stop() })
			}
		}
		wg.Wait()
		for _, p := range procs {
			if p.relay {
				wg.Go(func() { p.Stop() })
			}
		}
		wg.Wait()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		for i := len(names) - 1; i >= 0; i-- {
			errs = append(errs, removeNS(ctx, names[i]))
		}
		// Anything else with this run's prefix (a namespace whose creation
		// timed out after the kernel made it, say).
		errs = append(errs, removePrefix(ctx, func(name string) bool { return strings.HasPrefix(name, l.Prefix) }))
		if l.stopSig != nil {
			l.stopSig()
		}
		l.closeErr = errors.Join(errs...)
	})
	return l.closeErr
}

// removeNS kills whatever still runs in namespace name and deletes it.
func removeNS(ctx context.Context, name string) error {
	out, err := output(ctx, "ip", "netns", "pids", name)
	if err == nil {
		for _, f := range strings.Fields(out) {
			if pid, err := strconv.Atoi(f); err == nil && pid > 1 {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	return run(ctx, nil, "ip", "netns", "del", name)
}

// CleanupStale deletes testbed namespaces whose creating process is gone
// (a run killed before it could tear down). Namespaces of live runs are
// left alone.
func CleanupStale(ctx context.Context) error {
	return removePrefix(ctx, func(name string) bool {
		m := staleName.FindStringSubmatch(name)
		if m == nil {
			return false
		}
		pid, _ := strconv.Atoi(m[1])
		return pid <= 0 || !processAlive(pid)
	})
}

// removePrefix removes every namespace whose name match accepts.
func removePrefix(ctx context.Context, match func(name string) bool) error {
	out, err := output(ctx, "ip", "netns", "list")
	if err != nil {
		return err
	}
	var errs []error
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 0 && match(f[0]) {
			errs = append(errs, removeNS(ctx, f[0]))
		}
	}
	return errors.Join(errs...)
}

func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// run runs a command with a timeout, stdin from in (may be nil); the error
// carries its output.
func run(ctx context.Context, in *strings.Reader, name string, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, cmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	if in != nil {
		cmd.Stdin = in
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

func output(ctx context.Context, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, cmdTimeout)
	defer cancel()
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return string(out), nil
}

// ipBatch runs `ip` commands in namespace ns in one process.
func ipBatch(ctx context.Context, ns string, cmds ...string) error {
	return run(ctx, strings.NewReader(strings.Join(cmds, "\n")+"\n"), "ip", "-n", ns, "-batch", "-")
}

// sysctl sets kernel settings ("net.ipv4.ip_forward=1") in namespace ns,
// writing /proc/sys from inside it (no procps needed).
func sysctl(ctx context.Context, ns string, settings ...string) error {
	var script strings.Builder
	for _, kv := range settings {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return fmt.Errorf("nattest: sysctl %q: want key=value", kv)
		}
		fmt.Fprintf(&script, "echo %s > /proc/sys/%s && ", v, strings.ReplaceAll(k, ".", "/"))
	}
	script.WriteString("true")
	return run(ctx, nil, "ip", "netns", "exec", ns, "sh", "-c", script.String())
}

// Capable reports why this machine can't run the testbed ("" if it can):
// it needs root, `ip` (iproute2) and `iptables`/`iptables-restore`.
func Capable() string {
	if os.Geteuid() != 0 {
		return "the NAT testbed needs root (network namespaces, iptables); run it with `sudo make test-nat` or in CI (.ci/run)"
	}
	for _, tool := range []string{"ip", "iptables", "iptables-restore"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Sprintf("the NAT testbed needs %s: apt-get install -y iproute2 iptables", tool)
		}
	}
	return ""
}
