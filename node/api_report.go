package node

import (
	"errors"
	"net/http"
)

// The report, feedback and diagnostics endpoints (docs/api.md, "Report",
// "Help & feedback", "Diagnostics").

// reportErrorCodes maps this file's errors to the API's status and code.
var reportErrorCodes = []struct {
	err    error
	status int
	code   string
}{
	{ErrInvalidReport, http.StatusUnprocessableEntity, "invalid_report"},
	{ErrInvalidFeedback, http.StatusUnprocessableEntity, "invalid_feedback"},
	{ErrUnknownMessage, http.StatusNotFound, "unknown_message"},
	{ErrNotInConversation, http.StatusUnprocessableEntity, "message_not_in_conversation"},
	{ErrSubmissionQuota, http.StatusTooManyRequests, "quota_exceeded"},
	{ErrSubmissionRateLimited, http.StatusTooManyRequests, "rate_limited"},
	{ErrNotDelivered, http.StatusBadGateway, "not_delivered"},
	{ErrInvalidPresenceSetting, http.StatusUnprocessableEntity, "invalid_setting"},
}

// writeSocialErr writes err as the API's error JSON, with this file's
// codes first.
func writeSocialErr(w http.ResponseWriter, err error) {
	for _, c := range reportErrorCodes {
		if errors.Is(err, c.err) {
			writeError(w, c.status, c.code, err.Error())
			return
		}
	}
	writeErr(w, err)
}

func (a *apiServer) reportRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST /v1/reports", a.postReport)
	mux.HandleFunc("POST /v1/feedback", a.postFeedback)
	mux.HandleFunc("GET /v1/diagnostics", a.getDiagnostics)
}

func (a *apiServer) postReport(w http.ResponseWriter, r *http.Request) {
	var req ReportRequest
	if !decode(w, r, &req) {
		return
	}
	res, err := a.n.Report(r.Context(), req)
	if err != nil {
		writeSocialErr(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, map[string]any{"report": res})
}

func (a *apiServer) postFeedback(w http.ResponseWriter, r *http.Request) {
	var req FeedbackRequest
	if !decode(w, r, &req) {
		return
	}
	res, err := a.n.Feedback(r.Context(), req)
	if err != nil {
		writeSocialErr(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, map[string]any{"feedback": res})
}

func (a *apiServer) getDiagnostics(w http.ResponseWriter, r *http.Request) {
	d, err := a.n.Diagnostics(r.Context())
	if err != nil {
		writeSocialErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"diagnostics": d, "sharing": a.n.diagnosticsConsent()})
}
