package discovery

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// SMSGateway sends the relay's verification texts. Send delivers text to
// number (E.164) or fails; it must honour ctx, and must never log the
// number nor put it in its errors (the relay logs them). The relay calls
// it while answering a code request, so it should return within seconds.
type SMSGateway interface {
	Send(ctx context.Context, number Number, text string) error
}

// ErrGateway wraps the errors of the gateways in this package.
var ErrGateway = errors.New("discovery: SMS gateway")

// codeText is the verification SMS.
func codeText(code string, ttl time.Duration) string {
	return fmt.Sprintf("%s is your kinmesh code. It expires in %d minutes. Never share it.", code, int(ttl.Round(time.Minute)/time.Minute))
}

// ConsoleGateway is the development gateway: it sends nothing, it writes
// each text to a writer or a logger (the number masked to its last two
// digits) and keeps the last text per number in memory, for tests and
// the testnet (LastCode). It is what a relay uses when no real gateway is
// configured; never use it where real users verify numbers.
type ConsoleGateway struct {
	w   io.Writer
	log *slog.Logger

	mu    sync.Mutex
	last  map[[32]byte]string // SHA-256(number) → last text
	order [][32]byte          // oldest first, for eviction
}

// maxConsoleKept bounds the texts a ConsoleGateway remembers.
const maxConsoleKept = 1024

// ConsoleOption configures NewConsoleGateway.
type ConsoleOption func(*ConsoleGateway)

// ConsoleWriter makes the gateway write one line per text to w.
func ConsoleWriter(w io.Writer) ConsoleOption { return func(g *ConsoleGateway) { g.w = w } }

// ConsoleLogger makes the gateway log each text at level INFO on l.
func ConsoleLogger(l *slog.Logger) ConsoleOption { return func(g *ConsoleGateway) { g.log = l } }

// NewConsoleGateway returns a console gateway. Without options it only
// keeps the texts in memory.
func NewConsoleGateway(opts ...ConsoleOption) *ConsoleGateway {
	g := &ConsoleGateway{last: make(map[[32]byte]string)}
	for _, o := range opts {
		o(g)
	}
	return g
}

// Send implements SMSGateway.
func (g *ConsoleGateway) Send(ctx context.Context, number Number, text string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	k := sha256.Sum256([]byte(number))
	g.mu.Lock()
	if _, ok := g.last[k]; !ok {
		if len(g.order) >= maxConsoleKept {
			delete(g.last, g.order[0])
			g.order = g.order[1:]
		}
		g.order = append(g.order, k)
	}
	g.last[k] = text
	g.mu.Unlock()
	if g.w != nil {
		if _, err := fmt.Fprintf(g.w, "console SMS to %s: %s\n", number.Masked(), text); err != nil {
			return fmt.Errorf("%w: console: %w", ErrGateway, err)
		}
	}
	if g.log != nil {
		g.log.Info("console SMS gateway (development only: nothing was sent)", "to", number.Masked(), "text", text)
	}
	return nil
}

// LastMessage returns the last text sent to number.
func (g *ConsoleGateway) LastMessage(number Number) (string, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	t, ok := g.last[sha256.Sum256([]byte(number))]
	return t, ok
}

// LastCode returns the verification code in the last text sent to number.
func (g *ConsoleGateway) LastCode(number Number) (string, bool) {
	t, ok := g.LastMessage(number)
	if !ok || len(t) < CodeDigits {
		return "", false
	}
	code := t[:CodeDigits]
	for _, c := range code {
		if c < '0' || c > '9' {
			return "", false
		}
	}
	return code, true
}

// WebhookGateway hands texts to an SMS provider over HTTP: each Send
// POSTs the JSON object {"to": "+351…", "text": "…"} to the configured
// URL with "Authorization: Bearer <token>", and succeeds on any 2xx
// answer. Most providers take such a call directly or through a small
// adapter (docs/operator-guide.md#sms-gateways).
type WebhookGateway struct {
	url    string
	token  string
	client *http.Client
}

// WebhookOption configures NewWebhookGateway.
type WebhookOption func(*WebhookGateway) error

// WebhookTimeout bounds one call to the provider (default 10 s).
func WebhookTimeout(d time.Duration) WebhookOption {
	return func(g *WebhookGateway) error {
		if d <= 0 {
			return errors.New("discovery: webhook timeout must be positive")
		}
		g.client.Timeout = d
		return nil
	}
}

// WebhookHTTPClient sets the HTTP client (default: a new client with the
// timeout, no redirects followed).
func WebhookHTTPClient(c *http.Client) WebhookOption {
	return func(g *WebhookGateway) error {
		if c == nil {
			return errors.New("discovery: nil HTTP client")
		}
		g.client = c
		return nil
	}
}

// NewWebhookGateway returns a gateway posting to rawURL, which must be
// https (or http on a loopback address, for a local adapter). token may be
// empty if the endpoint needs none.
func NewWebhookGateway(rawURL, token string, opts ...WebhookOption) (*WebhookGateway, error) {
	u, err := url.Parse(rawURL)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("discovery: SMS webhook URL %q: want https://host/path", rawURL)
	}
	switch u.Scheme {
	case "https":
	case "http":
		ip := net.ParseIP(u.Hostname())
		if u.Hostname() != "localhost" && (ip == nil || !ip.IsLoopback()) {
			return nil, fmt.Errorf("discovery: SMS webhook URL %q: plain http only on loopback; use https", rawURL)
		}
	default:
		return nil, fmt.Errorf("discovery: SMS webhook URL %q: want https://host/path", rawURL)
	}
	if strings.ContainsAny(token, "\r\n") {
		return nil, errors.New("discovery: SMS webhook token contains a line break")
	}
	g := &WebhookGateway{
		url:   u.String(),
		token: token,
		client: &http.Client{
			Timeout: 10 * time.Second,
			// A redirect could carry the number elsewhere; providers don't
			// redirect API calls.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}
	for _, o := range opts {
		if err := o(g); err != nil {
			return nil, err
		}
	}
	return g, nil
}

// Send implements SMSGateway. Errors wrap ErrGateway and never contain the
// number or the provider's answer (which might echo it).
func (g *WebhookGateway) Send(ctx context.Context, number Number, text string) error {
	body, err := json.Marshal(struct {
		To   string `json:"to"`
		Text string `json:"text"`
	}{string(number), text})
	if err != nil {
		return fmt.Errorf("%w: %w", ErrGateway, err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, g.url, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("%w: %w", ErrGateway, err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "kinmesh-relay")
	if g.token != "" {
		req.Header.Set("Authorization", "Bearer "+g.token)
	}
	resp, err := g.client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // the URL is the operator's; the cause is what matters
		}
		return fmt.Errorf("%w: webhook: %w", ErrGateway, err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	_ = resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("%w: webhook answered HTTP %d", ErrGateway, resp.StatusCode)
	}
	return nil
}
