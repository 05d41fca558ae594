package node

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// TokenFile is the name of the API token file in the data directory.
const TokenFile = "api.token"

// AddrFile is the name of the file in the data directory holding the
// running API's host:port, so client verbs find the daemon. It is removed
// when the node closes.
const AddrFile = "api.addr"

// maxRequestBody caps every API request body.
const maxRequestBody = 1 << 20

// apiServer is the local HTTP API (docs/api.md): JSON in and out, errors
// as {"error":{"code","message"}}, every request authenticated with
// "Authorization: Bearer <token>" where the token is DataDir/api.token.
type apiServer struct {
	n     *Node
	token []byte
	ln    net.Listener
	srv   *http.Server
	// addrPath is DataDir/api.addr.
	addrPath string
	// done is closed when the server shuts down, ending event streams.
	done chan struct{}
	wg   sync.WaitGroup
}

func startAPI(n *Node, addr string) (*apiServer, error) {
	token, err := loadOrCreateToken(filepath.Join(n.cfg.DataDir, TokenFile))
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("local API on %s: %w (is the port in use? pick another with --api)", addr, err)
	}
	addrPath := filepath.Join(n.cfg.DataDir, AddrFile)
	if err := os.WriteFile(addrPath, []byte(ln.Addr().String()+"\n"), 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("write %s: %w", addrPath, err)
	}
	a := &apiServer{n: n, token: token, ln: ln, addrPath: addrPath, done: make(chan struct{})}
	a.srv = &http.Server{
		Handler:           a.routes(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		MaxHeaderBytes:    16 << 10,
		BaseContext:       func(net.Listener) context.Context { return context.Background() },
	}
	a.wg.Go(func() {
		if err := a.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			n.log.Error("local API stopped", "err", err)
		}
	})
	return a, nil
}

func (a *apiServer) close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	close(a.done)
	err := a.srv.Shutdown(ctx)
	a.wg.Wait()
	if rmErr := os.Remove(a.addrPath); rmErr != nil && !errors.Is(rmErr, os.ErrNotExist) {
		err = errors.Join(err, rmErr)
	}
	return err
}

// APIAddr returns the host:port the local API listens on, or "" when off.
func (n *Node) APIAddr() string {
	if n.api == nil {
		return ""
	}
	return n.api.ln.Addr().String()
}

// loadOrCreateToken reads the API token, creating a random one (0600) on
// first start. The same token stays valid across restarts.
func loadOrCreateToken(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		tok := []byte(strings.TrimSpace(string(b)))
		if len(tok) < 32 {
			return nil, fmt.Errorf("API token %s is too short; delete it to make a new one", path)
		}
		return tok, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("read API token: %w", err)
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return nil, err
	}
	tok := []byte(hex.EncodeToString(raw))
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(tok, '\n'), 0o600); err != nil {
		return nil, fmt.Errorf("write API token: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return nil, fmt.Errorf("write API token: %w", err)
	}
	return tok, nil
}

func (a *apiServer) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/node", a.getNode)
	a.v1Routes(mux)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "not_found", "no such endpoint: "+r.Method+" "+r.URL.Path+" (see docs/api.md)")
	})
	return a.auth(mux)
}

// auth checks the bearer token on every request.
func (a *apiServer) auth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(got), a.token) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="kinmesh"`)
			writeError(w, http.StatusUnauthorized, "unauthorized", "missing or wrong bearer token; it is in the node's data directory, file "+TokenFile)
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, requestBodyLimit(r)) // api_moments.go
		next.ServeHTTP(w, r)
	})
}

func (a *apiServer) getNode(w http.ResponseWriter, _ *http.Request) {
	st := a.n.Status()
	if st.Relays == nil {
		st.Relays = []RelayStatus{}
	}
	writeJSON(w, http.StatusOK, st)
}

// apiError is the body of every error response.
type apiError struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	var e apiError
	e.Error.Code, e.Error.Message = code, msg
	writeJSON(w, status, e)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
