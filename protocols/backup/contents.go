package backup

import (
	"fmt"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"

	"github.com/kinmesh/kinmesh/protocols/backup/pb"
)

// ContentsVersion is the version of the Contents format this package
// writes and reads.
const ContentsVersion = 1

// Caps on what a backup carries (besides MaxContentsSize).
const (
	maxKeySize      = 4 << 10 // an encoded key or identity
	maxRecordSize   = 8 << 10 // contact.MaxRecordSize
	maxStringLen    = 1 << 10
	maxHomeRelays   = 16
	maxSettingsSize = 64 << 10
)

// MaxFormerRelays is the most former home relays a backup carries (each
// address at most 1 KiB: 64 KiB in all, well inside MaxContentsSize).
const MaxFormerRelays = 64

// Contents is what a backup restores: the account's keys (so the account
// id, the mailbox and its waiting mail stay the same), its profile,
// contacts, blocks and settings, and the home relays it left that still
// hold its data. Message history, groups and sessions are not in it. Its
// encoding is pb.Contents (Encode, DecodeContents); the node fills and
// reads it.
type Contents struct {
	// CreatedAt is when the device made this backup.
	CreatedAt time.Time
	// Identity is the account's private identity
	// (e2ee.Identity.MarshalPrivate).
	Identity []byte
	// MailboxKey is the e2ee mailbox key (MailboxKey.Marshal).
	MailboxKey []byte
	// MailboxAuth is the mailbox owner key (mailbox.Key.MarshalBinary).
	MailboxAuth []byte
	// Record is the account's latest signed contact record.
	Record []byte
	// Profile is the profile: name and the fields that otherwise never
	// leave the device.
	Profile Profile
	// HomeRelays are the account's home relays, full multiaddrs.
	HomeRelays []string
	// Contacts are the contact book's entries.
	Contacts []Contact
	// Blocks are the blocked accounts.
	Blocks []Block
	// Settings is the node's settings and consent history (its JSON).
	Settings []byte
	// Presence is the presence setting ("contacts", "nobody"; "" for the
	// default).
	Presence string
	// Phone is the verified phone number, if any.
	Phone *Phone
	// FormerRelays are the home relays a move replaced that have not
	// confirmed the purge of the account's data yet, at most
	// MaxFormerRelays. A backup made before the field existed has none.
	FormerRelays []FormerRelay
}

// FormerRelay is a home relay a move replaced, still to purge.
type FormerRelay struct {
	// Relay is a full multiaddr ending in /p2p/<relay>.
	Relay string
	// Since is when the move replaced it.
	Since time.Time
}

// Profile is the account's profile.
type Profile struct {
	Name             string
	BirthDate        string
	Country          string
	Gender           string
	CreatedAt        time.Time
	PolicyVersion    string
	PolicyAcceptedAt time.Time
	CreatedPolicy    string
	ParentalConsent  bool
}

// Contact is one entry of the contact book.
type Contact struct {
	// Record is the contact's signed contact record.
	Record  []byte
	AddedAt time.Time
	// Source is how the contact was added ("invite", "message", "group").
	Source string
}

// Block is one blocked account.
type Block struct {
	Account   string
	BlockedAt time.Time
}

// Phone is the account's verified phone number.
type Phone struct {
	// Number is in E.164 form.
	Number string
	// Relay is the relay holding the link, a full multiaddr.
	Relay      string
	VerifiedAt time.Time
}

func unix(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.Unix()
}

func fromUnix(s int64) time.Time {
	if s == 0 {
		return time.Time{}
	}
	return time.Unix(s, 0).UTC()
}

// Encode encodes c for sealing. Times keep whole seconds. Errors wrap
// ErrContentsTooLarge or ErrBadContents.
func (c *Contents) Encode() ([]byte, error) {
	m := &pb.Contents{
		Version: ContentsVersion, CreatedUnix: unix(c.CreatedAt),
		Identity: c.Identity, MailboxKey: c.MailboxKey, MailboxAuth: c.MailboxAuth, Record: c.Record,
		Profile: &pb.Profile{
			Name: c.Profile.Name, BirthDate: c.Profile.BirthDate, Country: c.Profile.Country, Gender: c.Profile.Gender,
			CreatedUnix: unix(c.Profile.CreatedAt), PolicyVersion: c.Profile.PolicyVersion,
			PolicyAcceptedUnix: unix(c.Profile.PolicyAcceptedAt), CreatedPolicy: c.Profile.CreatedPolicy,
			ParentalConsent: c.Profile.ParentalConsent,
		},
		HomeRelays: c.HomeRelays, Settings: c.Settings, Presence: c.Presence,
	}
	for _, ct := range c.Contacts {
		m.Contacts = append(m.Contacts, &pb.Contact{Record: ct.Record, AddedUnix: unix(ct.AddedAt), Source: ct.Source})
	}
	for _, b := range c.Blocks {
		m.Blocks = append(m.Blocks, &pb.Block{Account: b.Account, BlockedUnix: unix(b.BlockedAt)})
	}
	if c.Phone != nil {
		m.Phone = &pb.Phone{Number: c.Phone.Number, Relay: c.Phone.Relay, VerifiedUnix: unix(c.Phone.VerifiedAt)}
	}
	for _, f := range c.FormerRelays {
		m.FormerRelays = append(m.FormerRelays, &pb.FormerRelay{Relay: f.Relay, SinceUnix: unix(f.Since)})
	}
	if err := validateContents(m); err != nil {
		return nil, err
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadContents, err)
	}
	if len(b) > MaxContentsSize {
		return nil, fmt.Errorf("%w: %d bytes", ErrContentsTooLarge, len(b))
	}
	return b, nil
}

