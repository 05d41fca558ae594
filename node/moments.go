package node

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/kinmesh/kinmesh/protocols/blobs"
	"github.com/kinmesh/kinmesh/protocols/contact"
	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/protocols/moments"
)

// Moments (protocols/moments, docs/protocol/moments.md). While the node
// runs with an account it runs the moments engine: its own feed, sealed
// to its friends, and the feeds of the friends who sent it their keys.
//
//   - Friends are the contacts added from an invite that aren't blocked
//     (the default audience); the audience setting (MomentsAudience) can
//     exclude some, or name exactly who. Removing anyone from the audience,
//     or blocking them, rotates the feed's keys and topic at once: they
//     can't read what follows.
//   - The feed's keys travel as controls over the messaging engine's
//     pairwise sessions (message.Config.OnControl, onControl in
//     messaging.go); a control that arrives while the engine is not
//     running is kept in the store and applied when it starts.
//   - Moments and reactions of blocked accounts are dropped.
//   - Events "moment.posted", "moment.deleted" and "moment.reaction"
//     carry a moments.Event in Event.Moment.
//   - Deleting the account purges the feed and every medium from each
//     relay it kept them on (purgeMoments: see delete.go) and wipes the
//     "moments" namespace; a home relay a move replaced is purged at
//     once (former.go).

// momentsNamespace is the device store namespace of moments.
const momentsNamespace = moments.Namespace

// momentsState is the node's moments engine and the gossipsub router it
// runs on (one per host: it outlives an account's engine).
type momentsState struct {
	mu     sync.Mutex
	router *moments.Router
	eng    *moments.Engine

	once   sync.Once // per Node: metrics tracer
	tracer moments.MetricsTracer
}

// momentsBook shows the contact book to moments.
type momentsBook struct{ b *contactBook }

