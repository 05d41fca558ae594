package moments

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"io"
	"testing"
	"time"

	"github.com/kinmesh/kinmesh/protocols/blobs"
	"github.com/kinmesh/kinmesh/protocols/wire"
	"github.com/kinmesh/kinmesh/protocols/wire/wiretest"
)

var (
	fuzzOwner    = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{1}, 32))
	fuzzAudience = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{2}, 32))
	fuzzDelete   = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{3}, 32))
	fuzzTopic    = TopicName([32]byte{9})
	fuzzNow      = time.UnixMilli(1_800_000_000_000)
)

// fuzzFrames are valid frames of every kind, signed for fuzzTopic.
func fuzzFrames(t testing.TB) [][]byte {
	post, item := itemID{1}, itemID{2}
	var out [][]byte
	for _, c := range []struct {
		f   *frame
		key ed25519.PrivateKey
	}{
		{&frame{kind: KindPost, item: post, post: post, created: fuzzNow, wrappedKey: []byte("wrapped"), sealed: bytes.Repeat([]byte{5}, 60), media: []blobs.BlobID{{7}}}, fuzzOwner},
		{&frame{kind: KindReaction, item: item, post: post, created: fuzzNow, deleteKey: fuzzDelete.Public().(ed25519.PublicKey), sealed: bytes.Repeat([]byte{6}, 60)}, fuzzAudience},
		{&frame{kind: KindWithdraw, item: item, post: post, created: fuzzNow, deleteKey: fuzzDelete.Public().(ed25519.PublicKey), proof: ed25519.Sign(fuzzDelete, withdrawMessage(post, item))}, fuzzAudience},
		{&frame{kind: KindTombstone, item: post, post: post, created: fuzzNow, proofs: []blobProof{{id: blobs.BlobID{7}, sig: make([]byte, 64)}}}, fuzzOwner},
	} {
		raw, err := encodeFrame(fuzzTopic, c.f, c.key)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, raw)
	}
	return out
}

func FuzzParseFrame(f *testing.F) {
	for _, raw := range fuzzFrames(f) {
		f.Add(raw)
	}
	// A post with one medium too many.
	tooMany, err := encodeFrame(fuzzTopic, &frame{kind: KindPost, item: itemID{1}, post: itemID{1}, created: fuzzNow, wrappedKey: []byte("w"), sealed: []byte("s"), media: make([]blobs.BlobID, MaxMedia+1)}, fuzzOwner)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(tooMany)
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, err := parseFrame(b)
		if err != nil {
			return
		}
		again, err := encodeFrame(fuzzTopic, fr, fuzzOwner)
		if err != nil {
			return // re-encoding may grow past the cap
		}
		fr2, err := parseFrame(again)
		if err != nil {
			t.Fatalf("re-encoded frame refused: %v", err)
		}
		if fr2.kind != fr.kind || fr2.item != fr.item || fr2.post != fr.post || !fr2.created.Equal(fr.created) ||
			!bytes.Equal(fr2.sealed, fr.sealed) || !bytes.Equal(fr2.wrappedKey, fr.wrappedKey) || len(fr2.media) != len(fr.media) || len(fr2.proofs) != len(fr.proofs) {
			t.Fatal("round trip changed the frame")
		}
	})
}

// FuzzCheckFrame is the topic validators' core: whatever it accepts is
// well formed and signed by the key its kind requires.
func FuzzCheckFrame(f *testing.F) {
	for _, raw := range fuzzFrames(f) {
		f.Add(raw)
	}
	keys := feedKeys{owner: fuzzOwner.Public().(ed25519.PublicKey), audience: fuzzAudience.Public().(ed25519.PublicKey)}
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, err := checkFrame(b, fuzzTopic, keys, fuzzNow, MaxGossipAge)
		if err != nil {
			return
		}
		pub := keys.audience
		if fr.kind == KindPost || fr.kind == KindTombstone {
			pub = keys.owner
		}
		if !fr.verify(fuzzTopic, pub) || fr.verify(fuzzTopic+"x", pub) {
			t.Fatal("accepted a frame its key does not sign for this topic")
		}
	})
}

func FuzzDecodeRequest(f *testing.F) {
	pub := fuzzOwner.Public().(ed25519.PublicKey)
	for _, r := range []request{
		{kind: reqRegister, owner: pub, topic: fuzzTopic, audience: pub, time: fuzzNow, sig: make([]byte, 64)},
		{kind: reqKeep, topic: fuzzTopic, frames: fuzzFrames(f)},
		{kind: reqBackfill, topic: fuzzTopic, after: 9, limit: 10, time: fuzzNow, sig: make([]byte, 64)},
		{kind: reqPurge, owner: pub, time: fuzzNow, sig: make([]byte, 64)},
		{kind: reqPurge, owner: pub, time: fuzzNow, sig: make([]byte, 64), mediaAfter: &blobs.BlobID{1}, confirmed: []blobs.BlobID{{2}, {3}}},
	} {
		f.Add(marshal(encodeRequest(r)))
	}
	f.Add(wiretest.Submessage(fieldRequestPurge, wiretest.EmptyEntries(fieldPurgeConfirm, MaxPurgeMedia+1)))
	// Over the frame cap: one body, and two bodies that merge.
	f.Add(marshal(encodeRequest(request{kind: reqKeep, topic: fuzzTopic, frames: make([][]byte, MaxKeepFrames+1)})))
	f.Add(append(wiretest.Submessage(fieldRequestKeep, wiretest.EmptyEntries(fieldKeepFrames, 40)), wiretest.Submessage(fieldRequestKeep, wiretest.EmptyEntries(fieldKeepFrames, 40))...))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, code := decodeRequest(b)
		if code != CodeOK {
			return
		}
		again, code := decodeRequest(marshal(encodeRequest(r)))
		if code != CodeOK || again.kind != r.kind || again.topic != r.topic || again.after != r.after ||
			!bytes.Equal(again.sig, r.sig) || len(again.frames) != len(r.frames) || !again.time.Equal(r.time) ||
			(again.mediaAfter == nil) != (r.mediaAfter == nil) || len(again.confirmed) != len(r.confirmed) {
			t.Fatalf("round trip changed the request (%v)", code)
		}
	})
}

