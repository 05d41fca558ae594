package node

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/kinmesh/kinmesh/protocols/contact"
	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/protocols/presence"
	"github.com/kinmesh/kinmesh/storage"
)

// Presence (protocols/presence, docs/protocol/presence.md). While the
// node runs with an account it tells its contacts — those added from an
// invite, not blocked — that it is online, and keeps the last seen of
// those who tell it theirs. The setting is "contacts" (default) or
// "nobody"; with "nobody" nothing is sent and, as in mainstream
// messengers, the user sees no one's presence either. Last-seen records
// live in the store's "presence" namespace, the setting in "account".

// Presence settings.
const (
	PresenceContacts = "contacts"
	PresenceNobody   = "nobody"
)

// ErrInvalidPresenceSetting: the setting is neither "contacts" nor
// "nobody".
var ErrInvalidPresenceSetting = errors.New(`node: presence setting must be "contacts" or "nobody"`)

const keyPresenceShare = "presence-share" // in the "account" namespace

// social is what the presence and report features keep on the Node.
type social struct {
	mu        sync.Mutex
	presence  *presence.Service
	watchStop context.CancelFunc
	watchDone chan struct{}

	once   sync.Once // per Node: purger registration, metrics tracer
	tracer presence.MetricsTracer
	diag   diagLog // recent errors of these features, for diagnostics
}

// ContactPresence is one contact in GET /v1/presence.
type ContactPresence struct {
	ID     string `json:"id"`
	Name   string `json:"name"`
	Online bool   `json:"online"`
	// LastSeen is when the contact's device last told us it was online
	// (or going offline); null if it never did, hides its presence, or
	// this user shares with nobody.
	LastSeen *time.Time `json:"last_seen"`
}

// PresenceView is what GET /v1/presence shows.
type PresenceView struct {
	// Share is this user's setting: "contacts" or "nobody".
	Share    string            `json:"share"`
	Contacts []ContactPresence `json:"contacts"`
}

// presenceBook shows the contact book to presence: the audience is the
// contacts added from an invite that aren't blocked.
type presenceBook struct{ b *contactBook }

func (p presenceBook) Audience() []contact.Signed {
	p.b.mu.RLock()
	defer p.b.mu.RUnlock()
	out := make([]contact.Signed, 0, len(p.b.entries))
	for id, e := range p.b.entries {
		if _, blocked := p.b.blocks.m[id]; e.Source == "invite" && !blocked {
			out = append(out, e.rec)
		}
	}
	slices.SortFunc(out, func(x, y contact.Signed) int { return strings.Compare(string(x.AccountID()), string(y.AccountID())) })
	return out
}

func (p presenceBook) Member(id e2ee.AccountID) (contact.Signed, bool) {
	p.b.mu.RLock()
	defer p.b.mu.RUnlock()
	e, ok := p.b.entries[id]
	if _, blocked := p.b.blocks.m[id]; !ok || blocked || e.Source != "invite" {
		return contact.Signed{}, false
	}
	return e.rec, true
}

func (p presenceBook) Blocked(id e2ee.AccountID) bool { return p.b.Blocked(id) }

// startSocial starts presence for the loaded account. Called with acctMu
// held, from startMessaging.
func (n *Node) startSocial() error {
	n.social.once.Do(func() {
		if n.cfg.Registry != nil {
			n.social.tracer = presence.NewMetricsTracer(n.cfg.Registry)
		}
	})
	share, err := n.loadPresenceShare(context.Background())
	if err != nil {
		return err
	}
	opts := []presence.Option{
		presence.WithClock(n.cfg.Now),
		presence.WithLogger(n.log.With("component", "presence")),
		presence.WithShare(share),
		presence.WithOnChange(func(e2ee.AccountID) { n.events.publish(Event{Type: "presence"}) }),
	}
	if n.social.tracer != nil {
		opts = append(opts, presence.WithMetricsTracer(n.social.tracer))
	}
	svc, err := presence.New(n.host, n.store, presence.Account{Identity: n.acct.identity, MailboxKey: n.acct.mailboxKey}, presenceBook{n.contacts}, opts...)
	if err != nil {
		return fmt.Errorf("start presence: %w", err)
	}
	ctx, stop := context.WithCancel(n.bgCtx)
	done := make(chan struct{})
	n.social.mu.Lock()
	n.social.presence, n.social.watchStop, n.social.watchDone = svc, stop, done
	n.social.mu.Unlock()
	go func() {
		defer close(done)
		n.kickOnRelays(ctx, svc)
	}()
	return nil
}

// kickOnRelays beacons every contact again whenever the node gains a
// relay connection: contacts are reached through relays, and the first
// round at start usually runs before any relay is connected.
func (n *Node) kickOnRelays(ctx context.Context, svc *presence.Service) {
	prev := 0
	for {
		changed := n.keeper.Changed()
		cur := 0
		for _, r := range n.Status().Relays {
			if r.Connected {
				cur++
			}
		}
		if cur > prev {
			svc.Kick()
		}
		prev = cur
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
	}
}

