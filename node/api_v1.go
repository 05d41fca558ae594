package node

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/kinmesh/kinmesh/protocols/message"
)

// errorCodes maps errors to the API's status and code (docs/api.md).
var errorCodes = []struct {
	err    error
	status int
	code   string
}{
	{ErrAgeRestricted, http.StatusUnprocessableEntity, "age_restricted"},
	{ErrParentalConsent, http.StatusUnprocessableEntity, "parental_consent_required"},
	{ErrPolicyNotAccepted, http.StatusUnprocessableEntity, "policy_not_accepted"},
	{ErrPolicyVersion, http.StatusUnprocessableEntity, "wrong_policy_version"},
	{ErrInvalidProfile, http.StatusUnprocessableEntity, "invalid_profile"},
	{ErrAccountExists, http.StatusConflict, "account_exists"},
	{ErrNoAccount, http.StatusConflict, "no_account"},
	{ErrBadInvite, http.StatusUnprocessableEntity, "invalid_invite"},
	{ErrSelfInvite, http.StatusUnprocessableEntity, "own_invite"},
	{ErrUnknownContact, http.StatusNotFound, "unknown_contact"},
	{message.ErrUnknownContact, http.StatusNotFound, "unknown_contact"},
	{message.ErrBlocked, http.StatusForbidden, "blocked"},
	{message.ErrEmpty, http.StatusUnprocessableEntity, "empty_text"},
	{message.ErrTooLong, http.StatusRequestEntityTooLarge, "text_too_long"},
	{message.ErrUnknownGroup, http.StatusNotFound, "unknown_group"},
	{message.ErrNotMember, http.StatusForbidden, "not_group_admin_or_member"},
	{message.ErrGroupTooLarge, http.StatusUnprocessableEntity, "group_too_large"},
	{message.ErrBadName, http.StatusUnprocessableEntity, "invalid_group_name"},
	{ErrNothingToChange, http.StatusBadRequest, "bad_request"},
	{message.ErrClosed, http.StatusServiceUnavailable, "shutting_down"},
	{message.ErrBadLocation, http.StatusUnprocessableEntity, "invalid_location"},
	{ErrNotStarted, http.StatusServiceUnavailable, "not_started"},
}

// writeErr writes err as the API's error JSON.
func writeErr(w http.ResponseWriter, err error) {
	for _, c := range errorCodes {
		if errors.Is(err, c.err) {
			writeError(w, c.status, c.code, err.Error())
			return
		}
	}
	writeError(w, http.StatusInternalServerError, "internal", err.Error())
}

// decode reads a JSON request body into v, refusing unknown fields.
func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeError(w, http.StatusRequestEntityTooLarge, "body_too_large", "request body over 1 MiB")
			return false
		}
		writeError(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("request body is not the expected JSON: %v", err))
		return false
	}
	return true
}

func (a *apiServer) v1Routes(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/policy", a.getPolicy)
	mux.HandleFunc("POST /v1/policy/accept", a.postPolicyAccept)
	mux.HandleFunc("GET /v1/settings", a.getSettings)
	mux.HandleFunc("POST /v1/settings", a.postSettings)
	mux.HandleFunc("POST /v1/account", a.postAccount)
	mux.HandleFunc("GET /v1/account", a.getAccount)
	mux.HandleFunc("DELETE /v1/account", a.deleteAccount)
	mux.HandleFunc("GET /v1/export", a.getExport)
	mux.HandleFunc("GET /v1/invite", a.getInvite)
	mux.HandleFunc("POST /v1/contacts", a.postContact)
	mux.HandleFunc("GET /v1/contacts", a.getContacts)
	mux.HandleFunc("DELETE /v1/contacts/{id}", a.deleteContact)
	mux.HandleFunc("POST /v1/messages", a.postMessage)
	mux.HandleFunc("GET /v1/messages", a.getMessages)
	mux.HandleFunc("POST /v1/read", a.postRead)
	mux.HandleFunc("POST /v1/groups", a.postGroup)
	mux.HandleFunc("GET /v1/groups", a.getGroups)
	mux.HandleFunc("PATCH /v1/groups/{id}", a.patchGroup)
	mux.HandleFunc("POST /v1/groups/{id}/members", a.postGroupMembers)
	mux.HandleFunc("POST /v1/groups/{id}/leave", a.postGroupLeave)
	mux.HandleFunc("GET /v1/events", a.getEvents)
	mux.HandleFunc("POST /v1/location", a.postLocation)
	mux.HandleFunc("GET /v1/locations", a.getLocations)
	mux.HandleFunc("POST /v1/blocks", a.postBlock)
	mux.HandleFunc("GET /v1/blocks", a.getBlocks)
	mux.HandleFunc("DELETE /v1/blocks/{id}", a.deleteBlock)
	a.discoveryRoutes(mux) // api_discovery.go
	a.reportRoutes(mux)    // api_report.go
	a.presenceRoutes(mux)  // api_presence.go
	a.callsRoutes(mux)     // api_calls.go
	a.recoveryRoutes(mux)  // api_recovery.go
	a.momentsRoutes(mux)   // api_moments.go
	a.photoRoutes(mux)     // api_photo.go
	mux.HandleFunc("GET /v1/node/peers", a.getPeers)
}

