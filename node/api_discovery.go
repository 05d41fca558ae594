package node

import (
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/kinmesh/kinmesh/protocols/discovery"
)

// The phone number and contact discovery endpoints (docs/api.md, "Phone
// number and contact discovery").

// discoveryErrorCodes maps this feature's errors to the API's status and
// code; writeDiscoveryErr consults it before the general table.
var discoveryErrorCodes = []struct {
	err    error
	status int
	code   string
}{
	{ErrInvalidPhoneNumber, http.StatusUnprocessableEntity, "invalid_phone_number"},
	{discovery.ErrInvalidNumber, http.StatusUnprocessableEntity, "invalid_phone_number"},
	{ErrInvalidCode, http.StatusUnprocessableEntity, "invalid_code"},
	{ErrNoPhoneCode, http.StatusConflict, "no_code_pending"},
	{discovery.ErrNoCode, http.StatusConflict, "no_code_pending"},
	{discovery.ErrCodeExpired, http.StatusGone, "code_expired"},
	{discovery.ErrWrongCode, http.StatusUnprocessableEntity, "wrong_code"},
	{discovery.ErrTooManyAttempts, http.StatusTooManyRequests, "too_many_attempts"},
	{discovery.ErrRateLimited, http.StatusTooManyRequests, "rate_limited"},
	{discovery.ErrNotVerified, http.StatusConflict, "not_verified"},
	{discovery.ErrSMSFailed, http.StatusBadGateway, "sms_failed"},
	{discovery.ErrBadProof, http.StatusBadGateway, "relay_misbehaving"},
	{discovery.ErrKeyChanged, http.StatusBadGateway, "relay_misbehaving"},
	{discovery.ErrProtocol, http.StatusBadGateway, "relay_misbehaving"},
	{discovery.ErrQuota, http.StatusServiceUnavailable, "directory_full"},
	{discovery.ErrUnavailable, http.StatusServiceUnavailable, "relay_unavailable"},
	{ErrPhoneRelayUnreachable, http.StatusServiceUnavailable, "relay_unavailable"},
	{ErrTooManyNumbers, http.StatusRequestEntityTooLarge, "too_many_numbers"},
	{discovery.ErrTooLarge, http.StatusRequestEntityTooLarge, "too_many_numbers"},
}

// writeDiscoveryErr writes err as the API's error JSON, with this
// feature's codes first, and a Retry-After header when the relay gave one.
func writeDiscoveryErr(w http.ResponseWriter, err error) {
	if d := discovery.RetryAfter(err); d > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int((d+time.Second-1)/time.Second)))
	}
	for _, c := range discoveryErrorCodes {
		if errors.Is(err, c.err) {
			writeError(w, c.status, c.code, err.Error())
			return
		}
	}
	writeErr(w, err)
}

func (a *apiServer) discoveryRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST /v1/phone", a.postPhone)
	mux.HandleFunc("POST /v1/phone/verify", a.postPhoneVerify)
	mux.HandleFunc("GET /v1/phone", a.getPhone)
	mux.HandleFunc("DELETE /v1/phone", a.deletePhone)
	mux.HandleFunc("POST /v1/discovery", a.postDiscovery)
}

func (a *apiServer) postPhone(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Number string `json:"number"`
	}
	if !decode(w, r, &req) {
		return
	}
	st, err := a.n.RequestPhoneCode(r.Context(), req.Number)
	if err != nil {
		writeDiscoveryErr(w, err)
		return
	}
	writeJSON(w, http.StatusAccepted, map[string]any{"phone": st})
}

func (a *apiServer) postPhoneVerify(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Code string `json:"code"`
	}
	if !decode(w, r, &req) {
		return
	}
	st, err := a.n.ConfirmPhoneCode(r.Context(), req.Code)
	if err != nil {
		writeDiscoveryErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"phone": st})
}

func (a *apiServer) getPhone(w http.ResponseWriter, r *http.Request) {
	st, err := a.n.Phone(r.Context())
	if err != nil {
		writeDiscoveryErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"phone": st})
}

func (a *apiServer) deletePhone(w http.ResponseWriter, r *http.Request) {
	st, err := a.n.UnlinkPhone(r.Context())
	if err != nil {
		writeDiscoveryErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"phone": st})
}

func (a *apiServer) postDiscovery(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Numbers []string `json:"numbers"`
	}
	if !decode(w, r, &req) {
		return
	}
	res, err := a.n.DiscoverContacts(r.Context(), req.Numbers)
	if err != nil {
		writeDiscoveryErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}
