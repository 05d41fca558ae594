package report

import (
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

// Client is the device side of the report protocol. It holds no
// goroutines and needs no Close; it is safe for concurrent use.
type Client struct {
	h   host.Host
	cfg clientConfig
	log *slog.Logger
}

// NewClient returns a client that speaks from h.
//
// Defaults (see the ClientOption functions): 10 s to connect and open a
// stream, 30 s for the submission once it is open, slog.Default().
func NewClient(h host.Host, opts ...ClientOption) (*Client, error) {
	if h == nil {
		return nil, errors.New("report: NewClient needs a host")
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
	return &Client{h: h, cfg: cfg, log: cfg.logger.With("component", "report-client")}, nil
}

// Encode validates sub and returns the bytes Submit signs, so a caller
// can check it fits (ErrTooLarge, ErrMalformed) before contacting any
// relay.
func Encode(sub Submission) ([]byte, error) {
	b, err := encodeSubmission(sub)
	if err != nil {
		return nil, fmt.Errorf("report: %w", err)
	}
	return b, nil
}

// Submit sends sub to relay, signed by id (the reporter's account
// identity). Send the same Submission (same ID) to each home relay: each
// relay stores it once, however often it is retried.
//
// Errors wrap ErrMalformed or ErrTooLarge (sub breaks a rule; nothing was
// sent), a relay's refusal (*Error: ErrUnauthorized, ErrQuota,
// ErrQueueFull, ErrRateLimited with RetryAfter, ErrUnavailable), or a
// network error.
func (c *Client) Submit(ctx context.Context, relay peer.ID, id *e2ee.Identity, sub Submission) (Receipt, error) {
	if id == nil {
		return Receipt{}, fmt.Errorf("report: submit: no identity: %w", ErrMalformed)
	}
	if sub.Kind == KindReport && sub.Reported == id.AccountID() {
		return Receipt{}, fmt.Errorf("report: submit: you can't report yourself: %w", ErrMalformed)
	}
	body, err := Encode(sub)
	if err != nil {
		return Receipt{}, err
	}
	identity := id.Public().Marshal()
	var rec Receipt
	err = c.roundTrip(ctx, relay, func(s network.Stream, rd *wire.Reader) error {
		if err := wire.Write(s, encodeRequest(request{kind: reqHello}), maxHelloFrame); err != nil {
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
		sig := id.Sign(authMessage(r.nonce, s.Conn().RemotePeer(), submitHash(identity, body)))
		if err := wire.Write(s, encodeRequest(request{kind: reqSubmit, submission: body, identity: identity, sig: sig}), maxSubmitFrame); err != nil {
			return err
		}
		if r, err = readResponse(rd); err != nil {
			return err
		}
		if r.code != CodeOK {
			return &Error{Code: r.code, RetryAfter: r.retryAfter}
		}
		if r.receipt == nil {
			return fmt.Errorf("answer without a receipt: %w", ErrProtocol)
		}
		rec = *r.receipt
		return nil
	})
	if err != nil {
		return Receipt{}, fmt.Errorf("report: submit %s to relay %s: %w", sub.Kind, relay, err)
	}
	return rec, nil
}

// Purge asks relay to delete every report, feedback and support request
// id's account submitted there, when the account is deleted. It returns
// how many items the relay deleted; purging an account that submitted
// nothing succeeds with 0.
func (c *Client) Purge(ctx context.Context, relay peer.ID, id *e2ee.Identity) (int, error) {
	if id == nil {
		return 0, fmt.Errorf("report: purge: no identity: %w", ErrMalformed)
	}
	identity := id.Public().Marshal()
	var n int
	err := c.roundTrip(ctx, relay, func(s network.Stream, rd *wire.Reader) error {
		if err := wire.Write(s, encodeRequest(request{kind: reqHello}), maxHelloFrame); err != nil {
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
		sig := id.Sign(purgeMessage(r.nonce, s.Conn().RemotePeer(), identity))
		if err := wire.Write(s, encodeRequest(request{kind: reqPurge, identity: identity, sig: sig}), maxSubmitFrame); err != nil {
			return err
		}
		if r, err = readResponse(rd); err != nil {
			return err
		}
		if r.code != CodeOK {
			return &Error{Code: r.code, RetryAfter: r.retryAfter}
		}
		if r.purged == nil {
			return fmt.Errorf("answer without a count: %w", ErrProtocol)
		}
		n = *r.purged
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("report: purge on relay %s: %w", relay, err)
	}
	return n, nil
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
// the stream. Relays are dialed directly, never through a circuit.
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
