package blobs

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/kinmesh/kinmesh/protocols/wire"
)

// Client is the device side of the blob protocol: upload, fetch, delete.
// It holds no goroutines and needs no Close; it is safe for concurrent use.
type Client struct {
	h   host.Host
	cfg clientConfig
	log *slog.Logger
}

// NewClient returns a client that speaks from h.
//
// Defaults (see the ClientOption functions): 10 s to connect and open a
// stream, 30 s for each small frame and 30 s for each chunk,
// slog.Default().
func NewClient(h host.Host, opts ...ClientOption) (*Client, error) {
	if h == nil {
		return nil, errors.New("blobs: NewClient needs a host")
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
	return &Client{h: h, cfg: cfg, log: cfg.logger.With("component", "blobs-client")}, nil
}

// Put uploads a sealed blob to relay, deletable later with the private
// half of deleteKey (see DeleteKey). A blob the relay already holds is not
// sent again; Put then succeeds at once and the usage is zero. Otherwise
// the returned Usage is the uploader's on that relay afterwards.
//
// Errors wrap ErrQuota, ErrRelayFull, ErrTooLarge, ErrRateLimited (see
// RetryAfter), ErrCorrupt, ErrUnavailable, or a network error.
func (c *Client) Put(ctx context.Context, relay peer.ID, s *Sealed, deleteKey ed25519.PublicKey) (Usage, error) {
	if s == nil || len(s.Chunks) == 0 || len(s.Chunks) != len(s.Hashes) {
		return Usage{}, fmt.Errorf("blobs: put: %w: empty or inconsistent blob", ErrMalformed)
	}
	if len(s.Chunks) > MaxChunks {
		return Usage{}, fmt.Errorf("blobs: put %d chunks: %w", len(s.Chunks), ErrTooLarge)
	}
	if len(deleteKey) != ed25519.PublicKeySize {
		return Usage{}, fmt.Errorf("blobs: put: delete key: %w", ErrMalformed)
	}
	var u Usage
	err := c.roundTrip(ctx, relay, func(st network.Stream, rd *wire.Reader) error {
		req := request{kind: reqPut, id: s.ID, hashes: s.Hashes, deleteKey: deleteKey}
		if err := wire.Write(st, encodeRequest(req), maxRequestFrame); err != nil {
			return err
		}
		r, err := c.readResponse(st, rd)
		if err != nil {
			return err
		}
		switch r.code {
		case CodeExists:
			return nil
		case CodeOK:
		default:
			return &Error{Code: r.code, RetryAfter: r.retryAfter}
		}
		for i, ch := range s.Chunks {
			if len(ch) != ChunkSize {
				return fmt.Errorf("chunk %d of %d bytes: %w", i, len(ch), ErrMalformed)
			}
			if err := st.SetDeadline(time.Now().Add(c.cfg.chunkTimeout)); err != nil {
				return err
			}
			if err := wire.Write(st, encodeChunk(i, ch), maxChunkFrame); err != nil {
				return err
			}
		}
		if r, err = c.readResponse(st, rd); err != nil {
			return err
		}
		if r.code != CodeOK {
			return &Error{Code: r.code, RetryAfter: r.retryAfter}
		}
		if r.usage != nil {
			u = *r.usage
		}
		return nil
	})
	if err != nil {
		return Usage{}, fmt.Errorf("blobs: put %s on relay %s: %w", s.ID, relay, err)
	}
	return u, nil
}

// Get fetches blob id from relay and returns its chunks, each checked
// against the id (ErrBadBlob if the relay serves anything else). Decrypt
// them with Open.
func (c *Client) Get(ctx context.Context, relay peer.ID, id BlobID) ([][]byte, error) {
	var chunks [][]byte
	err := c.roundTrip(ctx, relay, func(st network.Stream, rd *wire.Reader) error {
		if err := wire.Write(st, encodeRequest(request{kind: reqGet, id: id}), maxRequestFrame); err != nil {
			return err
		}
		r, err := c.readResponse(st, rd)
		if err != nil {
			return err
		}
		if r.code != CodeOK {
			return &Error{Code: r.code, RetryAfter: r.retryAfter}
		}
		if len(r.hashes) == 0 || ComputeID(r.hashes) != id {
			return ErrBadBlob
		}
		chunks = make([][]byte, 0, len(r.hashes))
		for i := range r.hashes {
			if err := st.SetDeadline(time.Now().Add(c.cfg.chunkTimeout)); err != nil {
				return err
			}
			b, err := rd.ReadBytes(maxChunkFrame)
			if err != nil {
				return err
			}
			data, code := decodeChunk(b, i)
			if code != CodeOK || sha256.Sum256(data) != r.hashes[i] {
				return ErrBadBlob
			}
			chunks = append(chunks, data)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("blobs: get %s from relay %s: %w", id, relay, err)
	}
	return chunks, nil
}

// Delete deletes blob id on relay with its deletion proof (SignDelete).
// ErrNotFound means the relay does not hold it (any more).
func (c *Client) Delete(ctx context.Context, relay peer.ID, id BlobID, proof []byte) error {
	if len(proof) != ed25519.SignatureSize {
		return fmt.Errorf("blobs: delete %s: proof: %w", id, ErrMalformed)
	}
	err := c.roundTrip(ctx, relay, func(st network.Stream, rd *wire.Reader) error {
		if err := wire.Write(st, encodeRequest(request{kind: reqDelete, id: id, sig: proof}), maxRequestFrame); err != nil {
			return err
		}
		r, err := c.readResponse(st, rd)
		if err != nil {
			return err
		}
		if r.code != CodeOK {
			return &Error{Code: r.code, RetryAfter: r.retryAfter}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("blobs: delete %s on relay %s: %w", id, relay, err)
	}
	return nil
}

// Has reports which of ids (at most MaxHasIDs) relay holds.
func (c *Client) Has(ctx context.Context, relay peer.ID, ids []BlobID) ([]bool, error) {
	if len(ids) == 0 || len(ids) > MaxHasIDs {
		return nil, fmt.Errorf("blobs: has %d ids: %w", len(ids), ErrMalformed)
	}
	var present []bool
	err := c.roundTrip(ctx, relay, func(st network.Stream, rd *wire.Reader) error {
		if err := wire.Write(st, encodeRequest(request{kind: reqHas, ids: ids}), maxRequestFrame); err != nil {
			return err
		}
		r, err := c.readResponse(st, rd)
		if err != nil {
			return err
		}
		if r.code != CodeOK {
			return &Error{Code: r.code, RetryAfter: r.retryAfter}
		}
		if len(r.present) != len(ids) {
			return fmt.Errorf("%d answers for %d ids: %w", len(r.present), len(ids), ErrProtocol)
		}
		present = r.present
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("blobs: has on relay %s: %w", relay, err)
	}
	return present, nil
}

func (c *Client) readResponse(st network.Stream, rd *wire.Reader) (response, error) {
	if err := st.SetDeadline(time.Now().Add(c.cfg.requestTimeout)); err != nil {
		return response{}, err
	}
	b, err := rd.ReadBytes(maxResponseFrame)
	if err != nil {
		if errors.Is(err, wire.ErrTooLarge) {
			return response{}, fmt.Errorf("%w: %w", ErrProtocol, err)
		}
		return response{}, err
	}
	return decodeResponse(b)
}

// roundTrip opens a stream to relay, runs fn and closes the stream.
// Relays are dialed directly: a relay is never behind a circuit, and
// blobs are far beyond what a limited connection carries.
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
	if err := st.SetDeadline(time.Now().Add(c.cfg.requestTimeout)); err != nil {
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