func (a *apiServer) getPolicy(w http.ResponseWriter, _ *http.Request) {
	_, text := Policy()
	writeJSON(w, http.StatusOK, map[string]string{"version": a.n.cfg.PolicyVersion, "text": text})
}

func (a *apiServer) postPolicyAccept(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Version string `json:"version"`
	}
	if !decode(w, r, &req) {
		return
	}
	v, err := a.n.AcceptPolicy(r.Context(), req.Version)
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

func (a *apiServer) getSettings(w http.ResponseWriter, r *http.Request) {
	v, err := a.n.SettingsView(r.Context())
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

func (a *apiServer) postSettings(w http.ResponseWriter, r *http.Request) {
	var req struct {
		DiagnosticsSharing *bool `json:"diagnostics_sharing"`
		CallQualitySharing *bool `json:"call_quality_sharing"`
	}
	if !decode(w, r, &req) {
		return
	}
	v, err := a.n.UpdateSettings(r.Context(), req.DiagnosticsSharing, req.CallQualitySharing)
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

func (a *apiServer) postAccount(w http.ResponseWriter, r *http.Request) {
	var req NewAccount
	if !decode(w, r, &req) {
		return
	}
	acct, err := a.n.CreateAccount(r.Context(), req)
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, map[string]any{"account": acct})
}

func (a *apiServer) getAccount(w http.ResponseWriter, _ *http.Request) {
	acct, err := a.n.Account()
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"account": acct})
}

func (a *apiServer) getInvite(w http.ResponseWriter, _ *http.Request) {
	inv, err := a.n.Invite()
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"invite": inv.String(), "uri": inv.URI()})
}

func (a *apiServer) postContact(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Invite string `json:"invite"`
	}
	if !decode(w, r, &req) {
		return
	}
	c, err := a.n.AddContact(r.Context(), req.Invite)
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, map[string]any{"contact": c})
}

func (a *apiServer) getContacts(w http.ResponseWriter, _ *http.Request) {
	cs, err := a.n.Contacts()
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"contacts": cs})
}

func (a *apiServer) deleteContact(w http.ResponseWriter, r *http.Request) {
	if err := a.n.RemoveContact(r.Context(), r.PathValue("id")); err != nil {
		writeErr(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a *apiServer) postMessage(w http.ResponseWriter, r *http.Request) {
	var req struct {
		To   string `json:"to"`
		Text string `json:"text"`
	}
	if !decode(w, r, &req) {
		return
	}
	m, err := a.n.Send(r.Context(), req.To, req.Text)
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, map[string]any{"message": m})
}

func (a *apiServer) getMessages(w http.ResponseWriter, r *http.Request) {
	with := r.URL.Query().Get("with")
	if with == "" {
		writeError(w, http.StatusBadRequest, "bad_request", "say whose conversation: ?with=<contact or group id>")
		return
	}
	ms, err := a.n.Messages(r.Context(), with)
	if err != nil {
		writeErr(w, err)
		return
	}
	if ms == nil {
		ms = []message.Message{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"messages": ms})
}

func (a *apiServer) postRead(w http.ResponseWriter, r *http.Request) {
	var req struct {
		With string `json:"with"`
	}
	if !decode(w, r, &req) {
		return
	}
	n, err := a.n.MarkRead(r.Context(), req.With)
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]int{"read": n})
}

func (a *apiServer) postGroup(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Name    string   `json:"name"`
		Members []string `json:"members"`
	}
	if !decode(w, r, &req) {
		return
	}
	g, err := a.n.CreateGroup(r.Context(), req.Name, req.Members)
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, map[string]any{"group": g})
}

func (a *apiServer) getGroups(w http.ResponseWriter, r *http.Request) {
	gs, err := a.n.Groups(r.Context())
	if err != nil {
		writeErr(w, err)
		return
	}
	if gs == nil {
		gs = []message.Group{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"groups": gs})
}

