package report

import (
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// TestReportToTwoRelays: a report with disclosed messages reaches both
// home relays, each lists it with every field and the verified reporter,
// and a retry is stored once.
func TestReportToTwoRelays(t *testing.T) {
	clk := newClock()
	r1, r2 := startRelay(t, clk), startRelay(t, clk)
	alice, mallory := newIdentity(t), newIdentity(t)
	c := newClient(t, r1, r2)
	now := clk.Now()
	msgs := []DisclosedMessage{
		{ID: "0123456789abcdef0123456789abcdef", From: mallory.AccountID(), SentAt: now.Add(-time.Hour), Text: "I know where you live"},
		{ID: "fedcba9876543210fedcba9876543210", From: alice.AccountID(), SentAt: now.Add(-50 * time.Minute), Text: "leave me alone"},
	}
	sub := reportOf(mallory.AccountID(), now, msgs...)
	for _, r := range []*testRelay{r1, r2} {
		rec, err := c.Submit(testCtx(t), r.ID(), alice, sub)
		if err != nil {
			t.Fatalf("Submit to %s: %v", r.ID(), err)
		}
		if rec.Duplicate || !validItemID(rec.ID) {
			t.Fatalf("receipt %+v, want a new item id", rec)
		}
		items := r.list(t, QueueReports)
		if len(items) != 1 {
			t.Fatalf("relay lists %d reports, want 1", len(items))
		}
		got := items[0]
		want := Item{
			ID: rec.ID, Kind: KindReport, Submission: sub.ID, Reporter: alice.AccountID(),
			ReceivedAt: now, CreatedAt: time.UnixMilli(now.UnixMilli()),
			Reported: mallory.AccountID(), Reason: ReasonHarassment, Text: sub.Text,
		}
		for _, m := range msgs {
			m.SentAt = time.UnixMilli(m.SentAt.UnixMilli())
			want.Messages = append(want.Messages, m)
		}
		got.ReceivedAt = got.ReceivedAt.UTC()
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("listed\n%+v\nwant\n%+v", got, want)
		}
		if fb := r.list(t, QueueFeedback); len(fb) != 0 {
			t.Fatalf("feedback queue holds %d items, want 0", len(fb))
		}
		// A retry (same submission id) is answered with the same item.
		again, err := c.Submit(testCtx(t), r.ID(), alice, sub)
		if err != nil {
			t.Fatalf("retry: %v", err)
		}
		if !again.Duplicate || again.ID != rec.ID {
			t.Fatalf("retry receipt %+v, want duplicate of %s", again, rec.ID)
		}
		if n, _ := r.svc.Len(); n != 1 {
			t.Fatalf("after retry the relay holds %d reports, want 1", n)
		}
		// Nobody's account id appears in a store key.
		for _, k := range r.keys(t) {
			if strings.Contains(k, string(alice.AccountID())) || strings.Contains(k, string(mallory.AccountID())) {
				t.Fatalf("store key %q names an account", k)
			}
		}
	}
}

