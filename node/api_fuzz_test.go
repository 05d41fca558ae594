package node

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// fuzzRoutes are the API's endpoints the fuzzer calls, {id} and {cid}
// filled from the input. Left out: DELETE /v1/account (it wipes the node
// the fuzzer works on), GET /v1/events (it streams until the client
// leaves) and the recovery endpoints that replace the account.
var fuzzRoutes = []string{
	"GET /v1/node", "GET /v1/node/peers", "GET /v1/policy", "POST /v1/policy/accept",
	"GET /v1/settings", "POST /v1/settings", "GET /v1/settings/presence", "POST /v1/settings/presence",
	"POST /v1/account", "GET /v1/account", "GET /v1/account/photo", "PUT /v1/account/photo",
	"DELETE /v1/account/photo", "GET /v1/export", "GET /v1/invite",
	"POST /v1/contacts", "GET /v1/contacts", "DELETE /v1/contacts/{id}", "GET /v1/contacts/{id}/photo",
	"POST /v1/messages", "GET /v1/messages", "POST /v1/read",
	"POST /v1/groups", "GET /v1/groups", "PATCH /v1/groups/{id}", "POST /v1/groups/{id}/members",
	"POST /v1/groups/{id}/leave",
	"POST /v1/blocks", "GET /v1/blocks", "DELETE /v1/blocks/{id}",
	"POST /v1/location", "GET /v1/locations", "GET /v1/presence", "POST /v1/presence/announce",
	"POST /v1/reports", "POST /v1/feedback", "GET /v1/diagnostics",
	"POST /v1/phone", "GET /v1/phone", "POST /v1/phone/verify", "DELETE /v1/phone", "POST /v1/discovery",
	"POST /v1/calls", "GET /v1/calls", "GET /v1/calls/settings", "POST /v1/calls/settings",
	"GET /v1/calls/{id}", "POST /v1/calls/{id}/accept", "DELETE /v1/calls/{id}",
	"GET /v1/recovery", "POST /v1/recovery", "POST /v1/recovery/backup", "DELETE /v1/recovery",
	"POST /v1/moments", "GET /v1/moments", "GET /v1/moments/audience", "POST /v1/moments/audience",
	"GET /v1/moments/{id}", "DELETE /v1/moments/{id}", "GET /v1/moments/{id}/media/{cid}",
	"POST /v1/moments/{id}/likes", "DELETE /v1/moments/{id}/likes",
	"POST /v1/moments/{id}/comments", "DELETE /v1/moments/{id}/comments/{cid}",
	"GET /v1/nothing/here",
}

// FuzzAPI sends any body to any endpoint of a node with an account, one
// contact (another node, on loopback) and no relays, through the same
// handler (token check and body cap) the daemon serves. Whatever the
// input: no panic, an answer within the request's deadline, and every
// error in the API's error JSON with a code docs/api.md lists. A 500 is
// allowed only when the node can't reach a relay, which this node never
// can.
func FuzzAPI(f *testing.F) {
	var nodes []*Node
	for _, name := range []string{"Ana", "Bo"} {
		n := startNode(f, Config{DataDir: filepath.Join(f.TempDir(), name)})
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_, err := n.CreateAccount(ctx, NewAccount{Name: name, BirthDate: "1980-05-01", AcceptPolicy: PolicyVersion})
		cancel()
		if err != nil {
			f.Fatalf("CreateAccount: %v", err)
		}
		nodes = append(nodes, n)
	}
	n, bo := nodes[0], nodes[1]
	addFrom(f, n, bo)
	addFrom(f, bo, n)
	a := &apiServer{n: n, token: []byte("fuzz")}
	h := a.routes()
	codes := apiErrorCodes(f)

	acct, err := bo.Account()
	if err != nil {
		f.Fatal(err)
	}
	id := acct.ID
	bodies := []string{"", "{}", "null", "[]",
		`{"to":"` + id + `","text":"hi"}`, `{"name":"Family","members":["` + id + `"]}`,
		`{"add":["` + id + `"],"remove":[]}`, `{"contact":"` + id + `"}`, `{"with":"` + id + `"}`,
		`{"to":["` + id + `"],"lat":38.7,"lon":-9.1,"minutes":15}`}
	for i := range fuzzRoutes {
		for _, body := range bodies {
			f.Add(uint8(i), id, "0", []byte(body))
		}
		f.Add(uint8(i), "k1", "0", []byte("{}"))
	}
	f.Fuzz(func(t *testing.T, route uint8, id, cid string, body []byte) {
		method, path, _ := strings.Cut(fuzzRoutes[int(route)%len(fuzzRoutes)], " ")
		path = strings.NewReplacer("{id}", escapeSegment(id), "{cid}", escapeSegment(cid)).Replace(path)
		rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		req := httptest.NewRequestWithContext(rctx, method, path, bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer fuzz")
		rec := httptest.NewRecorder()
		start := time.Now()
		h.ServeHTTP(rec, req)
		if d := time.Since(start); d > 10*time.Second {
			t.Fatalf("%s %s took %v", method, path, d)
		}
		if rec.Code < 400 {
			return
		}
		var e apiError
		if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.Error.Code == "" {
			t.Fatalf("%s %s: %d with body %q: not the error JSON", method, path, rec.Code, rec.Body)
		}
		if !codes[e.Error.Code] {
			t.Fatalf("%s %s: code %q is not in docs/api.md", method, path, e.Error.Code)
		}
		if rec.Code >= 500 && rec.Code != http.StatusServiceUnavailable && !strings.Contains(e.Error.Message, "relay") {
			t.Fatalf("%s %s %q: %d %s", method, path, body, rec.Code, rec.Body)
		}
	})
}

// escapeSegment makes s one path segment (an empty one would change the
// route).
func escapeSegment(s string) string {
	if s == "" {
		return "x"
	}
	return url.PathEscape(s)
}

// apiErrorCodes reads the error codes docs/api.md lists, in backticks
// before their status: in tables ("| `code` | 404 |") and in the text
// ("`code` (404").
func apiErrorCodes(tb testing.TB) map[string]bool {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join("..", "docs", "api.md"))
	if err != nil {
		tb.Fatal(err)
	}
	codes := map[string]bool{}
	for _, m := range regexp.MustCompile("`([a-z_]+)` (?:\\| |\\()[0-9]{3}\\b").FindAllSubmatch(b, -1) {
		codes[string(m[1])] = true
	}
	if len(codes) < 20 {
		tb.Fatalf("docs/api.md lists %d error codes: the table format changed?", len(codes))
	}
	return codes
}
