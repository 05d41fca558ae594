package turn

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/protocols/wire"
)

// Signer is what a client needs of an account: its id and signatures by
// its identity key (an *e2ee.Identity is one).
type Signer interface {
	AccountID() e2ee.AccountID
	Sign(msg []byte) []byte
}

// Client asks relays for TURN credentials on behalf of an account. It
// holds no goroutines and needs no Close; it is safe for concurrent use.
type Client struct {
	h   host.Host
	id  Signer
	key []byte
	cfg clientConfig
}

// NewClient returns a client that asks from h, for the account id signs
// for.
//
// Defaults (see the ClientOption functions): 10 s to connect and open a
// stream, 10 s for the request, the real clock.
func NewClient(h host.Host, id Signer, opts ...ClientOption) (*Client, error) {
	if h == nil || id == nil {
		return nil, errors.New("turn: NewClient needs a host and an account")
	}
	key, err := id.AccountID().SigningKey()
	if err != nil {
		return nil, fmt.Errorf("turn: NewClient: %w", err)
	}
	cfg := defaultClientConfig()
	for _, o := range opts {
		if err := o(&cfg); err != nil {
			return nil, err
		}
	}
	return &Client{h: h, id: id, key: key, cfg: cfg}, nil
}

// Credentials asks relay for TURN credentials. Their Expires is dated by
// this device's clock. Errors wrap ErrUnauthorized, ErrRateLimited,
// ErrUnavailable, ErrProtocol, or a network error.
func (c *Client) Credentials(ctx context.Context, relay peer.ID) (Credentials, error) {
	dctx, cancel := context.WithTimeout(ctx, c.cfg.dialTimeout)
	st, err := c.h.NewStream(dctx, relay, ID)
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return Credentials{}, ctx.Err()
		}
		return Credentials{}, fmt.Errorf("turn: credentials from %s: open stream: %w", relay, err)
	}
	if err := st.Scope().SetService(ServiceName); err != nil {
		_ = st.Reset()
		return Credentials{}, fmt.Errorf("turn: credentials from %s: %w", relay, err)
	}
	deadline := time.Now().Add(c.cfg.requestTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = st.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = st.Reset() })
	defer stop()

	now := c.cfg.now()
	req := request{time: now.Unix()}
	copy(req.account[:], c.key)
	req.sig = c.id.Sign(authMessage(relay, c.h.ID(), req.time))
	r, err := func() (response, error) {
		if err := wire.Write(st, encodeRequest(req), maxRequestFrame); err != nil {
			return response{}, err
		}
		b, err := wire.NewReader(st).ReadBytes(maxResponseFrame)
		if err != nil {
			if errors.Is(err, wire.ErrTooLarge) {
				return response{}, fmt.Errorf("%w: %w", ErrProtocol, err)
			}
			return response{}, err
		}
		return decodeResponse(b, now)
	}()
	if err != nil {
		_ = st.Reset()
		if ctx.Err() != nil {
			return Credentials{}, ctx.Err()
		}
		return Credentials{}, fmt.Errorf("turn: credentials from %s: %w", relay, err)
	}
	_ = st.Close()
	if r.code != CodeOK {
		return Credentials{}, fmt.Errorf("turn: credentials from %s: %w", relay, &Error{Code: r.code, RetryAfter: r.retryAfter})
	}
	return *r.creds, nil
}