func (a *apiServer) postGroupMembers(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Add    []string `json:"add"`
		Remove []string `json:"remove"`
	}
	if !decode(w, r, &req) {
		return
	}
	g, err := a.n.ChangeGroup(r.Context(), r.PathValue("id"), req.Add, req.Remove)
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"group": g})
}

func (a *apiServer) patchGroup(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Name string `json:"name"`
	}
	if !decode(w, r, &req) {
		return
	}
	g, err := a.n.RenameGroup(r.Context(), r.PathValue("id"), req.Name)
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"group": g})
}

func (a *apiServer) postGroupLeave(w http.ResponseWriter, r *http.Request) {
	g, err := a.n.LeaveGroup(r.Context(), r.PathValue("id"))
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"group": g})
}

// getEvents streams events as server-sent events until the client goes
// away: "event: <type>\ndata: <json>\n\n", with a comment line every 15 s
// to keep proxies from closing an idle stream.
func (a *apiServer) getEvents(w http.ResponseWriter, r *http.Request) {
	fl, ok := w.(http.Flusher)
	if !ok {
		writeError(w, http.StatusInternalServerError, "internal", "streaming unsupported")
		return
	}
	events, stop := a.n.Subscribe()
	defer stop()
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	fmt.Fprint(w, ": kinmesh events\n\n")
	fl.Flush()
	ping := time.NewTicker(15 * time.Second)
	defer ping.Stop()
	for {
		_ = rc.SetWriteDeadline(time.Now().Add(30 * time.Second))
		select {
		case <-r.Context().Done():
			return
		case <-a.done:
			return
		case <-ping.C:
			if _, err := fmt.Fprint(w, ": ping\n\n"); err != nil {
				return
			}
		case e := <-events:
			b, _ := json.Marshal(e)
			if _, err := fmt.Fprintf(w, "event: %s\ndata: %s\n\n", strings.ReplaceAll(e.Type, "\n", ""), b); err != nil {
				return
			}
		}
		fl.Flush()
	}
}

func (a *apiServer) postBlock(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Contact string `json:"contact"`
	}
	if !decode(w, r, &req) {
		return
	}
	b, err := a.n.BlockContact(r.Context(), req.Contact)
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, map[string]any{"block": b})
}

func (a *apiServer) getBlocks(w http.ResponseWriter, _ *http.Request) {
	bs, err := a.n.Blocks()
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"blocks": bs})
}

func (a *apiServer) deleteBlock(w http.ResponseWriter, r *http.Request) {
	if err := a.n.UnblockContact(r.Context(), r.PathValue("id")); err != nil {
		writeErr(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a *apiServer) postLocation(w http.ResponseWriter, r *http.Request) {
	var req struct {
		To        []string `json:"to"`
		Lat       float64  `json:"lat"`
		Lon       float64  `json:"lon"`
		AccuracyM float64  `json:"accuracy_m"`
		Minutes   float64  `json:"minutes"`
		Stop      bool     `json:"stop"`
	}
	if !decode(w, r, &req) {
		return
	}
	if len(req.To) == 0 {
		writeError(w, http.StatusUnprocessableEntity, "invalid_location", "say whom to share with: \"to\": [contact ids]")
		return
	}
	d := time.Duration(req.Minutes * float64(time.Minute))
	if err := a.n.ShareLocation(r.Context(), req.To, req.Lat, req.Lon, req.AccuracyM, d, req.Stop); err != nil {
		writeErr(w, err)
		return
	}
	if d == 0 {
		d = message.DefaultLocationShare
	}
	resp := map[string]any{"shared_with": len(req.To), "stopped": req.Stop}
	if !req.Stop {
		resp["expires_at"] = a.n.cfg.Now().Add(d)
	}
	writeJSON(w, http.StatusOK, resp)
}

func (a *apiServer) getLocations(w http.ResponseWriter, r *http.Request) {
	ls, err := a.n.Locations(r.Context())
	if err != nil {
		writeErr(w, err)
		return
	}
	if ls == nil {
		ls = []message.Location{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"locations": ls})
}

func (a *apiServer) deleteAccount(w http.ResponseWriter, r *http.Request) {
	d, err := a.n.DeleteAccount(r.Context())
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, d)
}

func (a *apiServer) getExport(w http.ResponseWriter, r *http.Request) {
	e, err := a.n.Export(r.Context())
	if err != nil {
		writeErr(w, err)
		return
	}
	w.Header().Set("Content-Disposition", `attachment; filename="kinmesh-export.json"`)
	writeJSON(w, http.StatusOK, e)
}
