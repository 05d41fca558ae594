package calls

import (
	"fmt"
	"net/netip"
	"strings"
	"unicode/utf8"

	"github.com/pion/ice/v4"
	"github.com/pion/sdp/v3"
	"google.golang.org/protobuf/proto"

	"github.com/kinmesh/kinmesh/protocols/calls/pb"
	"github.com/kinmesh/kinmesh/protocols/e2ee"
)

// Native forms of the signalling frames: pb types stop at this file.

// kind is a frame's type.
type kind uint8

const (
	kindInvite kind = iota + 1
	kindRing
	kindAccept
	kindReject
	kindBusy
	kindOffer
	kindAnswer
	kindCandidate
	kindHangup
	kindResume
)

var kindNames = [...]string{"", "invite", "ring", "accept", "reject", "busy", "offer", "answer", "candidate", "hangup", "resume"}

func (k kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return "unknown"
}

// reason is a wire reason (pb.Reason).
type reason uint8

const (
	reasonNone        = reason(pb.Reason_REASON_UNSPECIFIED)
	reasonHangup      = reason(pb.Reason_REASON_HANGUP)
	reasonDeclined    = reason(pb.Reason_REASON_DECLINED)
	reasonUnavailable = reason(pb.Reason_REASON_UNAVAILABLE)
	reasonTimeout     = reason(pb.Reason_REASON_TIMEOUT)
	reasonFailed      = reason(pb.Reason_REASON_FAILED)
	reasonMalformed   = reason(pb.Reason_REASON_MALFORMED)
	reasonRateLimited = reason(pb.Reason_REASON_RATE_LIMITED)
	reasonMax         = reasonRateLimited
)

// frame is a decoded, validated signalling frame.
type frame struct {
	kind kind

	callID  [callIDSize]byte // invite, resume
	account e2ee.AccountID   // invite
	record  []byte           // invite: the caller's signed contact record
	audio   bool             // invite
	video   bool             // invite

	reason reason // reject, hangup

	relayOnly bool // ring: the callee's device takes calls relay-only

	sdp     string // offer, answer
	restart bool   // offer

	candidate string // candidate ("candidate:…"), empty with end
	mid       string
	mline     uint16
	end       bool
	candAddr  netip.Addr // decoded: the candidate's address
	candRelay bool       // decoded: a relay (TURN) candidate
}

