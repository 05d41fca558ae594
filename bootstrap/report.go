package bootstrap

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/kinmesh/kinmesh/protocols/report"
)

// The report service (/kinmesh/report/1.0.0): every relay keeps the
// reports, feedback and support requests of the accounts that use it as a
// home relay, in the "report" namespace of its store, for its operator to
// read on the ops endpoint. Its limits are the Report* fields of Config.
//
// The operator's endpoints (GET /reports, GET /feedback, their items and
// POST …/{id}/done) carry what users chose to disclose — reporters'
// account ids, reported accounts, message text — so they are served to
// loopback clients only, never through a proxy (requests with Forwarded
// or X-Forwarded-For headers are refused), only under an IP-literal or
// localhost Host (DNS rebinding), and a POST must carry the header
// X-Kinmesh-Operator: 1 (so a web page in the operator's browser can't
// forge one). /healthz and /metrics stay as they were.

// OperatorHeader must be set (to "1") on the ops endpoint's POST requests.
const OperatorHeader = "X-Kinmesh-Operator"

// applyReportDefaults fills the Report* fields of c.
func (c *Config) applyReportDefaults() error {
	for _, f := range []struct {
		name string
		p    *int
		def  int
	}{
		{"reports_per_day", &c.ReportsPerDay, report.DefaultReportsPerDay},
		{"feedback_per_day", &c.FeedbackPerDay, report.DefaultFeedbackPerDay},
		{"report_max_items", &c.ReportMaxItems, report.DefaultMaxItems},
		{"feedback_max_items", &c.FeedbackMaxItems, report.DefaultFeedbackMaxItems},
		{"report_peer_share", &c.ReportPeerShare, report.DefaultPeerShare},
		{"report_ip_share", &c.ReportIPShare, report.DefaultIPShare},
	} {
		if *f.p < 0 {
			return fmt.Errorf("%w: %s must be positive, got %d", ErrConfig, f.name, *f.p)
		}
		if *f.p == 0 {
			*f.p = f.def
		}
	}
	for _, f := range []struct {
		name string
		p    *int64
		def  int64
	}{
		{"report_max_bytes", &c.ReportMaxBytes, report.DefaultMaxBytes},
		{"feedback_max_bytes", &c.FeedbackMaxBytes, report.DefaultFeedbackMaxBytes},
	} {
		if *f.p == 0 {
			*f.p = f.def
		}
		if *f.p < report.MaxSubmissionSize {
			return fmt.Errorf("%w: %s must be at least %d (one submission), got %d", ErrConfig, f.name, report.MaxSubmissionSize, *f.p)
		}
	}
	for _, f := range []struct {
		name string
		v    int
	}{{"report_peer_share", c.ReportPeerShare}, {"report_ip_share", c.ReportIPShare}} {
		if f.v > 100 {
			return fmt.Errorf("%w: %s is a percentage of a queue: want 1 to 100, got %d", ErrConfig, f.name, f.v)
		}
	}
	switch {
	case c.ReportUrgentReserve == 0:
		c.ReportUrgentReserve = report.DefaultUrgentReserve
	case c.ReportUrgentReserve < -1 || c.ReportUrgentReserve > 90:
		return fmt.Errorf("%w: report_urgent_reserve is a percentage of the report queue: want 1 to 90, or -1 for none, got %d", ErrConfig, c.ReportUrgentReserve)
	}
	if c.ReportRetention == 0 {
		c.ReportRetention = Duration(report.DefaultRetention)
	}
	if time.Duration(c.ReportRetention) < time.Hour {
		return fmt.Errorf("%w: report_retention must be at least 1h, got %v", ErrConfig, time.Duration(c.ReportRetention))
	}
	return nil
}

// startReport starts the report service on the relay's host and store.
func (r *Relay) startReport() error {
	svc, err := report.NewService(r.host, r.store,
		report.WithClock(r.cfg.Now),
		report.WithLogger(r.log),
		report.WithMetricsTracer(report.NewMetricsTracer(r.cfg.Registry)),
		report.WithRetention(time.Duration(r.cfg.ReportRetention)),
		report.WithDailyQuota(r.cfg.ReportsPerDay, r.cfg.FeedbackPerDay),
		report.WithQueueLimits(r.cfg.ReportMaxItems, r.cfg.ReportMaxBytes),
		report.WithFeedbackLimits(r.cfg.FeedbackMaxItems, r.cfg.FeedbackMaxBytes),
		report.WithUrgentReserve(max(r.cfg.ReportUrgentReserve, 0)),
		report.WithSourceShares(r.cfg.ReportPeerShare, r.cfg.ReportIPShare),
	)
	if err != nil {
		return fmt.Errorf("start report service: %w", err)
	}
	r.report = svc
	return nil
}

