// Package contact defines what an account tells its contacts about itself:
// the signed contact record, the invite that carries it, and the DHT
// validator that lets records be published under the account id.
//
// A Record names the account's identity (e2ee.PublicIdentity), its profile
// name, its k home relays (full multiaddrs ending in /p2p/<relay>), the
// libp2p peer ids of its devices, and its mailbox: the relay-facing mailbox
// id and the sealed-sender public key; optionally, a reference to the
// account's encrypted profile photo (PhotoRef, photo.go). A contact
// reaches a device by dialing <home relay>/p2p-circuit/p2p/<device> and,
// when that fails, deposits the sealed envelope in the mailbox on every
// home relay.
//
// Records are signed by the identity key over
//
//	"kinmesh/contact/record/v1" || record bytes
//
// and carry a sequence number: a newer record (higher seq) replaces an older
// one, in a contact list and in the DHT (key "/kmc/<account id>").
//
// An invite is the signed record plus, optionally, a prekey bundle so a
// session can start before any relay is reached:
//
//	kinmesh:<base64url(Invite protobuf)>          compact string
//	kinmesh://invite/<base64url(Invite protobuf)> the same as a URI for QR codes
package contact

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"google.golang.org/protobuf/proto"

	"github.com/kinmesh/kinmesh/protocols/contact/pb"
	"github.com/kinmesh/kinmesh/protocols/e2ee"
)

const (
	recordVersion = 1
	inviteVersion = 1
	signContext   = "kinmesh/contact/record/v1"

	// MaxRecordSize caps an encoded signed record.
	MaxRecordSize = 8 << 10
	// MaxInviteSize caps an encoded invite (record plus prekey bundle).
	MaxInviteSize = 16 << 10
	// MaxNameLen caps a profile name, in characters.
	MaxNameLen = 64
	// MaxRelays and MaxDevices cap the lists in a record.
	MaxRelays  = 8
	MaxDevices = 8

	// DHTNamespace is the DHT key namespace of contact records.
	DHTNamespace = "kmc"

	invitePrefix = "kinmesh:"
	inviteURI    = "kinmesh://invite/"
)

var (
	// ErrMalformed means a record or invite could not be decoded or has
	// out-of-range fields.
	ErrMalformed = errors.New("contact: malformed record")
	// ErrSignature means the record's signature does not verify against the
	// identity it names: it was forged or altered.
	ErrSignature = errors.New("contact: bad record signature")
	// ErrTooLarge means the input exceeds MaxRecordSize or MaxInviteSize.
	ErrTooLarge = errors.New("contact: record too large")
	// ErrVersion means the record uses a format this build doesn't know.
	ErrVersion = errors.New("contact: unsupported record version")
)

// Record is an account's contact record.
type Record struct {
	Identity   e2ee.PublicIdentity
	Seq        uint64
	IssuedAt   time.Time
	Name       string
	HomeRelays []ma.Multiaddr // each ends in /p2p/<relay id>
	Devices    []peer.ID
	MailboxID  string
	MailboxKey e2ee.MailboxPublicKey
	Photo      []byte
}

// AccountID returns the account the record describes.
func (r Record) AccountID() e2ee.AccountID { return r.Identity.AccountID() }

// Relays returns the home relays as dialable peers.
func (r Record) Relays() []peer.AddrInfo {
	infos, _ := peer.AddrInfosFromP2pAddrs(r.HomeRelays...)
	return infos
}

// Signed is a record with its signature, as received or as produced by
// Sign. Raw is its wire encoding.
type Signed struct {
	Record
	Raw []byte
}

// Sign encodes the record and signs it with the account identity, which
// must be the record's Identity.
func (r Record) Sign(id *e2ee.Identity) (Signed, error) {
	if !id.Public().Equal(r.Identity) {
		return Signed{}, fmt.Errorf("contact: sign: identity is not the record's: %w", ErrSignature)
	}
	if err := r.validate(); err != nil {
		return Signed{}, err
	}
	body, err := proto.Marshal(r.toWire())
	if err != nil {
		return Signed{}, fmt.Errorf("contact: encode record: %w", err)
	}
	raw, err := proto.Marshal(&pb.SignedRecord{Record: body, Signature: id.Sign(signed(body))})
	if err != nil {
		return Signed{}, fmt.Errorf("contact: encode signed record: %w", err)
	}
	if len(raw) > MaxRecordSize {
		return Signed{}, ErrTooLarge
	}
	return Signed{Record: r, Raw: raw}, nil
}

func signed(body []byte) []byte { return append([]byte(signContext), body...) }

func (r Record) toWire() *pb.Record {
	m := &pb.Record{
		Version:    recordVersion,
		Identity:   r.Identity.Marshal(),
		Seq:        r.Seq,
		IssuedAt:   r.IssuedAt.Unix(),
		Name:       r.Name,
		MailboxId:  r.MailboxID,
		MailboxKey: r.MailboxKey.Bytes(),
		Photo:      r.Photo,
	}
	for _, a := range r.HomeRelays {
		m.HomeRelays = append(m.HomeRelays, a.String())
	}
	for _, d := range r.Devices {
		m.Devices = append(m.Devices, []byte(d))
	}
	return m
}

