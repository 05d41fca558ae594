package bootstrap

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

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
media_ip_upload_bytes_per_hour = 52428800
media_ip_upload_burst = 209715200
`), 0o600)
	c, err := LoadConfigFile(path)
	if err != nil {
		t.Fatalf("LoadConfigFile: %v", err)
	}
	if err := c.applyDefaults(); err != nil {
		t.Fatal(err)
	}
	got := [...]int64{int64(c.MomentsMaxFeeds), int64(c.MomentsFeedMaxItems), c.MomentsFeedMaxBytes, int64(c.MomentsReactionsPerMoment), c.MediaMaxBytes, c.MediaUploaderMaxBytes, int64(c.MediaUploaderMaxBlobs), c.MediaIPUploadBytesPerHour, c.MediaIPUploadBurst}
	if want := [...]int64{10, 20, 1 << 20, 30, 1 << 30, 100 << 20, 40, 50 << 20, 200 << 20}; got != want {
		t.Fatalf("moments settings %v, want %v", got, want)
	}
	d := Config{DataDir: "x"}
	if err := d.applyDefaults(); err != nil {
		t.Fatal(err)
	}
	if d.MomentsMaxFeeds != moments.DefaultMaxFeeds || d.MediaMaxBytes != blobs.DefaultRelayMaxBytes || d.MediaUploaderMaxBlobs != blobs.DefaultUploaderMaxBlobs ||
		d.MediaIPUploadBytesPerHour != blobs.DefaultIPUploadBytesPerHour || d.MediaIPUploadBurst != blobs.DefaultIPUploadBurst {
		t.Fatalf("defaults not applied: %+v", d)
	}
	for _, tc := range []struct {
		name string
		cfg  Config
		key  string
	}{
		{"tiny media budget", Config{DataDir: "x", MediaMaxBytes: 1000}, "media_max_bytes"},
		{"negative upload rate", Config{DataDir: "x", MediaIPUploadBytesPerHour: -1}, "media_ip_upload_bytes_per_hour"},
		{"upload burst below one video", Config{DataDir: "x", MediaIPUploadBurst: blobs.MaxBlobSize - 1}, "media_ip_upload_burst"},
	} {
		if _, err := New(tc.cfg); !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tc.key) {
			t.Errorf("%s: %v, want ErrConfig naming %s", tc.name, err, tc.key)
		}
	}
}

// putPhoto seals a photo (one chunk) under a fresh key and puts it on r,
// to be deleted with deleteKey.
func putPhoto(ctx context.Context, t *testing.T, bc *blobs.Client, r *Relay, deleteKey ed25519.PublicKey) {
	t.Helper()
	var key [32]byte
	_, _ = rand.Read(key[:])
	s, err := blobs.Seal(&key, []byte("a photo"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bc.Put(ctx, r.ID(), s, deleteKey); err != nil {
		t.Fatalf("Put of a photo (one chunk): %v", err)
	}
}

// TestRelayMediaIPBudget: media_ip_upload_burst reaches the blob
// service: with room for one video, one chunk first leaves too little for
// a 52 MiB video, refused (before any of its chunks) as rate limited and
// counted on /metrics.
func TestRelayMediaIPBudget(t *testing.T) {
	r := startRelay(t, Config{HTTP: "127.0.0.1:0", MediaIPUploadBurst: blobs.MaxBlobSize})
	h := clientHost(t, r)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	bc, _ := blobs.NewClient(h)
	_, dk, _ := ed25519.GenerateKey(rand.Reader)
	putPhoto(ctx, t, bc, r, dk.Public().(ed25519.PublicKey))
	// A video of the largest size; the relay refuses it on its hashes,
	// so its chunks may all be one.
	chunk := make([]byte, blobs.ChunkSize)
	video := &blobs.Sealed{Chunks: make([][]byte, blobs.MaxChunks), Hashes: make([][sha256.Size]byte, blobs.MaxChunks)}
	for i := range video.Chunks {
		video.Chunks[i], video.Hashes[i] = chunk, sha256.Sum256(chunk)
	}
	video.ID = blobs.ComputeID(video.Hashes)
	if _, err := bc.Put(ctx, r.ID(), video, dk.Public().(ed25519.PublicKey)); !errors.Is(err, blobs.ErrRateLimited) {
		t.Fatalf("Put of %d chunks after one, burst %d: got %v, want ErrRateLimited", blobs.MaxChunks, blobs.MaxBlobSize, err)
	}
	wantMetrics(t, r, "kinmesh_blobs_ip_limited_total 1", "kinmesh_blobs_stored 1")
}

// TestRelayKeepsMoments: a relay registers a feed, keeps media, and
// exports both services' metrics.
func TestRelayKeepsMoments(t *testing.T) {
	r := startRelay(t, Config{HTTP: "127.0.0.1:0"})
	h := clientHost(t, r)
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
	putPhoto(ctx, t, bc, r, owner.Public().(ed25519.PublicKey))
	wantMetrics(t, r, "kinmesh_moments_feeds 1", `kinmesh_moments_requests_total{op="register",result="ok"} 1`, "kinmesh_blobs_stored 1", "kinmesh_blobs_stored_bytes 262144")
}
