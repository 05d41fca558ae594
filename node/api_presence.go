package node

import (
	"net/http"
)

// The presence endpoints (docs/api.md, "Presence").

func (a *apiServer) presenceRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/presence", a.getPresence)
	mux.HandleFunc("POST /v1/presence/announce", a.postPresenceAnnounce)
	mux.HandleFunc("GET /v1/settings/presence", a.getPresenceSetting)
	mux.HandleFunc("POST /v1/settings/presence", a.postPresenceSetting)
}

func (a *apiServer) getPresence(w http.ResponseWriter, _ *http.Request) {
	v, err := a.n.Presence()
	if err != nil {
		writeSocialErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

func (a *apiServer) postPresenceAnnounce(w http.ResponseWriter, r *http.Request) {
	round, err := a.n.AnnouncePresence(r.Context())
	if err != nil {
		writeSocialErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"announce": round})
}

func (a *apiServer) getPresenceSetting(w http.ResponseWriter, _ *http.Request) {
	if _, err := a.n.Account(); err != nil {
		writeSocialErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"share": a.n.presenceSetting()})
}

func (a *apiServer) postPresenceSetting(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Share string `json:"share"`
	}
	if !decode(w, r, &req) {
		return
	}
	if err := a.n.setPresenceSetting(r.Context(), req.Share); err != nil {
		writeSocialErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"share": a.n.presenceSetting()})
}
