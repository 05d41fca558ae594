package e2ee

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/kinmesh/kinmesh/protocols/e2ee/pb"
)

func TestPrekeyStoreLifecycle(t *testing.T) {
	id := drTestIdentity(t, "store/owner")
	r := drTestRand("store/lifecycle")
	s, err := NewPrekeyStore(id, drTestT0, r)
	if err != nil {
		t.Fatal(err)
	}
	if n, npq := s.Counts(); n != 0 || npq != 0 {
		t.Errorf("Counts of a new store: got %d, %d, want 0, 0", n, npq)
	}
	s2, err := s.GenerateOneTime(id, 5, 3, drTestT0, r)
	if err != nil {
		t.Fatal(err)
	}
	if n, npq := s.Counts(); n != 0 || npq != 0 {
		t.Errorf("GenerateOneTime changed its receiver: got %d, %d", n, npq)
	}
	if n, npq := s2.Counts(); n != 5 || npq != 3 {
		t.Errorf("Counts: got %d, %d, want 5, 3", n, npq)
	}
	if !s2.Owner().Equal(id.Public()) {
		t.Errorf("Owner: got %s, want %s", s2.Owner().AccountID(), id.AccountID())
	}

	u := s2.Upload()
	if err := u.Verify(); err != nil {
		t.Fatalf("Upload().Verify: %v", err)
	}
	ids := map[PrekeyID]bool{u.SignedPrekey.ID: true, u.LastResort.ID: true}
	for _, p := range u.OneTime {
		ids[p.ID] = true
	}
	for _, p := range u.PQOneTime {
		ids[p.ID] = true
	}
	if len(ids) != 10 || ids[0] {
		t.Errorf("prekey ids: got %v, want 10 distinct non-zero ids", ids)
	}

	raw := s2.Marshal()
	back, err := UnmarshalPrekeyStore(raw)
	if err != nil {
		t.Fatalf("UnmarshalPrekeyStore: %v", err)
	}
	if !bytes.Equal(back.Marshal(), raw) {
		t.Errorf("store round trip: encodings differ")
	}

	consumed := []PrekeyID{u.OneTime[1].ID, u.PQOneTime[0].ID, u.SignedPrekey.ID, 9999}
	s3 := back.Consume(consumed...)
	if n, npq := s3.Counts(); n != 4 || npq != 2 {
		t.Errorf("Counts after Consume: got %d, %d, want 4, 2", n, npq)
	}
	if n, npq := back.Counts(); n != 5 || npq != 3 {
		t.Errorf("Consume changed its receiver: got %d, %d", n, npq)
	}
	if s3.signedByID(u.SignedPrekey.ID) == nil {
		t.Errorf("Consume removed the signed prekey")
	}

	if _, err := s3.GenerateOneTime(id, MaxOneTimePrekeys, 0, drTestT0, r); !errors.Is(err, ErrTooLarge) {
		t.Errorf("GenerateOneTime past the cap: got %v, want ErrTooLarge", err)
	}
	if _, err := s3.GenerateOneTime(id, -1, 0, drTestT0, r); !errors.Is(err, ErrTooLarge) {
		t.Errorf("GenerateOneTime(-1): got %v, want ErrTooLarge", err)
	}
	other := drTestIdentity(t, "store/other")
	if _, err := s3.GenerateOneTime(other, 1, 1, drTestT0, r); !errors.Is(err, ErrMalformed) {
		t.Errorf("GenerateOneTime with another identity: got %v, want ErrMalformed", err)
	}
	if _, err := s3.Rotate(other, drTestT0, r); !errors.Is(err, ErrMalformed) {
		t.Errorf("Rotate with another identity: got %v, want ErrMalformed", err)
	}
	if _, err := NewPrekeyStore(id, drTestT0, bytes.NewReader(nil)); err == nil {
		t.Errorf("NewPrekeyStore with no randomness: got nil error")
	}
}

