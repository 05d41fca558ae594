package node

import (
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/kinmesh/kinmesh/protocols/backup"
	"github.com/kinmesh/kinmesh/protocols/discovery"
)

// The account recovery endpoints (docs/api.md, "Account recovery").

// recoveryErrorCodes maps this feature's errors to the API's status and
// code; writeRecoveryErr consults it, then the phone feature's table,
// then the general one.
var recoveryErrorCodes = []struct {
	err    error
	status int
	code   string
}{
	{ErrRecoveryNeedsPhone, http.StatusConflict, "not_verified"},
	{backup.ErrNotVerified, http.StatusConflict, "not_verified"},
	{ErrRecoveryOff, http.StatusConflict, "recovery_off"},
	{ErrNoRecoveryPending, http.StatusConflict, "no_recovery_pending"},
	{backup.ErrInvalidSecret, http.StatusUnprocessableEntity, "invalid_secret"},
	{backup.ErrWrongSecret, http.StatusUnprocessableEntity, "wrong_secret"},
	{backup.ErrBadBlob, http.StatusUnprocessableEntity, "backup_corrupt"},
	{backup.ErrBadContents, http.StatusUnprocessableEntity, "backup_corrupt"},
	{ErrBackupCorrupt, http.StatusUnprocessableEntity, "backup_corrupt"},
	{backup.ErrNoBackup, http.StatusNotFound, "no_backup"},
	{ErrUnknownRelay, http.StatusUnprocessableEntity, "unknown_relay"},
	{backup.ErrNoCode, http.StatusConflict, "no_code_pending"},
	{backup.ErrCodeExpired, http.StatusGone, "code_expired"},
	{backup.ErrWrongCode, http.StatusUnprocessableEntity, "wrong_code"},
	{backup.ErrTooManyAttempts, http.StatusTooManyRequests, "too_many_attempts"},
	{backup.ErrRateLimited, http.StatusTooManyRequests, "rate_limited"},
	{backup.ErrQuota, http.StatusServiceUnavailable, "relay_full"},
	{backup.ErrUnavailable, http.StatusServiceUnavailable, "relay_unavailable"},
	{backup.ErrProtocol, http.StatusBadGateway, "relay_misbehaving"},
	{backup.ErrMalformed, http.StatusBadGateway, "relay_misbehaving"},
	{backup.ErrContentsTooLarge, http.StatusRequestEntityTooLarge, "backup_too_large"},
}

// writeRecoveryErr writes err as the API's error JSON, with a Retry-After
// header when a relay gave one.
func writeRecoveryErr(w http.ResponseWriter, err error) {
	d := backup.RetryAfter(err)
	if d == 0 {
		d = discovery.RetryAfter(err)
	}
	if d > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int((d+time.Second-1)/time.Second)))
	}
	for _, c := range recoveryErrorCodes {
		if errors.Is(err, c.err) {
			writeError(w, c.status, c.code, err.Error())
			return
		}
	}
	writeDiscoveryErr(w, err)
}

func (a *apiServer) recoveryRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST /v1/recovery", a.postRecovery)
	mux.HandleFunc("GET /v1/recovery", a.getRecovery)
	mux.HandleFunc("DELETE /v1/recovery", a.deleteRecovery)
	mux.HandleFunc("POST /v1/recovery/backup", a.postRecoveryBackup)
	mux.HandleFunc("POST /v1/recovery/start", a.postRecoveryStart)
	mux.HandleFunc("GET /v1/recovery/start", a.getRecoveryStart)
	mux.HandleFunc("POST /v1/recovery/finish", a.postRecoveryFinish)
}

func (a *apiServer) postRecovery(w http.ResponseWriter, r *http.Request) {
	res, err := a.n.EnableRecovery(r.Context())
	if err != nil {
		writeRecoveryErr(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, res)
}

func (a *apiServer) getRecovery(w http.ResponseWriter, r *http.Request) {
	st, err := a.n.Recovery(r.Context())
	if err != nil {
		writeRecoveryErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"recovery": st})
}

func (a *apiServer) deleteRecovery(w http.ResponseWriter, r *http.Request) {
	st, err := a.n.DisableRecovery(r.Context())
	if err != nil {
		writeRecoveryErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"recovery": st})
}

func (a *apiServer) postRecoveryBackup(w http.ResponseWriter, r *http.Request) {
	st, err := a.n.BackupNow(r.Context())
	if err != nil {
		writeRecoveryErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"recovery": st})
}

func (a *apiServer) postRecoveryStart(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Number string `json:"number"`
		Relay  string `json:"relay,omitempty"`
	}
	if !decode(w, r, &req) {
		return
	}
	st, err := a.n.StartRecovery(r.Context(), req.Number, req.Relay)
	if err != nil {
		writeRecoveryErr(w, err)
		return
	}
	writeJSON(w, http.StatusAccepted, map[string]any{"recovery": st})
}

func (a *apiServer) getRecoveryStart(w http.ResponseWriter, _ *http.Request) {
	st, ok := a.n.PendingRecovery()
	if !ok {
		writeRecoveryErr(w, ErrNoRecoveryPending)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"recovery": st})
}

func (a *apiServer) postRecoveryFinish(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Code   string `json:"code"`
		Secret string `json:"secret"`
	}
	if !decode(w, r, &req) {
		return
	}
	res, err := a.n.FinishRecovery(r.Context(), req.Code, req.Secret)
	if err != nil {
		writeRecoveryErr(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, res)
}