func FuzzDecodeResponse(f *testing.F) {
	for _, r := range []response{
		{code: CodeOK, codes: []Code{CodeOK, CodeQuota}},
		{code: CodeOK, items: []keptItem{{seq: 1, frame: fuzzFrames(f)[0]}}, more: true},
		{code: CodeOK, media: []blobs.BlobID{{1}}, deleted: 3},
		{code: CodeOK, media: []blobs.BlobID{{1}, {2}}, more: true},
		{code: CodeRateLimited, retryAfter: time.Second},
	} {
		f.Add(marshal(encodeResponse(r)))
	}
	// Over the caps, in entries of two bytes.
	f.Add(wiretest.EmptyEntries(fieldRespItems, MaxPageItems+1))
	f.Add(wiretest.Submessage(fieldRespCodes, make([]byte, MaxKeepFrames+1)))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := decodeResponse(b)
		if err != nil {
			return
		}
		again, err := decodeResponse(marshal(encodeResponse(r)))
		if err != nil || again.code != r.code || len(again.items) != len(r.items) || len(again.codes) != len(r.codes) ||
			len(again.media) != len(r.media) || again.more != r.more {
			t.Fatalf("round trip changed the response (%v)", err)
		}
	})
}

func FuzzDecodeControls(f *testing.F) {
	d := keyDistribution{senderKey: []byte("sk"), epoch: 3, secret: [32]byte{4}, owner: fuzzOwner.Public().(ed25519.PublicKey)}
	f.Add(d.encode())
	f.Add(postKey{post: itemID{1}, key: [32]byte{2}}.encode())
	f.Fuzz(func(t *testing.T, b []byte) {
		if d, err := decodeDistribution(b); err == nil {
			again, err := decodeDistribution(d.encode())
			if err != nil || again.epoch != d.epoch || again.secret != d.secret || !bytes.Equal(again.senderKey, d.senderKey) {
				t.Fatalf("distribution round trip: %v", err)
			}
		}
		if p, err := decodePostKey(b); err == nil {
			if again, err := decodePostKey(p.encode()); err != nil || again != p {
				t.Fatalf("post key round trip: %v", err)
			}
		}
	})
}

func FuzzDecodeRecords(f *testing.F) {
	fs := &feedState{key: "k", owner: fuzzOwner.Public().(ed25519.PublicKey), nextSeq: 4, items: 2, bytes: 10,
		epochs: []epochState{{topic: fuzzTopic, audience: fuzzAudience.Public().(ed25519.PublicKey), registered: fuzzNow, index: 0}}}
	f.Add(fs.encode())
	f.Fuzz(func(t *testing.T, b []byte) {
		if fs, err := decodeFeed("k", b); err == nil {
			if _, err := decodeFeed("k", fs.encode()); err != nil {
				t.Fatalf("feed round trip: %v", err)
			}
		}
		// Device records: refuse or load, never panic.
		_, _ = decodeOwn(b)
		_, _ = decodeFollow(b)
	})
}

type memStream struct {
	in  io.Reader
	out bytes.Buffer
}

func (m *memStream) Read(p []byte) (int, error)  { return m.in.Read(p) }
func (m *memStream) Write(p []byte) (int, error) { return m.out.Write(p) }
func (m *memStream) SetDeadline(time.Time) error { return nil }

// FuzzRelay drives a relay's request handling and its topic validator with
// arbitrary bytes: it answers or refuses, never panics, and keeps nothing
// that isn't a validly signed frame of a registered feed.
func FuzzRelay(f *testing.F) {
	r := startRelay(f, WithRequestRate(1<<20, 1<<20), WithTopicRate(1<<20, 1<<20))
	// Register fuzzTopic for fuzzOwner straight through the handler.
	pub := fuzzOwner.Public().(ed25519.PublicKey)
	now := time.Now()
	reg := request{kind: reqRegister, owner: pub, topic: fuzzTopic, audience: fuzzAudience.Public().(ed25519.PublicKey), time: now,
		sig: ed25519.Sign(fuzzOwner, registerMessage(r.h.ID(), pub, fuzzTopic, fuzzAudience.Public().(ed25519.PublicKey), now))}
	var in bytes.Buffer
	_ = wire.Write(&in, encodeRequest(reg), maxRequestFrame)
	if err := r.svc.serve(context.Background(), &memStream{in: &in}, nil, "fuzzer"); err != nil {
		f.Fatal(err)
	}
	for _, raw := range fuzzFrames(f) {
		var b bytes.Buffer
		_ = wire.Write(&b, encodeRequest(request{kind: reqKeep, topic: fuzzTopic, frames: [][]byte{raw}}), maxRequestFrame)
		f.Add(b.Bytes(), raw)
	}
	f.Fuzz(func(t *testing.T, stream, data []byte) {
		_ = r.svc.serve(context.Background(), &memStream{in: bytes.NewReader(stream)}, nil, "fuzzer")
		err := r.svc.validate(fuzzTopic, "fuzzer", data)
		if err == nil {
			if _, perr := parseFrame(data); perr != nil {
				t.Fatalf("validator accepted an unparsable frame: %v", perr)
			}
		}
	})
}