// TestPrekeyRotation: rotated prekeys keep working for PrekeyGrace, then
// are gone.
func TestPrekeyRotation(t *testing.T) {
	alice, bob := drTestIdentity(t, "rotate/alice"), drTestIdentity(t, "rotate/bob")
	r := drTestRand("rotate")
	s, err := NewPrekeyStore(bob, drTestT0, r)
	if err != nil {
		t.Fatal(err)
	}
	if s.NeedsRotation(drTestT0.Add(SignedPrekeyRotation - time.Second)) {
		t.Errorf("NeedsRotation before %v: got true", SignedPrekeyRotation)
	}
	if !s.NeedsRotation(drTestT0.Add(SignedPrekeyRotation)) {
		t.Errorf("NeedsRotation after %v: got false", SignedPrekeyRotation)
	}
	oldBundle := drTestBundle(t, s, false, false)
	a, err := Initiate(alice, oldBundle)
	if err != nil {
		t.Fatal(err)
	}
	msg, _, err := a.Encrypt([]byte("old bundle"), nil)
	if err != nil {
		t.Fatal(err)
	}

	rotatedAt := drTestT0.Add(SignedPrekeyRotation)
	s2, err := s.Rotate(bob, rotatedAt, r)
	if err != nil {
		t.Fatal(err)
	}
	if s2.NeedsRotation(rotatedAt) {
		t.Errorf("NeedsRotation right after Rotate: got true")
	}
	if got := s2.Upload().SignedPrekey.ID; got == oldBundle.SignedPrekey.ID {
		t.Errorf("Rotate kept the signed prekey id %d", got)
	}
	if _, pt, _, err := Respond(bob, s2, msg, nil); err != nil || string(pt) != "old bundle" {
		t.Errorf("Respond in the grace period: got %q, %v", pt, err)
	}
	pruned := s2.Prune(rotatedAt.Add(PrekeyGrace + time.Second))
	if _, _, _, err := Respond(bob, pruned, msg, nil); !errors.Is(err, ErrNoPrekey) {
		t.Errorf("Respond after the grace period: got %v, want ErrNoPrekey", err)
	}
	if _, _, _, err := Respond(bob, s2.Prune(rotatedAt.Add(PrekeyGrace-time.Second)), msg, nil); err != nil {
		t.Errorf("Respond just before the end of the grace period: %v", err)
	}

	// Many rotations within the grace period keep at most prekeyMaxRetired.
	many := s2
	for i := range 20 {
		if many, err = many.Rotate(bob, rotatedAt.Add(time.Duration(i)*time.Hour), r); err != nil {
			t.Fatal(err)
		}
	}
	if len(many.signed) != 1+prekeyMaxRetired || len(many.lastResort) != 1+prekeyMaxRetired {
		t.Errorf("retired prekeys: got %d, %d, want %d", len(many.signed)-1, len(many.lastResort)-1, prekeyMaxRetired)
	}
	if _, err := UnmarshalPrekeyStore(many.Marshal()); err != nil {
		t.Errorf("UnmarshalPrekeyStore after rotations: %v", err)
	}
}

func TestBundleRoundTrip(t *testing.T) {
	bob := drTestIdentity(t, "bundle/bob")
	s := drTestStore(t, bob, "bundle", 1, 1)
	for _, tt := range []struct {
		name          string
		opk, pqOneOff bool
	}{
		{"all one-time prekeys", true, true},
		{"last resort, no one-time", false, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b := drTestBundle(t, s, tt.opk, tt.pqOneOff)
			raw, err := b.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			if len(raw) > maxBundleSize {
				t.Errorf("bundle size %d > maxBundleSize %d", len(raw), maxBundleSize)
			}
			back, err := ParseBundle(raw)
			if err != nil {
				t.Fatalf("ParseBundle: %v", err)
			}
			again, _ := back.Marshal()
			if !bytes.Equal(raw, again) {
				t.Errorf("bundle round trip: encodings differ")
			}
			if (back.OneTimePrekey != nil) != tt.opk || back.PQPrekey.LastResort == tt.pqOneOff {
				t.Errorf("bundle prekeys: got one-time %v, last resort %v", back.OneTimePrekey != nil, back.PQPrekey.LastResort)
			}
			if !back.SignedPrekey.Created.Equal(drTestT0) {
				t.Errorf("Created: got %v, want %v", back.SignedPrekey.Created, drTestT0)
			}
		})
	}
}

