package node

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"io"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	relayv2 "github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/relay"

	"github.com/kinmesh/kinmesh/protocols/blobs"
	"github.com/kinmesh/kinmesh/protocols/mailbox"
	"github.com/kinmesh/kinmesh/protocols/moments"
	"github.com/kinmesh/kinmesh/protocols/netkit"
	"github.com/kinmesh/kinmesh/protocols/prekeys"
	"github.com/kinmesh/kinmesh/storage"
)

// startMomentsRelay starts what a bootstrap relay runs for moments (node
// never links bootstrap): circuit relay, mailbox and prekeys (accounts),
// gossipsub, the moments keeper and the blob store. It returns the relay's
// bootstrap address.
func startMomentsRelay(t *testing.T) []string {
	t.Helper()
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableMetrics(), libp2p.ForceReachabilityPublic())
	if err != nil {
		t.Fatal(err)
	}
	st, err := storage.Open(t.TempDir(), storage.WithProfile(storage.ProfileRelay), storage.WithLogger(callsLog))
	if err != nil {
		t.Fatal(err)
	}
	rl, err := relayv2.New(h)
	if err != nil {
		t.Fatal(err)
	}
	mb, err := mailbox.NewService(h, st, mailbox.WithLogger(callsLog))
	if err != nil {
		t.Fatal(err)
	}
	pk, err := prekeys.NewService(h, st, prekeys.WithLogger(callsLog))
	if err != nil {
		t.Fatal(err)
	}
	router, err := moments.NewRouter(h, moments.WithRouterLogger(callsLog))
	if err != nil {
		t.Fatal(err)
	}
	bs, err := blobs.NewService(h, st, blobs.WithLogger(callsLog))
	if err != nil {
		t.Fatal(err)
	}
	keep, err := moments.NewService(h, st, router, bs, moments.WithLogger(callsLog))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		keep.Close()
		bs.Close()
		router.Close()
		pk.Close()
		mb.Close()
		rl.Close()
		h.Close()
		st.Close()
	})
	return netkit.P2PAddrs(h.ID(), h.Addrs())[:1]
}