// TestFeedbackKeepsDiagnosticsAsSent: feedback and support requests land
// in the feedback queue; diagnostics are stored as the device sent them.
func TestFeedbackKeepsDiagnosticsAsSent(t *testing.T) {
	clk := newClock()
	r := startRelay(t, clk)
	id := newIdentity(t)
	c := newClient(t, r)
	fb := feedbackOf(KindFeedback, "love the app", clk.Now())
	sup := feedbackOf(KindSupport, "messages stuck in queued", clk.Now())
	sup.Diagnostics = json.RawMessage(`{"version":"1.0","relays":[{"connected":true}]}`)
	for _, s := range []Submission{fb, sup} {
		if _, err := c.Submit(testCtx(t), r.ID(), id, s); err != nil {
			t.Fatalf("Submit %s: %v", s.Kind, err)
		}
	}
	items := r.list(t, QueueFeedback)
	if len(items) != 2 {
		t.Fatalf("feedback queue holds %d items, want 2", len(items))
	}
	if items[0].Kind != KindFeedback || items[0].Diagnostics != nil || items[0].Text != fb.Text {
		t.Fatalf("first item %+v, want the feedback without diagnostics", items[0])
	}
	if items[1].Kind != KindSupport || string(items[1].Diagnostics) != string(sup.Diagnostics) {
		t.Fatalf("second item %+v, want the support request with its diagnostics", items[1])
	}
	if rs := r.list(t, QueueReports); len(rs) != 0 {
		t.Fatalf("report queue holds %d items, want 0", len(rs))
	}
	// The JSON an operator reads.
	b, err := json.Marshal(items[1])
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"kind":"support"`, `"diagnostics":{"version":"1.0"`, `"reporter":"` + string(id.AccountID()) + `"`} {
		if !strings.Contains(string(b), want) {
			t.Fatalf("item JSON %s lacks %s", b, want)
		}
	}
}

// TestForgedOrUnsignedRefused: submissions that are unsigned, signed by
// someone else, or signed for another nonce or relay are refused with
// ErrUnauthorized, and nothing is stored.
func TestForgedOrUnsignedRefused(t *testing.T) {
	clk := newClock()
	r := startRelay(t, clk)
	other := startRelay(t, clk)
	alice, mallory, victim := newIdentity(t), newIdentity(t), newIdentity(t)
	c := newClient(t, r)
	body, err := Encode(reportOf(victim.AccountID(), clk.Now()))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		sign func(nonce []byte, relay peerID) request
		want Code
	}{
		{"unsigned", func(nonce []byte, relay peerID) request {
			rq := signed(alice, body, nonce, relay)
			rq.sig = nil
			return rq
		}, CodeUnauthorized},
		{"signed by another identity", func(nonce []byte, relay peerID) request {
			rq := signed(mallory, body, nonce, relay)
			rq.identity = alice.Public().Marshal() // claims to be alice
			return rq
		}, CodeUnauthorized},
		{"signature over another nonce", func(nonce []byte, relay peerID) request {
			return signed(alice, body, make([]byte, nonceSize), relay)
		}, CodeUnauthorized},
		{"signature for another relay", func(nonce []byte, _ peerID) request {
			return signed(alice, body, nonce, other.ID())
		}, CodeUnauthorized},
		{"altered after signing", func(nonce []byte, relay peerID) request {
			rq := signed(alice, body, nonce, relay)
			alt := append([]byte(nil), body...)
			alt[len(alt)-1] ^= 1
			rq.submission = alt
			return rq
		}, CodeUnauthorized},
		{"bad signature length", func(nonce []byte, relay peerID) request {
			rq := signed(alice, body, nonce, relay)
			rq.sig = rq.sig[:10]
			return rq
		}, CodeMalformed},
		{"garbage identity", func(nonce []byte, relay peerID) request {
			rq := signed(alice, body, nonce, relay)
			rq.identity = []byte("not an identity")
			return rq
		}, CodeMalformed},
		{"signed garbage", func(nonce []byte, relay peerID) request {
			return signed(alice, []byte{0xff, 0x01}, nonce, relay)
		}, CodeMalformed},
		{"self-report", func(nonce []byte, relay peerID) request {
			b, err := Encode(reportOf(alice.AccountID(), clk.Now()))
			if err != nil {
				t.Fatal(err)
			}
			return signed(alice, b, nonce, relay)
		}, CodeMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := rawSubmit(t, c, r.ID(), tt.sign)
			if err != nil {
				t.Fatalf("exchange: %v", err)
			}
			if resp.code != tt.want || resp.receipt != nil {
				t.Fatalf("answer %v (receipt %v), want %v", resp.code, resp.receipt, tt.want)
			}
			if keys := r.keys(t); len(keys) != 0 {
				t.Fatalf("relay stored %v after a refused submission", keys)
			}
		})
	}
	// The same body, properly signed, is accepted: the refusals were about
	// the signatures.
	if resp, err := rawSubmit(t, c, r.ID(), func(nonce []byte, relay peerID) request { return signed(alice, body, nonce, relay) }); err != nil || resp.code != CodeOK {
		t.Fatalf("valid submission: %v %v", resp.code, err)
	}
	// The client maps the code to the sentinel.
	if got := (&Error{Code: CodeUnauthorized}); !errors.Is(got, ErrUnauthorized) {
		t.Fatalf("Error{unauthorized} is not ErrUnauthorized")
	}
}

// TestDailyQuota: per account and UTC day, reports and feedback have
// their own quota; refused submissions store nothing; the next day the
// quota is back.
func TestDailyQuota(t *testing.T) {
	clk := newClock()
	r := startRelay(t, clk, WithDailyQuota(2, 1))
	alice, bob, mallory := newIdentity(t), newIdentity(t), newIdentity(t)
	c := newClient(t, r)
	for i := range 2 {
		if _, err := c.Submit(testCtx(t), r.ID(), alice, reportOf(mallory.AccountID(), clk.Now())); err != nil {
			t.Fatalf("report %d: %v", i, err)
		}
	}
	keys := len(r.keys(t))
	_, err := c.Submit(testCtx(t), r.ID(), alice, reportOf(mallory.AccountID(), clk.Now()))
	if !errors.Is(err, ErrQuota) {
		t.Fatalf("third report: %v, want ErrQuota", err)
	}
	if got := len(r.keys(t)); got != keys {
		t.Fatalf("refused report changed the store: %d keys, want %d", got, keys)
	}
	// Feedback has its own quota; support counts with feedback.
	if _, err := c.Submit(testCtx(t), r.ID(), alice, feedbackOf(KindFeedback, "hi", clk.Now())); err != nil {
		t.Fatalf("feedback: %v", err)
	}
	if _, err := c.Submit(testCtx(t), r.ID(), alice, feedbackOf(KindSupport, "help", clk.Now())); !errors.Is(err, ErrQuota) {
		t.Fatalf("support after feedback: %v, want ErrQuota", err)
	}
	// Another account has its own quota.
	if _, err := c.Submit(testCtx(t), r.ID(), bob, reportOf(mallory.AccountID(), clk.Now())); err != nil {
		t.Fatalf("bob's report: %v", err)
	}
	// A new UTC day.
	clk.Advance(24 * time.Hour)
	if _, err := c.Submit(testCtx(t), r.ID(), alice, reportOf(mallory.AccountID(), clk.Now())); err != nil {
		t.Fatalf("report the next day: %v", err)
	}
	if n, f := r.svc.Len(); n != 4 || f != 1 {
		t.Fatalf("queues hold %d reports, %d feedback; want 4, 1", n, f)
	}
}

// TestQueueFullAndDone: the relay refuses beyond its report queue's cap
// (feedback does not count against it); marking an item done deletes it
// and makes room.
func TestQueueFullAndDone(t *testing.T) {
	clk := newClock()
	reg := prometheus.NewRegistry()
	r := startRelay(t, clk, WithQueueLimits(2, DefaultMaxBytes), WithSourceShares(100, 100), WithMetricsTracer(NewMetricsTracer(reg)))
	alice, mallory := newIdentity(t), newIdentity(t)
	c := newClient(t, r)
	first, err := c.Submit(testCtx(t), r.ID(), alice, reportOf(mallory.AccountID(), clk.Now()))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Submit(testCtx(t), r.ID(), alice, feedbackOf(KindFeedback, "x", clk.Now())); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Submit(testCtx(t), r.ID(), alice, reportOf(mallory.AccountID(), clk.Now())); err != nil {
		t.Fatalf("second report: %v", err)
	}
	if _, err := c.Submit(testCtx(t), r.ID(), alice, reportOf(mallory.AccountID(), clk.Now())); !errors.Is(err, ErrQueueFull) {
		t.Fatalf("third report: %v, want ErrQueueFull", err)
	}
	if err := r.svc.Done(context.Background(), QueueFeedback, first.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Done of a report id in the feedback queue: %v, want ErrNotFound", err)
	}
	if err := r.svc.Done(context.Background(), QueueReports, first.ID); err != nil {
		t.Fatalf("Done: %v", err)
	}
	if err := r.svc.Done(context.Background(), QueueReports, first.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second Done: %v, want ErrNotFound", err)
	}
	if _, err := r.svc.Get(context.Background(), QueueReports, first.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get after Done: %v, want ErrNotFound", err)
	}
	if _, err := c.Submit(testCtx(t), r.ID(), alice, reportOf(mallory.AccountID(), clk.Now())); err != nil {
		t.Fatalf("after Done: %v", err)
	}
	for _, tc := range []struct {
		metric string
		want   float64
	}{
		{`kinmesh_report_submissions_total{kind="report",result="ok"}`, 3},
		{`kinmesh_report_submissions_total{kind="report",result="queue_full"}`, 1},
		{`kinmesh_report_done_total{queue="reports"}`, 1},
		{`kinmesh_report_queue_items{queue="reports"}`, 2},
		{`kinmesh_report_queue_items{queue="feedback"}`, 1},
	} {
		if got := metricValue(t, reg, tc.metric); got != tc.want {
			t.Errorf("%s = %v, want %v", tc.metric, got, tc.want)
		}
	}
}

func metricValue(t *testing.T, reg *prometheus.Registry, series string) float64 {
	t.Helper()
	name := series[:strings.IndexByte(series, '{')]
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+`="`+l.GetValue()+`"`)
			}
			if name+"{"+strings.Join(labels, ",")+"}" == series {
				if m.Counter != nil {
					return m.GetCounter().GetValue()
				}
				return m.GetGauge().GetValue()
			}
		}
	}
	return 0
}

// TestRateLimit: a peer that starts too many submissions is refused with
// a retry time before the relay does any work.
func TestRateLimit(t *testing.T) {
	clk := newClock()
	r := startRelay(t, clk, WithRequestRate(1, 2))
	alice, mallory := newIdentity(t), newIdentity(t)
	c := newClient(t, r)
	for i := range 2 {
		if _, err := c.Submit(testCtx(t), r.ID(), alice, reportOf(mallory.AccountID(), clk.Now())); err != nil {
			t.Fatalf("submission %d: %v", i, err)
		}
	}
	_, err := c.Submit(testCtx(t), r.ID(), alice, reportOf(mallory.AccountID(), clk.Now()))
	if !errors.Is(err, ErrRateLimited) || RetryAfter(err) <= 0 {
		t.Fatalf("third submission: %v (retry after %v), want ErrRateLimited with a retry time", err, RetryAfter(err))
	}
	clk.Advance(time.Minute)
	if _, err := c.Submit(testCtx(t), r.ID(), alice, reportOf(mallory.AccountID(), clk.Now())); err != nil {
		t.Fatalf("a minute later: %v", err)
	}
}

// TestRetentionAndRestart: items survive a relay restart (ids keep
// counting up) and are gone after the retention period.
func TestRetentionAndRestart(t *testing.T) {
	clk := newClock()
	r := startRelay(t, clk, WithRetention(48*time.Hour))
	alice, mallory := newIdentity(t), newIdentity(t)
	c := newClient(t, r)
	first, err := c.Submit(testCtx(t), r.ID(), alice, reportOf(mallory.AccountID(), clk.Now()))
	if err != nil {
		t.Fatal(err)
	}
	r.Stop()
	r.Start()
	if n, _ := r.svc.Len(); n != 1 {
		t.Fatalf("after restart: %d reports, want 1", n)
	}
	clk.Advance(24 * time.Hour)
	second, err := c.Submit(testCtx(t), r.ID(), alice, reportOf(mallory.AccountID(), clk.Now()))
	if err != nil {
		t.Fatal(err)
	}
	if second.ID <= first.ID {
		t.Fatalf("ids %s then %s: want increasing across restarts", first.ID, second.ID)
	}
	clk.Advance(25 * time.Hour) // first is 49 h old, second 25 h
	items := r.list(t, QueueReports)
	if len(items) != 1 || items[0].ID != second.ID {
		t.Fatalf("after retention of the first: %+v, want only %s", items, second.ID)
	}
	if n, _ := r.svc.Len(); n != 1 {
		t.Fatalf("Len after retention = %d, want 1", n)
	}
	// Paging.
	if _, err := r.svc.List(context.Background(), QueueReports, ListOptions{After: "nope"}); !errors.Is(err, ErrMalformed) {
		t.Fatalf("List after a bad id: %v, want ErrMalformed", err)
	}
	if page, err := r.svc.List(context.Background(), QueueReports, ListOptions{After: second.ID}); err != nil || len(page) != 0 {
		t.Fatalf("List after the last id: %v %v, want none", page, err)
	}
}

// TestSubmissionRules: the client refuses what the relay would, before
// contacting it; the relay refuses the same when sent anyway.
func TestSubmissionRules(t *testing.T) {
	clk := newClock()
	r := startRelay(t, clk)
	alice, mallory := newIdentity(t), newIdentity(t)
	c := newClient(t, r)
	now := clk.Now()
	msg := DisclosedMessage{ID: "m1", From: mallory.AccountID(), SentAt: now, Text: "x"}
	tests := []struct {
		name string
		edit func(*Submission)
		want error
	}{
		{"no kind", func(s *Submission) { s.Kind = 0 }, ErrMalformed},
		{"bad id", func(s *Submission) { s.ID = "xyz" }, ErrMalformed},
		{"no time", func(s *Submission) { s.CreatedAt = time.Time{} }, ErrMalformed},
		{"no reported account", func(s *Submission) { s.Reported = "" }, ErrMalformed},
		{"bad reported account", func(s *Submission) { s.Reported = "abc" }, ErrMalformed},
		{"no reason", func(s *Submission) { s.Reason = 0 }, ErrMalformed},
		{"text too long", func(s *Submission) { s.Text = strings.Repeat("a", MaxTextLen+1) }, ErrTooLarge},
		{"control characters", func(s *Submission) { s.Text = "a\x00b" }, ErrMalformed},
		{"too many messages", func(s *Submission) {
			for i := range MaxMessages + 1 {
				m := msg
				m.ID = string(rune('A'+i%26)) + strings.Repeat("x", i)
				s.Messages = append(s.Messages, m)
			}
		}, ErrTooLarge},
		{"message twice", func(s *Submission) { s.Messages = []DisclosedMessage{msg, msg} }, ErrMalformed},
		{"message without sender", func(s *Submission) { m := msg; m.From = ""; s.Messages = []DisclosedMessage{m} }, ErrMalformed},
		{"message too long", func(s *Submission) {
			m := msg
			m.Text = strings.Repeat("a", MaxMessageTextLen+1)
			s.Messages = []DisclosedMessage{m}
		}, ErrTooLarge},
		{"whole submission too large", func(s *Submission) {
			for i := range 9 {
				m := msg
				m.ID = strings.Repeat("m", i+1)
				m.Text = strings.Repeat("a", MaxMessageTextLen)
				s.Messages = append(s.Messages, m)
			}
		}, ErrTooLarge},
		{"report with diagnostics", func(s *Submission) { s.Diagnostics = json.RawMessage(`{}`) }, ErrMalformed},
		{"feedback naming an account", func(s *Submission) { s.Kind = KindFeedback }, ErrMalformed},
		{"feedback without text", func(s *Submission) { *s = feedbackOf(KindFeedback, "", now) }, ErrMalformed},
		{"diagnostics not an object", func(s *Submission) {
			*s = feedbackOf(KindSupport, "help", now)
			s.Diagnostics = json.RawMessage(`[1,2]`)
		}, ErrMalformed},
		{"diagnostics too large", func(s *Submission) {
			*s = feedbackOf(KindSupport, "help", now)
			s.Diagnostics = json.RawMessage(`{"a":"` + strings.Repeat("x", MaxDiagnosticsSize) + `"}`)
		}, ErrTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := reportOf(mallory.AccountID(), now)
			tt.edit(&s)
			if _, err := Encode(s); !errors.Is(err, tt.want) {
				t.Fatalf("Encode: %v, want %v", err, tt.want)
			}
			if _, err := c.Submit(testCtx(t), r.ID(), alice, s); !errors.Is(err, tt.want) {
				t.Fatalf("Submit: %v, want %v", err, tt.want)
			}
		})
	}
	// Sent anyway (bypassing the client's checks), the relay refuses them.
	bad := reportOf(mallory.AccountID(), now)
	bad.Reason = 0
	body := marshal(submissionToWire(bad))
	resp, err := rawSubmit(t, c, r.ID(), func(nonce []byte, relay peerID) request { return signed(alice, body, nonce, relay) })
	if err != nil || resp.code != CodeMalformed {
		t.Fatalf("relay answered %v %v to a report without a reason, want malformed", resp.code, err)
	}
	if keys := r.keys(t); len(keys) != 0 {
		t.Fatalf("relay stored %v", keys)
	}
	if _, err := c.Submit(testCtx(t), r.ID(), alice, reportOf(alice.AccountID(), now)); !errors.Is(err, ErrMalformed) {
		t.Fatalf("self-report: %v, want ErrMalformed", err)
	}
}

// TestParseNames: kinds and reasons round-trip through their names.
func TestParseNames(t *testing.T) {
	for _, name := range Reasons() {
		r, err := ParseReason(name)
		if err != nil || r.String() != name {
			t.Errorf("ParseReason(%q) = %v, %v", name, r, err)
		}
	}
	if _, err := ParseReason("rude"); !errors.Is(err, ErrMalformed) {
		t.Errorf("ParseReason(rude): %v, want ErrMalformed", err)
	}
	for _, k := range []Kind{KindReport, KindFeedback, KindSupport} {
		got, err := ParseKind(k.String())
		if err != nil || got != k {
			t.Errorf("ParseKind(%q) = %v, %v", k, got, err)
		}
	}
	var k Kind
	if err := json.Unmarshal([]byte(`"support"`), &k); err != nil || k != KindSupport {
		t.Errorf("unmarshal support: %v %v", k, err)
	}
}

// TestServiceClosed: Close is safe twice and a closed relay refuses
// streams.
func TestServiceClosed(t *testing.T) {
	clk := newClock()
	r := startRelay(t, clk)
	alice, mallory := newIdentity(t), newIdentity(t)
	c := newClient(t, r)
	r.svc.Close()
	if _, err := c.Submit(testCtx(t), r.ID(), alice, reportOf(mallory.AccountID(), clk.Now())); err == nil {
		t.Fatal("Submit to a closed service succeeded")
	}
}

// TestPurge: an account being deleted purges everything it submitted,
// and nothing of anyone else; a forged purge is refused.
func TestPurge(t *testing.T) {
	clk := newClock()
	r := startRelay(t, clk)
	alice, bob, mallory := newIdentity(t), newIdentity(t), newIdentity(t)
	c := newClient(t, r)
	for _, s := range []Submission{reportOf(mallory.AccountID(), clk.Now()), reportOf(mallory.AccountID(), clk.Now()), feedbackOf(KindSupport, "help", clk.Now())} {
		if _, err := c.Submit(testCtx(t), r.ID(), alice, s); err != nil {
			t.Fatal(err)
		}
	}
	bobs, err := c.Submit(testCtx(t), r.ID(), bob, reportOf(mallory.AccountID(), clk.Now()))
	if err != nil {
		t.Fatal(err)
	}
	before := len(r.keys(t))

	// Mallory can't purge alice's reports.
	resp, err := rawSubmit(t, c, r.ID(), func(nonce []byte, relay peerID) request {
		return request{kind: reqPurge, identity: alice.Public().Marshal(), sig: mallory.Sign(purgeMessage(nonce, relay, alice.Public().Marshal()))}
	})
	if err != nil || resp.code != CodeUnauthorized {
		t.Fatalf("forged purge: %v %v, want unauthorized", resp.code, err)
	}
	if got := len(r.keys(t)); got != before {
		t.Fatalf("forged purge changed the store: %d keys, want %d", got, before)
	}

	n, err := c.Purge(testCtx(t), r.ID(), alice)
	if err != nil || n != 3 {
		t.Fatalf("Purge = %d, %v; want 3", n, err)
	}
	items := r.list(t, QueueReports)
	if len(items) != 1 || items[0].ID != bobs.ID {
		t.Fatalf("after alice's purge the relay lists %+v, want only bob's %s", items, bobs.ID)
	}
	if fb := r.list(t, QueueFeedback); len(fb) != 0 {
		t.Fatalf("after purge the feedback queue holds %d", len(fb))
	}
	// What is left is bob's item, its three index entries, its share tags
	// and the sequence.
	if keys := r.keys(t); len(keys) != 6 {
		t.Fatalf("after purge the store holds %v, want bob's item, its index entries, its share tags and seq", keys)
	}
	if n, err := c.Purge(testCtx(t), r.ID(), alice); err != nil || n != 0 {
		t.Fatalf("second Purge = %d, %v; want 0", n, err)
	}
	// Alice's quota went with her data.
	if _, err := c.Submit(testCtx(t), r.ID(), alice, reportOf(mallory.AccountID(), clk.Now())); err != nil {
		t.Fatal(err)
	}
}