// Friends are the contacts added from an invite that aren't blocked.
func (m momentsBook) Friends() []e2ee.AccountID {
	m.b.mu.RLock()
	defer m.b.mu.RUnlock()
	out := make([]e2ee.AccountID, 0, len(m.b.entries))
	for id, e := range m.b.entries {
		if _, blocked := m.b.blocks.m[id]; e.Source == "invite" && !blocked {
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return out
}

func (m momentsBook) Contact(id e2ee.AccountID) (contact.Signed, bool) { return m.b.Contact(id) }
func (m momentsBook) Blocked(id e2ee.AccountID) bool                   { return m.b.Blocked(id) }

// startMoments starts the moments engine for the loaded account. Called
// with acctMu held, from startMessaging, after the messaging engine.
func (n *Node) startMoments() error {
	n.mom.once.Do(func() {
		if n.cfg.Registry != nil {
			n.mom.tracer = moments.NewMetricsTracer(n.cfg.Registry)
		}
	})
	// Held until the engine is in place: a control arriving meanwhile
	// waits, then goes to the engine (or, before, to the store).
	n.mom.mu.Lock()
	defer n.mom.mu.Unlock()
	if n.mom.eng != nil {
		return nil
	}
	log := n.log.With("component", "moments")
	if n.mom.router == nil {
		opts := []moments.RouterOption{moments.WithRouterLogger(log)}
		if n.mom.tracer != nil {
			opts = append(opts, moments.WithRouterMetrics(n.mom.tracer))
		}
		r, err := moments.NewRouter(n.host, opts...)
		if err != nil {
			return fmt.Errorf("start moments: %w", err)
		}
		n.mom.router = r
	}
	rc, err := moments.NewClient(n.host, moments.WithClientLogger(log), moments.WithClientClock(n.cfg.Now))
	if err != nil {
		return fmt.Errorf("start moments: %w", err)
	}
	bc, err := blobs.NewClient(n.host, blobs.WithClientLogger(log))
	if err != nil {
		return fmt.Errorf("start moments: %w", err)
	}
	a, msg := n.acct, n.msg
	eng, err := moments.New(moments.Config{
		Host: n.host, Store: n.store, Router: n.mom.router, Identity: a.identity,
		Contacts: momentsBook{n.contacts}, HomeRelays: n.momentsHomeRelays(a), SendControl: msg.SendControl,
		Relays: rc, Blobs: bc,
		Name: func() string {
			n.acctMu.Lock()
			defer n.acctMu.Unlock()
			if n.acct == nil {
				return a.Name
			}
			return n.acct.Name
		},
		Logger:   log,
		Now:      n.cfg.Now,
		OnEvent:  func(ev moments.Event) { n.events.publish(Event{Type: "moment." + ev.Type, Moment: ev}) },
		RetryMin: n.cfg.RetryMin,
	})
	if err != nil {
		return fmt.Errorf("start moments: %w", err)
	}
	n.mom.eng = eng
	return nil
}

// momentsHomeRelays returns this account's home relays as its current
// contact record names them (re-homing changes them).
func (n *Node) momentsHomeRelays(a *account) func() []peer.AddrInfo {
	return func() []peer.AddrInfo {
		n.acctMu.Lock()
		rec := a.record
		if n.acct != nil {
			rec = n.acct.record
		}
		n.acctMu.Unlock()
		return rec.Relays()
	}
}

// stopMoments stops the moments engine (its state stays in the store) and,
// with closeRouter (the node closing), the gossipsub router. Safe to call
// when moments aren't running.
func (n *Node) stopMoments(closeRouter bool) error {
	n.mom.mu.Lock()
	eng, r := n.mom.eng, n.mom.router
	n.mom.eng = nil
	if closeRouter {
		n.mom.router = nil
	}
	n.mom.mu.Unlock()
	var errs []error
	if eng != nil {
		errs = append(errs, eng.Close())
	}
	if closeRouter && r != nil {
		errs = append(errs, r.Close())
	}
	return errors.Join(errs...)
}

// momentsControl takes a moments control from the messaging engine (under
// its lock: it only stores and wakes).
func (n *Node) momentsControl(from e2ee.AccountID, kind string, payload []byte) {
	n.mom.mu.Lock()
	defer n.mom.mu.Unlock()
	if n.mom.eng != nil {
		n.mom.eng.HandleControl(from, kind, payload)
		return
	}
	if err := moments.StoreControl(context.Background(), n.store, from, kind, payload); err != nil {
		n.log.Warn("store a moments control", "err", err)
	}
}

// momentsAudienceChanged re-checks the moments audience now (a contact
// was blocked or unblocked) rather than at the engine's next round: a
// blocked contact is out of the feed at once.
func (n *Node) momentsAudienceChanged() {
	eng, err := n.momentsEngine()
	if err != nil {
		return
	}
	n.bg.Go(func() {
		if err := eng.SyncAudience(n.bgCtx); err != nil {
			n.log.Debug("moments audience", "err", err)
		}
	})
}

func (n *Node) momentsEngine() (*moments.Engine, error) {
	n.mom.mu.Lock()
	defer n.mom.mu.Unlock()
	if n.mom.eng == nil {
		return nil, ErrNoAccount
	}
	return n.mom.eng, nil
}

// purgeMoments deletes, on one relay, the account's moments feed (every
// moment, reaction and tombstone), the media of its moments, and those of
// media (hex blob ids, moments.OwnMedia: the account's own moments) the
// relay holds besides (see delete.go and former.go). A relay that holds no
// feed of the account confirms.
func (n *Node) purgeMoments(ctx context.Context, relay peer.ID, id *e2ee.Identity, media []string) error {
	log := n.log.With("component", "moments")
	rc, err := moments.NewClient(n.host, moments.WithClientLogger(log), moments.WithClientClock(n.cfg.Now))
	if err != nil {
		return err
	}
	bc, err := blobs.NewClient(n.host, blobs.WithClientLogger(log))
	if err != nil {
		return err
	}
	var extra []blobs.BlobID
	for _, s := range media {
		if b, err := blobs.ParseBlobID(s); err == nil {
			extra = append(extra, b)
		}
	}
	if err := moments.PurgeRelay(ctx, rc, bc, relay, id, extra...); err != nil && !errors.Is(err, moments.ErrNotFound) {
		return fmt.Errorf("moments: %w", err)
	}
	return nil
}

// momentsMedia lists the media of the account's own moments (hex blob
// ids), for purges.
func (n *Node) momentsMedia(ctx context.Context, a *account) []string {
	ids, err := moments.OwnMedia(ctx, n.store, a.identity.AccountID())
	if err != nil {
		n.log.Warn("list moments media to purge", "err", err)
	}
	out := make([]string, 0, len(ids))
	for _, b := range ids {
		out = append(out, b.String())
	}
	return out
}

// MomentMedia is a photo or video to post (moments.MediaInput).
type MomentMedia = moments.MediaInput

// PostMoment posts a moment with text and photos or videos to this
// account's friends. Errors: moments.ErrEmpty, moments.ErrTooLarge,
// moments.ErrMediaType, moments.ErrMalformed, moments.ErrNoRelays.
func (n *Node) PostMoment(ctx context.Context, text string, media []MomentMedia) (*moments.Moment, error) {
	eng, err := n.momentsEngine()
	if err != nil {
		return nil, err
	}
	return eng.Post(ctx, text, media)
}

// MomentsFeed returns one page of the feed (this account's moments and
// its friends'), newest first: at most limit (0: 50, at most 200) after
// cursor ("" for the newest). next is the next page's cursor, "" after
// the last page.
func (n *Node) MomentsFeed(ctx context.Context, cursor string, limit int) (ms []moments.Moment, next string, err error) {
	eng, err := n.momentsEngine()
	if err != nil {
		return nil, "", err
	}
	return eng.Page(ctx, cursor, limit)
}

// Moment returns one moment of the feed (moments.ErrNotFound if this
// device has no such moment). Here and in the other moment methods id is
// the moment's id, or "author:id" when two authors have a moment with
// that id (moments.ErrAmbiguous otherwise).
func (n *Node) Moment(ctx context.Context, id string) (*moments.Moment, error) {
	eng, err := n.momentsEngine()
	if err != nil {
		return nil, err
	}
	return eng.Moment(ctx, id)
}

// MomentMediaData fetches photo or video i of a moment from its author's
// relays and decrypts it: its MIME type and bytes.
func (n *Node) MomentMediaData(ctx context.Context, id string, i int) (string, []byte, error) {
	eng, err := n.momentsEngine()
	if err != nil {
		return "", nil, err
	}
	return eng.Media(ctx, id, i)
}

// DeleteMoment deletes one of this account's moments everywhere: friends'
// devices drop it, relays purge it and its media.
func (n *Node) DeleteMoment(ctx context.Context, id string) error {
	eng, err := n.momentsEngine()
	if err != nil {
		return err
	}
	return eng.Delete(ctx, id)
}

// LikeMoment likes a moment (liking twice is liking once).
func (n *Node) LikeMoment(ctx context.Context, id string) error {
	eng, err := n.momentsEngine()
	if err != nil {
		return err
	}
	return eng.Like(ctx, id)
}

// UnlikeMoment takes back this account's like of a moment.
func (n *Node) UnlikeMoment(ctx context.Context, id string) error {
	eng, err := n.momentsEngine()
	if err != nil {
		return err
	}
	return eng.Unlike(ctx, id)
}

// CommentMoment comments on a moment.
func (n *Node) CommentMoment(ctx context.Context, id, text string) (*moments.Comment, error) {
	eng, err := n.momentsEngine()
	if err != nil {
		return nil, err
	}
	return eng.Comment(ctx, id, text)
}

// DeleteMomentComment takes back one of this account's comments.
func (n *Node) DeleteMomentComment(ctx context.Context, id, commentID string) error {
	eng, err := n.momentsEngine()
	if err != nil {
		return err
	}
	return eng.DeleteComment(ctx, id, commentID)
}

// MomentsAudience returns who follows this account's moments.
func (n *Node) MomentsAudience() (moments.Audience, error) {
	eng, err := n.momentsEngine()
	if err != nil {
		return moments.Audience{}, err
	}
	return eng.Audience(), nil
}

// SetMomentsAudience changes who follows this account's moments; anyone
// left out can't read the moments posted from now on (the feed's keys
// rotate before this returns).
func (n *Node) SetMomentsAudience(ctx context.Context, a moments.Audience) (moments.Audience, error) {
	eng, err := n.momentsEngine()
	if err != nil {
		return moments.Audience{}, err
	}
	if a.Exclude == nil {
		a.Exclude = []string{}
	}
	if err := eng.SetAudience(ctx, a); err != nil {
		return moments.Audience{}, err
	}
	return eng.Audience(), nil
}

// exportMoments is this account's own moments for the export, newest
// first (media are listed, not included: fetch them with
// GET /v1/moments/{id}/media/{n}).
func (n *Node) exportMoments(ctx context.Context) ([]moments.Moment, error) {
	out := []moments.Moment{}
	eng, err := n.momentsEngine()
	if err != nil {
		return out, nil
	}
	all, err := eng.Moments(ctx, 0)
	if err != nil {
		return nil, err
	}
	for _, m := range all {
		if m.Mine {
			out = append(out, m)
		}
	}
	return out, nil
}