// momentsPair starts two nodes on one relay whose accounts are contacts.
func momentsPair(t *testing.T) (a, b *Node) {
	t.Helper()
	boot := startMomentsRelay(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var ns []*Node
	for _, name := range []string{"rosa", "mia"} {
		n := startNode(t, Config{DataDir: filepath.Join(t.TempDir(), name), Bootstrap: boot, API: "127.0.0.1:0", RelayBackoff: 50 * time.Millisecond})
		if _, err := n.CreateAccount(ctx, NewAccount{Name: name, BirthDate: "1970-01-01", AcceptPolicy: PolicyVersion}); err != nil {
			t.Fatal(err)
		}
		if err := n.WaitRelays(ctx, 1); err != nil {
			t.Fatal(err)
		}
		ns = append(ns, n)
	}
	for _, pair := range [][2]*Node{{ns[0], ns[1]}, {ns[1], ns[0]}} {
		inv, err := pair[0].Invite()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := pair[1].AddContact(ctx, inv.String()); err != nil {
			t.Fatal(err)
		}
	}
	return ns[0], ns[1]
}

// rawAPI sends a request with a raw body and returns the status, the
// content type and the body.
func rawAPI(t *testing.T, n *Node, method, path, contentType string, body []byte) (int, string, []byte) {
	t.Helper()
	req, _ := http.NewRequest(method, "http://"+n.APIAddr()+path, bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+string(n.api.token))
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header.Get("Content-Type"), b
}

// TestMomentsAPI drives the moments endpoints of two nodes: posting with
// JSON and multipart media, the feed with pages, a medium fetched and
// decrypted, likes, comments, the SSE events, typed errors, deletion and
// the export.
func TestMomentsAPI(t *testing.T) {
	a, b := momentsPair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// b listens to its events.
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+b.APIAddr()+"/v1/events", nil)
	req.Header.Set("Authorization", "Bearer "+string(b.api.token))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	events := make(chan struct{}, 1) // a nudge per event, for the waits
	var mu sync.Mutex
	var seen []string // every event's data
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if l, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
				mu.Lock()
				seen = append(seen, l)
				mu.Unlock()
				select {
				case events <- struct{}{}:
				default:
				}
			}
		}
	}()
	defer func() { cancel(); <-done }()

	photo := make([]byte, 40<<10)
	_, _ = rand.Read(photo)
	var posted struct{ Moment moments.Moment }
	if st := api(t, a, "POST", "/v1/moments", map[string]any{"text": "first", "media": []map[string]any{{"type": "image/jpeg", "data": photo}}}, &posted); st != http.StatusCreated {
		t.Fatalf("POST /v1/moments (JSON): %d", st)
	}
	if !posted.Moment.Mine || posted.Moment.Text != "first" || len(posted.Moment.Media) != 1 || posted.Moment.Media[0].Type != "image/jpeg" {
		t.Fatalf("posted %+v", posted.Moment)
	}
	first := posted.Moment.ID

	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	_ = mw.WriteField("text", "second, with a video")
	hdr := textproto.MIMEHeader{}
	hdr.Set("Content-Disposition", `form-data; name="media"; filename="clip.mp4"`)
	hdr.Set("Content-Type", "video/mp4")
	pw, _ := mw.CreatePart(hdr)
	_, _ = pw.Write(photo[:10<<10])
	_ = mw.Close()
	st, _, raw := rawAPI(t, a, "POST", "/v1/moments", mw.FormDataContentType(), body.Bytes())
	if st != http.StatusCreated {
		t.Fatalf("POST /v1/moments (multipart): %d %s", st, raw)
	}
	if err := json.Unmarshal(raw, &posted); err != nil || posted.Moment.Media[0].Type != "video/mp4" {
		t.Fatalf("multipart moment %s, %v", raw, err)
	}
	second := posted.Moment.ID

	// b's feed: both, newest first, one page at a time.
	deadline := time.Now().Add(30 * time.Second)
	var page struct {
		Moments []moments.Moment
		Next    string
	}
	for {
		if st := api(t, b, "GET", "/v1/moments", nil, &page); st != http.StatusOK {
			t.Fatalf("GET /v1/moments: %d", st)
		}
		if len(page.Moments) == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("b's feed never got both moments: %+v", page.Moments)
		}
		select {
		case <-events:
		case <-time.After(200 * time.Millisecond):
		}
	}
	if page.Moments[0].ID != second || page.Moments[1].ID != first || page.Next != "" {
		t.Fatalf("feed order %s, %s (next %q), want %s, %s", page.Moments[0].ID, page.Moments[1].ID, page.Next, second, first)
	}
	api(t, b, "GET", "/v1/moments?limit=1", nil, &page)
	if len(page.Moments) != 1 || page.Moments[0].ID != second || page.Next == "" {
		t.Fatalf("page 1: %+v", page)
	}
	api(t, b, "GET", "/v1/moments?limit=1&cursor="+page.Next, nil, &page)
	if len(page.Moments) != 1 || page.Moments[0].ID != first || page.Next != "" {
		t.Fatalf("page 2: %+v", page)
	}

	st, ct, got := rawAPI(t, b, "GET", "/v1/moments/"+first+"/media/0", "", nil)
	if st != http.StatusOK || ct != "image/jpeg" || !bytes.Equal(got, photo) {
		t.Fatalf("GET media: %d %s, %d bytes", st, ct, len(got))
	}

	var one struct{ Moment moments.Moment }
	if st := api(t, b, "POST", "/v1/moments/"+first+"/likes", nil, &one); st != http.StatusOK || len(one.Moment.Likes) != 1 || one.Moment.Likes[0].Name != "mia" {
		t.Fatalf("like: %d %+v", st, one.Moment)
	}
	var cm struct{ Comment moments.Comment }
	if st := api(t, b, "POST", "/v1/moments/"+first+"/comments", map[string]string{"text": "lovely"}, &cm); st != http.StatusCreated || cm.Comment.Text != "lovely" {
		t.Fatalf("comment: %d %+v", st, cm)
	}
	for {
		api(t, a, "GET", "/v1/moments/"+first, nil, &one)
		if len(one.Moment.Likes) == 1 && len(one.Moment.Comments) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a never saw the like and comment: %+v", one.Moment)
		}
		<-time.After(100 * time.Millisecond)
	}
	if st := api(t, b, "DELETE", "/v1/moments/"+first+"/comments/"+cm.Comment.ID, nil, &one); st != http.StatusOK || len(one.Moment.Comments) != 0 {
		t.Fatalf("delete comment: %d %+v", st, one.Moment)
	}
	if st := api(t, b, "DELETE", "/v1/moments/"+first+"/likes", nil, &one); st != http.StatusOK || len(one.Moment.Likes) != 0 {
		t.Fatalf("unlike: %d %+v", st, one.Moment)
	}

	// Typed errors.
	tooMany := make([]map[string]any, moments.MaxMedia+1)
	for i := range tooMany {
		tooMany[i] = map[string]any{"type": "image/png", "data": []byte{1}}
	}
	for _, tc := range []struct {
		name, method, path string
		node               *Node
		body               any
		status             int
		code               string
	}{
		{"empty", "POST", "/v1/moments", a, map[string]any{"text": "  "}, 422, "empty_moment"},
		{"text too long", "POST", "/v1/moments", a, map[string]any{"text": strings.Repeat("x", moments.MaxTextLen+1)}, 413, "too_large"},
		{"too many media", "POST", "/v1/moments", a, map[string]any{"media": tooMany}, 413, "too_large"},
		{"not a photo", "POST", "/v1/moments", a, map[string]any{"media": []map[string]any{{"type": "application/pdf", "data": []byte("%PDF")}}}, 415, "unsupported_media_type"},
		{"unknown field", "POST", "/v1/moments", a, map[string]any{"txt": "x"}, 400, "bad_request"},
		{"unknown moment", "GET", "/v1/moments/00000000000000000000000000000000", a, nil, 404, "unknown_moment"},
		{"not an id", "POST", "/v1/moments/nope/likes", a, nil, 404, "unknown_moment"},
		{"no such medium", "GET", "/v1/moments/" + first + "/media/5", b, nil, 404, "unknown_moment"},
		{"not the author", "DELETE", "/v1/moments/" + first, b, nil, 403, "not_author"},
		{"no like to take back", "DELETE", "/v1/moments/" + first + "/likes", b, nil, 404, "unknown_moment"},
		{"bad limit", "GET", "/v1/moments?limit=500", a, nil, 400, "invalid_request"},
		{"bad audience", "POST", "/v1/moments/audience", a, map[string]any{"all": true, "exclude": []string{"nobody"}}, 400, "invalid_request"},
	} {
		var e apiError
		if st := api(t, tc.node, tc.method, tc.path, tc.body, &e); st != tc.status || e.Error.Code != tc.code {
			t.Errorf("%s: %d %q, want %d %q", tc.name, st, e.Error.Code, tc.status, tc.code)
		}
	}
	var au struct{ Audience moments.Audience }
	if st := api(t, a, "GET", "/v1/moments/audience", nil, &au); st != http.StatusOK || !au.Audience.All {
		t.Fatalf("audience: %d %+v", st, au)
	}

	// The export holds a's own moments; b's holds none of a's.
	ex, err := a.Export(ctx)
	if err != nil || len(ex.Moments) != 2 || ex.Moments[0].ID != second {
		t.Fatalf("a's export moments %+v, %v", ex.Moments, err)
	}
	if ex, err := b.Export(ctx); err != nil || len(ex.Moments) != 0 {
		t.Fatalf("b's export moments %+v, %v", ex.Moments, err)
	}

	// a deletes the first moment; b's feed loses it, and b saw events.
	if st := api(t, a, "DELETE", "/v1/moments/"+first, nil, nil); st != http.StatusOK {
		t.Fatalf("delete: %d", st)
	}
	for {
		var e apiError
		if st := api(t, b, "GET", "/v1/moments/"+first, nil, &e); st == http.StatusNotFound {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("b still has the deleted moment")
		}
		select {
		case <-events:
		case <-time.After(200 * time.Millisecond):
		}
	}
	// The SSE reader may not have read the last events yet: wait for them.
	wants := []string{"moment.posted", "moment.reaction", "moment.deleted"}
	for {
		types := map[string]bool{}
		mu.Lock()
		for _, l := range seen {
			var ev struct {
				Type   string
				Moment moments.Event
			}
			if json.Unmarshal([]byte(l), &ev) == nil && ev.Moment.Moment != "" {
				types[ev.Type] = true
			}
		}
		mu.Unlock()
		missing := slices.DeleteFunc(slices.Clone(wants), func(w string) bool { return types[w] })
		if len(missing) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("b's events %v: no %v", types, missing)
		}
		select {
		case <-events:
		case <-time.After(200 * time.Millisecond):
		}
	}
}
