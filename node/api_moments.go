package node

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"

	"github.com/kinmesh/kinmesh/protocols/moments"
)

// The moments endpoints (docs/api.md, "Moments"). POST /v1/moments takes
// JSON ({"text", "media":[{"type","data":"<base64>"}]}) or
// multipart/form-data (a "text" field and one "media" file part per photo
// or video, its Content-Type the MIME type); its body may be up to
// maxMomentBody, every other request's up to maxRequestBody.

// maxMomentBody caps the body of POST /v1/moments: a 50 MiB video in
// base64 JSON with room to spare.
const maxMomentBody = 96 << 20

// requestBodyLimit is the body cap of a request (the auth middleware
// applies it).
func requestBodyLimit(r *http.Request) int64 {
	if r.Method == http.MethodPost && r.URL.Path == "/v1/moments" {
		return maxMomentBody
	}
	return maxRequestBody
}

// momentErrors maps the moments errors to the API's status and code; the
// rest go through writeErr.
var momentErrors = []struct {
	err    error
	status int
	code   string
}{
	{moments.ErrEmpty, http.StatusUnprocessableEntity, "empty_moment"},
	{moments.ErrTooLarge, http.StatusRequestEntityTooLarge, "too_large"},
	{moments.ErrMediaType, http.StatusUnsupportedMediaType, "unsupported_media_type"},
	{moments.ErrNotFound, http.StatusNotFound, "unknown_moment"},
	{moments.ErrNotAuthor, http.StatusForbidden, "not_author"},
	{moments.ErrAmbiguous, http.StatusConflict, "ambiguous_moment"},
	{moments.ErrNoRelays, http.StatusServiceUnavailable, "no_relay"},
	{moments.ErrMediaUnavailable, http.StatusBadGateway, "media_unavailable"},
	{moments.ErrMalformed, http.StatusBadRequest, "invalid_request"},
	{moments.ErrRateLimited, http.StatusTooManyRequests, "rate_limited"},
	{moments.ErrClosed, http.StatusServiceUnavailable, "shutting_down"},
}

func writeMomentErr(w http.ResponseWriter, err error) {
	for _, c := range momentErrors {
		if errors.Is(err, c.err) {
			writeError(w, c.status, c.code, err.Error())
			return
		}
	}
	writeErr(w, err)
}

func (a *apiServer) momentsRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST /v1/moments", a.postMoment)
	mux.HandleFunc("GET /v1/moments", a.getMoments)
	mux.HandleFunc("GET /v1/moments/audience", a.getMomentsAudience)
	mux.HandleFunc("POST /v1/moments/audience", a.postMomentsAudience)
	mux.HandleFunc("GET /v1/moments/{id}", a.getMoment)
	mux.HandleFunc("DELETE /v1/moments/{id}", a.deleteMoment)
	mux.HandleFunc("GET /v1/moments/{id}/media/{n}", a.getMomentMedia)
	mux.HandleFunc("POST /v1/moments/{id}/likes", a.postMomentLike)
	mux.HandleFunc("DELETE /v1/moments/{id}/likes", a.deleteMomentLike)
	mux.HandleFunc("POST /v1/moments/{id}/comments", a.postMomentComment)
	mux.HandleFunc("DELETE /v1/moments/{id}/comments/{cid}", a.deleteMomentComment)
}

// momentMediaJSON is one medium of a JSON POST /v1/moments.
type momentMediaJSON struct {
	Type string `json:"type"`
	Data []byte `json:"data"` // base64 in JSON
}

func (a *apiServer) postMoment(w http.ResponseWriter, r *http.Request) {
	var text string
	var media []MomentMedia
	ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if ct == "multipart/form-data" {
		var ok bool
		if text, media, ok = readMomentMultipart(w, r); !ok {
			return
		}
	} else {
		var req struct {
			Text  string            `json:"text"`
			Media []momentMediaJSON `json:"media"`
		}
		dec := json.NewDecoder(r.Body)
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			badBody(w, err)
			return
		}
		text = req.Text
		for _, m := range req.Media {
			media = append(media, MomentMedia{Type: m.Type, Data: m.Data})
		}
	}
	m, err := a.n.PostMoment(r.Context(), text, media)
	if err != nil {
		writeMomentErr(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, map[string]any{"moment": m})
}