// TestBundleForged: every signature and kind is checked; a relay can't
// swap, relabel, re-date or renumber a prekey.
func TestBundleForged(t *testing.T) {
	bob, mallory := drTestIdentity(t, "forged/bob"), drTestIdentity(t, "forged/mallory")
	s := drTestStore(t, bob, "forged", 2, 2)
	ms := drTestStore(t, mallory, "forged/mallory", 1, 1)
	good := drTestBundle(t, s, true, true)
	goodRaw, _ := good.Marshal()
	mu := ms.Upload()
	u := s.Upload()
	var base pb.PrekeyBundle
	if err := proto.Unmarshal(goodRaw, &base); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		mutate func(m *pb.PrekeyBundle)
		want   error
	}{
		{"signed prekey key swapped", func(m *pb.PrekeyBundle) { m.SignedPrekey.Key = mu.SignedPrekey.Key.Bytes() }, ErrSignature},
		{"signed prekey renumbered", func(m *pb.PrekeyBundle) { m.SignedPrekey.Id++ }, ErrSignature},
		{"signed prekey re-dated", func(m *pb.PrekeyBundle) { m.SignedPrekey.CreatedUnix++ }, ErrSignature},
		{"signed prekey signature flipped", func(m *pb.PrekeyBundle) { m.SignedPrekey.Signature[3] ^= 1 }, ErrSignature},
		{"signed prekey from another account", func(m *pb.PrekeyBundle) { m.SignedPrekey = mu.SignedPrekey.toWire() }, ErrSignature},
		{"one-time prekey as signed prekey", func(m *pb.PrekeyBundle) { m.SignedPrekey = u.OneTime[1].toWire() }, ErrMalformed},
		{"signed prekey relabelled one-time", func(m *pb.PrekeyBundle) {
			m.OneTimePrekey = proto.Clone(m.SignedPrekey).(*pb.Prekey)
			m.OneTimePrekey.Kind = prekeyKindOneTime
		}, ErrSignature},
		{"pq prekey key swapped", func(m *pb.PrekeyBundle) { m.PqPrekey.Key = u.PQOneTime[1].Key.Bytes() }, ErrSignature},
		{"pq prekey relabelled last resort", func(m *pb.PrekeyBundle) { m.PqPrekey.Kind = prekeyKindLastResort }, ErrSignature},
		{"pq prekey of kind X25519", func(m *pb.PrekeyBundle) { m.PqPrekey.Kind = prekeyKindSigned }, ErrMalformed},
		{"pq prekey truncated", func(m *pb.PrekeyBundle) { m.PqPrekey.Key = m.PqPrekey.Key[:100] }, ErrMalformed},
		{"pq prekey missing", func(m *pb.PrekeyBundle) { m.PqPrekey = nil }, ErrMalformed},
		{"one-time prekey from another account", func(m *pb.PrekeyBundle) { m.OneTimePrekey = mu.OneTime[0].toWire() }, ErrSignature},
		{"one-time prekey with id 0", func(m *pb.PrekeyBundle) { m.OneTimePrekey.Id = 0 }, ErrMalformed},
		{"identity of another account", func(m *pb.PrekeyBundle) { m.Identity = mallory.Public().toWire() }, ErrSignature},
		{"identity missing", func(m *pb.PrekeyBundle) { m.Identity = nil }, ErrMalformed},
		{"version 2", func(m *pb.PrekeyBundle) { m.Version = 2 }, ErrVersion},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := proto.Clone(&base).(*pb.PrekeyBundle)
			tt.mutate(m)
			raw, _ := proto.Marshal(m)
			if _, err := ParseBundle(raw); !errors.Is(err, tt.want) {
				t.Errorf("ParseBundle: got %v, want %v", err, tt.want)
			}
		})
	}
	if _, err := ParseBundle(make([]byte, maxBundleSize+1)); !errors.Is(err, ErrTooLarge) {
		t.Errorf("ParseBundle oversized: got %v, want ErrTooLarge", err)
	}
	if _, err := ParseBundle([]byte{0xff}); !errors.Is(err, ErrMalformed) {
		t.Errorf("ParseBundle garbage: got %v, want ErrMalformed", err)
	}

	// Initiate checks a bundle built by hand as well.
	forged := *good
	forged.SignedPrekey.Key = mu.SignedPrekey.Key
	if _, err := Initiate(drTestIdentity(t, "forged/alice"), &forged); !errors.Is(err, ErrSignature) {
		t.Errorf("Initiate with a forged bundle: got %v, want ErrSignature", err)
	}
	if _, err := (&Bundle{}).Marshal(); !errors.Is(err, ErrMalformed) {
		t.Errorf("Marshal of an empty bundle: got %v, want ErrMalformed", err)
	}
}