// stopSocial stops presence: it sends "offline" to the contacts that saw
// the device online or, with hide (account deletion), tells every
// contact it can reach to forget its presence. Safe to call when presence
// isn't running.
func (n *Node) stopSocial(hide bool) error {
	n.social.mu.Lock()
	svc, stop, done := n.social.presence, n.social.watchStop, n.social.watchDone
	n.social.presence, n.social.watchStop, n.social.watchDone = nil, nil, nil
	n.social.mu.Unlock()
	if svc == nil {
		return nil
	}
	stop()
	<-done
	if hide {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := svc.SetShare(ctx, presence.ShareNobody); err != nil {
			n.log.Debug("hide presence", "err", err)
		}
		cancel()
	}
	return svc.Close()
}

func (n *Node) presenceService() (*presence.Service, error) {
	n.social.mu.Lock()
	defer n.social.mu.Unlock()
	if n.social.presence == nil {
		return nil, ErrNoAccount
	}
	return n.social.presence, nil
}

func (n *Node) loadPresenceShare(ctx context.Context) (presence.Share, error) {
	b, err := n.store.Namespace("account").Get(ctx, keyPresenceShare)
	if errors.Is(err, storage.ErrNotFound) {
		return presence.ShareContacts, nil
	}
	if err != nil {
		return 0, fmt.Errorf("load presence setting: %w", err)
	}
	s, err := presence.ParseShare(string(b))
	if err != nil {
		return presence.ShareContacts, nil
	}
	return s, nil
}

// presenceSetting returns the presence setting, "contacts" or "nobody"
// (for GET /v1/settings).
func (n *Node) presenceSetting() string {
	svc, err := n.presenceService()
	if err != nil {
		s, err := n.loadPresenceShare(context.Background())
		if err != nil {
			return PresenceContacts
		}
		return s.String()
	}
	return svc.Share().String()
}

// setPresenceSetting stores and applies the presence setting (for POST
// /v1/settings). Turning it to "nobody" tells the contacts it can reach
// to forget this user's presence before it returns.
func (n *Node) setPresenceSetting(ctx context.Context, setting string) error {
	share, err := presence.ParseShare(setting)
	if err != nil {
		return fmt.Errorf("%w, not %q", ErrInvalidPresenceSetting, setting)
	}
	svc, err := n.presenceService()
	if err != nil {
		return err
	}
	b := n.store.NewBatch()
	if err := b.Put(n.store.Namespace("account"), keyPresenceShare, []byte(share.String())); err != nil {
		return err
	}
	if err := b.Commit(ctx); err != nil {
		return fmt.Errorf("store presence setting: %w", err)
	}
	return svc.SetShare(ctx, share)
}

// SetPresenceShare changes who sees this user's presence: "contacts" or
// "nobody".
func (n *Node) SetPresenceShare(ctx context.Context, setting string) error {
	return n.setPresenceSetting(ctx, setting)
}

// Presence returns the presence of every contact (added from an invite,
// not blocked), by name.
func (n *Node) Presence() (*PresenceView, error) {
	svc, err := n.presenceService()
	if err != nil {
		return nil, err
	}
	book, err := n.contactBook()
	if err != nil {
		return nil, err
	}
	v := &PresenceView{Share: svc.Share().String(), Contacts: []ContactPresence{}}
	for _, p := range svc.List() {
		cp := ContactPresence{ID: string(p.Account), Online: p.Online}
		if rec, ok := book.Contact(p.Account); ok {
			cp.Name = rec.Name
		}
		if !p.LastSeen.IsZero() {
			t := p.LastSeen.UTC()
			cp.LastSeen = &t
		}
		v.Contacts = append(v.Contacts, cp)
	}
	slices.SortFunc(v.Contacts, func(x, y ContactPresence) int { return strings.Compare(x.Name+x.ID, y.Name+y.ID) })
	return v, nil
}

// PresenceOf returns one contact's presence.
func (n *Node) PresenceOf(id string) (ContactPresence, error) {
	svc, err := n.presenceService()
	if err != nil {
		return ContactPresence{}, err
	}
	p := svc.Lookup(e2ee.AccountID(id))
	cp := ContactPresence{ID: id, Online: p.Online}
	if !p.LastSeen.IsZero() {
		t := p.LastSeen.UTC()
		cp.LastSeen = &t
	}
	return cp, nil
}

// AnnouncePresence tells every contact it can reach that this device is
// online now, rather than at the next round (an app may call it when it
// comes to the foreground). With "nobody" it sends nothing.
func (n *Node) AnnouncePresence(ctx context.Context) (presence.Round, error) {
	svc, err := n.presenceService()
	if err != nil {
		return presence.Round{}, err
	}
	return svc.Announce(ctx)
}

// PresenceExport is what the export document holds of presence: the
// setting and every contact's last seen this device keeps.
type PresenceExport struct {
	Share    string            `json:"share"`
	Contacts []ContactPresence `json:"contacts"`
}

// presenceExport returns the presence part of the export (for export.go).
func (n *Node) presenceExport() PresenceExport {
	e := PresenceExport{Share: n.presenceSetting(), Contacts: []ContactPresence{}}
	svc, err := n.presenceService()
	if err != nil {
		return e
	}
	for _, p := range svc.Known() {
		t := p.LastSeen.UTC()
		e.Contacts = append(e.Contacts, ContactPresence{ID: string(p.Account), Online: p.Online, LastSeen: &t})
	}
	return e
}
