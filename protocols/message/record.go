package message

import (
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/protocols/message/pb"
)

// Messages and delivery jobs, the records a device writes most (a
// message up to four times: pending, sent, delivered on the sender,
// received on the recipient), are stored as a version byte and a
// protobuf (pb/store.proto) instead of JSON: about half the bytes, and
// less work to encode and decode. Records engines before wrote in JSON
// (they start with '{') are still read, and rewritten in the new form the
// next time they change.

// recordV1 opens a protobuf record. JSON never starts with it.
const recordV1 = 1

// errRecord means a stored record could not be read.
var errRecord = errors.New("message: unreadable stored record")

// states numbers the known states in stored records (0: state_text).
var states = []State{"", StatePending, StateSent, StateQueued, StateDelivered, StateRead, StateExpired, StateFailed, StateReceived}

func stateNum(s State) (uint32, string) {
	for i, k := range states[1:] {
		if s == k {
			return uint32(i + 1), ""
		}
	}
	return 0, string(s)
}

func stateOf(n uint32, text string) (State, error) {
	if n == 0 {
		return State(text), nil
	}
	if int(n) >= len(states) {
		return "", fmt.Errorf("%w: state %d", errRecord, n)
	}
	return states[n], nil
}

// packID stores a 32-hex-digit id as its 16 bytes, anything else as text.
func packID(id string) ([]byte, string) {
	if len(id) == 32 {
		if b, err := hex.DecodeString(id); err == nil && hex.EncodeToString(b) == id {
			return b, ""
		}
	}
	return nil, id
}

func unpackID(b []byte, text string) (string, error) {
	switch len(b) {
	case 0:
		return text, nil
	case 16:
		return hex.EncodeToString(b), nil
	}
	return "", fmt.Errorf("%w: id of %d bytes", errRecord, len(b))
}

// packTime splits t into unix milliseconds (which cover any time a peer
// can send) and the nanoseconds within the millisecond.
func packTime(t time.Time) (int64, uint32) {
	return t.UnixMilli(), uint32(t.Nanosecond() % int(time.Millisecond))
}

func unpackTime(ms int64, ns uint32) (time.Time, error) {
	if ns >= uint32(time.Millisecond) {
		return time.Time{}, fmt.Errorf("%w: %d ns within a ms", errRecord, ns)
	}
	return time.UnixMilli(ms).Add(time.Duration(ns)), nil
}

// encodeMessage returns m's record; me is this account, which the record
// leaves implied.
func encodeMessage(m *Message, me e2ee.AccountID) ([]byte, error) {
	if m.Queued < 0 || int64(m.Queued) > int64(^uint32(0)) {
		return nil, fmt.Errorf("message: queued %d out of range", m.Queued)
	}
	r := &pb.StoredMessage{
		Group: m.Group, Text: m.Text, Seq: m.Seq, Queued: uint32(m.Queued),
		Reason: m.Reason, Incoming: m.Incoming,
	}
	r.Id, r.IdText = packID(m.ID)
	r.SentAt, r.SentAtNs = packTime(m.SentAt)
	r.State, r.StateText = stateNum(m.State)
	if !m.ReceivedAt.IsZero() {
		ms, ns := packTime(m.ReceivedAt)
		r.ReceivedAt, r.ReceivedAtNs = &ms, ns
	}
	if from, to := impliedParties(m.Incoming, m.Group, peerOf(m), me); from == m.From && to == m.To {
		r.Peer = peerOf(m)
	} else {
		r.Explicit, r.From, r.To = true, m.From, m.To
	}
	for a, s := range m.Recipients {
		n, text := stateNum(s)
		r.Recipients = append(r.Recipients, &pb.StoredRecipient{Account: a, State: n, StateText: text})
	}
	b, err := proto.MarshalOptions{}.MarshalAppend([]byte{recordV1}, r)
	if err != nil {
		return nil, fmt.Errorf("message: encode record: %w", err)
	}
	return b, nil
}

// peerOf is the party a record stores: the sender of an incoming message,
// the recipient of an outgoing 1:1 one.
func peerOf(m *Message) string {
	switch {
	case m.Incoming:
		return m.From
	case m.Group != "":
		return ""
	}
	return m.To
}

// impliedParties returns the from and to of a record that stores only peer.
func impliedParties(incoming bool, group, peer string, me e2ee.AccountID) (from, to string) {
	to = group
	if incoming {
		if to == "" {
			to = string(me)
		}
		return peer, to
	}
	if to == "" {
		to = peer
	}
	return string(me), to
}