func TestUploadRoundTrip(t *testing.T) {
	bob, mallory := drTestIdentity(t, "upload/bob"), drTestIdentity(t, "upload/mallory")
	s := drTestStore(t, bob, "upload", 4, 3)
	u := s.Upload()
	raw, err := u.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	back, err := ParseUpload(raw)
	if err != nil {
		t.Fatalf("ParseUpload: %v", err)
	}
	again, _ := back.Marshal()
	if !bytes.Equal(raw, again) || len(back.OneTime) != 4 || len(back.PQOneTime) != 3 {
		t.Errorf("upload round trip: got %d/%d one-time prekeys, equal encodings %v", len(back.OneTime), len(back.PQOneTime), bytes.Equal(raw, again))
	}
	full := drTestStore(t, bob, "upload/full", MaxOneTimePrekeys, MaxOneTimePrekeys)
	fullRaw, err := full.Upload().Marshal()
	if err != nil || len(fullRaw) > maxUploadSize {
		t.Fatalf("a full upload: %d bytes, %v; want at most %d", len(fullRaw), err, maxUploadSize)
	}
	if _, err := ParseUpload(fullRaw); err != nil {
		t.Errorf("ParseUpload of a full upload: %v", err)
	}
	mu := drTestStore(t, mallory, "upload/mallory", 1, 1).Upload()
	var base pb.PrekeyUpload
	if err := proto.Unmarshal(raw, &base); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		mutate func(m *pb.PrekeyUpload)
		want   error
	}{
		{"duplicate one-time id", func(m *pb.PrekeyUpload) { m.OneTime = append(m.OneTime, m.OneTime[0]) }, ErrMalformed},
		{"foreign one-time prekey", func(m *pb.PrekeyUpload) { m.OneTime[2] = mu.OneTime[0].toWire(); m.OneTime[2].Id = 100 }, ErrSignature},
		{"foreign pq one-time prekey", func(m *pb.PrekeyUpload) { m.PqOneTime[1] = mu.PQOneTime[0].toWire(); m.PqOneTime[1].Id = 101 }, ErrSignature},
		{"last resort as one-time", func(m *pb.PrekeyUpload) { m.PqOneTime[0] = m.LastResort }, ErrMalformed},
		{"one-time as last resort", func(m *pb.PrekeyUpload) { m.LastResort = m.PqOneTime[0] }, ErrMalformed},
		{"too many", func(m *pb.PrekeyUpload) {
			for range MaxOneTimePrekeys {
				m.OneTime = append(m.OneTime, m.OneTime[0])
			}
		}, ErrTooLarge},
		{"version 0", func(m *pb.PrekeyUpload) { m.Version = 0 }, ErrVersion},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := proto.Clone(&base).(*pb.PrekeyUpload)
			tt.mutate(m)
			b, _ := proto.Marshal(m)
			if _, err := ParseUpload(b); !errors.Is(err, tt.want) {
				t.Errorf("ParseUpload: got %v, want %v", err, tt.want)
			}
		})
	}
	if _, err := ParseUpload(make([]byte, maxUploadSize+1)); !errors.Is(err, ErrTooLarge) {
		t.Errorf("ParseUpload oversized: got %v, want ErrTooLarge", err)
	}
}

