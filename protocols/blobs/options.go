package blobs

import (
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// Defaults of the relay's limits (see the Option functions).
const (
	// DefaultUploaderMaxBytes and DefaultUploaderMaxBlobs: what one
	// uploader (peer id) may store on a relay: a family's photos and short
	// videos for years.
	DefaultUploaderMaxBytes = 2 << 30
	DefaultUploaderMaxBlobs = 20_000

	// DefaultRelayMaxBytes is the relay's disk budget for blobs.
	DefaultRelayMaxBytes = 64 << 30

	// DefaultPutsPerMinute and DefaultPutBurst: uploads and deletions one
	// peer may start.
	DefaultPutsPerMinute = 60
	DefaultPutBurst      = 60

	// DefaultGetsPerMinute and DefaultGetBurst: fetches one peer may
	// start (each fetches one blob).
	DefaultGetsPerMinute = 600
	DefaultGetBurst      = 300

	// DefaultIPUploadBytesPerHour and DefaultIPUploadBurst: chunk bytes
	// all peers connecting from one IP address (one IPv6 /64) may upload,
	// whatever their peer ids: 1 GiB at once, then 256 MiB an hour
	// (6 GiB a day). A home posting a few 50 MiB videos a day, or a
	// holiday's photos and videos at once, stays well inside it; one
	// address needs (64 GiB - 1 GiB) / 6 GiB a day, about ten and a half
	// days, to fill DefaultRelayMaxBytes (and 32 peer ids for the
	// per-uploader quota).
	DefaultIPUploadBytesPerHour = 256 << 20
	DefaultIPUploadBurst        = 1 << 30

	// DefaultMaxTracked bounds the peers (and addresses) whose rate
	// buckets the relay tracks at once.
	DefaultMaxTracked = 1 << 16
)

// Option configures NewService.
type Option func(*config) error

type config struct {
	now    func() time.Time
	logger *slog.Logger
	tracer MetricsTracer

	uploaderBytes, uploaderBlobs uint64
	relayBytes                   uint64

	putRate, putBurst float64 // per second
	getRate, getBurst float64
	ipRate, ipBurst   float64 // chunks per second, chunks
	maxTracked        int

	requestTimeout time.Duration // first frame, small operations
	chunkTimeout   time.Duration // each chunk read or written
}

func defaultConfig() config {
	return config{
		now:            time.Now,
		uploaderBytes:  DefaultUploaderMaxBytes,
		uploaderBlobs:  DefaultUploaderMaxBlobs,
		relayBytes:     DefaultRelayMaxBytes,
		putRate:        DefaultPutsPerMinute / 60.0,
		putBurst:       DefaultPutBurst,
		getRate:        DefaultGetsPerMinute / 60.0,
		getBurst:       DefaultGetBurst,
		ipRate:         DefaultIPUploadBytesPerHour / ChunkSize / 3600.0,
		ipBurst:        DefaultIPUploadBurst / ChunkSize,
		maxTracked:     DefaultMaxTracked,
		requestTimeout: 10 * time.Second,
		chunkTimeout:   30 * time.Second,
	}
}

// WithClock sets the clock of the rate limiters and of blob records.
func WithClock(now func() time.Time) Option {
	return func(c *config) error {
		if now == nil {
			return errors.New("blobs: nil clock")
		}
		c.now = now
		return nil
	}
}

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option {
	return func(c *config) error {
		if l == nil {
			return errors.New("blobs: nil logger")
		}
		c.logger = l
		return nil
	}
}

// WithMetricsTracer sets the tracer that receives the service's events
// (default none). NewMetricsTracer makes a Prometheus one.
func WithMetricsTracer(t MetricsTracer) Option {
	return func(c *config) error {
		c.tracer = t
		return nil
	}
}

// WithUploaderQuota sets how many bytes and blobs one uploader (the
// uploading connection's peer id) may store. Uploads beyond it fail with
// ErrQuota; deletions free it.
func WithUploaderQuota(bytes uint64, blobs int) Option {
	return func(c *config) error {
		if bytes < ChunkSize || blobs <= 0 {
			return fmt.Errorf("blobs: uploader quota of %d bytes and %d blobs: want at least %d bytes and 1 blob", bytes, blobs, ChunkSize)
		}
		c.uploaderBytes, c.uploaderBlobs = bytes, uint64(blobs)
		return nil
	}
}

// WithRelayBudget sets the relay's disk budget for blobs (chunk bytes, all
// uploaders together). Uploads beyond it fail with ErrRelayFull.
func WithRelayBudget(bytes uint64) Option {
	return func(c *config) error {
		if bytes < ChunkSize {
			return fmt.Errorf("blobs: relay budget of %d bytes: want at least %d", bytes, ChunkSize)
		}
		c.relayBytes = bytes
		return nil
	}
}

func rate(what string, n, burst int) error {
	if n <= 0 || burst <= 0 {
		return fmt.Errorf("blobs: %s rate %d, burst %d: want both at least 1", what, n, burst)
	}
	return nil
}

// WithPutRate sets how many uploads and deletions one peer may start per
// minute, and how many at once. Beyond it they fail with ErrRateLimited.
func WithPutRate(perMinute, burst int) Option {
	return func(c *config) error {
		if err := rate("put", perMinute, burst); err != nil {
			return err
		}
		c.putRate, c.putBurst = float64(perMinute)/60, float64(burst)
		return nil
	}
}

// WithGetRate sets how many fetches (and Has requests) one peer may start
// per minute, and how many at once.
func WithGetRate(perMinute, burst int) Option {
	return func(c *config) error {
		if err := rate("get", perMinute, burst); err != nil {
			return err
		}
		c.getRate, c.getBurst = float64(perMinute)/60, float64(burst)
		return nil
	}
}

// WithIPUploadRate sets how many chunk bytes all peers connecting from
// one IP address (one IPv6 /64; all relayed connections count as one
// address) may upload per hour together, and how many at once (defaults
// DefaultIPUploadBytesPerHour, DefaultIPUploadBurst). Peer ids cost
// nothing to make, so this, not the per-uploader quota, bounds how fast
// one address can fill the relay's budget. An upload takes its size when
// the relay accepts it, before its first chunk, and gets it back if it
// fails; uploads beyond it fail with ErrRateLimited and a retry hint. A
// blob larger than burst is always refused: keep burst at least
// MaxBlobSize. Both are counted in whole chunks (ChunkSize).
func WithIPUploadRate(bytesPerHour, burst uint64) Option {
	return func(c *config) error {
		if bytesPerHour < ChunkSize || burst < ChunkSize {
			return fmt.Errorf("blobs: IP upload rate of %d bytes an hour, burst %d: want both at least %d", bytesPerHour, burst, ChunkSize)
		}
		c.ipRate, c.ipBurst = float64(bytesPerHour)/ChunkSize/3600, float64(burst/ChunkSize)
		return nil
	}
}

// WithMaxTracked bounds how many peers (and addresses) each rate limiter
// tracks at once.
func WithMaxTracked(n int) Option {
	return func(c *config) error {
		if n <= 0 {
			return fmt.Errorf("blobs: max tracked %d: want at least 1", n)
		}
		c.maxTracked = n
		return nil
	}
}

// WithTimeouts sets how long the relay waits for a request's first frame
// (and answers small requests), and for each chunk to arrive or leave.
func WithTimeouts(request, chunk time.Duration) Option {
	return func(c *config) error {
		if request <= 0 || chunk <= 0 {
			return errors.New("blobs: timeouts must be positive")
		}
		c.requestTimeout, c.chunkTimeout = request, chunk
		return nil
	}
}

// ClientOption configures NewClient.
type ClientOption func(*clientConfig) error

type clientConfig struct {
	dialTimeout    time.Duration
	requestTimeout time.Duration
	chunkTimeout   time.Duration
	logger         *slog.Logger
}

func defaultClientConfig() clientConfig {
	return clientConfig{dialTimeout: 10 * time.Second, requestTimeout: 30 * time.Second, chunkTimeout: 30 * time.Second}
}

// WithDialTimeout bounds connecting to a relay and opening a stream.
func WithDialTimeout(d time.Duration) ClientOption {
	return func(c *clientConfig) error {
		if d <= 0 {
			return errors.New("blobs: dial timeout must be positive")
		}
		c.dialTimeout = d
		return nil
	}
}

// WithRequestTimeout bounds a request's small frames (the request and the
// relay's answers); WithChunkTimeout each chunk sent or received.
func WithRequestTimeout(d time.Duration) ClientOption {
	return func(c *clientConfig) error {
		if d <= 0 {
			return errors.New("blobs: request timeout must be positive")
		}
		c.requestTimeout = d
		return nil
	}
}

// WithChunkTimeout bounds sending or receiving one chunk.
func WithChunkTimeout(d time.Duration) ClientOption {
	return func(c *clientConfig) error {
		if d <= 0 {
			return errors.New("blobs: chunk timeout must be positive")
		}
		c.chunkTimeout = d
		return nil
	}
}

// WithClientLogger sets the client's logger (default slog.Default()).
func WithClientLogger(l *slog.Logger) ClientOption {
	return func(c *clientConfig) error {
		if l == nil {
			return errors.New("blobs: nil logger")
		}
		c.logger = l
		return nil
	}
}
