package node

import (
	"errors"
	"io"
	"net/http"
	"strconv"
)

// The profile photo endpoints (docs/api.md, "Profile photo"). Photos go
// in and out as raw image bytes, not JSON.

// photoErrorCodes maps this feature's errors to the API's status and code;
// writePhotoErr consults it, then the general table.
var photoErrorCodes = []struct {
	err    error
	status int
	code   string
}{
	{ErrPhotoTooLarge, http.StatusRequestEntityTooLarge, "photo_too_large"},
	{ErrPhotoType, http.StatusUnsupportedMediaType, "unsupported_photo_type"},
	{ErrNoPhoto, http.StatusNotFound, "no_photo"},
	{ErrPhotoUnavailable, http.StatusBadGateway, "photo_unavailable"},
}

func writePhotoErr(w http.ResponseWriter, err error) {
	for _, c := range photoErrorCodes {
		if errors.Is(err, c.err) {
			writeError(w, c.status, c.code, err.Error())
			return
		}
	}
	writeErr(w, err)
}

func (a *apiServer) photoRoutes(mux *http.ServeMux) {
	mux.HandleFunc("PUT /v1/account/photo", a.putPhoto)
	mux.HandleFunc("GET /v1/account/photo", a.getPhoto)
	mux.HandleFunc("DELETE /v1/account/photo", a.deletePhoto)
	mux.HandleFunc("GET /v1/contacts/{id}/photo", a.getContactPhoto)
}

func (a *apiServer) putPhoto(w http.ResponseWriter, r *http.Request) {
	data, err := io.ReadAll(io.LimitReader(r.Body, MaxPhotoSize+1))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writePhotoErr(w, ErrPhotoTooLarge)
			return
		}
		writeError(w, http.StatusBadRequest, "bad_request", "read the photo: "+err.Error())
		return
	}
	info, err := a.n.SetPhoto(r.Context(), data)
	if err != nil {
		writePhotoErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"photo": info})
}

func (a *apiServer) deletePhoto(w http.ResponseWriter, r *http.Request) {
	if err := a.n.ClearPhoto(r.Context()); err != nil {
		writePhotoErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"photo": nil})
}

func (a *apiServer) getPhoto(w http.ResponseWriter, r *http.Request) {
	data, typ, err := a.n.Photo(r.Context())
	writeImage(w, data, typ, err)
}

func (a *apiServer) getContactPhoto(w http.ResponseWriter, r *http.Request) {
	data, typ, err := a.n.ContactPhoto(r.Context(), r.PathValue("id"))
	writeImage(w, data, typ, err)
}

func writeImage(w http.ResponseWriter, data []byte, typ string, err error) {
	if err != nil {
		writePhotoErr(w, err)
		return
	}
	w.Header().Set("Content-Type", typ)
	w.Header().Set("Content-Length", strconv.Itoa(len(data)))
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(data)
}
