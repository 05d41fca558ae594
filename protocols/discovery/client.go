package discovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/cloudflare/circl/oprf"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/kinmesh/kinmesh/protocols/contact"
	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/protocols/wire"
)

// Client is the device side: it asks a relay for verification codes,
// submits them, looks numbers up and syncs the relay's directory. It holds
// no goroutines and needs no Close; it is safe for concurrent use.
type Client struct {
	h   host.Host
	cfg clientConfig
	log *slog.Logger
}

// NewClient returns a client that speaks from h.
//
// Defaults (see the ClientOption functions): 10 s to connect and open a
// stream, 40 s for the request once it is open (a code request waits for
// the relay's SMS gateway), 10 min for a whole directory sync,
// slog.Default().
func NewClient(h host.Host, opts ...ClientOption) (*Client, error) {
	if h == nil {
		return nil, errors.New("discovery: NewClient needs a host")
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
	return &Client{h: h, cfg: cfg, log: cfg.logger.With("component", "discovery-client")}, nil
}

// RequestCode asks relay to text a verification code to number for id's
// account. The relay sees the number to send the SMS, and keeps only its
// OPRF output. The returned Status has Pending set and CodeExpires.
//
// Errors wrap ErrRateLimited (see RetryAfter), ErrTooManyAttempts (the
// account is locked out), ErrInvalidNumber, ErrSMSFailed, ErrUnavailable,
// or a network error.
func (c *Client) RequestCode(ctx context.Context, relay peer.ID, id *e2ee.Identity, number Number) (Status, error) {
	if !number.Valid() {
		return Status{}, fmt.Errorf("discovery: request code: %w", ErrInvalidNumber)
	}
	return c.ownerStatus(ctx, relay, id, ownerBody{op: opSendCode, number: string(number)})
}

// NormalizeCode strips spaces and dashes from a code as typed, and reports
// whether what is left is CodeDigits digits.
func NormalizeCode(s string) (string, bool) {
	s = strings.Map(func(r rune) rune {
		if r == ' ' || r == '-' || r == '\t' {
			return -1
		}
		return r
	}, s)
	return s, validCode(s)
}

// VerifyCode submits the code the relay sent, with the account's signed
// contact record: on success the relay links the number to the account
// and enrols the record in its directory, where people who have the
// number in their address book find it. The returned Status has Verified
// set.
//
// Errors wrap ErrWrongCode (the Status says how many attempts are left),
// ErrCodeExpired, ErrNoCode, ErrTooManyAttempts (see RetryAfter),
// ErrMalformed (not 6 digits, or a record that is not id's), ErrQuota,
// ErrUnavailable, or a network error.
func (c *Client) VerifyCode(ctx context.Context, relay peer.ID, id *e2ee.Identity, code string, record contact.Signed) (Status, error) {
	code, ok := NormalizeCode(code)
	if !ok {
		return Status{}, fmt.Errorf("discovery: verify code: a code is %d digits: %w", CodeDigits, ErrMalformed)
	}
	if !record.Identity.Equal(id.Public()) {
		return Status{}, fmt.Errorf("discovery: verify code: the record is not the account's: %w", ErrMalformed)
	}
	return c.ownerStatus(ctx, relay, id, ownerBody{op: opVerifyCode, code: code, record: record.Raw})
}

// Status asks relay what it holds for id's account.
func (c *Client) Status(ctx context.Context, relay peer.ID, id *e2ee.Identity) (Status, error) {
	return c.ownerStatus(ctx, relay, id, ownerBody{op: opStatus})
}

// UpdateRecord replaces the contact record in the account's directory
// entry (after a new record: new home relays, new device). ErrNotVerified
// means the account has no verified number on relay.
func (c *Client) UpdateRecord(ctx context.Context, relay peer.ID, id *e2ee.Identity, record contact.Signed) (Status, error) {
	if !record.Identity.Equal(id.Public()) {
		return Status{}, fmt.Errorf("discovery: update record: the record is not the account's: %w", ErrMalformed)
	}
	return c.ownerStatus(ctx, relay, id, ownerBody{op: opUpdateRecord, record: record.Raw})
}

// Unenrol removes the account's number link, its directory entry and any
// pending verification from relay (for unlinking the number, or deleting
// the account). Unenrolling an account the relay does not know succeeds;
// Status.Removed says whether an entry was removed. A lockout stays.
func (c *Client) Unenrol(ctx context.Context, relay peer.ID, id *e2ee.Identity) (Status, error) {
	return c.ownerStatus(ctx, relay, id, ownerBody{op: opUnenrol})
}

// ownerStatus runs an operation answered with a Status.
func (c *Client) ownerStatus(ctx context.Context, relay peer.ID, id *e2ee.Identity, body ownerBody) (Status, error) {
	r, err := c.ownerOp(ctx, relay, id, body)
	var st Status
	if r.status != nil {
		st = *r.status
	}
	if err == nil && r.status == nil {
		err = fmt.Errorf("discovery: %s on relay %s: answer without a status: %w", body.op, relay, ErrProtocol)
	}
	return st, err
}

// Evaluate computes the OPRF outputs of numbers under relay's key pk,
// without the relay learning the numbers: it blinds them, has relay
// evaluate the blinded elements (in batches of MaxBatch), checks the
// relay's proof that it used the private key of pk, and unblinds. pk must
// be the key the caller trusts for relay (pinned at first use; see
// Directory). The outputs are in the order of numbers.
//
// Errors wrap ErrBadProof (the relay evaluated with another key),
// ErrNotVerified (the relay wants a verified number first),
// ErrRateLimited (see RetryAfter; outputs of the batches done so far are
// returned), ErrTooLarge, ErrUnavailable, or a network error.
func (c *Client) Evaluate(ctx context.Context, relay peer.ID, id *e2ee.Identity, pk PublicKey, numbers []Number) ([]Output, error) {
	if pk.IsZero() {
		return nil, errors.New("discovery: evaluate: no public key for the relay")
	}
	for _, n := range numbers {
		if !n.Valid() {
			return nil, fmt.Errorf("discovery: evaluate: %w", ErrInvalidNumber)
		}
	}
	out := make([]Output, 0, len(numbers))
	for len(numbers) > 0 {
		batch := numbers[:min(len(numbers), MaxBatch)]
		numbers = numbers[len(batch):]
		res, err := c.evaluateBatch(ctx, relay, id, pk, batch)
		if err != nil {
			return out, err
		}
		out = append(out, res...)
	}
	return out, nil
}

func (c *Client) evaluateBatch(ctx context.Context, relay peer.ID, id *e2ee.Identity, pk PublicKey, numbers []Number) ([]Output, error) {
	vc, fin, req, err := blind(pk, numbers)
	if err != nil {
		return nil, fmt.Errorf("discovery: blind: %w", err)
	}
	blinded, err := marshalElements(req.Elements)
	if err != nil {
		return nil, fmt.Errorf("discovery: blind: %w", err)
	}
	r, err := c.ownerOp(ctx, relay, id, ownerBody{op: opEvaluate, blinded: blinded})
	if err != nil {
		return nil, err
	}
	out, err := finalize(vc, fin, r.eval, len(numbers))
	if err != nil {
		return nil, fmt.Errorf("discovery: evaluate on relay %s: %w", relay, err)
	}
	return out, nil
}

// finalize checks a relay's evaluation of n blinded numbers (its elements
// and its proof that they were made with the key the client blinded for)
// and unblinds the outputs.
func finalize(vc oprf.VerifiableClient, fin *oprf.FinalizeData, eval *evaluation, n int) ([]Output, error) {
	if eval == nil || len(eval.elements) != n {
		return nil, fmt.Errorf("answer without %d elements: %w", n, ErrProtocol)
	}
	elems, err := parseElements(eval.elements)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrProtocol, err)
	}
	proof, err := parseProof(eval.proof)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrProtocol, err)
	}
	ys, err := vc.Finalize(fin, &oprf.Evaluation{Elements: elems, Proof: proof})
	if err != nil {
		if errors.Is(err, oprf.ErrInvalidProof) {
			return nil, ErrBadProof
		}
		return nil, fmt.Errorf("%w: %w", ErrProtocol, err)
	}
	out := make([]Output, len(ys))
	for i, y := range ys {
		if len(y) != OutputSize {
			return nil, fmt.Errorf("OPRF output of %d bytes: %w", len(y), ErrProtocol)
		}
		copy(out[i][:], y)
	}
	return out, nil
}

