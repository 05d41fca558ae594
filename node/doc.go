// Package node is the kinmesh node an app embeds: one per device. It owns
// the device's encrypted store, its libp2p host, its links to its relays,
// and (for the daemon) the local HTTP API.
//
//	cfg := node.Config{DataDir: dir, Bootstrap: relays}
//	n, err := node.New(cfg)    // checks the config, opens nothing
//	err = n.Start(ctx)         // store, host, relays, API
//	defer n.Close()            // safe twice
//
// Connectivity: the host speaks TCP and QUIC with Noise and yamux, runs
// the kinmesh DHT (/kinmesh/kad/1.0.0) in client mode with the relays as
// its servers, and has hole punching (DCUtR) on. For every bootstrap relay
// a keeper keeps a connection — re-dialing with exponential backoff when
// it drops — and holds a circuit-relay v2 reservation, renewed before it
// expires. While a reservation lasts the node advertises
// <relay addr>/p2p/<relay id>/p2p-circuit among its addresses, and
// contacts reach it there (see docs/decisions.md for why the node manages
// reservations itself rather than through libp2p's AutoRelay). Peers
// (GET /v1/node/peers) tells direct connections from relayed ones and
// reports each peer's latest hole punch. In a network-namespace lab,
// Config.LabPublicCIDRs says which lab addresses count as public, so hole
// punching works there too (see lab.go).
//
// The libp2p peer id is the host's own key, kept in the store; it is
// deliberately not the account identity.
package node
