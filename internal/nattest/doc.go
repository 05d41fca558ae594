// Package nattest is a network-namespace testbed for real NAT: it builds,
// with `ip netns`, veth pairs, a bridge and iptables (nf_tables backend),
// a small internet on this machine, runs the real kinmesh binary in it
// (relays on the public segment, device daemons behind NAT routers), and
// measures, for every pair of NAT types, whether two devices connect,
// whether the connection ends direct (DCUtR hole punch) or stays on a relay
// circuit, and how long that takes. TestNATMatrix (run by `make test-nat`)
// prints the matrix and writes docs/nat-matrix.md.
//
// # Topology
//
// Every run names its namespaces "kmnat-<pid>-<random>-<role>", so
// concurrent runs never collide and a later run can recognise and remove
// what an aborted run left behind (CleanupStale: owners whose pid is gone).
//
//	wan       the public segment: bridge br0, 198.18.0.1/24, routes to
//	          firewall homes; "the internet"
//	relayN    a kinmesh relay, 198.18.0.(10+N), TCP and QUIC on port 4001
//	rH / dH   home H: router rH (WAN 198.18.0.(100+H)) and device dH
//	          behind it (LAN 198.19.H.0/24, device .2, router .1); a
//	          device with no NAT sits on the bridge itself at 198.18.0.(50+H)
//
// Only 198.18.0.0/15 is used (RFC 2544 benchmarking space): 198.18.0.0/16
// is the lab's public internet (PublicCIDR), 198.19.0.0/16 its private
// home LANs. Packets go nowhere but loopback and these namespaces.
//
// # NAT types
//
// Every router forwards (ip_forward=1) and silently DROPs unsolicited
// inbound WAN packets, in FORWARD and INPUT alike (only
// ESTABLISHED,RELATED gets in), as real home routers do: a router that
// answers with a TCP RST, or lets an early packet create a conntrack entry,
// defeats hole punching.
//
//	eim        endpoint-independent mapping: MASQUERADE (Linux keeps the
//	           source port); filtering is per address and port (conntrack)
//	symmetric  address- and port-dependent mapping: MASQUERADE
//	           --random-fully picks a new random port per destination
//	firewall   no NAT: the device has a public address (198.18.H.2) behind
//	           a stateful firewall that blocks unsolicited inbound UDP and
//	           lets TCP in
//	none       no router: the device is on the public segment
//
// # Devices
//
// A device is `kinmesh node` run with `ip netns exec`, its local API on
// 127.0.0.1 inside its namespace; the testbed drives it with the kinmesh
// client verbs (`account create`, `invite`, `contacts add`, `send`,
// `inbox`, `status`, `peers`), also run inside the namespace, which find
// the daemon through DIR/api.addr and DIR/api.token. Nodes get the lab
// setting `--lab-public-cidr 198.18.0.0/16` (node.Config.LabPublicCIDRs):
// go-multiaddr calls all of 198.18.0.0/15 unroutable, and without the
// setting go-libp2p never hole-punches in a lab.
//
// Everything started is stopped and every namespace deleted by Lab.Close,
// which also runs on SIGINT/SIGTERM; daemons die with the test process
// (parent-death signal) even if it is killed.
package nattest