// decodeFrame decodes and validates one frame. Errors wrap ErrMalformed.
func decodeFrame(b []byte) (frame, error) {
	var m pb.Frame
	if err := proto.Unmarshal(b, &m); err != nil {
		return frame{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	var f frame
	switch body := m.Body.(type) {
	case *pb.Frame_Invite:
		f.kind = kindInvite
		v := body.Invite
		if len(v.GetCallId()) != callIDSize {
			return f, fmt.Errorf("%w: call id of %d bytes", ErrMalformed, len(v.GetCallId()))
		}
		copy(f.callID[:], v.GetCallId())
		acct, err := e2ee.ParseAccountID(v.GetAccount())
		if err != nil {
			return f, fmt.Errorf("%w: caller account", ErrMalformed)
		}
		if len(v.GetRecord()) > maxInviteFrame {
			return f, fmt.Errorf("%w: record too large", ErrMalformed)
		}
		f.account, f.record, f.audio, f.video = acct, v.GetRecord(), v.GetAudio(), v.GetVideo()
	case *pb.Frame_Ring:
		f.kind, f.relayOnly = kindRing, body.Ring.GetRelayOnly()
	case *pb.Frame_Accept:
		f.kind = kindAccept
	case *pb.Frame_Busy:
		f.kind = kindBusy
	case *pb.Frame_Reject:
		f.kind = kindReject
		r, err := reasonFromWire(body.Reject.GetReason())
		if err != nil {
			return f, err
		}
		f.reason = r
	case *pb.Frame_Hangup:
		f.kind = kindHangup
		r, err := reasonFromWire(body.Hangup.GetReason())
		if err != nil {
			return f, err
		}
		f.reason = r
	case *pb.Frame_Offer:
		f.kind, f.sdp, f.restart = kindOffer, body.Offer.GetSdp(), body.Offer.GetRestart()
		if err := checkSDP(f.sdp); err != nil {
			return f, err
		}
	case *pb.Frame_Answer:
		f.kind, f.sdp = kindAnswer, body.Answer.GetSdp()
		if err := checkSDP(f.sdp); err != nil {
			return f, err
		}
	case *pb.Frame_Candidate:
		f.kind = kindCandidate
		c := body.Candidate
		f.candidate, f.mid, f.end = c.GetCandidate(), c.GetSdpMid(), c.GetEnd()
		if c.GetSdpMlineIndex() > 255 {
			return f, fmt.Errorf("%w: m-line index %d", ErrMalformed, c.GetSdpMlineIndex())
		}
		f.mline = uint16(c.GetSdpMlineIndex())
		if len(f.mid) > maxMidLen || !utf8.ValidString(f.mid) {
			return f, fmt.Errorf("%w: mid", ErrMalformed)
		}
		if f.end {
			if f.candidate != "" {
				return f, fmt.Errorf("%w: end of candidates with a candidate", ErrMalformed)
			}
			break
		}
		addr, typ, err := checkCandidate(f.candidate)
		if err != nil {
			return f, err
		}
		f.candAddr, f.candRelay = addr, typ == ice.CandidateTypeRelay
	case *pb.Frame_Resume:
		f.kind = kindResume
		if len(body.Resume.GetCallId()) != callIDSize {
			return f, fmt.Errorf("%w: call id of %d bytes", ErrMalformed, len(body.Resume.GetCallId()))
		}
		copy(f.callID[:], body.Resume.GetCallId())
	default:
		return f, fmt.Errorf("%w: empty or unknown frame", ErrMalformed)
	}
	return f, nil
}

func reasonFromWire(r pb.Reason) (reason, error) {
	if r < 0 || r > pb.Reason(reasonMax) {
		return 0, fmt.Errorf("%w: reason %d", ErrMalformed, r)
	}
	return reason(r), nil
}

// checkSDP parses an offer's or answer's SDP: it must be one a WebRTC
// peer connection can use, with at least one media section.
func checkSDP(s string) error {
	if s == "" || len(s) > MaxSDPSize {
		return fmt.Errorf("%w: SDP of %d bytes (1 to %d)", ErrMalformed, len(s), MaxSDPSize)
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("%w: SDP is not UTF-8", ErrMalformed)
	}
	var d sdp.SessionDescription
	if err := d.UnmarshalString(s); err != nil {
		return fmt.Errorf("%w: SDP: %v", ErrMalformed, err)
	}
	if len(d.MediaDescriptions) == 0 || len(d.MediaDescriptions) > 8 {
		return fmt.Errorf("%w: SDP with %d media sections", ErrMalformed, len(d.MediaDescriptions))
	}
	return nil
}

// checkCandidate parses a trickled candidate and returns its address and
// type. Its address must be an IP literal: a device never resolves a name
// the other party chose (and mDNS candidates are off).
func checkCandidate(s string) (netip.Addr, ice.CandidateType, error) {
	if s == "" || len(s) > MaxCandidateLen || !utf8.ValidString(s) {
		return netip.Addr{}, 0, fmt.Errorf("%w: candidate of %d bytes", ErrMalformed, len(s))
	}
	c, err := ice.UnmarshalCandidate(strings.TrimPrefix(s, "candidate:"))
	if err != nil {
		return netip.Addr{}, 0, fmt.Errorf("%w: candidate: %v", ErrMalformed, err)
	}
	a, err := netip.ParseAddr(c.Address())
	if err != nil {
		return netip.Addr{}, 0, fmt.Errorf("%w: candidate address %q is not an IP address", ErrMalformed, c.Address())
	}
	return a.Unmap(), c.Type(), nil
}

// encodeFrame builds the wire form of f.
func encodeFrame(f frame) *pb.Frame {
	switch f.kind {
	case kindInvite:
		return &pb.Frame{Body: &pb.Frame_Invite{Invite: &pb.Invite{
			CallId: f.callID[:], Account: string(f.account), Record: f.record, Audio: f.audio, Video: f.video,
		}}}
	case kindRing:
		return &pb.Frame{Body: &pb.Frame_Ring{Ring: &pb.Ring{RelayOnly: f.relayOnly}}}
	case kindAccept:
		return &pb.Frame{Body: &pb.Frame_Accept{Accept: &pb.Accept{}}}
	case kindBusy:
		return &pb.Frame{Body: &pb.Frame_Busy{Busy: &pb.Busy{}}}
	case kindReject:
		return &pb.Frame{Body: &pb.Frame_Reject{Reject: &pb.Reject{Reason: pb.Reason(f.reason)}}}
	case kindHangup:
		return &pb.Frame{Body: &pb.Frame_Hangup{Hangup: &pb.Hangup{Reason: pb.Reason(f.reason)}}}
	case kindOffer:
		return &pb.Frame{Body: &pb.Frame_Offer{Offer: &pb.Offer{Sdp: f.sdp, Restart: f.restart}}}
	case kindAnswer:
		return &pb.Frame{Body: &pb.Frame_Answer{Answer: &pb.Answer{Sdp: f.sdp}}}
	case kindCandidate:
		return &pb.Frame{Body: &pb.Frame_Candidate{Candidate: &pb.Candidate{
			Candidate: f.candidate, SdpMid: f.mid, SdpMlineIndex: uint32(f.mline), End: f.end,
		}}}
	case kindResume:
		return &pb.Frame{Body: &pb.Frame_Resume{Resume: &pb.Resume{CallId: f.callID[:]}}}
	}
	return &pb.Frame{}
}
