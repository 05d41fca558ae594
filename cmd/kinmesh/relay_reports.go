package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/kinmesh/kinmesh/bootstrap"
	"github.com/kinmesh/kinmesh/protocols/report"
)

// `kinmesh relay reports` and `kinmesh relay feedback`: the operator reads
// the relay's queues through its ops endpoint, which serves them to
// loopback clients only (docs/operator-guide.md, "Reports and feedback").

const relayQueueSynopsis = `relay %[1]s [--http HOST:PORT] [--json] [--limit N] [--after ID]
       relay %[1]s show ID [--http HOST:PORT]
       relay %[1]s done ID [--http HOST:PORT]

Lists the %[2]s users sent to this relay's operator, oldest first; "show"
prints one item in full (JSON), "done" marks one handled, which deletes it.
Items not marked done are deleted after the retention period
(report_retention, default 30 days). Run it on the relay's machine: the
ops endpoint serves the queues to loopback clients only.`

// runRelayQueue runs `kinmesh relay reports|feedback …`.
func runRelayQueue(ctx context.Context, queue string, args []string, stdout io.Writer) error {
	what := "reports"
	if queue == "feedback" {
		what = "feedback and support requests"
	}
	fs := newFlags("relay "+queue, fmt.Sprintf(relayQueueSynopsis, queue, what), stdout)
	def := os.Getenv("KINMESH_RELAY_HTTP")
	if def == "" {
		def = "127.0.0.1:8080"
	}
	httpAddr := fs.String("http", def, "the relay's ops endpoint host:port (default $KINMESH_RELAY_HTTP or 127.0.0.1:8080)")
	asJSON := fs.Bool("json", false, "print the raw JSON")
	limit := fs.Int("limit", 100, fmt.Sprintf("items per page (1 to %d)", report.MaxListLimit))
	after := fs.String("after", "", "list items after this id (the next page)")
	pos, err := parseMixed(fs, args)
	if err != nil {
		return err
	}
	base := "http://" + *httpAddr + "/" + queue
	hc := &http.Client{Timeout: 30 * time.Second}
	switch {
	case len(pos) == 2 && pos[0] == "done":
		var out struct{ Done string }
		if err := opsCall(ctx, hc, http.MethodPost, base+"/"+url.PathEscape(pos[1])+"/done", &out); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s %s marked done (deleted)\n", strings.TrimSuffix(queue, "s"), out.Done)
		return nil
	case len(pos) == 2 && pos[0] == "show":
		var out struct {
			Item report.Item `json:"item"`
		}
		if err := opsCall(ctx, hc, http.MethodGet, base+"/"+url.PathEscape(pos[1]), &out); err != nil {
			return err
		}
		return printJSON(stdout, out.Item)
	case len(pos) != 0:
		return fmt.Errorf("%w: kinmesh relay %s [show ID | done ID]", errUsage, queue)
	}
	q := url.Values{"limit": {fmt.Sprint(*limit)}}
	if *after != "" {
		q.Set("after", *after)
	}
	var page bootstrap.QueuePage
	if err := opsCall(ctx, hc, http.MethodGet, base+"?"+q.Encode(), &page); err != nil {
		return err
	}
	if *asJSON {
		return printJSON(stdout, page)
	}
	if len(page.Items) == 0 {
		fmt.Fprintf(stdout, "no %s waiting\n", what)
		return nil
	}
	for _, it := range page.Items {
		printItem(stdout, it)
	}
	fmt.Fprintf(stdout, "%d %s shown; mark one handled with: kinmesh relay %s done ID\n", len(page.Items), what, queue)
	if page.Next != "" {
		fmt.Fprintf(stdout, "more: kinmesh relay %s --after %s\n", queue, page.Next)
	}
	return nil
}

func printItem(w io.Writer, it report.Item) {
	head := it.Kind.String()
	if it.Kind == report.KindReport {
		head += "  " + it.Reason.String()
	}
	fmt.Fprintf(w, "#%s  %s  %s\n", it.ID, it.ReceivedAt.Local().Format(time.DateTime), head)
	fmt.Fprintf(w, "  from      %s\n", it.Reporter)
	if it.Reported != "" {
		fmt.Fprintf(w, "  reported  %s\n", it.Reported)
	}
	if it.Text != "" {
		fmt.Fprintf(w, "  text      %s\n", indent(it.Text))
	}
	if len(it.Messages) > 0 {
		fmt.Fprintf(w, "  messages  %d disclosed by the reporter (their word: messages are deniable)\n", len(it.Messages))
		for _, m := range it.Messages {
			who := "reporter"
			if m.From == it.Reported {
				who = "reported"
			} else if m.From != it.Reporter {
				who = string(m.From)
			}
			fmt.Fprintf(w, "    %s  %-8s  %s\n", m.SentAt.Local().Format(time.DateTime), who, indent(m.Text))
		}
	}
	if len(it.Diagnostics) > 0 {
		fmt.Fprintf(w, "  diagnostics attached (%d bytes; show it with: kinmesh relay feedback show %s)\n", len(it.Diagnostics), it.ID)
	}
	fmt.Fprintln(w)
}

func indent(s string) string { return strings.ReplaceAll(s, "\n", "\n            ") }

// opsCall calls the relay's ops endpoint and decodes its JSON answer.
func opsCall(ctx context.Context, hc *http.Client, method, u string, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, u, nil)
	if err != nil {
		return err
	}
	if method == http.MethodPost {
		req.Header.Set(bootstrap.OperatorHeader, "1")
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("reach the relay's ops endpoint: %w (is `kinmesh relay` running with --http there?)", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode >= 300 {
		var e struct {
			Error struct{ Code, Message string } `json:"error"`
		}
		if json.Unmarshal(b, &e) == nil && e.Error.Code != "" {
			return fmt.Errorf("%s: %s", e.Error.Code, e.Error.Message)
		}
		return fmt.Errorf("%s %s: HTTP %d", method, u, resp.StatusCode)
	}
	return json.Unmarshal(b, out)
}
