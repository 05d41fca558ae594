package bootstrap

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/peerstore"

	"github.com/kinmesh/kinmesh/protocols/blobs"
	"github.com/kinmesh/kinmesh/protocols/moments"
)

func TestMomentsConfig(t *testing.T) {
	path := filepath.Join(t.TempDir(), "relay.toml")
	os.WriteFile(path, []byte(`
data = "/var/lib/kinmesh"
moments_max_feeds = 10
moments_feed_max_items = 20
moments_feed_max_bytes = 1048576
moments_reactions_per_moment = 30
media_max_bytes = 1073741824
media_uploader_max_bytes = 104857600
media_uploader_max_blobs = 40
`), 0o600)
	c, err := LoadConfigFile(path)
	if err != nil {
		t.Fatalf("LoadConfigFile: %v", err)
	}
	if err := c.applyDefaults(); err != nil {
		t.Fatal(err)
	}
	got := [...]int64{int64(c.MomentsMaxFeeds), int64(c.MomentsFeedMaxItems), c.MomentsFeedMaxBytes, int64(c.MomentsReactionsPerMoment), c.MediaMaxBytes, c.MediaUploaderMaxBytes, int64(c.MediaUploaderMaxBlobs)}
	if want := [...]int64{10, 20, 1 << 20, 30, 1 << 30, 100 << 20, 40}; got != want {
		t.Fatalf("moments settings %v, want %v", got, want)
	}
	d := Config{DataDir: "x"}
	if err := d.applyDefaults(); err != nil {
		t.Fatal(err)
	}
	if d.MomentsMaxFeeds != moments.DefaultMaxFeeds || d.MediaMaxBytes != blobs.DefaultRelayMaxBytes || d.MediaUploaderMaxBlobs != blobs.DefaultUploaderMaxBlobs {
		t.Fatalf("defaults not applied: %+v", d)
	}
	if _, err := New(Config{DataDir: "x", MediaMaxBytes: 1000}); !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "media_max_bytes") {
		t.Fatalf("tiny media budget: %v, want ErrConfig naming it", err)
	}
}

// TestRelayKeepsMoments: a relay registers a feed, keeps media, and
// exports both services' metrics.
func TestRelayKeepsMoments(t *testing.T) {
	r := startRelay(t, Config{HTTP: "127.0.0.1:0"})
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableMetrics())
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	h.Peerstore().AddAddrs(r.ID(), r.AddrInfo().Addrs, peerstore.PermanentAddrTTL)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	mc, _ := moments.NewClient(h)
	_, owner, _ := ed25519.GenerateKey(rand.Reader)
	_, audience, _ := ed25519.GenerateKey(rand.Reader)
	topic := moments.TopicOf(audience.Public().(ed25519.PublicKey))
	if err := mc.Register(ctx, r.ID(), owner, topic, audience); err != nil {
		t.Fatalf("Register: %v", err)
	}
	if !r.MomentsRouter().Joined(topic) {
		t.Fatal("the relay did not join the registered topic")
	}
	bc, _ := blobs.NewClient(h)
	var secret [32]byte
	_, _ = rand.Read(secret[:])
	s, err := blobs.Seal(&secret, []byte("a photo"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bc.Put(ctx, r.ID(), s, owner.Public().(ed25519.PublicKey)); err != nil {
		t.Fatalf("Put: %v", err)
	}
	resp, err := http.Get("http://" + r.HTTPAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	http.DefaultClient.CloseIdleConnections()
	for _, want := range []string{"kinmesh_moments_feeds 1", `kinmesh_moments_requests_total{op="register",result="ok"} 1`, "kinmesh_blobs_stored 1", "kinmesh_blobs_stored_bytes 262144"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}