func TestUnmarshalPrekeyStoreMalformed(t *testing.T) {
	bob := drTestIdentity(t, "storebad/bob")
	s := drTestStore(t, bob, "storebad", 2, 2)
	var base pb.PrekeyStore
	if err := proto.Unmarshal(s.Marshal(), &base); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		mutate func(m *pb.PrekeyStore)
		want   error
	}{
		{"version 2", func(m *pb.PrekeyStore) { m.Version = 2 }, ErrVersion},
		{"no signed prekey", func(m *pb.PrekeyStore) { m.Signed = nil }, ErrMalformed},
		{"no owner", func(m *pb.PrekeyStore) { m.Owner = nil }, ErrMalformed},
		{"secret of another key", func(m *pb.PrekeyStore) { m.OneTime[0].Secret = m.OneTime[1].Secret }, ErrMalformed},
		{"short ML-KEM seed", func(m *pb.PrekeyStore) { m.PqOneTime[0].Secret = m.PqOneTime[0].Secret[:10] }, ErrMalformed},
		{"duplicate id", func(m *pb.PrekeyStore) { m.OneTime = append(m.OneTime, m.OneTime[0]) }, ErrMalformed},
		{"id beyond next id", func(m *pb.PrekeyStore) { m.NextId = 2 }, ErrMalformed},
		{"current prekey retired", func(m *pb.PrekeyStore) { m.Signed[0].RetireUnix = 5 }, ErrMalformed},
		{"nil entry", func(m *pb.PrekeyStore) { m.PqOneTime = append(m.PqOneTime, nil) }, ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := proto.Clone(&base).(*pb.PrekeyStore)
			tt.mutate(m)
			b, _ := proto.Marshal(m)
			if _, err := UnmarshalPrekeyStore(b); !errors.Is(err, tt.want) {
				t.Errorf("UnmarshalPrekeyStore: got %v, want %v", err, tt.want)
			}
		})
	}
	if _, err := UnmarshalPrekeyStore(make([]byte, maxPrekeyStoreSize+1)); !errors.Is(err, ErrTooLarge) {
		t.Errorf("oversized: got %v, want ErrTooLarge", err)
	}
}

// drTestTyped reports whether err is one of the package's sentinels.
func drTestTyped(err error) bool {
	for _, e := range []error{ErrMalformed, ErrVersion, ErrSignature, ErrDecrypt, ErrTooLarge,
		ErrReplay, ErrTooManySkipped, ErrNoPrekey, ErrNewSession} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

func FuzzParseBundle(f *testing.F) {
	s := drTestStore(f, drTestIdentity(f, "fuzz/bob"), "fuzz", 1, 1)
	for _, opk := range []bool{true, false} {
		raw, _ := drTestBundle(f, s, opk, opk).Marshal()
		f.Add(raw)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		bundle, err := ParseBundle(b)
		if err != nil {
			if !drTestTyped(err) {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		raw, err := bundle.Marshal()
		if err != nil {
			t.Fatalf("Marshal of a parsed bundle: %v", err)
		}
		if _, err := ParseBundle(raw); err != nil {
			t.Fatalf("round trip: %v", err)
		}
	})
}

func FuzzParseUpload(f *testing.F) {
	raw, _ := drTestStore(f, drTestIdentity(f, "fuzz/bob"), "fuzz", 2, 1).Upload().Marshal()
	f.Add(raw)
	f.Fuzz(func(t *testing.T, b []byte) {
		u, err := ParseUpload(b)
		if err != nil {
			if !drTestTyped(err) {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		if _, err := u.Marshal(); err != nil {
			t.Fatalf("Marshal of a parsed upload: %v", err)
		}
	})
}

func FuzzUnmarshalPrekeyStore(f *testing.F) {
	f.Add(drTestStore(f, drTestIdentity(f, "fuzz/bob"), "fuzz", 2, 1).Marshal())
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := UnmarshalPrekeyStore(b)
		if err != nil {
			if !drTestTyped(err) {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		if _, err := UnmarshalPrekeyStore(s.Marshal()); err != nil {
			t.Fatalf("round trip: %v", err)
		}
		_ = s.Upload()
	})
}