func (r Record) validate() error {
	switch {
	case r.Name == "" || !utf8.ValidString(r.Name) || utf8.RuneCountInString(r.Name) > MaxNameLen:
		return fmt.Errorf("%w: name must be 1 to %d characters", ErrMalformed, MaxNameLen)
	case len(r.HomeRelays) > MaxRelays:
		return fmt.Errorf("%w: %d home relays (max %d)", ErrMalformed, len(r.HomeRelays), MaxRelays)
	case len(r.Devices) > MaxDevices:
		return fmt.Errorf("%w: %d devices (max %d)", ErrMalformed, len(r.Devices), MaxDevices)
	case r.MailboxID == "" || len(r.MailboxID) > 128:
		return fmt.Errorf("%w: mailbox id", ErrMalformed)
	case len(r.Photo) > 4<<10:
		return fmt.Errorf("%w: photo reference too large", ErrMalformed)
	}
	for _, a := range r.HomeRelays {
		if _, err := peer.AddrInfoFromP2pAddr(a); err != nil {
			return fmt.Errorf("%w: home relay %s does not end in /p2p/<id>", ErrMalformed, a)
		}
	}
	return nil
}

// Parse decodes a signed record and verifies its signature against the
// identity it names.
func Parse(raw []byte) (Signed, error) {
	if len(raw) > MaxRecordSize {
		return Signed{}, ErrTooLarge
	}
	var s pb.SignedRecord
	if err := proto.Unmarshal(raw, &s); err != nil {
		return Signed{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	r, err := fromWire(&s)
	if err != nil {
		return Signed{}, err
	}
	return Signed{Record: r, Raw: bytes.Clone(raw)}, nil
}

func fromWire(s *pb.SignedRecord) (Record, error) {
	var m pb.Record
	if err := proto.Unmarshal(s.GetRecord(), &m); err != nil {
		return Record{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if m.Version != recordVersion {
		return Record{}, fmt.Errorf("%w: %d", ErrVersion, m.Version)
	}
	id, err := e2ee.ParsePublicIdentity(m.Identity)
	if err != nil {
		return Record{}, fmt.Errorf("%w: identity: %v", ErrMalformed, err)
	}
	if id.Verify(signed(s.Record), s.Signature) != nil {
		return Record{}, ErrSignature
	}
	mk, err := e2ee.ParseMailboxPublicKey(m.MailboxKey)
	if err != nil {
		return Record{}, fmt.Errorf("%w: mailbox key: %v", ErrMalformed, err)
	}
	r := Record{
		Identity:   id,
		Seq:        m.Seq,
		IssuedAt:   time.Unix(m.IssuedAt, 0),
		Name:       m.Name,
		MailboxID:  m.MailboxId,
		MailboxKey: mk,
		Photo:      m.Photo,
	}
	if len(m.HomeRelays) > MaxRelays || len(m.Devices) > MaxDevices {
		return Record{}, fmt.Errorf("%w: too many relays or devices", ErrMalformed)
	}
	for _, s := range m.HomeRelays {
		a, err := ma.NewMultiaddr(s)
		if err != nil {
			return Record{}, fmt.Errorf("%w: home relay %q", ErrMalformed, s)
		}
		r.HomeRelays = append(r.HomeRelays, a)
	}
	for _, d := range m.Devices {
		p, err := peer.IDFromBytes(d)
		if err != nil {
			return Record{}, fmt.Errorf("%w: device id", ErrMalformed)
		}
		r.Devices = append(r.Devices, p)
	}
	if err := r.validate(); err != nil {
		return Record{}, err
	}
	return r, nil
}

// Newer reports whether r should replace old: same account, higher seq.
func (r Record) Newer(old Record) bool {
	return r.AccountID() == old.AccountID() && r.Seq > old.Seq
}

// Invite is a signed record and, optionally, a prekey bundle.
type Invite struct {
	Record Signed
	// Bundle is an encoded e2ee prekey bundle (may be nil).
	Bundle []byte
}

// String encodes the invite as a compact string: "kinmesh:" + base64url.
func (inv Invite) String() string {
	return invitePrefix + inv.encode()
}

// URI encodes the invite as a URI for QR codes and links.
func (inv Invite) URI() string {
	return inviteURI + inv.encode()
}

func (inv Invite) encode() string {
	var s pb.SignedRecord
	_ = proto.Unmarshal(inv.Record.Raw, &s)
	b, _ := proto.Marshal(&pb.Invite{Version: inviteVersion, Record: &s, Bundle: inv.Bundle})
	return base64.RawURLEncoding.EncodeToString(b)
}

// ParseInvite decodes an invite in either form and verifies its record.
func ParseInvite(s string) (Invite, error) {
	s = strings.TrimSpace(s)
	var body string
	switch {
	case strings.HasPrefix(s, inviteURI):
		body = s[len(inviteURI):]
	case strings.HasPrefix(s, invitePrefix):
		body = s[len(invitePrefix):]
	default:
		return Invite{}, fmt.Errorf("%w: an invite starts with %q or %q", ErrMalformed, invitePrefix, inviteURI)
	}
	if base64.RawURLEncoding.DecodedLen(len(body)) > MaxInviteSize {
		return Invite{}, ErrTooLarge
	}
	b, err := base64.RawURLEncoding.DecodeString(body)
	if err != nil {
		return Invite{}, fmt.Errorf("%w: invite encoding: %v", ErrMalformed, err)
	}
	var m pb.Invite
	if err := proto.Unmarshal(b, &m); err != nil {
		return Invite{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if m.Version != inviteVersion {
		return Invite{}, fmt.Errorf("%w: invite version %d", ErrVersion, m.Version)
	}
	if m.Record == nil {
		return Invite{}, fmt.Errorf("%w: invite without a record", ErrMalformed)
	}
	raw, err := proto.Marshal(m.Record)
	if err != nil {
		return Invite{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	rec, err := Parse(raw)
	if err != nil {
		return Invite{}, err
	}
	return Invite{Record: rec, Bundle: m.Bundle}, nil
}
