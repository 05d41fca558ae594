package moments

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/kinmesh/kinmesh/protocols/blobs"
	"github.com/kinmesh/kinmesh/protocols/wire"
)

// Client speaks the relay protocol from a device. It holds no goroutines
// and needs no Close; it is safe for concurrent use.
type Client struct {
	h   host.Host
	cfg clientConfig
	log *slog.Logger
}

// NewClient returns a client that speaks from h.
//
// Defaults (see the ClientOption functions): 10 s to connect and open a
// stream, 30 s for the request, the real clock, slog.Default().
func NewClient(h host.Host, opts ...ClientOption) (*Client, error) {
	if h == nil {
		return nil, errors.New("moments: NewClient needs a host")
	}
	cfg := defaultClientConfig()
	for _, o := range opts {
		if err := o(&cfg); err != nil {
			return nil, err
		}
	}
	if cfg.logger == nil {
		cfg.logger = slog.Default()
	}
	return &Client{h: h, cfg: cfg, log: cfg.logger.With("component", "moments-client")}, nil
}

// Register asks relay to keep topic for the feed of owner; audience is the
// topic's audience key, which signs the request too (a relay registers
// only the topic TopicOf names for it, else ErrUnauthorized). Registering
// a topic again changes nothing.
func (c *Client) Register(ctx context.Context, relay peer.ID, owner ed25519.PrivateKey, topic string, audience ed25519.PrivateKey) error {
	now := c.cfg.now()
	pub := owner.Public().(ed25519.PublicKey)
	aud := audience.Public().(ed25519.PublicKey)
	msg := registerMessage(relay, pub, topic, aud, now)
	req := request{kind: reqRegister, owner: pub, topic: topic, audience: aud, time: now,
		sig: ed25519.Sign(owner, msg), audSig: ed25519.Sign(audience, msg)}
	_, err := c.do(ctx, relay, req)
	return err
}

// Keep hands frames of topic to relay (at most MaxKeepFrames). It returns
// the relay's result per frame: nil once the frame is on the relay's disk
// (or was already), else an error wrapping the sentinel (ErrQuota,
// ErrDeleted, ErrSignature's ErrUnauthorized, …). The error is for the
// request as a whole.
func (c *Client) Keep(ctx context.Context, relay peer.ID, topic string, frames [][]byte) ([]error, error) {
	if len(frames) == 0 || len(frames) > MaxKeepFrames {
		return nil, fmt.Errorf("moments: keep %d frames: %w", len(frames), ErrMalformed)
	}
	r, err := c.do(ctx, relay, request{kind: reqKeep, topic: topic, frames: frames})
	if err != nil {
		return nil, err
	}
	if len(r.codes) != len(frames) {
		return nil, fmt.Errorf("moments: keep on relay %s: %d results for %d frames: %w", relay, len(r.codes), len(frames), ErrProtocol)
	}
	out := make([]error, len(frames))
	for i, code := range r.codes {
		if code != CodeOK {
			out[i] = &Error{Code: code}
		}
	}
	return out, nil
}

// Page is one page of a topic's frames on a relay.
type Page struct {
	// Frames are in the order the relay kept them.
	Frames [][]byte
	// Next is the cursor of the next page (pass it as after).
	Next uint64
	// More says another page follows.
	More bool
}

// Backfill reads the frames relay keeps for topic after cursor after,
// proving membership with the topic's audience key.
func (c *Client) Backfill(ctx context.Context, relay peer.ID, topic string, audience ed25519.PrivateKey, after uint64, limit int) (Page, error) {
	now := c.cfg.now()
	self := c.h.ID()
	req := request{kind: reqBackfill, topic: topic, after: after, limit: limit, time: now,
		sig: ed25519.Sign(audience, backfillMessage(relay, self, topic, after, now))}
	r, err := c.do(ctx, relay, req)
	if err != nil {
		return Page{}, err
	}
	p := Page{Next: after, More: r.more}
	for _, it := range r.items {
		if it.seq <= p.Next {
			return Page{}, fmt.Errorf("moments: backfill from relay %s: seqs not increasing: %w", relay, ErrProtocol)
		}
		p.Frames = append(p.Frames, it.frame)
		p.Next = it.seq
	}
	return p, nil
}