// readMomentMultipart reads a multipart POST /v1/moments: the "text"
// field and the "media" parts, each capped as it is read.
func readMomentMultipart(w http.ResponseWriter, r *http.Request) (string, []MomentMedia, bool) {
	mr, err := r.MultipartReader()
	if err != nil {
		writeError(w, http.StatusBadRequest, "bad_request", "multipart body: "+err.Error())
		return "", nil, false
	}
	var text string
	var media []MomentMedia
	for range moments.MaxMedia + 16 {
		p, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			return text, media, true
		}
		if err != nil {
			badBody(w, err)
			return "", nil, false
		}
		switch p.FormName() {
		case "text":
			b, err := io.ReadAll(io.LimitReader(p, moments.MaxTextLen+1))
			if err != nil {
				badBody(w, err)
				return "", nil, false
			}
			text = string(b)
		case "media":
			if len(media) == moments.MaxMedia {
				writeMomentErr(w, fmt.Errorf("more than %d media: %w", moments.MaxMedia, moments.ErrTooLarge))
				return "", nil, false
			}
			b, err := io.ReadAll(io.LimitReader(p, moments.MaxVideoSize+1))
			if err != nil {
				badBody(w, err)
				return "", nil, false
			}
			typ, _, _ := mime.ParseMediaType(p.Header.Get("Content-Type"))
			if typ == "" || typ == "application/octet-stream" {
				typ, _, _ = mime.ParseMediaType(http.DetectContentType(b))
			}
			media = append(media, MomentMedia{Type: typ, Data: b})
		default:
			writeError(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("unknown form field %q: send \"text\" and \"media\"", p.FormName()))
			return "", nil, false
		}
		p.Close()
	}
	writeError(w, http.StatusBadRequest, "bad_request", "too many form parts")
	return "", nil, false
}

// badBody answers a request body that could not be read or decoded.
func badBody(w http.ResponseWriter, err error) {
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		writeError(w, http.StatusRequestEntityTooLarge, "body_too_large", fmt.Sprintf("request body over %d bytes", tooBig.Limit))
		return
	}
	writeError(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("request body is not the expected JSON or form: %v", err))
}

func (a *apiServer) getMoments(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	limit := 0
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			writeError(w, http.StatusBadRequest, "invalid_request", "limit must be a number from 1 to 200")
			return
		}
		limit = n
	}
	ms, next, err := a.n.MomentsFeed(r.Context(), q.Get("cursor"), limit)
	if err != nil {
		writeMomentErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"moments": ms, "next": next})
}

func (a *apiServer) getMoment(w http.ResponseWriter, r *http.Request) {
	m, err := a.n.Moment(r.Context(), r.PathValue("id"))
	if err != nil {
		writeMomentErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"moment": m})
}

func (a *apiServer) getMomentMedia(w http.ResponseWriter, r *http.Request) {
	i, err := strconv.Atoi(r.PathValue("n"))
	if err != nil || i < 0 {
		writeError(w, http.StatusNotFound, "unknown_moment", "no such medium: n is its place in the moment, from 0")
		return
	}
	typ, data, err := a.n.MomentMediaData(r.Context(), r.PathValue("id"), i)
	if err != nil {
		writeMomentErr(w, err)
		return
	}
	if typ == "" || strings.ContainsAny(typ, "\r\n") {
		typ = "application/octet-stream"
	}
	w.Header().Set("Content-Type", typ)
	w.Header().Set("Content-Length", strconv.Itoa(len(data)))
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(data)
}

func (a *apiServer) deleteMoment(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := a.n.DeleteMoment(r.Context(), id); err != nil {
		writeMomentErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"moment": map[string]any{"id": id, "deleted": true}})
}

// reacted answers a like, unlike or comment deletion with the moment as
// it is now.
func (a *apiServer) reacted(w http.ResponseWriter, r *http.Request, status int, err error) {
	if err != nil {
		writeMomentErr(w, err)
		return
	}
	m, err := a.n.Moment(r.Context(), r.PathValue("id"))
	if err != nil {
		writeMomentErr(w, err)
		return
	}
	writeJSON(w, status, map[string]any{"moment": m})
}

func (a *apiServer) postMomentLike(w http.ResponseWriter, r *http.Request) {
	a.reacted(w, r, http.StatusOK, a.n.LikeMoment(r.Context(), r.PathValue("id")))
}

func (a *apiServer) deleteMomentLike(w http.ResponseWriter, r *http.Request) {
	a.reacted(w, r, http.StatusOK, a.n.UnlikeMoment(r.Context(), r.PathValue("id")))
}

func (a *apiServer) postMomentComment(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Text string `json:"text"`
	}
	if !decode(w, r, &req) {
		return
	}
	c, err := a.n.CommentMoment(r.Context(), r.PathValue("id"), req.Text)
	if err != nil {
		writeMomentErr(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, map[string]any{"comment": c})
}

func (a *apiServer) deleteMomentComment(w http.ResponseWriter, r *http.Request) {
	a.reacted(w, r, http.StatusOK, a.n.DeleteMomentComment(r.Context(), r.PathValue("id"), r.PathValue("cid")))
}

func (a *apiServer) getMomentsAudience(w http.ResponseWriter, _ *http.Request) {
	au, err := a.n.MomentsAudience()
	if err != nil {
		writeMomentErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"audience": au})
}

func (a *apiServer) postMomentsAudience(w http.ResponseWriter, r *http.Request) {
	var req moments.Audience
	if !decode(w, r, &req) {
		return
	}
	au, err := a.n.SetMomentsAudience(r.Context(), req)
	if err != nil {
		writeMomentErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"audience": au})
}
