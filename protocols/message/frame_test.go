package message

import (
	"context"
	"encoding/binary"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/kinmesh/kinmesh/protocols/message/pb"
)

// emptyEnvelopes returns the bytes of a Deliver with request id 7 and n
// empty envelopes, built by hand: 2 bytes each on the wire.
func emptyEnvelopes(n int) []byte {
	b := protowire.AppendTag(nil, 1, protowire.VarintType)
	b = protowire.AppendVarint(b, 7)
	for range n {
		b = protowire.AppendTag(b, 2, protowire.BytesType)
		b = protowire.AppendBytes(b, nil)
	}
	return b
}

// prefixed returns body as a frame: its uvarint length, then body.
func prefixed(body []byte) []byte {
	return append(binary.AppendUvarint(nil, uint64(len(body))), body...)
}

func noReserve(int) error { return nil }

// TestDeliverCountedBeforeDecoding: a Deliver frame of 2^20 empty
// envelopes (2 MiB, within the frame cap) is refused without being
// decoded: decoding it allocates next to nothing, where proto.Unmarshal
// built a slice header for each envelope (48 MiB), and nothing is reserved
// for decoded envelopes. Over the wire the device resets the stream (one
// status per envelope would not fit an ack), answers TOO_LARGE for every
// envelope of a frame that still fits one, and keeps working.
func TestDeliverCountedBeforeDecoding(t *testing.T) {
	body := emptyEnvelopes(1 << 20)
	var reserved int
	_, shape, err := decodeDeliver(body, func(n int) error { reserved += n; return nil })
	if !errors.Is(err, errTooManyEnvelopes) {
		t.Fatalf("decode %d empty envelopes: got %v, want errTooManyEnvelopes", 1<<20, err)
	}
	if shape.envelopes != 1<<20 || shape.requestID != 7 {
		t.Fatalf("got %d envelopes, request id %d; want %d, 7", shape.envelopes, shape.requestID, 1<<20)
	}
	if reserved != 0 {
		t.Fatalf("reserved %d bytes to decode a refused frame, want 0", reserved)
	}
	if allocs := testing.AllocsPerRun(3, func() { _, _, _ = decodeDeliver(body, noReserve) }); allocs > 2 {
		t.Fatalf("decoding a refused frame made %.0f allocations, want at most 2", allocs)
	}
	res := testing.Benchmark(func(b *testing.B) {
		for b.Loop() {
			_, _, _ = decodeDeliver(body, noReserve)
		}
	})
	if got, most := res.AllocedBytesPerOp(), int64(len(body)/64); got > most {
		t.Fatalf("decoding a refused frame of %d bytes allocated %d bytes, want at most %d", len(body), got, most)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	_, a, b := pair(t, ctx)
	mallory := newDevice(t, "mallory")
	if ack, err := deliverRaw(t, mallory, b, prefixed(body)); err == nil {
		t.Fatalf("got an answer of %d statuses, want the stream reset", len(ack.Statuses))
	}
	ack, err := deliverRaw(t, mallory, b, prefixed(emptyEnvelopes(maxRefusedAnswer)))
	if err != nil {
		t.Fatal(err)
	}
	if len(ack.Statuses) != maxRefusedAnswer || ack.RequestId != 7 {
		t.Fatalf("got %d statuses for request %d, want %d for request 7", len(ack.Statuses), ack.RequestId, maxRefusedAnswer)
	}
	for i, st := range ack.Statuses {
		if st != pb.DeliverAck_TOO_LARGE {
			t.Fatalf("status %d = %v, want TOO_LARGE", i, st)
		}
	}
	connect(t, ctx, a, b)
	sendAndWatch(t, ctx, a, b, "still fine")
}

// TestDeliverReservesFrameSize: the device reserves memory for what a
// frame's length prefix says, not for the 4 MiB cap. A device whose
// message service may use 1 MiB takes messages directly; reserving the
// cap for every frame, it reset every stream, and messages went through
// the relays.
func TestDeliverReservesFrameSize(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	limits := rcmgr.DefaultLimits
	libp2p.SetDefaultServiceLimits(&limits)
	cfg := rcmgr.PartialLimitConfig{
		Service: map[string]rcmgr.ResourceLimits{serviceName: {Memory: 1 << 20}},
	}.Build(limits.AutoScale())
	rm, err := rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(cfg))
	if err != nil {
		t.Fatal(err)
	}
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableMetrics(), libp2p.ResourceManager(rm))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	r := newRelay(t)
	a, b := newDevice(t, "a", r), newDeviceOn(t, "b", h, nil, r)
	meet(t, ctx, a, b)
	connect(t, ctx, a, b)
	for _, text := range []string{"one", "two", "three"} {
		states := sendAndWatch(t, ctx, a, b, text)
		if slices.Contains(states, StateQueued) {
			t.Fatalf("%q went %v: it waited on a relay instead of going directly", text, states)
		}
	}
}