// List fetches one page of relay's directory: the changes after
// at.Since (the zero Listing for the whole directory), at most limit
// entries (at most MaxPageEntries; 0 for the header only). A listing in
// progress passes its Base too (see Listing), so the relay asks it to
// start over only if it may have missed a deletion. Anyone may list.
func (c *Client) List(ctx context.Context, relay peer.ID, at Listing, limit int) (*Page, error) {
	if limit < 0 || limit > MaxPageEntries {
		return nil, fmt.Errorf("discovery: list: limit %d not in [0, %d]", limit, MaxPageEntries)
	}
	var page *Page
	err := c.roundTrip(ctx, relay, func(st network.Stream, rd *wire.Reader) error {
		if err := wire.Write(st, encodeRequest(request{kind: reqList, since: at.Since, base: at.Base, limit: limit}), maxRequestFrame); err != nil {
			return err
		}
		r, err := readResponse(rd)
		if err != nil {
			return err
		}
		if r.code != CodeOK {
			return &Error{Code: r.code, RetryAfter: r.retryAfter}
		}
		if r.page == nil || len(r.page.Entries) > max(limit, 0) {
			return fmt.Errorf("answer without a page: %w", ErrProtocol)
		}
		page = r.page
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("discovery: list relay %s: %w", relay, err)
	}
	return page, nil
}

// Sync brings dir up to date with relay's directory, page by page, and
// returns how many changes it applied. A dir with a PublicKey accepts
// pages with that key only (ErrKeyChanged); an empty dir pins the relay's
// key.
//
// A sync is bounded: each page by the request timeout, the whole sync by
// the sync timeout (WithSyncTimeout) and MaxSyncPages pages, and the copy
// by its caps (see Directory); a relay that goes beyond a cap fails the
// sync with ErrDirectoryTooLarge, and one that says there is more without
// moving the cursor forward with ErrProtocol. A failed sync leaves dir as
// of the last page it applied (a start over under way keeps the copy
// held before it), and the next Sync goes on from there.
func (c *Client) Sync(ctx context.Context, relay peer.ID, dir *Directory) (int, error) {
	parent := ctx
	deadline := time.Now().Add(c.cfg.syncTimeout)
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	n := 0
	for pages := 0; ; pages++ {
		if pages == c.cfg.syncPages {
			return n, fmt.Errorf("discovery: sync relay %s: still more after %d pages: %w", relay, pages, ErrDirectoryTooLarge)
		}
		p, err := c.List(ctx, relay, dir.Listing(), c.cfg.pageEntries)
		if err != nil {
			// The stream's deadline is the sync's: it may fire first.
			if parent.Err() == nil && (ctx.Err() != nil || !time.Now().Before(deadline)) {
				return n, fmt.Errorf("discovery: sync relay %s: not done within %v (%d pages applied; the next sync goes on from there): %w (%w)",
					relay, c.cfg.syncTimeout, pages, context.DeadlineExceeded, err)
			}
			return n, err
		}
		since := dir.Cursor
		if p.StartOver {
			since = 0
		}
		if p.More && p.Next <= since {
			return n, fmt.Errorf("discovery: sync relay %s: more changes but no progress past %d: %w", relay, since, ErrProtocol)
		}
		if err := dir.Apply(p); err != nil {
			return n, fmt.Errorf("discovery: sync relay %s: %w", relay, err)
		}
		n += len(p.Entries)
		if !p.More {
			return n, nil
		}
	}
}

// Match is a number of the address book that belongs to a user: the
// signed contact record the relay's directory holds for it.
type Match struct {
	Number Number
	Record contact.Signed
}

// Discover finds which of numbers belong to users enrolled in relay's
// directory: it syncs dir, looks the numbers up (Evaluate, verified
// against dir's key), and opens the entries whose ids match. The relay
// sees blinded elements and directory downloads only; nothing it receives
// depends on a number other than through a fresh random blind. Numbers
// without an entry are not users (of this relay).
func (c *Client) Discover(ctx context.Context, relay peer.ID, id *e2ee.Identity, dir *Directory, numbers []Number) ([]Match, error) {
	if _, err := c.Sync(ctx, relay, dir); err != nil {
		return nil, err
	}
	outs, err := c.Evaluate(ctx, relay, id, dir.PublicKey, numbers)
	if err != nil {
		return nil, err
	}
	return c.match(dir, numbers, outs), nil
}

// match opens dir's entries for the outputs that have one.
func (c *Client) match(dir *Directory, numbers []Number, outs []Output) []Match {
	var out []Match
	for i, o := range outs {
		box, ok := dir.Box(o.ID())
		if !ok {
			continue
		}
		rec, err := o.Open(box)
		if err != nil {
			c.log.Debug("unreadable directory entry", "err", err)
			continue
		}
		out = append(out, Match{Number: numbers[i], Record: rec})
	}
	return out
}

// ownerOp runs one account operation: hello, challenge, signed request,
// answer. On a refusal it returns the answer (with its Status, if any)
// and an *Error.
func (c *Client) ownerOp(ctx context.Context, relay peer.ID, id *e2ee.Identity, body ownerBody) (response, error) {
	identity := id.Public().Marshal()
	enc := encodeOwnerBody(body)
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
		return out, fmt.Errorf("discovery: %s on relay %s: %w", body.op, relay, err)
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
