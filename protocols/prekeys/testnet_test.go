package prekeys_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"

	"github.com/kinmesh/kinmesh/internal/testnet"
	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/protocols/prekeys"
	"github.com/kinmesh/kinmesh/protocols/wire"
)

// chatProto is a test-only protocol the devices talk over once they have
// a session: one initial message in, one reply out.
const chatProto = "/kinmesh-test/prekeys-chat/1.0.0"

type device struct {
	name  string
	h     host.Host
	c     *prekeys.Client
	id    *e2ee.Identity
	store *e2ee.PrekeyStore
}

// TestTestnetDevicesEstablishSessions is the issue's "two devices in a
// testnet can fetch each other's bundles from relays and establish a
// session": two relays and two devices; each device's account publishes
// disjoint one-time prekeys to both relays, fetches the other's bundle
// from a relay and starts a session, and the two exchange messages over a
// stream between the devices.
func TestTestnetDevicesEstablishSessions(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	n, err := testnet.Start(ctx, testnet.Config{Relays: 2, Devices: 2, DataDir: t.TempDir()})
	if err != nil {
		t.Fatalf("testnet.Start: %v", err)
	}
	defer func() {
		if err := n.Close(); err != nil {
			t.Errorf("testnet Close: %v", err)
		}
	}()
	relays := []peer.ID{n.Relays[0].Relay().ID(), n.Relays[1].Relay().ID()}

	var devs []*device
	for _, d := range n.Devices {
		h := d.Node().Host()
		c, err := prekeys.NewClient(h)
		if err != nil {
			t.Fatal(err)
		}
		id, err := e2ee.NewIdentity(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		store, err := e2ee.NewPrekeyStore(id, time.Now(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		dev := &device{name: d.Name, h: h, c: c, id: id, store: store}
		plan, err := c.Maintain(ctx, id, store, relays, prekeys.MaintainOptions{Target: 10, LowWater: 3})
		if err != nil {
			t.Fatalf("%s Maintain: %v", d.Name, err)
		}
		dev.store = plan.Store // persisted before publishing
		sts, err := plan.Publish(ctx)
		if err != nil || len(sts) != 2 {
			t.Fatalf("%s Publish: %v (%d relays)", d.Name, err, len(sts))
		}
		seen := map[e2ee.PrekeyID]peer.ID{}
		for r, st := range sts {
			if x, q := st.Counts(); x != 10 || q != 10 {
				t.Fatalf("%s: relay %s holds %d/%d, want 10/10", d.Name, r, x, q)
			}
			for _, k := range append(st.OneTimeIDs, st.PQOneTimeIDs...) {
				if other, dup := seen[k]; dup {
					t.Fatalf("%s: one-time prekey %d on relays %s and %s", d.Name, k, other, r)
				}
				seen[k] = r
			}
		}
		devs = append(devs, dev)
	}
	for i, d := range devs {
		d.h.SetStreamHandler(chatProto, func(s network.Stream) { answer(t, d, s) })
		defer d.h.RemoveStreamHandler(chatProto)
		other := devs[1-i]
		d.h.Peerstore().AddAddrs(other.h.ID(), other.h.Addrs(), peerstore.TempAddrTTL)
	}

	// Each device fetches the other's bundle from a different relay and
	// starts a session over a stream to the other device.
	for i, d := range devs {
		other := devs[1-i]
		b, err := d.c.Fetch(ctx, relays[i], other.id.AccountID())
		if err != nil {
			t.Fatalf("%s fetches %s's bundle from relay %d: %v", d.name, other.name, i, err)
		}
		if b.OneTimePrekey == nil || b.PQPrekey.LastResort {
			t.Fatalf("%s got a bundle without one-time prekeys", d.name)
		}
		s, err := e2ee.Initiate(d.id, b)
		if err != nil {
			t.Fatalf("%s Initiate: %v", d.name, err)
		}
		text := fmt.Sprintf("hello from %s", d.name)
		msg, s, err := s.Encrypt([]byte(text), nil)
		if err != nil {
			t.Fatal(err)
		}
		st, err := d.h.NewStream(ctx, other.h.ID(), chatProto)
		if err != nil {
			t.Fatalf("%s opens a stream to %s: %v", d.name, other.name, err)
		}
		_ = st.SetDeadline(time.Now().Add(20 * time.Second))
		if err := wire.WriteBytes(st, msg, 1<<20); err != nil {
			t.Fatal(err)
		}
		reply, err := wire.NewReader(st).ReadBytes(1 << 20)
		_ = st.Close()
		if err != nil {
			t.Fatalf("%s reads %s's reply: %v", d.name, other.name, err)
		}
		pt, _, err := s.Decrypt(reply, nil)
		if err != nil {
			t.Fatalf("%s decrypts %s's reply: %v", d.name, other.name, err)
		}
		if want := "re: " + text; string(pt) != want {
			t.Fatalf("%s read %q, want %q", d.name, pt, want)
		}
	}
}

// answer runs the responder's side: Respond to the initial message, reply
// in the new session.
func answer(t *testing.T, d *device, s network.Stream) {
	defer s.Close()
	_ = s.SetDeadline(time.Now().Add(20 * time.Second))
	msg, err := wire.NewReader(s).ReadBytes(1 << 20)
	if err != nil {
		t.Errorf("%s reads an initial message: %v", d.name, err)
		_ = s.Reset()
		return
	}
	sess, pt, _, err := e2ee.Respond(d.id, d.store, msg, nil)
	if err != nil {
		t.Errorf("%s Respond: %v", d.name, err)
		_ = s.Reset()
		return
	}
	reply, _, err := sess.Encrypt(append([]byte("re: "), pt...), nil)
	if err != nil {
		t.Errorf("%s Encrypt: %v", d.name, err)
		_ = s.Reset()
		return
	}
	if err := wire.WriteBytes(s, reply, 1<<20); err != nil {
		t.Errorf("%s writes its reply: %v", d.name, err)
	}
}