// decodeMessage reads a message record, in either form.
func decodeMessage(b []byte, me e2ee.AccountID) (*Message, error) {
	m := &Message{}
	if len(b) > 0 && b[0] == '{' {
		if err := jsonUnmarshal(b, m); err != nil {
			return nil, fmt.Errorf("%w: %v", errRecord, err)
		}
		return m, nil
	}
	if len(b) == 0 || b[0] != recordV1 {
		return nil, fmt.Errorf("%w: unknown form", errRecord)
	}
	var r pb.StoredMessage
	if err := proto.Unmarshal(b[1:], &r); err != nil {
		return nil, fmt.Errorf("%w: %v", errRecord, err)
	}
	var err error
	if m.ID, err = unpackID(r.Id, r.IdText); err != nil {
		return nil, err
	}
	if m.SentAt, err = unpackTime(r.SentAt, r.SentAtNs); err != nil {
		return nil, err
	}
	if m.State, err = stateOf(r.State, r.StateText); err != nil {
		return nil, err
	}
	if r.ReceivedAt != nil {
		if m.ReceivedAt, err = unpackTime(*r.ReceivedAt, r.ReceivedAtNs); err != nil {
			return nil, err
		}
	}
	m.Group, m.Text, m.Seq, m.Queued, m.Reason, m.Incoming = r.Group, r.Text, r.Seq, int(r.Queued), r.Reason, r.Incoming
	if r.Explicit {
		m.From, m.To = r.From, r.To
	} else {
		m.From, m.To = impliedParties(r.Incoming, r.Group, r.Peer, me)
	}
	if len(r.Recipients) > 0 {
		m.Recipients = make(map[string]State, len(r.Recipients))
		for _, rc := range r.Recipients {
			if m.Recipients[rc.Account], err = stateOf(rc.State, rc.StateText); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

// encodeJob returns j's record.
func encodeJob(j *job) ([]byte, error) {
	if j.Attempts < 0 || int64(j.Attempts) > int64(^uint32(0)) {
		return nil, fmt.Errorf("message: job attempts %d out of range", j.Attempts)
	}
	r := &pb.StoredJob{
		Seq: j.Seq, To: string(j.To), Group: j.Group, Content: j.Content, Payload: j.Payload,
		Type: uint32(j.Type), Envelope: j.Envelope, Relays: j.Relays, Sent: j.Sent,
		Attempts: uint32(j.Attempts), LastErr: j.LastErr,
	}
	r.MsgId, r.MsgIdText = packID(j.MsgID)
	r.Created, r.CreatedNs = packTime(j.Created)
	b, err := proto.MarshalOptions{}.MarshalAppend([]byte{recordV1}, r)
	if err != nil {
		return nil, fmt.Errorf("message: encode job: %w", err)
	}
	return b, nil
}

// decodeJob reads a job record, in either form, into j (whose Key and
// in-memory fields it leaves alone).
func decodeJob(b []byte, j *job) error {
	if len(b) > 0 && b[0] == '{' {
		if err := jsonUnmarshal(b, j); err != nil {
			return fmt.Errorf("%w: %v", errRecord, err)
		}
		return nil
	}
	if len(b) == 0 || b[0] != recordV1 {
		return fmt.Errorf("%w: unknown form", errRecord)
	}
	var r pb.StoredJob
	if err := proto.Unmarshal(b[1:], &r); err != nil {
		return fmt.Errorf("%w: %v", errRecord, err)
	}
	if r.Type > 0xff {
		return fmt.Errorf("%w: content type %d", errRecord, r.Type)
	}
	id, err := unpackID(r.MsgId, r.MsgIdText)
	if err != nil {
		return err
	}
	created, err := unpackTime(r.Created, r.CreatedNs)
	if err != nil {
		return err
	}
	j.Seq, j.MsgID, j.To, j.Group = r.Seq, id, e2ee.AccountID(r.To), r.Group
	j.Content, j.Payload, j.Type, j.Envelope = r.Content, r.Payload, e2ee.ContentType(r.Type), r.Envelope
	j.Created, j.Relays, j.Sent, j.Attempts, j.LastErr = created, r.Relays, r.Sent, int(r.Attempts), r.LastErr
	return nil
}