// Reports returns the relay's report service (nil before Start).
func (r *Relay) Reports() *report.Service { return r.report }

// QueuePage is the JSON of GET /reports and GET /feedback.
type QueuePage struct {
	Items []report.Item `json:"items"`
	// Next, if set, is the id to pass as ?after= for the next page.
	Next string `json:"next,omitempty"`
}

// reportRoutes adds the operator's queue endpoints to the ops mux.
func (r *Relay) reportRoutes(mux *http.ServeMux) {
	for _, q := range []report.Queue{report.QueueReports, report.QueueFeedback} {
		base := "/" + q.String()
		mux.HandleFunc("GET "+base, operatorOnly(func(w http.ResponseWriter, req *http.Request) { r.listQueue(w, req, q) }))
		mux.HandleFunc("GET "+base+"/{id}", operatorOnly(func(w http.ResponseWriter, req *http.Request) { r.getItem(w, req, q) }))
		mux.HandleFunc("POST "+base+"/{id}/done", operatorOnly(func(w http.ResponseWriter, req *http.Request) { r.doneItem(w, req, q) }))
	}
}

func (r *Relay) listQueue(w http.ResponseWriter, req *http.Request, q report.Queue) {
	opts := report.ListOptions{After: req.URL.Query().Get("after"), Limit: 100}
	if l := req.URL.Query().Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 || n > report.MaxListLimit {
			opsError(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("limit must be 1 to %d", report.MaxListLimit))
			return
		}
		opts.Limit = n
	}
	items, err := r.report.List(req.Context(), q, opts)
	if err != nil {
		opsErr(w, err)
		return
	}
	page := QueuePage{Items: items}
	if len(items) == opts.Limit {
		page.Next = items[len(items)-1].ID
	}
	writeOpsJSON(w, http.StatusOK, page)
}

func (r *Relay) getItem(w http.ResponseWriter, req *http.Request, q report.Queue) {
	it, err := r.report.Get(req.Context(), q, req.PathValue("id"))
	if err != nil {
		opsErr(w, err)
		return
	}
	writeOpsJSON(w, http.StatusOK, map[string]any{"item": it})
}

func (r *Relay) doneItem(w http.ResponseWriter, req *http.Request, q report.Queue) {
	id := req.PathValue("id")
	if err := r.report.Done(req.Context(), q, id); err != nil {
		opsErr(w, err)
		return
	}
	r.log.Info("operator marked an item done", "queue", q, "id", id)
	writeOpsJSON(w, http.StatusOK, map[string]string{"done": id})
}

// operatorOnly serves h to the operator on the relay's own machine only.
func operatorOnly(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, req *http.Request) {
		if !fromLoopback(req) {
			opsError(w, http.StatusForbidden, "forbidden",
				"reports and feedback are served to loopback clients only, never through a proxy: run `kinmesh relay reports` on the relay's machine (or through an SSH tunnel)")
			return
		}
		if req.Method == http.MethodPost && req.Header.Get(OperatorHeader) != "1" {
			opsError(w, http.StatusForbidden, "forbidden", "set the header "+OperatorHeader+": 1 (kinmesh relay reports done does)")
			return
		}
		h(w, req)
	}
}

// fromLoopback reports whether req comes straight from this machine:
// a loopback peer, no proxy headers, and a Host that is an IP literal or
// localhost.
func fromLoopback(req *http.Request) bool {
	host, _, err := net.SplitHostPort(req.RemoteAddr)
	if err != nil {
		return false
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || !ip.Unmap().IsLoopback() {
		return false
	}
	if req.Header.Get("Forwarded") != "" || req.Header.Get("X-Forwarded-For") != "" || req.Header.Get("X-Real-Ip") != "" {
		return false
	}
	h := req.Host
	if hh, _, err := net.SplitHostPort(h); err == nil {
		h = hh
	}
	h = strings.Trim(h, "[]")
	if h == "localhost" {
		return true
	}
	_, err = netip.ParseAddr(h)
	return err == nil
}

func opsErr(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, report.ErrNotFound):
		opsError(w, http.StatusNotFound, "not_found", err.Error()+" (already done, or older than the retention period)")
	case errors.Is(err, report.ErrMalformed):
		opsError(w, http.StatusBadRequest, "bad_request", err.Error())
	default:
		opsError(w, http.StatusInternalServerError, "internal", err.Error())
	}
}

func opsError(w http.ResponseWriter, status int, code, msg string) {
	var e struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	e.Error.Code, e.Error.Message = code, msg
	writeOpsJSON(w, status, e)
}

func writeOpsJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
