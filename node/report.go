package node

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"

	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/protocols/report"
)

// Reports, feedback and support requests (protocols/report,
// docs/protocol/report.md). A report goes, signed by the account, to
// every home relay, for their operators: the reported account, a reason,
// the user's words and only the messages the user picked, as this device
// shows them. Feedback and support requests travel the same way;
// diagnostics go with them only when the user asks and has consented to
// diagnostics sharing. The node keeps no copy.

// Report errors. The API maps each to its own code (docs/api.md).
var (
	// ErrInvalidReport: the report breaks a rule; the message says which.
	ErrInvalidReport = errors.New("node: invalid report")
	// ErrInvalidFeedback: the feedback breaks a rule; the message says which.
	ErrInvalidFeedback = errors.New("node: invalid feedback")
	// ErrUnknownMessage: no message has that id on this device.
	ErrUnknownMessage = errors.New("node: no such message")
	// ErrNotInConversation: a message picked for a report is not part of
	// the conversation with the reported account (sent by them, or to
	// them).
	ErrNotInConversation = errors.New("node: that message is not from your conversation with the reported account")
	// ErrSubmissionQuota: every home relay refused: the daily quota for
	// this kind of submission is used up. Try again tomorrow.
	ErrSubmissionQuota = errors.New("node: daily limit of reports or feedback reached on your relays; try again tomorrow")
	// ErrSubmissionRateLimited: every home relay refused: too many
	// submissions just now. Try again in a minute.
	ErrSubmissionRateLimited = errors.New("node: too many submissions just now; try again in a minute")
	// ErrNotDelivered: no home relay accepted the submission (unreachable,
	// busy or its queue full). Try again later.
	ErrNotDelivered = errors.New("node: no home relay accepted it; try again later")
)

// ReportRequest is what reporting an account takes.
type ReportRequest struct {
	// Account is the reported account's id.
	Account string `json:"account"`
	// Reason is one of report.Reasons(): spam, harassment, hate,
	// violence, sexual_content, child_safety, self_harm, impersonation,
	// scam, other.
	Reason string `json:"reason"`
	// Text is the user's own words (optional, at most 8 KiB).
	Text string `json:"text"`
	// Messages are the ids of the messages the user chose to disclose
	// (at most 20), from the conversation with the reported account.
	// Nothing else of the conversation is sent.
	Messages []string `json:"messages"`
}

// FeedbackRequest is what sending feedback or a support request takes.
type FeedbackRequest struct {
	// Kind is "feedback" (default) or "support".
	Kind string `json:"kind"`
	// Text is the user's message (required, at most 8 KiB).
	Text string `json:"text"`
	// IncludeDiagnostics asks to attach the diagnostics record. It is
	// attached only if the user has also consented to diagnostics sharing
	// (POST /v1/settings); Submission.DiagnosticsAttached says whether it
	// was.
	IncludeDiagnostics bool `json:"include_diagnostics"`
}

// Submission is the result of a report or feedback.
type Submission struct {
	// ID is the submission's id, the same on every relay.
	ID string `json:"id"`
	// Kind is "report", "feedback" or "support".
	Kind string `json:"kind"`
	// Accepted counts the relays that accepted it.
	Accepted int `json:"accepted"`
	// Relays is each home relay's answer.
	Relays []RelaySubmission `json:"relays"`
	// DisclosedMessages counts the messages a report carried.
	DisclosedMessages int `json:"disclosed_messages,omitempty"`
	// DiagnosticsAttached says whether feedback carried diagnostics.
	DiagnosticsAttached bool `json:"diagnostics_attached"`
}

// RelaySubmission is one home relay's answer.
type RelaySubmission struct {
	Relay    string `json:"relay"`
	Accepted bool   `json:"accepted"`
	// ItemID is the relay's id of the stored item (what its operator sees).
	ItemID string `json:"item_id,omitempty"`
	// Error is the relay's refusal code ("quota", "rate_limited",
	// "queue_full", "unavailable", …) or "unreachable".
	Error string `json:"error,omitempty"`
}

// SubmissionError is returned when no home relay accepted a submission;
// it unwraps to ErrSubmissionQuota, ErrSubmissionRateLimited or
// ErrNotDelivered, and carries each relay's answer.
type SubmissionError struct {
	Result *Submission
	err    error
}

func (e *SubmissionError) Error() string {
	var parts []string
	for _, r := range e.Result.Relays {
		parts = append(parts, r.Relay+": "+r.Error)
	}
	return e.err.Error() + " (" + strings.Join(parts, "; ") + ")"
}

// Unwrap returns the sentinel.
func (e *SubmissionError) Unwrap() error { return e.err }

