package bootstrap

import (
	"errors"
	"fmt"

	"github.com/kinmesh/kinmesh/protocols/blobs"
	"github.com/kinmesh/kinmesh/protocols/moments"
)

// Moments and their media: every relay runs gossipsub (moments' router),
// keeps the feeds its accounts register (/kinmesh/moments/1.0.0) in the
// "moments" namespace, and their encrypted media (/kinmesh/blobs/1.0.0)
// in the "blobs" namespace. Limits are the Moments* and Media* fields of
// Config.

// relayMoments are the relay's moments services.
type relayMoments struct {
	router *moments.Router
	blobs  *blobs.Service
	keep   *moments.Service
}

// applyMomentsDefaults fills the Moments* and Media* fields of c.
func (c *Config) applyMomentsDefaults() error {
	for _, f := range []struct {
		name string
		p    *int
		def  int
	}{
		{"moments_max_feeds", &c.MomentsMaxFeeds, moments.DefaultMaxFeeds},
		{"moments_feed_max_items", &c.MomentsFeedMaxItems, moments.DefaultFeedMaxItems},
		{"moments_reactions_per_moment", &c.MomentsReactionsPerMoment, moments.DefaultReactionsPerMoment},
		{"media_uploader_max_blobs", &c.MediaUploaderMaxBlobs, blobs.DefaultUploaderMaxBlobs},
	} {
		if *f.p < 0 {
			return fmt.Errorf("%w: %s must be positive, got %d", ErrConfig, f.name, *f.p)
		}
		if *f.p == 0 {
			*f.p = f.def
		}
	}
	for _, f := range []struct {
		name     string
		p        *int64
		def, min int64
	}{
		{"moments_feed_max_bytes", &c.MomentsFeedMaxBytes, moments.DefaultFeedMaxBytes, moments.MaxFrameSize},
		{"media_max_bytes", &c.MediaMaxBytes, blobs.DefaultRelayMaxBytes, blobs.MaxBlobSize},
		{"media_uploader_max_bytes", &c.MediaUploaderMaxBytes, blobs.DefaultUploaderMaxBytes, blobs.MaxBlobSize},
		{"media_ip_upload_bytes_per_hour", &c.MediaIPUploadBytesPerHour, blobs.DefaultIPUploadBytesPerHour, blobs.ChunkSize},
		{"media_ip_upload_burst", &c.MediaIPUploadBurst, blobs.DefaultIPUploadBurst, blobs.MaxBlobSize},
	} {
		if *f.p == 0 {
			*f.p = f.def
		}
		if *f.p < f.min {
			return fmt.Errorf("%w: %s must be at least %d, got %d", ErrConfig, f.name, f.min, *f.p)
		}
	}
	return nil
}

// startMoments starts gossipsub, the blob store and the moments keeper.
func (r *Relay) startMoments() error {
	tracer := moments.NewMetricsTracer(r.cfg.Registry)
	m := &relayMoments{}
	r.moments = m
	var err error
	m.router, err = moments.NewRouter(r.host, moments.WithRouterLogger(r.log), moments.WithRouterMetrics(tracer))
	if err != nil {
		return fmt.Errorf("start moments router: %w", err)
	}
	m.blobs, err = blobs.NewService(r.host, r.store,
		blobs.WithClock(r.cfg.Now),
		blobs.WithLogger(r.log),
		blobs.WithMetricsTracer(blobs.NewMetricsTracer(r.cfg.Registry)),
		blobs.WithRelayBudget(uint64(r.cfg.MediaMaxBytes)),
		blobs.WithUploaderQuota(uint64(r.cfg.MediaUploaderMaxBytes), r.cfg.MediaUploaderMaxBlobs),
		blobs.WithIPUploadRate(uint64(r.cfg.MediaIPUploadBytesPerHour), uint64(r.cfg.MediaIPUploadBurst)),
	)
	if err != nil {
		return fmt.Errorf("start media service: %w", err)
	}
	m.keep, err = moments.NewService(r.host, r.store, m.router, m.blobs,
		moments.WithClock(r.cfg.Now),
		moments.WithLogger(r.log),
		moments.WithMetricsTracer(tracer),
		moments.WithFeedQuota(r.cfg.MomentsMaxFeeds, uint64(r.cfg.MomentsFeedMaxItems), uint64(r.cfg.MomentsFeedMaxBytes)),
		moments.WithReactionsPerMoment(r.cfg.MomentsReactionsPerMoment),
	)
	if err != nil {
		return fmt.Errorf("start moments service: %w", err)
	}
	return nil
}

// closeMoments stops what startMoments started, keeper first.
func (r *Relay) closeMoments() error {
	m := r.moments
	if m == nil {
		return nil
	}
	var errs []error
	if m.keep != nil {
		errs = append(errs, m.keep.Close())
	}
	if m.blobs != nil {
		errs = append(errs, m.blobs.Close())
	}
	if m.router != nil {
		errs = append(errs, m.router.Close())
	}
	return errors.Join(errs...)
}

// Moments returns the relay's moments keeper (nil before Start).
func (r *Relay) Moments() *moments.Service {
	if r.moments == nil {
		return nil
	}
	return r.moments.keep
}

// Blobs returns the relay's media store (nil before Start).
func (r *Relay) Blobs() *blobs.Service {
	if r.moments == nil {
		return nil
	}
	return r.moments.blobs
}

// MomentsRouter returns the relay's gossipsub router for moments (nil
// before Start).
func (r *Relay) MomentsRouter() *moments.Router {
	if r.moments == nil {
		return nil
	}
	return r.moments.router
}
