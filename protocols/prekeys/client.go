package prekeys

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/protocols/wire"
)

// Client is the device side of the prekey protocol: it fetches bundles
// and runs the owner operations. It holds no goroutines and needs no
// Close; it is safe for concurrent use.
type Client struct {
	h   host.Host
	cfg clientConfig
	log *slog.Logger
}

// NewClient returns a client that speaks from h.
//
// Defaults (see the ClientOption functions): 10 s to connect and open a
// stream, 30 s for the request once it is open, slog.Default().
func NewClient(h host.Host, opts ...ClientOption) (*Client, error) {
	if h == nil {
		return nil, errors.New("prekeys: NewClient needs a host")
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
	return &Client{h: h, cfg: cfg, log: cfg.logger.With("component", "prekeys-client")}, nil
}

// Fetch fetches a bundle of account from relay. The relay hands each
// one-time prekey to one requester only: the bundle is this caller's to
// use once (start one session with e2ee.Initiate). Fetch verifies the
// bundle (every signature) and that its identity is account's; on
// success it can be passed to e2ee.Initiate as is.
//
// Errors wrap ErrNotFound (the relay holds nothing for the account),
// ErrRateLimited (see RetryAfter), ErrBadBundle, ErrUnavailable, or a
// network error.
func (c *Client) Fetch(ctx context.Context, relay peer.ID, account e2ee.AccountID) (*e2ee.Bundle, error) {
	key, err := account.SigningKey()
	if err != nil {
		return nil, fmt.Errorf("prekeys: fetch: %w: %w", ErrMalformed, err)
	}
	req := request{kind: reqFetch}
	copy(req.account[:], key)
	var bundle []byte
	err = c.roundTrip(ctx, relay, func(st network.Stream, rd *wire.Reader) error {
		if err := wire.Write(st, encodeRequest(req), maxRequestFrame); err != nil {
			return err
		}
		r, err := readResponse(rd)
		if err != nil {
			return err
		}
		if r.code != CodeOK {
			return &Error{Code: r.code, RetryAfter: r.retryAfter}
		}
		if r.bundle == nil {
			return fmt.Errorf("answer without a bundle: %w", ErrProtocol)
		}
		bundle = r.bundle
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("prekeys: fetch %s from relay %s: %w", account, relay, err)
	}
	b, err := e2ee.ParseBundle(bundle)
	if err != nil {
		return nil, fmt.Errorf("prekeys: fetch %s from relay %s: %w: %w", account, relay, ErrBadBundle, err)
	}
	if !bytes.Equal(b.Identity.Sign, key) {
		return nil, fmt.Errorf("prekeys: fetch %s from relay %s: bundle of %s: %w", account, relay, b.Identity.AccountID(), ErrBadBundle)
	}
	return b, nil
}

// Publish stores up on relay, as the owner id. up must be id's (e2ee
// PrekeyStore.Upload, or a share of it from Split); it is at most
// MaxUploadSize encoded.
//
// The relay replaces its signed and last-resort prekeys with up's if they
// are newer, and adds those of up's one-time prekeys whose ids are above
// every one-time id it ever accepted for the account (Status.MaxOneTimeID):
// re-sending keys it already has, or handed out, changes nothing. Give
// each relay its own one-time prekeys (see Split and Maintain). The
// returned Status says what the relay holds now, and is also returned with
// ErrStale and ErrQuota.
func (c *Client) Publish(ctx context.Context, relay peer.ID, id *e2ee.Identity, up *e2ee.Upload) (Status, error) {
	if up == nil || !up.Identity.Equal(id.Public()) {
		return Status{}, fmt.Errorf("prekeys: publish: upload is not %s's: %w", id.AccountID(), ErrMalformed)
	}
	b, err := up.Marshal()
	if err != nil {
		return Status{}, fmt.Errorf("prekeys: publish: %w: %w", ErrMalformed, err)
	}
	if len(b) > MaxUploadSize {
		return Status{}, fmt.Errorf("prekeys: publish: upload of %d bytes (cap %d): %w", len(b), MaxUploadSize, ErrTooLarge)
	}
	return c.ownerOp(ctx, relay, id, opPublish, b)
}

// Status asks relay what it holds for id's account. ErrNotFound means
// nothing.
func (c *Client) Status(ctx context.Context, relay peer.ID, id *e2ee.Identity) (Status, error) {
	return c.ownerOp(ctx, relay, id, opStatus, nil)
}

// Purge deletes everything relay holds for id's account (for account
// deletion, or leaving a home relay). Purging an account the relay does
// not know succeeds.
func (c *Client) Purge(ctx context.Context, relay peer.ID, id *e2ee.Identity) error {
	_, err := c.ownerOp(ctx, relay, id, opPurge, nil)
	return err
}

// ownerOp runs one owner operation: hello, challenge, signed request,
// answer.
func (c *Client) ownerOp(ctx context.Context, relay peer.ID, id *e2ee.Identity, o op, upload []byte) (Status, error) {
	identity := id.Public().Marshal()
	var st Status
	err := c.roundTrip(ctx, relay, func(s network.Stream, rd *wire.Reader) error {
		if err := wire.Write(s, encodeRequest(request{kind: reqHello}), maxRequestFrame); err != nil {
			return err
		}
		r, err := readResponse(rd)
		if err != nil {
			return err
		}
		if r.code != CodeOK {
			return &Error{Code: r.code, RetryAfter: r.retryAfter}
		}
		if r.nonce == nil {
			return fmt.Errorf("expected a challenge: %w", ErrProtocol)
		}
		msg := authMessage(r.nonce, s.Conn().RemotePeer(), s.Conn().LocalPeer(), requestHash(o, identity, upload))
		req := request{kind: reqOwner, op: o, identity: identity, upload: upload, sig: id.Sign(msg)}
		if err := wire.Write(s, encodeRequest(req), maxOwnerFrame); err != nil {
			return err
		}
		if r, err = readResponse(rd); err != nil {
			return err
		}
		if r.status != nil {
			st = *r.status
		}
		if r.code != CodeOK {
			return &Error{Code: r.code, RetryAfter: r.retryAfter}
		}
		if r.status == nil {
			return fmt.Errorf("answer without a status: %w", ErrProtocol)
		}
		return nil
	})
	if err != nil {
		return st, fmt.Errorf("prekeys: %s on relay %s: %w", o, relay, err)
	}
	return st, nil
}

func readResponse(rd *wire.Reader) (response, error) {
	b, err := rd.ReadBytes(maxResponseFrame)
	if err != nil {
		if errors.Is(err, wire.ErrTooLarge) {
			return response{}, fmt.Errorf("%w: %w", ErrProtocol, err)
		}
		return response{}, err
	}
	return decodeResponse(b)
}

// roundTrip opens a stream to relay, runs fn with deadlines set and closes
// the stream. Relays are dialed directly: a relay is never behind a
// circuit, so limited (relayed) connections are not used.
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
	_ = st.Close() // the answer is in; how the relay ends the stream doesn't matter
	return nil
}