// Purge deletes owner's whole feed on relay. It returns the ids of the
// media the feed's moments had (also those of epochs the relay dropped),
// for the caller to delete with their proofs. The relay keeps reporting
// them, to every Purge (so one whose answer was lost can be retried),
// until ConfirmPurge confirms them or for MarkerTTL. Purging a feed the
// relay does not hold succeeds. Purge reads the list page by page.
func (c *Client) Purge(ctx context.Context, relay peer.ID, owner ed25519.PrivateKey) ([]blobs.BlobID, error) {
	var media []blobs.BlobID
	var after *blobs.BlobID
	for {
		r, err := c.do(ctx, relay, c.purgeRequest(relay, owner, after, nil))
		if err != nil {
			return nil, err
		}
		media = append(media, r.media...)
		if !r.more || len(r.media) == 0 {
			return media, nil
		}
		if len(media) > maxPurgeMediaTotal {
			return nil, fmt.Errorf("moments: purge on relay %s: more than %d media: %w", relay, maxPurgeMediaTotal, ErrProtocol)
		}
		last := r.media[len(r.media)-1]
		after = &last
	}
}

// maxPurgeMediaTotal bounds the media ids Purge collects from a relay
// that keeps saying there are more: twice a full feed's (50 000 moments of
// MaxMedia each).
const maxPurgeMediaTotal = 1 << 20

// ConfirmPurge tells relay that media, which Purge returned, are deleted:
// it stops reporting them. Each request is also a Purge of owner's feed
// (gone already, in the usual order).
func (c *Client) ConfirmPurge(ctx context.Context, relay peer.ID, owner ed25519.PrivateKey, media []blobs.BlobID) error {
	for chunk := range slices.Chunk(media, MaxPurgeMedia) {
		if _, err := c.do(ctx, relay, c.purgeRequest(relay, owner, nil, chunk)); err != nil {
			return err
		}
	}
	return nil
}

func (c *Client) purgeRequest(relay peer.ID, owner ed25519.PrivateKey, after *blobs.BlobID, confirmed []blobs.BlobID) request {
	now := c.cfg.now()
	pub := owner.Public().(ed25519.PublicKey)
	return request{kind: reqPurge, owner: pub, time: now, sig: ed25519.Sign(owner, purgeMessage(relay, c.h.ID(), pub, now)),
		mediaAfter: after, confirmed: confirmed}
}

// do runs one request on a new stream to relay.
func (c *Client) do(ctx context.Context, relay peer.ID, req request) (response, error) {
	var r response
	err := c.roundTrip(ctx, relay, func(st network.Stream, rd *wire.Reader) error {
		if err := wire.Write(st, encodeRequest(req), maxRequestFrame); err != nil {
			return err
		}
		b, err := rd.ReadBytes(maxResponseFrame)
		if err != nil {
			if errors.Is(err, wire.ErrTooLarge) {
				return fmt.Errorf("%w: %w", ErrProtocol, err)
			}
			return err
		}
		if r, err = decodeResponse(b); err != nil {
			return err
		}
		if r.code != CodeOK {
			return &Error{Code: r.code, RetryAfter: r.retryAfter}
		}
		return nil
	})
	if err != nil {
		return response{}, fmt.Errorf("moments: %s on relay %s: %w", req.kind, relay, err)
	}
	return r, nil
}

func (c *Client) roundTrip(ctx context.Context, relay peer.ID, fn func(network.Stream, *wire.Reader) error) error {
	dctx, cancel := context.WithTimeout(ctx, c.cfg.dialTimeout)
	st, err := c.h.NewStream(dctx, relay, ID)
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("open stream: %w", err)
	}
	if err := st.Scope().SetService(ServiceName); err != nil {
		_ = st.Reset()
		return fmt.Errorf("open stream: %w", err)
	}
	deadline := time.Now().Add(c.cfg.requestTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if err := st.SetDeadline(deadline); err != nil {
		_ = st.Reset()
		return err
	}
	stop := context.AfterFunc(ctx, func() { _ = st.Reset() })
	err = fn(st, wire.NewReader(st))
	if !stop() {
		err = errors.Join(ctx.Err(), err)
	}
	if err != nil {
		_ = st.Reset()
		return err
	}
	_ = st.Close()
	return nil
}
