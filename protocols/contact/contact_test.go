package contact

import (
	"bytes"
	"crypto/rand"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"google.golang.org/protobuf/proto"

	"github.com/kinmesh/kinmesh/protocols/contact/pb"
	"github.com/kinmesh/kinmesh/protocols/e2ee"
)

func newPeer(t testing.TB) peer.ID {
	_, pub, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := peer.IDFromPublicKey(pub)
	return id
}

func testRecord(t testing.TB) (*e2ee.Identity, Record) {
	t.Helper()
	id, err := e2ee.NewIdentity(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	mk, err := e2ee.NewMailboxKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	relay := ma.StringCast("/ip4/198.18.0.1/tcp/4001/p2p/" + newPeer(t).String())
	return id, Record{
		Identity:   id.Public(),
		Seq:        1,
		IssuedAt:   time.Unix(1_800_000_000, 0),
		Name:       "Grandma Rosa",
		HomeRelays: []ma.Multiaddr{relay},
		Devices:    []peer.ID{newPeer(t)},
		MailboxID:  "abcdefghijklmnopqrstuvwxyz234567abcdefghijklmnopqrst",
		MailboxKey: mk.Public(),
	}
}

func TestSignParseRoundTrip(t *testing.T) {
	id, r := testRecord(t)
	s, err := r.Sign(id)
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	got, err := Parse(s.Raw)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if got.AccountID() != id.AccountID() || got.Name != r.Name || got.Seq != 1 ||
		!got.IssuedAt.Equal(r.IssuedAt) || len(got.HomeRelays) != 1 || !got.HomeRelays[0].Equal(r.HomeRelays[0]) ||
		got.Devices[0] != r.Devices[0] || got.MailboxID != r.MailboxID || !got.MailboxKey.Equal(r.MailboxKey) {
		t.Fatalf("round trip changed the record:\n got %+v\nwant %+v", got.Record, r)
	}
	if infos := got.Relays(); len(infos) != 1 {
		t.Fatalf("Relays() = %v", infos)
	}
}

func TestForgeries(t *testing.T) {
	id, r := testRecord(t)
	s, _ := r.Sign(id)
	other, _ := e2ee.NewIdentity(rand.Reader)

	var m pb.SignedRecord
	proto.Unmarshal(s.Raw, &m)
	var body pb.Record
	proto.Unmarshal(m.Record, &body)

	tests := []struct {
		name string
		raw  func() []byte
		want error
	}{
		{"altered name", func() []byte {
			b := proto.Clone(&body).(*pb.Record)
			b.Name = "Mallory"
			rb, _ := proto.Marshal(b)
			out, _ := proto.Marshal(&pb.SignedRecord{Record: rb, Signature: m.Signature})
			return out
		}, ErrSignature},
		{"signed by another identity", func() []byte {
			rb, _ := proto.Marshal(&body)
			out, _ := proto.Marshal(&pb.SignedRecord{Record: rb, Signature: other.Sign(signed(rb))})
			return out
		}, ErrSignature},
		{"unknown version", func() []byte {
			b := proto.Clone(&body).(*pb.Record)
			b.Version = 9
			rb, _ := proto.Marshal(b)
			out, _ := proto.Marshal(&pb.SignedRecord{Record: rb, Signature: id.Sign(signed(rb))})
			return out
		}, ErrVersion},
		{"too many relays", func() []byte {
			b := proto.Clone(&body).(*pb.Record)
			for range MaxRelays {
				b.HomeRelays = append(b.HomeRelays, b.HomeRelays[0])
			}
			rb, _ := proto.Marshal(b)
			out, _ := proto.Marshal(&pb.SignedRecord{Record: rb, Signature: id.Sign(signed(rb))})
			return out
		}, ErrMalformed},
		{"relay without peer id", func() []byte {
			b := proto.Clone(&body).(*pb.Record)
			b.HomeRelays = []string{"/ip4/198.18.0.1/tcp/4001"}
			rb, _ := proto.Marshal(b)
			out, _ := proto.Marshal(&pb.SignedRecord{Record: rb, Signature: id.Sign(signed(rb))})
			return out
		}, ErrMalformed},
		{"garbage", func() []byte { return []byte{0xff, 0x01, 0x02} }, ErrMalformed},
		{"oversized", func() []byte { return make([]byte, MaxRecordSize+1) }, ErrTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := Parse(tt.raw()); !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
	if _, err := r.Sign(other); !errors.Is(err, ErrSignature) {
		t.Fatalf("signing with a foreign identity: got %v, want ErrSignature", err)
	}
	bad := r
	bad.Name = strings.Repeat("x", MaxNameLen+1)
	if _, err := bad.Sign(id); !errors.Is(err, ErrMalformed) {
		t.Fatalf("overlong name: got %v, want ErrMalformed", err)
	}
}

func TestInvite(t *testing.T) {
	id, r := testRecord(t)
	s, _ := r.Sign(id)
	inv := Invite{Record: s, Bundle: []byte("bundle bytes")}
	for _, form := range []string{inv.String(), inv.URI(), "  " + inv.String() + "\n"} {
		got, err := ParseInvite(form)
		if err != nil {
			t.Fatalf("ParseInvite(%.30q…): %v", form, err)
		}
		if got.Record.AccountID() != id.AccountID() || !bytes.Equal(got.Bundle, inv.Bundle) {
			t.Fatalf("invite round trip: got %v %q", got.Record.AccountID(), got.Bundle)
		}
	}
	if !strings.HasPrefix(inv.URI(), "kinmesh://invite/") || !strings.HasPrefix(inv.String(), "kinmesh:") {
		t.Fatalf("forms: %q / %q", inv.String()[:20], inv.URI()[:20])
	}
	for _, bad := range []string{"", "hello", "kinmesh:!!!", "kinmesh:" + strings.Repeat("A", 2*MaxInviteSize)} {
		if _, err := ParseInvite(bad); err == nil {
			t.Errorf("ParseInvite(%.20q) = nil error", bad)
		}
	}
}

func TestDHTValidator(t *testing.T) {
	id, r := testRecord(t)
	s1, _ := r.Sign(id)
	r.Seq = 2
	s2, _ := r.Sign(id)
	_, other := testRecord(t)
	var v Validator
	key := DHTKey(id.AccountID())
	if err := v.Validate(key, s1.Raw); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	if err := v.Validate(DHTKey(other.AccountID()), s1.Raw); !errors.Is(err, ErrSignature) {
		t.Fatalf("record under another account's key: got %v, want ErrSignature", err)
	}
	if err := v.Validate("/pk/x", s1.Raw); !errors.Is(err, ErrMalformed) {
		t.Fatalf("wrong namespace: got %v", err)
	}
	if i, err := v.Select(key, [][]byte{s1.Raw, []byte("junk"), s2.Raw}); err != nil || i != 2 {
		t.Fatalf("Select = %d, %v; want 2 (highest seq)", i, err)
	}
	if !s2.Newer(s1.Record) || s1.Newer(s2.Record) {
		t.Fatal("Newer is wrong")
	}
}

func FuzzParse(f *testing.F) {
	id, r := testRecord(f)
	s, _ := r.Sign(id)
	f.Add(s.Raw)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := Parse(b)
		if err != nil {
			return
		}
		again, err := got.Record.Sign(id)
		if err == nil {
			if _, err := Parse(again.Raw); err != nil {
				t.Fatalf("re-signed record does not parse: %v", err)
			}
		}
	})
}

func FuzzParseInvite(f *testing.F) {
	id, r := testRecord(f)
	s, _ := r.Sign(id)
	f.Add(Invite{Record: s}.String())
	f.Add("kinmesh:")
	f.Fuzz(func(t *testing.T, in string) {
		inv, err := ParseInvite(in)
		if err != nil {
			return
		}
		if _, err := ParseInvite(inv.String()); err != nil {
			t.Fatalf("re-encoded invite does not parse: %v", err)
		}
	})
}
