// Package bootstrap is the kinmesh relay as a library: what `kinmesh relay`
// runs. A relay is a small always-on libp2p host that devices dial first.
// It serves:
//
//   - circuit relay v2, so devices behind NAT hold a reservation and are
//     reachable at <relay addr>/p2p/<relay id>/p2p-circuit/p2p/<device id>.
//     Circuits carry signalling and small exchanges only (limits: 2 min and
//     256 KiB each way per circuit by default; see Config), because
//     messages travel on the relay's own mailbox protocol and call media
//     on TURN;
//   - the kinmesh DHT (protocol prefix /kinmesh, never the public IPFS DHT)
//     in server mode, so devices find each other's current addresses;
//   - AutoNAT (v1 and v2) service, so devices learn their reachability;
//   - phone verification and private contact discovery
//     (/kinmesh/discovery/1.0.0, discovery.go): codes texted through an
//     SMS gateway (console by default, a webhook for real providers), an
//     OPRF key and the directory of verified numbers;
//   - an ops endpoint: GET /healthz (JSON: peer_id, addrs, counts) and
//     GET /metrics (Prometheus text, from the relay's own registry), and
//     for the operator only (loopback) the report and feedback queues:
//     GET /reports, GET /feedback, POST /reports/{id}/done (report.go).
//
// Relays keep connections to the fellow relays named in Config.Bootstrap,
// re-dialing with backoff. The lifecycle is New (check config), Start
// (open store, start host and services), Close (safe twice; stops the ops
// endpoint, services, host, then the store).
package bootstrap
