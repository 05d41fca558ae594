package message

import (
	"context"
	"errors"
	"math"
	"slices"
	"time"

	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/protocols/message/pb"
)

// Location sharing. A user shares a precise position with chosen contacts
// for a chosen time (default 15 minutes, at most 8 hours): each update is
// an end-to-end encrypted pairwise message of its own type (pb.Location),
// delivered like any other message. A recipient keeps only the latest
// position per sender, in the store under a TTL ending at the share's
// expiry, and never shows it after that; stopping sends a final "stop".
// Nothing else in kinmesh carries a location.

// Location limits.
const (
	DefaultLocationShare = 15 * time.Minute
	MaxLocationShare     = 8 * time.Hour
)

// Location is a contact's shared position as the recipient sees it.
type Location struct {
	From      string    `json:"from"`
	Lat       float64   `json:"lat"`
	Lon       float64   `json:"lon"`
	AccuracyM float64   `json:"accuracy_m"`
	At        time.Time `json:"at"`
	ExpiresAt time.Time `json:"expires_at"`
}

// ErrBadLocation means coordinates or duration are out of range.
var ErrBadLocation = errors.New("message: location out of range (lat -90..90, lon -180..180, duration up to 8h)")

func (s *Service) keyLocation(from e2ee.AccountID) string { return "l/" + s.opaque(string(from)) }

// ShareLocation sends a position to contacts, valid for d (0: the
// default), or, with stop, tells them sharing ended.
func (s *Service) ShareLocation(ctx context.Context, to []e2ee.AccountID, lat, lon, accuracy float64, d time.Duration, stop bool) error {
	if d == 0 {
		d = DefaultLocationShare
	}
	if !stop && (math.IsNaN(lat) || math.IsNaN(lon) || lat < -90 || lat > 90 || lon < -180 || lon > 180 || accuracy < 0 || d < 0 || d > MaxLocationShare) {
		return ErrBadLocation
	}
	for _, id := range to {
		if _, ok := s.cfg.Contacts.Contact(id); !ok {
			return ErrUnknownContact
		}
		if s.cfg.Contacts.Blocked(id) {
			return ErrBlocked
		}
	}
	until := s.cfg.Now().Add(d).UnixMilli()
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.begin()
	for _, id := range to {
		c := &pb.Content{Body: &pb.Content_Location{Location: &pb.Location{
			Lat: lat, Lon: lon, AccuracyM: float32(accuracy), Until: until, Stop: stop,
		}}}
		if err := t.queuePairwise(id, "", c); err != nil {
			return err
		}
	}
	return t.commit()
}

// applyLocation keeps a sender's latest position until it expires.
func (t *tx) applyLocation(from e2ee.AccountID, c *pb.Content, l *pb.Location) []Event {
	now := t.s.cfg.Now()
	until := time.UnixMilli(l.GetUntil())
	key := t.s.keyLocation(from)
	if l.GetStop() || !until.After(now) || until.Sub(now) > MaxLocationShare+time.Minute {
		_ = t.b.Delete(t.s.ns, key)
		return []Event{{Type: "location", Location: &Location{From: string(from)}}}
	}
	if math.IsNaN(l.Lat) || math.IsNaN(l.Lon) || l.Lat < -90 || l.Lat > 90 || l.Lon < -180 || l.Lon > 180 {
		return nil
	}
	loc := Location{
		From: string(from), Lat: l.Lat, Lon: l.Lon, AccuracyM: float64(l.AccuracyM),
		At: time.UnixMilli(c.SentAt), ExpiresAt: until,
	}
	// An older update arriving late must not replace a newer one.
	if old, err := t.s.location(t.ctx(), from); err == nil && old != nil && old.At.After(loc.At) {
		return nil
	}
	b, err := jsonMarshal(loc)
	if err != nil {
		return nil
	}
	_ = t.b.PutTTL(t.s.ns, key, b, until.Sub(now))
	return []Event{{Type: "location", Location: &loc}}
}

func (s *Service) location(ctx context.Context, from e2ee.AccountID) (*Location, error) {
	b, err := s.ns.Get(ctx, s.keyLocation(from))
	if err != nil {
		return nil, err
	}
	var l Location
	return &l, jsonUnmarshal(b, &l)
}

// Locations returns the positions contacts share with us now.
func (s *Service) Locations(ctx context.Context) ([]Location, error) {
	now := s.cfg.Now()
	var out []Location
	err := s.ns.List(ctx, listPrefix("l/"), func(_ string, v []byte) error {
		var l Location
		if err := jsonUnmarshal(v, &l); err != nil {
			return err
		}
		if now.Before(l.ExpiresAt) && !s.cfg.Contacts.Blocked(e2ee.AccountID(l.From)) {
			out = append(out, l)
		}
		return nil
	})
	slices.SortFunc(out, func(a, b Location) int { return a.ExpiresAt.Compare(b.ExpiresAt) })
	return out, err
}
