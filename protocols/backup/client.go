package backup

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

// Client is the device side: it uploads, checks and deletes the account's
// backup, and fetches one on a new device. It holds no goroutines and
// needs no Close; it is safe for concurrent use.
type Client struct {
	h   host.Host
	cfg clientConfig
	log *slog.Logger
}

// NewClient returns a client that speaks from h.
//
// Defaults (see the ClientOption functions): 10 s to connect and open a
// stream, 60 s for the request once it is open, slog.Default().
func NewClient(h host.Host, opts ...ClientOption) (*Client, error) {
	if h == nil {
		return nil, errors.New("backup: NewClient needs a host")
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
	return &Client{h: h, cfg: cfg, log: cfg.logger.With("component", "backup-client")}, nil
}

// Put stores blob (a sealed backup: Key.Seal) on relay as id's account's
// backup, replacing the one it held. The relay stores it under the
// account's verified number there.
//
// Errors wrap ErrNotVerified (no verified number on relay), ErrMalformed
// (not a sealed backup), ErrRateLimited (see RetryAfter), ErrQuota,
// ErrUnavailable, or a network error.
func (c *Client) Put(ctx context.Context, relay peer.ID, id *e2ee.Identity, blob []byte) (Status, error) {
	if err := CheckBlob(blob); err != nil {
		return Status{}, fmt.Errorf("backup: put: %w", err)
	}
	return c.ownerStatus(ctx, relay, id, body{op: opPut, blob: blob})
}

// Status asks relay what it holds for id's account.
func (c *Client) Status(ctx context.Context, relay peer.ID, id *e2ee.Identity) (Status, error) {
	return c.ownerStatus(ctx, relay, id, body{op: opStatus})
}

// Delete removes id's account's backup from relay (disabling backups,
// unlinking the number, deleting the account). Deleting when the relay
// holds none succeeds; Status.Removed says whether one was removed.
func (c *Client) Delete(ctx context.Context, relay peer.ID, id *e2ee.Identity) (Status, error) {
	return c.ownerStatus(ctx, relay, id, body{op: opDelete})
}

// Fetch gets the backup relay holds for a number, proving the number with
// code: the code relay texted to it when id (any identity: a new device
// uses a throwaway one) asked for one with protocols/discovery's
// RequestCode. The code is consumed, right or wrong backup.
//
// Errors wrap ErrNoBackup, ErrWrongCode (the returned Status says how
// many attempts are left), ErrCodeExpired, ErrNoCode,
// ErrTooManyAttempts (see RetryAfter), ErrMalformed, ErrUnavailable, or
// a network error.
func (c *Client) Fetch(ctx context.Context, relay peer.ID, id *e2ee.Identity, code string) (Fetched, Status, error) {
	if !validCode(code) {
		return Fetched{}, Status{}, fmt.Errorf("backup: fetch: a code is %d digits: %w", CodeDigits, ErrMalformed)
	}
	r, err := c.ownerOp(ctx, relay, id, body{op: opFetch, code: code})
	var st Status
	if r.status != nil {
		st = *r.status
	}
	if err != nil {
		return Fetched{}, st, err
	}
	if r.fetched == nil {
		return Fetched{}, st, fmt.Errorf("backup: fetch on relay %s: answer without a backup: %w", relay, ErrProtocol)
	}
	return *r.fetched, st, nil
}

// ownerStatus runs an operation answered with a Status.
func (c *Client) ownerStatus(ctx context.Context, relay peer.ID, id *e2ee.Identity, b body) (Status, error) {
	r, err := c.ownerOp(ctx, relay, id, b)
	var st Status
	if r.status != nil {
		st = *r.status
	}
	if err == nil && r.status == nil {
		err = fmt.Errorf("backup: %s on relay %s: answer without a status: %w", b.op, relay, ErrProtocol)
	}
	return st, err
}

// ownerOp runs one operation: hello, challenge, signed request, answer.
// On a refusal it returns the answer (with its Status, if any) and an
// *Error.
func (c *Client) ownerOp(ctx context.Context, relay peer.ID, id *e2ee.Identity, b body) (response, error) {
	identity := id.Public().Marshal()
	enc := encodeBody(b)
	var out response
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
		msg := authMessage(r.nonce, s.Conn().RemotePeer(), s.Conn().LocalPeer(), requestHash(identity, enc))
		req := request{kind: reqOwner, identity: identity, body: enc, sig: id.Sign(msg)}
		if err := wire.Write(s, encodeRequest(req), maxOwnerFrame); err != nil {
			return err
		}
		if out, err = readResponse(rd); err != nil {
			return err
		}
		if out.code != CodeOK {
			return &Error{Code: out.code, RetryAfter: out.retryAfter}
		}
		return nil
	})
	if err != nil {
		return out, fmt.Errorf("backup: %s on relay %s: %w", b.op, relay, err)
	}
	return out, nil
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
// the stream. Relays are dialed directly, never over a circuit.
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