// DecodeContents decodes and validates opened contents: sizes and forms
// only (the node checks the keys and records it restores). Errors wrap
// ErrBadContents.
func DecodeContents(b []byte) (*Contents, error) {
	if len(b) > MaxContentsSize {
		return nil, fmt.Errorf("%w: %d bytes", ErrBadContents, len(b))
	}
	var m pb.Contents
	if err := proto.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadContents, err)
	}
	if err := validateContents(&m); err != nil {
		return nil, err
	}
	p := m.GetProfile()
	c := &Contents{
		CreatedAt: fromUnix(m.GetCreatedUnix()),
		Identity:  m.GetIdentity(), MailboxKey: m.GetMailboxKey(), MailboxAuth: m.GetMailboxAuth(), Record: m.GetRecord(),
		Profile: Profile{
			Name: p.GetName(), BirthDate: p.GetBirthDate(), Country: p.GetCountry(), Gender: p.GetGender(),
			CreatedAt: fromUnix(p.GetCreatedUnix()), PolicyVersion: p.GetPolicyVersion(),
			PolicyAcceptedAt: fromUnix(p.GetPolicyAcceptedUnix()), CreatedPolicy: p.GetCreatedPolicy(),
			ParentalConsent: p.GetParentalConsent(),
		},
		HomeRelays: m.GetHomeRelays(), Settings: m.GetSettings(), Presence: m.GetPresence(),
	}
	for _, ct := range m.GetContacts() {
		c.Contacts = append(c.Contacts, Contact{Record: ct.GetRecord(), AddedAt: fromUnix(ct.GetAddedUnix()), Source: ct.GetSource()})
	}
	for _, bl := range m.GetBlocks() {
		c.Blocks = append(c.Blocks, Block{Account: bl.GetAccount(), BlockedAt: fromUnix(bl.GetBlockedUnix())})
	}
	if ph := m.GetPhone(); ph != nil {
		c.Phone = &Phone{Number: ph.GetNumber(), Relay: ph.GetRelay(), VerifiedAt: fromUnix(ph.GetVerifiedUnix())}
	}
	for _, f := range m.GetFormerRelays() {
		c.FormerRelays = append(c.FormerRelays, FormerRelay{Relay: f.GetRelay(), Since: fromUnix(f.GetSinceUnix())})
	}
	return c, nil
}

// validateContents checks the forms and sizes of m's fields.
func validateContents(m *pb.Contents) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrBadContents}, args...)...)
	}
	if m.GetVersion() != ContentsVersion {
		return bad("version %d, want %d", m.GetVersion(), ContentsVersion)
	}
	for name, k := range map[string][]byte{"identity": m.GetIdentity(), "mailbox key": m.GetMailboxKey(), "mailbox auth key": m.GetMailboxAuth()} {
		if len(k) == 0 || len(k) > maxKeySize {
			return bad("%s of %d bytes", name, len(k))
		}
	}
	if len(m.GetRecord()) == 0 || len(m.GetRecord()) > maxRecordSize {
		return bad("record of %d bytes", len(m.GetRecord()))
	}
	p := m.GetProfile()
	strs := []string{p.GetName(), p.GetBirthDate(), p.GetCountry(), p.GetGender(), p.GetPolicyVersion(), p.GetCreatedPolicy(), m.GetPresence()}
	if p.GetName() == "" {
		return bad("no profile name")
	}
	if len(m.GetHomeRelays()) > maxHomeRelays {
		return bad("%d home relays", len(m.GetHomeRelays()))
	}
	strs = append(strs, m.GetHomeRelays()...)
	for _, ct := range m.GetContacts() {
		if len(ct.GetRecord()) == 0 || len(ct.GetRecord()) > maxRecordSize {
			return bad("contact record of %d bytes", len(ct.GetRecord()))
		}
		strs = append(strs, ct.GetSource())
	}
	for _, bl := range m.GetBlocks() {
		if bl.GetAccount() == "" {
			return bad("block without an account")
		}
		strs = append(strs, bl.GetAccount())
	}
	if len(m.GetSettings()) > maxSettingsSize {
		return bad("settings of %d bytes", len(m.GetSettings()))
	}
	if ph := m.GetPhone(); ph != nil {
		if ph.GetNumber() == "" {
			return bad("phone without a number")
		}
		strs = append(strs, ph.GetNumber(), ph.GetRelay())
	}
	if len(m.GetFormerRelays()) > MaxFormerRelays {
		return bad("%d former relays", len(m.GetFormerRelays()))
	}
	for _, f := range m.GetFormerRelays() {
		if f.GetRelay() == "" {
			return bad("former relay without an address")
		}
		strs = append(strs, f.GetRelay())
	}
	for _, s := range strs {
		if len(s) > maxStringLen || !utf8.ValidString(s) {
			return bad("a string field of %d bytes or not UTF-8", len(s))
		}
	}
	return nil
}