// Report sends a report about an account to every home relay.
func (n *Node) Report(ctx context.Context, req ReportRequest) (*Submission, error) {
	a, err := n.reportAccount()
	if err != nil {
		return nil, err
	}
	reported, err := e2ee.ParseAccountID(strings.TrimSpace(req.Account))
	if err != nil {
		return nil, fmt.Errorf("%w: %q is not an account id", ErrInvalidReport, req.Account)
	}
	if reported == a.identity.AccountID() {
		return nil, fmt.Errorf("%w: you can't report yourself", ErrInvalidReport)
	}
	reason, err := report.ParseReason(strings.TrimSpace(req.Reason))
	if err != nil {
		return nil, fmt.Errorf("%w: reason must be one of %s", ErrInvalidReport, strings.Join(report.Reasons(), ", "))
	}
	if len(req.Messages) > report.MaxMessages {
		return nil, fmt.Errorf("%w: at most %d messages can be disclosed", ErrInvalidReport, report.MaxMessages)
	}
	sub := report.Submission{
		Kind: report.KindReport, ID: report.SubmissionID(), CreatedAt: n.cfg.Now(),
		Reported: reported, Reason: reason, Text: req.Text,
	}
	if len(req.Messages) > 0 {
		m, err := n.messaging()
		if err != nil {
			return nil, err
		}
		seen := map[string]bool{}
		for _, id := range req.Messages {
			if seen[id] {
				continue
			}
			seen[id] = true
			msg, ok := m.Message(id)
			if !ok {
				return nil, fmt.Errorf("%w: %q", ErrUnknownMessage, id)
			}
			if msg.From != string(reported) && (msg.To != string(reported) || msg.Group != "") {
				return nil, fmt.Errorf("%w (message %s)", ErrNotInConversation, id)
			}
			sub.Messages = append(sub.Messages, report.DisclosedMessage{
				ID: msg.ID, From: e2ee.AccountID(msg.From), SentAt: msg.SentAt, Text: msg.Text,
			})
		}
	}
	if _, err := report.Encode(sub); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidReport, err)
	}
	res, err := n.submit(ctx, a, sub)
	if res != nil {
		res.DisclosedMessages = len(sub.Messages)
	}
	return res, err
}

// Feedback sends feedback or a support request to every home relay.
func (n *Node) Feedback(ctx context.Context, req FeedbackRequest) (*Submission, error) {
	a, err := n.reportAccount()
	if err != nil {
		return nil, err
	}
	kind := report.KindFeedback
	switch strings.TrimSpace(req.Kind) {
	case "", "feedback":
	case "support":
		kind = report.KindSupport
	default:
		return nil, fmt.Errorf(`%w: kind must be "feedback" or "support"`, ErrInvalidFeedback)
	}
	if strings.TrimSpace(req.Text) == "" {
		return nil, fmt.Errorf("%w: text is required", ErrInvalidFeedback)
	}
	sub := report.Submission{Kind: kind, ID: report.SubmissionID(), CreatedAt: n.cfg.Now(), Text: req.Text}
	// Diagnostics leave the device only when the user asks now and has
	// consented to diagnostics sharing under the current policy.
	attach := req.IncludeDiagnostics && n.diagnosticsConsent()
	if attach {
		d, err := n.diagnosticsJSON(ctx, report.MaxDiagnosticsSize)
		if err != nil {
			return nil, err
		}
		sub.Diagnostics = d
	}
	if _, err := report.Encode(sub); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidFeedback, err)
	}
	res, err := n.submit(ctx, a, sub)
	if res != nil {
		res.DiagnosticsAttached = len(sub.Diagnostics) > 0
	}
	return res, err
}

func (n *Node) reportAccount() (*account, error) {
	if n.host == nil {
		return nil, ErrNotStarted
	}
	n.acctMu.Lock()
	defer n.acctMu.Unlock()
	if n.acct == nil {
		return nil, ErrNoAccount
	}
	return n.acct, nil
}

// submit sends sub to every home relay at once.
func (n *Node) submit(ctx context.Context, a *account, sub report.Submission) (*Submission, error) {
	c, err := report.NewClient(n.host, report.WithClientLogger(n.log))
	if err != nil {
		return nil, err
	}
	res := &Submission{ID: sub.ID, Kind: sub.Kind.String(), Relays: []RelaySubmission{}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	codes := map[report.Code]int{}
	for _, h := range a.HomeRelays {
		ai, err := peer.AddrInfoFromString(h)
		if err != nil {
			continue
		}
		n.host.Peerstore().AddAddrs(ai.ID, ai.Addrs, peerstore.TempAddrTTL)
		wg.Go(func() {
			sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			rec, err := c.Submit(sctx, ai.ID, a.identity, sub)
			rs := RelaySubmission{Relay: ai.ID.String(), Accepted: err == nil, ItemID: rec.ID}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				var re *report.Error
				if errors.As(err, &re) {
					rs.Error = re.Code.String()
					codes[re.Code]++
				} else {
					rs.Error = "unreachable"
					codes[report.CodeUnavailable]++
				}
				n.social.diag.add(n.cfg.Now(), "submit "+sub.Kind.String()+" to relay "+ai.ID.String(), errors.New(rs.Error))
			} else {
				res.Accepted++
			}
			res.Relays = append(res.Relays, rs)
		})
	}
	wg.Wait()
	sort.Slice(res.Relays, func(i, j int) bool { return res.Relays[i].Relay < res.Relays[j].Relay })
	if res.Accepted > 0 {
		n.log.Info("submission delivered", "kind", sub.Kind, "relays", res.Accepted)
		return res, nil
	}
	err = ErrNotDelivered
	switch {
	case len(res.Relays) > 0 && codes[report.CodeQuota] == len(res.Relays):
		err = ErrSubmissionQuota
	case len(res.Relays) > 0 && codes[report.CodeRateLimited] == len(res.Relays):
		err = ErrSubmissionRateLimited
	}
	return res, &SubmissionError{Result: res, err: err}
}

// purgeReports withdraws, on one relay, every submission of the account
// being deleted (a purger: see delete.go).
func (n *Node) purgeReports(ctx context.Context, relay peer.ID, id *e2ee.Identity) error {
	c, err := report.NewClient(n.host, report.WithClientLogger(n.log))
	if err != nil {
		return err
	}
	if _, err := c.Purge(ctx, relay, id); err != nil {
		return fmt.Errorf("reports: %w", err)
	}
	return nil
}
