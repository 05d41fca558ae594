package node

import (
	"bytes"
	"errors"
	"io"
	"net/http"

	"github.com/kinmesh/kinmesh/protocols/calls"
)

// The calls endpoints (docs/api.md, "Calls"). Calls placed or answered
// through the API play the built-in test clips (the daemon has no
// microphone or camera); an app embedding the node passes its own tracks
// to Node.Call and Node.AcceptCall.

// callErrors maps the calls errors to the API's status and code; the rest
// go through writeErr.
var callErrors = []struct {
	err    error
	status int
	code   string
}{
	{calls.ErrUnknownContact, http.StatusNotFound, "unknown_contact"},
	{calls.ErrBlocked, http.StatusForbidden, "blocked"},
	{calls.ErrNoCall, http.StatusNotFound, "unknown_call"},
	{calls.ErrNotRinging, http.StatusConflict, "not_ringing"},
	{calls.ErrTooManyCalls, http.StatusTooManyRequests, "too_many_calls"},
	{calls.ErrNoRelay, http.StatusServiceUnavailable, "no_relay"},
	{calls.ErrClosed, http.StatusServiceUnavailable, "shutting_down"},
	{ErrNoCallQualityConsent, http.StatusForbidden, "no_consent"},
}

func writeCallErr(w http.ResponseWriter, err error) {
	for _, c := range callErrors {
		if errors.Is(err, c.err) {
			writeError(w, c.status, c.code, err.Error())
			return
		}
	}
	writeErr(w, err)
}

// decodeOptional is decode for endpoints whose body may be empty.
func decodeOptional(w http.ResponseWriter, r *http.Request, v any) bool {
	b, err := io.ReadAll(r.Body)
	if err != nil {
		writeError(w, http.StatusRequestEntityTooLarge, "body_too_large", "request body over 1 MiB")
		return false
	}
	if len(bytes.TrimSpace(b)) == 0 {
		return true
	}
	r.Body = io.NopCloser(bytes.NewReader(b))
	return decode(w, r, v)
}

func (a *apiServer) callsRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST /v1/calls", a.postCall)
	mux.HandleFunc("GET /v1/calls", a.getCalls)
	mux.HandleFunc("GET /v1/calls/settings", a.getCallSettings)
	mux.HandleFunc("POST /v1/calls/settings", a.postCallSettings)
	mux.HandleFunc("GET /v1/calls/{id}", a.getCall)
	mux.HandleFunc("POST /v1/calls/{id}/accept", a.postCallAccept)
	mux.HandleFunc("DELETE /v1/calls/{id}", a.deleteCall)
}

func (a *apiServer) postCall(w http.ResponseWriter, r *http.Request) {
	var req struct {
		To         string `json:"to"`
		ForceRelay bool   `json:"force_relay"`
	}
	if !decode(w, r, &req) {
		return
	}
	o, err := TestMedia(req.ForceRelay)
	if err != nil {
		writeCallErr(w, err)
		return
	}
	c, err := a.n.Call(r.Context(), req.To, o)
	if err != nil {
		writeCallErr(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, map[string]any{"call": c.Info()})
}

func (a *apiServer) getCalls(w http.ResponseWriter, _ *http.Request) {
	cs, err := a.n.Calls()
	if err != nil {
		writeCallErr(w, err)
		return
	}
	if cs == nil {
		cs = []calls.Info{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"calls": cs})
}

func (a *apiServer) getCall(w http.ResponseWriter, r *http.Request) {
	i, err := a.n.CallInfo(r.PathValue("id"))
	if err != nil {
		writeCallErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"call": i})
}

func (a *apiServer) postCallAccept(w http.ResponseWriter, r *http.Request) {
	var req struct {
		ForceRelay bool `json:"force_relay"`
	}
	if !decodeOptional(w, r, &req) {
		return
	}
	o, err := TestMedia(req.ForceRelay)
	if err != nil {
		writeCallErr(w, err)
		return
	}
	c, err := a.n.AcceptCall(r.Context(), r.PathValue("id"), o)
	if err != nil {
		writeCallErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"call": c.Info()})
}

func (a *apiServer) deleteCall(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := a.n.HangUp(r.Context(), id); err != nil {
		writeCallErr(w, err)
		return
	}
	i, err := a.n.CallInfo(id)
	if err != nil {
		writeCallErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"call": i})
}

// callSettings is what GET/POST /v1/calls/settings show.
type callSettings struct {
	// ForceRelay: every call offers only relay (TURN) candidates, hiding
	// this device's IP address from the other party.
	ForceRelay bool `json:"force_relay"`
}

func (a *apiServer) getCallSettings(w http.ResponseWriter, r *http.Request) {
	if _, err := a.n.Account(); err != nil {
		writeCallErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, callSettings{ForceRelay: a.n.callForceRelay()})
}

func (a *apiServer) postCallSettings(w http.ResponseWriter, r *http.Request) {
	var req struct {
		ForceRelay *bool `json:"force_relay"`
	}
	if !decode(w, r, &req) {
		return
	}
	if req.ForceRelay == nil {
		writeError(w, http.StatusBadRequest, "bad_request", `say what to set: {"force_relay": true|false}`)
		return
	}
	if _, err := a.n.SetCallForceRelay(r.Context(), *req.ForceRelay); err != nil {
		writeCallErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, callSettings{ForceRelay: *req.ForceRelay})
}
