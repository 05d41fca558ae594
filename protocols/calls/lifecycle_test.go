package calls

import (
	"context"
	"crypto/rand"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/kinmesh/kinmesh/protocols/contact"
	"github.com/kinmesh/kinmesh/storage"
)

func TestHangupFromCallee(t *testing.T) {
	a, b := newDevice(t, deviceConfig{}), newDevice(t, deviceConfig{})
	befriend(t, a, b)
	ctx := testCtx(t, 60*time.Second)
	out, in := connectedCall(t, ctx, a, b, Options{})
	if err := b.svc.HangUp(ctx, in.ID); err != nil {
		t.Fatal(err)
	}
	if i := a.waitState(ctx, out.ID, StateEnded); i.Reason != ReasonRemoteHangup {
		t.Errorf("caller: reason %q, want remote_hangup", i.Reason)
	}
	if i := b.waitState(ctx, in.ID, StateEnded); i.Reason != ReasonHangup {
		t.Errorf("callee: reason %q, want hangup", i.Reason)
	}
}

func TestDeclineAndCancel(t *testing.T) {
	a, b := newDevice(t, deviceConfig{}), newDevice(t, deviceConfig{})
	befriend(t, a, b)
	ctx := testCtx(t, 60*time.Second)

	// The callee declines.
	c, err := a.svc.Call(ctx, b.account(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	ring := b.incoming(ctx, a.account())
	if err := b.svc.HangUp(ctx, ring.ID); err != nil {
		t.Fatal(err)
	}
	if i := a.waitState(ctx, c.ID(), StateEnded); i.Reason != ReasonDeclined {
		t.Errorf("caller: %q, want declined", i.Reason)
	}
	if i := b.waitState(ctx, ring.ID, StateEnded); i.Reason != ReasonDeclined {
		t.Errorf("callee: %q, want declined", i.Reason)
	}

	// The caller gives up while it rings.
	c, err = a.svc.Call(ctx, b.account(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	ring = b.incoming(ctx, a.account())
	if err := a.svc.HangUp(ctx, c.ID()); err != nil {
		t.Fatal(err)
	}
	if i := b.waitState(ctx, ring.ID, StateEnded); i.Reason != ReasonMissed {
		t.Errorf("callee: %q, want missed", i.Reason)
	}
	if i := a.waitState(ctx, c.ID(), StateEnded); i.Reason != ReasonHangup {
		t.Errorf("caller: %q, want hangup", i.Reason)
	}
}

func TestRingTimeout(t *testing.T) {
	a := newDevice(t, deviceConfig{})
	b := newDevice(t, deviceConfig{opts: []Option{WithLimits(Limits{RingTimeout: time.Second})}})
	befriend(t, a, b)
	ctx := testCtx(t, 60*time.Second)
	c, err := a.svc.Call(ctx, b.account(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	ring := b.incoming(ctx, a.account())
	if i := b.waitState(ctx, ring.ID, StateEnded); i.Reason != ReasonMissed {
		t.Errorf("callee: %q, want missed", i.Reason)
	}
	if i := a.waitState(ctx, c.ID(), StateEnded); i.Reason != ReasonNoAnswer {
		t.Errorf("caller: %q, want no_answer", i.Reason)
	}
}

// TestBlockedAndStrangers: calls from a blocked contact, from a stranger
// and from a device the caller's record doesn't list never ring; the
// caller sees "unavailable" each time.
func TestBlockedAndStrangers(t *testing.T) {
	a, b, stranger := newDevice(t, deviceConfig{}), newDevice(t, deviceConfig{}), newDevice(t, deviceConfig{})
	befriend(t, a, b)
	b.book.block(a.account())
	stranger.book.add(b.rec)
	connect(t, stranger.h, b.h)
	ctx := testCtx(t, 60*time.Second)

	for _, caller := range []*device{a, stranger} {
		c, err := caller.svc.Call(ctx, b.account(), Options{})
		if err != nil {
			t.Fatal(err)
		}
		if i := caller.waitState(ctx, c.ID(), StateFailed); i.Reason != ReasonUnavailable {
			t.Errorf("caller: %q, want unavailable", i.Reason)
		}
	}
	// a's account from a device its record doesn't list.
	impostor := newDevice(t, deviceConfig{})
	impostor.svc.self.Account = a.account()
	impostor.book.add(b.rec)
	connect(t, impostor.h, b.h)
	c, err := impostor.svc.Call(ctx, b.account(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	impostor.waitState(ctx, c.ID(), StateFailed)
	select {
	case i := <-b.events:
		t.Fatalf("the callee saw a call event: %+v", i)
	default:
	}
	if l := b.svc.List(); len(l) != 0 {
		t.Fatalf("the callee lists calls: %+v", l)
	}

	// Local refusals are typed errors.
	if _, err := b.svc.Call(ctx, a.account(), Options{}); !errors.Is(err, ErrBlocked) {
		t.Errorf("calling a blocked contact: %v, want ErrBlocked", err)
	}
	if _, err := a.svc.Call(ctx, stranger.account(), Options{}); !errors.Is(err, ErrUnknownContact) {
		t.Errorf("calling a stranger: %v, want ErrUnknownContact", err)
	}
	if _, err := a.svc.Call(ctx, b.account(), Options{ForceRelay: true}); !errors.Is(err, ErrNoRelay) {
		t.Errorf("relay-only with no TURN server: %v, want ErrNoRelay", err)
	}
	if _, err := a.svc.Accept(ctx, "nope", Options{}); !errors.Is(err, ErrNoCall) {
		t.Errorf("accepting no call: %v, want ErrNoCall", err)
	}
	if _, err := a.svc.Get("nope"); !errors.Is(err, ErrNoCall) {
		t.Errorf("getting no call: %v, want ErrNoCall", err)
	}
}

// TestNewerRecordInInvite: a callee with an old record of the caller (an
// older device) takes the call when the invite carries the newer record.
func TestNewerRecordInInvite(t *testing.T) {
	a, b := newDevice(t, deviceConfig{}), newDevice(t, deviceConfig{})
	befriend(t, a, b)
	old := a.rec.Record
	old.Devices = []peer.ID{b.h.ID()} // some other device
	rec, err := old.Sign(a.id)
	if err != nil {
		t.Fatal(err)
	}
	b.book.add(rec)
	newer := a.rec.Record
	newer.Seq = 2
	signed, err := newer.Sign(a.id)
	if err != nil {
		t.Fatal(err)
	}
	a.setRecord(signed)
	ctx := testCtx(t, 60*time.Second)
	if _, err := a.svc.Call(ctx, b.account(), Options{}); err != nil {
		t.Fatal(err)
	}
	b.incoming(ctx, a.account())
	if b.book.learned != 1 {
		t.Errorf("the callee learned %d records, want 1", b.book.learned)
	}
}

func TestBusy(t *testing.T) {
	a, b, c := newDevice(t, deviceConfig{}), newDevice(t, deviceConfig{}), newDevice(t, deviceConfig{})
	befriend(t, a, b)
	befriend(t, c, b)
	ctx := testCtx(t, 60*time.Second)
	connectedCall(t, ctx, a, b, Options{})
	call, err := c.svc.Call(ctx, b.account(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if i := c.waitState(ctx, call.ID(), StateEnded); i.Reason != ReasonBusy {
		t.Errorf("third caller: %q, want busy", i.Reason)
	}
}

// rawCaller speaks the protocol by hand, as a contact of the callee.
type rawCaller struct {
	*device
}

func (r rawCaller) open(t *testing.T, ctx context.Context, to host.Host) *sigConn {
	t.Helper()
	st, err := r.h.NewStream(network.WithAllowLimitedConn(ctx, "test"), to.ID(), ID)
	if err != nil {
		t.Fatal(err)
	}
	return newSigConn(st)
}

func (r rawCaller) invite(t *testing.T, sig *sigConn) frame {
	t.Helper()
	f := frame{kind: kindInvite, account: r.account()}
	_, _ = rand.Read(f.callID[:])
	if err := sig.write(f); err != nil {
		t.Fatal(err)
	}
	_ = sig.st.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := sig.read(maxFrame)
	if err != nil {
		t.Fatalf("answer to the invite: %v", err)
	}
	return got
}

// TestRingFlood: invites beyond the caller's rate are refused before
// ringing, and no more than MaxRinging calls ring at once.
func TestRingFlood(t *testing.T) {
	b := newDevice(t, deviceConfig{opts: []Option{WithLimits(Limits{MaxRinging: 2, InvitesPerMinute: 1, InviteBurst: 4})}})
	raw := rawCaller{newDevice(t, deviceConfig{})}
	befriend(t, raw.device, b)
	ctx := testCtx(t, 60*time.Second)
	var kinds []kind
	for range 6 {
		sig := raw.open(t, ctx, b.h)
		f := raw.invite(t, sig)
		kinds = append(kinds, f.kind)
		if f.kind == kindReject && f.reason != reasonRateLimited {
			t.Errorf("reject reason %d, want rate limited", f.reason)
		}
	}
	want := []kind{kindRing, kindRing, kindBusy, kindBusy, kindReject, kindReject}
	for i := range want {
		if kinds[i] != want[i] {
			t.Fatalf("answers %v, want %v", kinds, want)
		}
	}
	ringing := 0
	for _, i := range b.svc.List() {
		if i.State == StateRinging {
			ringing++
		}
	}
	if ringing != 2 {
		t.Fatalf("%d calls ringing, want 2", ringing)
	}
}

// TestMalformedSignalling: garbage frames, bad SDP and bad candidates end
// the call they belong to with protocol_error; nothing else breaks.
func TestMalformedSignalling(t *testing.T) {
	b := newDevice(t, deviceConfig{opts: []Option{WithLimits(Limits{InvitesPerMinute: 60, InviteBurst: 20})}})
	raw := rawCaller{newDevice(t, deviceConfig{})}
	befriend(t, raw.device, b)
	ctx := testCtx(t, 60*time.Second)

	// Garbage as a first frame: the stream is dropped.
	sig := raw.open(t, ctx, b.h)
	if _, err := sig.st.Write([]byte{3, 0xff, 0xff, 0xff}); err != nil {
		t.Fatal(err)
	}
	_ = sig.st.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := sig.read(maxFrame); err == nil {
		t.Fatal("garbage invite answered")
	}

	for _, tc := range []struct {
		name string
		bad  func(*sigConn) error
	}{
		{"bad SDP", func(s *sigConn) error {
			return s.write(frame{kind: kindOffer, sdp: "v=0\r\nthis is not SDP\r\n"})
		}},
		{"SDP of no media", func(s *sigConn) error {
			return s.write(frame{kind: kindOffer, sdp: "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"})
		}},
		{"candidate before the offer", func(s *sigConn) error {
			return s.write(frame{kind: kindCandidate, candidate: "candidate:1 1 udp 2130706431 192.0.2.1 5000 typ host"})
		}},
		{"answer from the caller", func(s *sigConn) error {
			return s.write(frame{kind: kindAnswer, sdp: "v=0\r\n"})
		}},
		{"malformed candidates beyond the tolerance", func(s *sigConn) error {
			// A name, not an IP literal: refused when decoded; a few are
			// tolerated (a peer's odd candidate), a stream of them is not.
			for range maxMalformed + 1 {
				if err := s.write(frame{kind: kindCandidate, candidate: "candidate:1 1 udp 2130706431 host.example 5000 typ host"}); err != nil {
					return err
				}
			}
			return nil
		}},
		{"oversized SDP", func(s *sigConn) error {
			return s.write(frame{kind: kindOffer, sdp: "v=0\r\n" + strings.Repeat("a=x\r\n", MaxSDPSize/5)})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sig := raw.open(t, ctx, b.h)
			if f := raw.invite(t, sig); f.kind != kindRing {
				t.Fatalf("got %v, want ring", f.kind)
			}
			ring := b.incoming(ctx, raw.account())
			if _, err := b.svc.Accept(ctx, ring.ID, Options{}); err != nil {
				t.Fatal(err)
			}
			if f, err := sig.read(maxFrame); err != nil || f.kind != kindAccept {
				t.Fatalf("got %v, %v; want accept", f.kind, err)
			}
			if err := tc.bad(sig); err != nil {
				t.Fatal(err)
			}
			if i := b.waitState(ctx, ring.ID, StateFailed); i.Reason != ReasonProtocolError {
				t.Errorf("reason %q, want protocol_error", i.Reason)
			}
			f, err := sig.read(maxFrame)
			if err != nil || f.kind != kindHangup || f.reason != reasonMalformed {
				t.Errorf("the caller got %v (%d), %v; want hangup (malformed)", f.kind, f.reason, err)
			}
			sig.reset()
		})
	}
}

func TestHistory(t *testing.T) {
	st, err := storage.Open(t.TempDir(), storage.WithLogger(testLog()))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ns := st.Namespace("calls")
	a := newDevice(t, deviceConfig{opts: []Option{WithHistory(ns)}})
	b := newDevice(t, deviceConfig{})
	befriend(t, a, b)
	ctx := testCtx(t, 60*time.Second)
	out, _ := connectedCall(t, ctx, a, b, Options{})
	if err := a.svc.HangUp(ctx, out.ID); err != nil {
		t.Fatal(err)
	}
	a.waitState(ctx, out.ID, StateEnded)
	if err := a.svc.Close(); err != nil {
		t.Fatal(err)
	}
	again, err := NewService(newHost(t), Self{Account: a.account(), Record: func() contact.Signed { return a.rec }}, a.book, WithHistory(ns), WithLogger(testLog()))
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	i, err := again.Get(out.ID)
	if err != nil || i.State != StateEnded || i.Peer != string(b.account()) || i.Path != PathDirect {
		t.Fatalf("after a restart: %+v, %v", i, err)
	}
	if l := again.List(); len(l) != 1 {
		t.Fatalf("List after a restart: %+v", l)
	}
}

// TestHangUpWhileDialing: the caller hangs up after its invite reached
// the callee (which rings) but before its device handed the stream to the
// call: the callee must stop ringing at once (missed), not ring to its
// timeout. The stream used to be handed to a call that had ended, and
// stayed open, unread: the callee rang for the full minute (found as a
// flake of TestDeclineAndCancel under load).
func TestHangUpWhileDialing(t *testing.T) {
	hold := make(chan chan struct{}, 1)
	a := newDevice(t, deviceConfig{opts: []Option{withAfterInvite(func() {
		if release := <-hold; release != nil {
			<-release
		}
	})}})
	b := newDevice(t, deviceConfig{})
	befriend(t, a, b)
	ctx := testCtx(t, 30*time.Second)
	for range 4 { // within the callee's invite burst (5)
		release := make(chan struct{})
		free := sync.OnceFunc(func() { close(release) })
		t.Cleanup(free)
		hold <- release
		c, err := a.svc.Call(ctx, b.account(), Options{})
		if err != nil {
			t.Fatal(err)
		}
		ring := b.incoming(ctx, a.account())
		if err := a.svc.HangUp(ctx, c.ID()); err != nil {
			t.Fatal(err)
		}
		a.waitState(ctx, c.ID(), StateEnded)
		free()
		if i := b.waitState(ctx, ring.ID, StateEnded); i.Reason != ReasonMissed {
			t.Fatalf("callee: %q, want missed", i.Reason)
		}
	}
}
