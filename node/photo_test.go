package node

import (
	"bytes"
	"context"
	"encoding/json"
	"image"
	"image/color"
	"image/jpeg"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"
)

// photoAPI is a node's photo routes, called in-process.
type photoAPI struct{ mux *http.ServeMux }

func newPhotoAPI(n *Node) *photoAPI {
	mux := http.NewServeMux()
	(&apiServer{n: n}).photoRoutes(mux)
	return &photoAPI{mux: mux}
}

func (p *photoAPI) do(method, path string, body []byte) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	p.mux.ServeHTTP(rec, httptest.NewRequest(method, path, bytes.NewReader(body)))
	return rec
}

func (p *photoAPI) wantError(t *testing.T, method, path string, body []byte, status int, code string) {
	t.Helper()
	rec := p.do(method, path, body)
	var e struct {
		Error struct{ Code, Message string } `json:"error"`
	}
	_ = json.Unmarshal(rec.Body.Bytes(), &e)
	if rec.Code != status || e.Error.Code != code {
		t.Fatalf("%s %s: %d %q (%s), want %d %q", method, path, rec.Code, e.Error.Code, e.Error.Message, status, code)
	}
}

func jpegPhoto(t *testing.T, w, h int) []byte {
	t.Helper()
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for x := range w {
		img.Set(x, x%h, color.RGBA{200, 10, byte(x), 255})
	}
	var b bytes.Buffer
	if err := jpeg.Encode(&b, img, nil); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// TestPhotoAPI: the photo endpoints refuse oversized and non-image
// photos with their codes, storing nothing; a photo set goes to the relay
// sealed, and a contact with the new record fetches and opens it.
func TestPhotoAPI(t *testing.T) {
	r := startBackupRelay(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	boot := []string{r.addr()}
	alice := startNode(t, Config{DataDir: filepath.Join(t.TempDir(), "alice"), Bootstrap: boot, RelayBackoff: 50 * time.Millisecond})
	bob := startNode(t, Config{DataDir: filepath.Join(t.TempDir(), "bob"), Bootstrap: boot, RelayBackoff: 50 * time.Millisecond})
	for _, n := range []*Node{alice, bob} {
		if _, err := n.CreateAccount(ctx, NewAccount{Name: "n" + n.ID().String()[:6], BirthDate: "1970-01-01", AcceptPolicy: PolicyVersion}); err != nil {
			t.Fatal(err)
		}
		if err := n.WaitRelays(ctx, 1); err != nil {
			t.Fatal(err)
		}
	}
	inv, _ := alice.Invite()
	if _, err := bob.AddContact(ctx, inv.String()); err != nil {
		t.Fatal(err)
	}
	aliceID := alice.mustAccountID(t)
	api, bapi := newPhotoAPI(alice), newPhotoAPI(bob)
	photo := jpegPhoto(t, 64, 48)

	api.wantError(t, "GET", "/v1/account/photo", nil, http.StatusNotFound, "no_photo")
	api.wantError(t, "PUT", "/v1/account/photo", make([]byte, MaxPhotoSize+1), http.StatusRequestEntityTooLarge, "photo_too_large")
	api.wantError(t, "PUT", "/v1/account/photo", make([]byte, 3*MaxPhotoSize), http.StatusRequestEntityTooLarge, "photo_too_large")
	api.wantError(t, "PUT", "/v1/account/photo", jpegPhoto(t, MaxPhotoSide+1, 1), http.StatusRequestEntityTooLarge, "photo_too_large")
	api.wantError(t, "PUT", "/v1/account/photo", []byte("<svg xmlns='http://www.w3.org/2000/svg'/>"), http.StatusUnsupportedMediaType, "unsupported_photo_type")
	api.wantError(t, "PUT", "/v1/account/photo", nil, http.StatusUnsupportedMediaType, "unsupported_photo_type")
	if u := r.blobs.Usage(); u.Blobs != 0 {
		t.Fatalf("refused photos left %d blobs on the relay", u.Blobs)
	}
	if k := nsCount(t, alice, "account"); k != 5 {
		t.Fatalf("refused photos: the account namespace holds %d keys, want the 5 of an account", k)
	}
	bapi.wantError(t, "GET", "/v1/contacts/"+aliceID+"/photo", nil, http.StatusNotFound, "no_photo")
	bapi.wantError(t, "GET", "/v1/contacts/nobody/photo", nil, http.StatusNotFound, "unknown_contact")

	rec := api.do("PUT", "/v1/account/photo", photo)
	var set struct{ Photo PhotoInfo }
	if rec.Code != http.StatusOK || json.Unmarshal(rec.Body.Bytes(), &set) != nil || set.Photo.Type != "image/jpeg" || set.Photo.Size != len(photo) {
		t.Fatalf("PUT /v1/account/photo: %d %s", rec.Code, rec.Body)
	}
	if u := r.blobs.Usage(); u.Blobs != 1 {
		t.Fatalf("the relay holds %d blobs, want 1", u.Blobs)
	}
	rec = api.do("GET", "/v1/account/photo", nil)
	if rec.Code != http.StatusOK || rec.Header().Get("Content-Type") != "image/jpeg" || !bytes.Equal(rec.Body.Bytes(), photo) {
		t.Fatalf("GET /v1/account/photo: %d %s, %d bytes", rec.Code, rec.Header().Get("Content-Type"), rec.Body.Len())
	}
	// Bob gets the new record (here: the invite again) and fetches it.
	inv, _ = alice.Invite()
	if _, err := bob.AddContact(ctx, inv.String()); err != nil {
		t.Fatal(err)
	}
	rec = bapi.do("GET", "/v1/contacts/"+aliceID+"/photo", nil)
	if rec.Code != http.StatusOK || rec.Header().Get("Content-Type") != "image/jpeg" || !bytes.Equal(rec.Body.Bytes(), photo) {
		t.Fatalf("GET /v1/contacts/{id}/photo: %d %s", rec.Code, rec.Header().Get("Content-Type"))
	}

	if rec = api.do("DELETE", "/v1/account/photo", nil); rec.Code != http.StatusOK {
		t.Fatalf("DELETE /v1/account/photo: %d %s", rec.Code, rec.Body)
	}
	if u := r.blobs.Usage(); u.Blobs != 0 {
		t.Fatalf("the relay holds %d blobs after clearing", u.Blobs)
	}
	api.wantError(t, "GET", "/v1/account/photo", nil, http.StatusNotFound, "no_photo")
	// Bob's record still names the photo, but the relay deleted it.
	bapi.wantError(t, "GET", "/v1/contacts/"+aliceID+"/photo", nil, http.StatusBadGateway, "photo_unavailable")
}
