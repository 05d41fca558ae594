package moments

import (
	"encoding/hex"
	"fmt"
	"time"
)

// ID is the relay protocol: feeds registered, frames kept, pages of them
// backfilled, feeds purged.
const ID = "/kinmesh/moments/1.0.0"

// ServiceName is the resource-manager service both sides' streams are
// attributed to.
const ServiceName = "kinmesh.moments"

// Namespace is the store namespace moments use, on relays and devices.
const Namespace = "moments"

// TopicPrefix starts every moments topic name; the rest is derived from
// the epoch's audience public key (TopicOf), itself derived from a
// friends-only secret (TopicName).
const TopicPrefix = "/kinmesh/moments/1/"

// Controls moments send over the messaging engine's pairwise sessions
// (message.Service.SendControl).
const (
	// ControlKey carries a KeyDistribution: a friend can follow the feed.
	ControlKey = "moments/key"
	// ControlKeyRequest asks an author to send its current key again (a
	// friend got moments it can't decrypt).
	ControlKeyRequest = "moments/key-request"
)

// GroupID is the e2ee sender-key group id of every author's feed.
const GroupID = "moments"

// Limits.
const (
	// MaxTextLen caps a moment's text, in bytes of UTF-8.
	MaxTextLen = 4 << 10
	// MaxCommentLen caps a comment, in bytes of UTF-8.
	MaxCommentLen = 1 << 10
	// MaxMedia caps the photos and videos of one moment.
	MaxMedia = 9
	// MaxPhotoSize caps one photo (any image/* type).
	MaxPhotoSize = 10 << 20
	// MaxVideoSize caps one short video (video/*).
	MaxVideoSize = 50 << 20
	// MaxFrameSize caps a frame on a topic and on a relay.
	MaxFrameSize = 16 << 10
	// MaxGossipAge is how old a frame may be on a topic: older ones are
	// ignored (replays); relays and backfill carry the rest.
	MaxGossipAge = 15 * time.Minute
	// MaxClockSkew is how far in the future a frame's time may be.
	MaxClockSkew = 5 * time.Minute
	// MaxKeepAge is how old a frame a relay still accepts on Keep (the
	// longest an author's device retries).
	MaxKeepAge = 30 * 24 * time.Hour
	// MarkerTTL is how long relays and devices remember a deleted moment
	// or a withdrawn reaction, so that replays can't bring them back.
	MarkerTTL = 180 * 24 * time.Hour
	// EpochGrace is how long a rotated-away topic is still listened to,
	// for reactions in flight (the sender keys' grace window).
	EpochGrace = 72 * time.Hour

	idSize = 16
)

// Moment is a moment as the API shows it. Its id is the same on every
// device.
type Moment struct {
	ID        string    `json:"id"`
	Author    string    `json:"author"`
	Text      string    `json:"text"`
	CreatedAt time.Time `json:"created_at"`
	Likes     []Like    `json:"likes"`
	Comments  []Comment `json:"comments"`
	Media     []Media   `json:"media"`
	// Mine is true for this account's own moments.
	Mine bool `json:"mine"`
	// Relays is how many of the author's home relays confirmed keeping
	// the moment (own moments only).
	Relays int `json:"relays,omitempty"`
}

// Like is one like of a moment.
type Like struct {
	From string    `json:"from"`
	Name string    `json:"name"`
	At   time.Time `json:"at"`
}

// Comment is one comment on a moment.
type Comment struct {
	ID   string    `json:"id"`
	From string    `json:"from"`
	Name string    `json:"name"`
	Text string    `json:"text"`
	At   time.Time `json:"at"`
}

// Media is one photo or video of a moment, fetched on demand.
type Media struct {
	// N is its place in the moment: GET /v1/moments/{id}/media/{n}.
	N    int    `json:"n"`
	Type string `json:"type"`
	Size int64  `json:"size"`
	// Blob is the id of its encrypted blob on the author's relays.
	Blob string `json:"blob"`
}

// MediaInput is a photo or video to post.
type MediaInput struct {
	// Type is its MIME type: image/* (at most MaxPhotoSize) or video/*
	// (at most MaxVideoSize).
	Type string
	Data []byte
}

// Event is what the engine reports as it happens.
type Event struct {
	// Type is "posted" (a new moment), "deleted", "reaction" (a like or
	// comment added or taken back).
	Type   string `json:"type"`
	Moment string `json:"moment"`
	Author string `json:"author"`
	// From is who reacted ("reaction" only).
	From string `json:"from,omitempty"`
}

// Audience says who follows this account's moments.
type Audience struct {
	// All: every contact added from an invite, not blocked, except
	// Exclude. Otherwise exactly Members (contacts, not blocked).
	All     bool     `json:"all"`
	Exclude []string `json:"exclude,omitempty"`
	Members []string `json:"members,omitempty"`
}

// itemID is a moment's or a reaction's id: 16 random bytes, hex in the
// API.
type itemID [idSize]byte

func (id itemID) String() string { return hex.EncodeToString(id[:]) }

func parseItemID(s string) (itemID, error) {
	var id itemID
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != idSize {
		return id, fmt.Errorf("moments: %q is not a moment id: %w", s, ErrNotFound)
	}
	copy(id[:], b)
	return id, nil
}

func itemFromBytes(b []byte) (itemID, bool) {
	var id itemID
	if len(b) != idSize {
		return id, false
	}
	copy(id[:], b)
	return id, true
}
