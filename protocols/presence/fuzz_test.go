package presence

import (
	"bytes"
	"io"
	"reflect"
	"testing"
	"time"

	"github.com/kinmesh/kinmesh/protocols/wire"
	"github.com/kinmesh/kinmesh/storage"
)

// fuzzSeeds are valid frames, beacons and records.
func fuzzSeeds(t testing.TB) (frames, beacons, records [][]byte, a, b *device) {
	a, b = newDevice(t, "alice"), newDevice(t, "bob")
	befriend(a, b)
	now := time.UnixMilli(1_790_000_000_000)
	env := craft(t, a, a.id, b.account(), b, statusOnline, now)
	frames = [][]byte{marshal(encodeFrame(env)), marshal(encodeReply(nil))}
	key, _ := b.account().SigningKey()
	for _, st := range []status{statusOnline, statusOffline, statusHidden} {
		bc := beacon{status: st, sent: now, recipient: key, sig: a.id.Sign(signedMessage(st, now, key))}
		beacons = append(beacons, bc.encode())
	}
	records = [][]byte{stored{account: key, status: statusOnline, sent: now, received: now.Add(time.Second)}.encode()}
	return frames, beacons, records, a, b
}

func FuzzDecodeBeacon(f *testing.F) {
	_, beacons, _, _, _ := fuzzSeeds(f)
	for _, s := range beacons {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		b, err := decodeBeacon(in)
		if err != nil {
			return
		}
		again, err := decodeBeacon(b.encode())
		if err != nil || !reflect.DeepEqual(again, b) {
			t.Fatalf("beacon round trip: %v\n%+v\n%+v", err, again, b)
		}
	})
}

func FuzzDecodeFrame(f *testing.F) {
	frames, _, _, _, _ := fuzzSeeds(f)
	for _, s := range frames {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		env, err := decodeEnvelopeFrame(in)
		if err != nil {
			return
		}
		again, err := decodeEnvelopeFrame(marshal(encodeFrame(env)))
		if err != nil || !bytes.Equal(again, env) {
			t.Fatalf("frame round trip: %v", err)
		}
	})
}

func FuzzDecodeStored(f *testing.F) {
	_, _, recs, _, _ := fuzzSeeds(f)
	for _, s := range recs {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		s, err := decodeStored(in)
		if err != nil {
			return
		}
		again, err := decodeStored(s.encode())
		if err != nil || !reflect.DeepEqual(again, s) {
			t.Fatalf("stored round trip: %v\n%+v\n%+v", err, again, s)
		}
	})
}

// memStream is an in-memory stream: reads come from in, writes go to out.
type memStream struct {
	in  io.Reader
	out bytes.Buffer
}

func (m *memStream) Read(p []byte) (int, error)  { return m.in.Read(p) }
func (m *memStream) Write(p []byte) (int, error) { return m.out.Write(p) }
func (m *memStream) SetDeadline(time.Time) error { return nil }

// FuzzServe drives the beacon handler with arbitrary bytes: it never
// panics, answers with a frame the sender decodes, and takes nothing it
// can't verify.
func FuzzServe(f *testing.F) {
	frames, _, _, a, b := fuzzSeeds(f)
	for _, fr := range frames {
		var buf bytes.Buffer
		_ = wire.WriteBytes(&buf, fr, maxFrame)
		f.Add(buf.Bytes())
	}
	st, err := storage.Open(f.TempDir(), storage.WithSyncWrites(false), storage.WithLogger(discard))
	if err != nil {
		f.Fatal(err)
	}
	defer st.Close()
	svc, err := newService(st, Account{Identity: b.id, MailboxKey: b.mk}, b.book, WithLogger(discard))
	if err != nil {
		f.Fatal(err)
	}
	defer svc.Close()
	f.Fuzz(func(t *testing.T, in []byte) {
		ms := &memStream{in: bytes.NewReader(in)}
		_ = svc.serve(ms)
		if ms.out.Len() > 0 {
			fr, err := wire.NewReader(&ms.out).ReadBytes(maxFrame)
			if err != nil {
				t.Fatalf("bad reply frame: %v", err)
			}
			if _, err := decodeEnvelopeFrame(fr); err != nil {
				t.Fatalf("undecodable reply: %v", err)
			}
		}
		if p := svc.Lookup(a.account()); p.Online {
			// Only the seed's real beacon can do this; it is fresh only
			// near its timestamp, so in practice never.
			t.Logf("accepted a beacon: %+v", p)
		}
	})
}
