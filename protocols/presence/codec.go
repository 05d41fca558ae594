package presence

import (
	"crypto/ed25519"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/kinmesh/kinmesh/protocols/presence/pb"
)

// Native forms of the wire messages and the stored record: pb types stop
// at this file.

// errInvalid marks input that fails validation.
var errInvalid = errors.New("presence: invalid input")

func marshal(m proto.Message) []byte {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		panic("presence: marshal " + fmt.Sprintf("%T", m) + ": " + err.Error()) // plain messages never fail
	}
	return b
}

// decodeEnvelopeFrame decodes a Frame or a Reply (same layout): the
// envelope, possibly empty.
func decodeEnvelopeFrame(b []byte) ([]byte, error) {
	var m pb.Frame
	if err := proto.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("frame: %w", errInvalid)
	}
	if len(m.GetEnvelope()) > MaxEnvelopeSize {
		return nil, fmt.Errorf("envelope of %d bytes: %w", len(m.GetEnvelope()), errInvalid)
	}
	return m.GetEnvelope(), nil
}

func encodeFrame(env []byte) *pb.Frame { return &pb.Frame{Envelope: env} }
func encodeReply(env []byte) *pb.Reply { return &pb.Reply{Envelope: env} }

// beacon is a decoded beacon payload.
type beacon struct {
	status    status
	sent      time.Time // millisecond precision
	recipient []byte    // Ed25519 key
	sig       []byte
}

func (b beacon) encode() []byte {
	return marshal(&pb.Beacon{Status: pb.Status(b.status), SentUnixMs: b.sent.UnixMilli(), Recipient: b.recipient, Signature: b.sig})
}

func decodeBeacon(b []byte) (beacon, error) {
	if len(b) > maxPayload {
		return beacon{}, fmt.Errorf("beacon of %d bytes: %w", len(b), errInvalid)
	}
	var m pb.Beacon
	if err := proto.Unmarshal(b, &m); err != nil {
		return beacon{}, fmt.Errorf("beacon: %w", errInvalid)
	}
	st := m.GetStatus()
	switch {
	case st != pb.Status_STATUS_ONLINE && st != pb.Status_STATUS_OFFLINE && st != pb.Status_STATUS_HIDDEN:
		return beacon{}, fmt.Errorf("beacon status %d: %w", st, errInvalid)
	case m.GetSentUnixMs() <= 0:
		return beacon{}, fmt.Errorf("beacon time: %w", errInvalid)
	case len(m.GetRecipient()) != ed25519.PublicKeySize, len(m.GetSignature()) != ed25519.SignatureSize:
		return beacon{}, fmt.Errorf("beacon recipient or signature: %w", errInvalid)
	}
	return beacon{status: status(st), sent: time.UnixMilli(m.GetSentUnixMs()), recipient: m.GetRecipient(), sig: m.GetSignature()}, nil
}

// signContext prefixes what a beacon's signature covers.
const signContext = "kinmesh/presence/v1/beacon"

// signedMessage is what the sender signs with its identity key:
//
//	"kinmesh/presence/v1/beacon" || 0x00 || status (1)
//	|| be64(sent, Unix milliseconds) || recipient's Ed25519 key (32)
//
// binding the status, the time (freshness, replay) and the recipient (a
// contact can't pass our beacon on as if we had sent it to someone else).
func signedMessage(st status, sent time.Time, recipient []byte) []byte {
	b := make([]byte, 0, len(signContext)+1+1+8+len(recipient))
	b = append(b, signContext...)
	b = append(b, 0, byte(st))
	b = binary.BigEndian.AppendUint64(b, uint64(sent.UnixMilli()))
	return append(b, recipient...)
}

// stored is a contact's presence as this device keeps it.
type stored struct {
	account  []byte // Ed25519 key
	status   status
	sent     time.Time // sender's clock, the latest accepted beacon
	received time.Time // our clock
}

func (s stored) encode() []byte {
	return marshal(&pb.StoredPresence{
		Account: s.account, Status: pb.Status(s.status),
		SentUnixMs: s.sent.UnixMilli(), ReceivedUnixMs: s.received.UnixMilli(),
	})
}

func decodeStored(b []byte) (stored, error) {
	var m pb.StoredPresence
	if err := proto.Unmarshal(b, &m); err != nil {
		return stored{}, fmt.Errorf("stored presence: %w", errInvalid)
	}
	st := m.GetStatus()
	if len(m.GetAccount()) != ed25519.PublicKeySize || st < pb.Status_STATUS_ONLINE || st > pb.Status_STATUS_HIDDEN || m.GetSentUnixMs() <= 0 {
		return stored{}, fmt.Errorf("stored presence fields: %w", errInvalid)
	}
	return stored{
		account: m.GetAccount(), status: status(st),
		sent: time.UnixMilli(m.GetSentUnixMs()), received: time.UnixMilli(m.GetReceivedUnixMs()),
	}, nil
}
