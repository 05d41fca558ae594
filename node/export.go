package node

import (
	"context"
	"time"

	"github.com/kinmesh/kinmesh/protocols/calls"
	"github.com/kinmesh/kinmesh/protocols/message"
	"github.com/kinmesh/kinmesh/protocols/moments"
)

// ExportFormat names the export document's format; ExportVersion its
// version. docs/export.md documents every field.
const (
	ExportFormat  = "kinmesh-export"
	ExportVersion = 1
)

// Export is everything this node holds of the account, as one JSON
// document (GET /v1/export). Keys are not part of it: an export is for
// the user to read and take elsewhere, not a backup to restore from.
type Export struct {
	Format     string    `json:"format"`
	Version    int       `json:"version"`
	ExportedAt time.Time `json:"exported_at"`

	Account        Account            `json:"account"`
	Settings       Settings           `json:"settings"`
	ConsentHistory []ConsentEvent     `json:"consent_history"`
	Contacts       []ExportContact    `json:"contacts"`
	Blocks         []Block            `json:"blocks"`
	Groups         []message.Group    `json:"groups"`
	Messages       []message.Message  `json:"messages"`
	Locations      []message.Location `json:"locations"`
	// Moments are this account's own moments, newest first, until it
	// deletes them, with their likes and comments; media are listed (type,
	// size), not included (docs/export.md).
	Moments []moments.Moment `json:"moments"`
	// Calls is the call history, newest first, with each call's quality
	// statistics (docs/export.md).
	Calls []calls.Info `json:"calls"`
	// Presence is the presence setting: "contacts" or "nobody".
	Presence string `json:"presence"`
	// Phone is the phone link as GET /v1/phone shows it.
	Phone *PhoneStatus `json:"phone"`
	// Recovery is account recovery as GET /v1/recovery shows it (never
	// the secret or the key).
	Recovery *RecoveryStatus `json:"recovery"`
}

// ExportContact is a contact with its signed record.
type ExportContact struct {
	Contact
	// Record is the contact's signed contact record (protobuf bytes,
	// base64 in JSON), verifiable with protocols/contact.
	Record []byte `json:"record"`
}

// Export builds the export document.
func (n *Node) Export(ctx context.Context) (*Export, error) {
	acct, err := n.Account()
	if err != nil {
		return nil, err
	}
	m, err := n.messaging()
	if err != nil {
		return nil, err
	}
	e := &Export{
		Format: ExportFormat, Version: ExportVersion, ExportedAt: n.cfg.Now(), Account: *acct,
		Contacts: []ExportContact{}, Groups: []message.Group{}, Messages: []message.Message{},
		Locations: []message.Location{}, Moments: []moments.Moment{}, Calls: n.exportCalls(),
	}
	if e.Moments, err = n.exportMoments(ctx); err != nil {
		return nil, err
	}
	view, err := n.SettingsView(ctx)
	if err != nil {
		return nil, err
	}
	e.Settings = view.Settings
	if e.ConsentHistory, err = n.ConsentHistory(ctx); err != nil {
		return nil, err
	}
	share, err := n.loadPresenceShare(ctx)
	if err != nil {
		return nil, err
	}
	e.Presence = share.String()
	if e.Phone, err = n.Phone(ctx); err != nil {
		return nil, err
	}
	if e.Recovery, err = n.Recovery(ctx); err != nil {
		return nil, err
	}
	book, err := n.contactBook()
	if err != nil {
		return nil, err
	}
	for _, c := range book.list() {
		rec, _ := book.Contact(accountID(c.ID))
		e.Contacts = append(e.Contacts, ExportContact{Contact: c, Record: rec.Raw})
	}
	if e.Blocks, err = n.Blocks(); err != nil {
		return nil, err
	}
	if gs, err := m.Groups(ctx); err != nil {
		return nil, err
	} else if gs != nil {
		e.Groups = gs
	}
	if err := m.AllMessages(ctx, func(msg message.Message) error {
		e.Messages = append(e.Messages, msg)
		return nil
	}); err != nil {
		return nil, err
	}
	if ls, err := m.Locations(ctx); err != nil {
		return nil, err
	} else if ls != nil {
		e.Locations = ls
	}
	return e, nil
}
