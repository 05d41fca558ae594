package bootstrap

import (
	"fmt"

	"github.com/kinmesh/kinmesh/protocols/prekeys"
)

// The prekey service (/kinmesh/prekeys/1.0.0): every relay keeps the
// prekeys of the accounts that use it as a home relay, in the "prekeys"
// namespace of its store. Its limits are the Prekey* fields of Config.

// applyPrekeyDefaults fills the Prekey* fields of c.
func (c *Config) applyPrekeyDefaults() error {
	for _, f := range []struct {
		name string
		p    *int
		def  int
	}{
		{"prekey_fetches_per_minute", &c.PrekeyFetchesPerMinute, prekeys.DefaultFetchesPerMinute},
		{"prekey_fetch_burst", &c.PrekeyFetchBurst, prekeys.DefaultFetchBurst},
		{"prekey_one_time_per_hour", &c.PrekeyOneTimePerHour, prekeys.DefaultOneTimePerHour},
		{"prekey_one_time_burst", &c.PrekeyOneTimeBurst, prekeys.DefaultOneTimeBurst},
		{"prekey_owner_ops_per_minute", &c.PrekeyOwnerOpsPerMinute, prekeys.DefaultOwnerOpsPerMinute},
		{"prekey_owner_burst", &c.PrekeyOwnerBurst, prekeys.DefaultOwnerBurst},
		{"prekey_max_accounts", &c.PrekeyMaxAccounts, prekeys.DefaultMaxAccounts},
	} {
		if *f.p < 0 {
			return fmt.Errorf("%w: %s must be positive, got %d", ErrConfig, f.name, *f.p)
		}
		if *f.p == 0 {
			*f.p = f.def
		}
	}
	return nil
}

// startPrekeys starts the prekey service on the relay's host and store.
func (r *Relay) startPrekeys() error {
	svc, err := prekeys.NewService(r.host, r.store,
		prekeys.WithClock(r.cfg.Now),
		prekeys.WithLogger(r.log),
		prekeys.WithMetricsTracer(prekeys.NewMetricsTracer(r.cfg.Registry)),
		prekeys.WithFetchRate(r.cfg.PrekeyFetchesPerMinute, r.cfg.PrekeyFetchBurst),
		prekeys.WithOneTimeRate(r.cfg.PrekeyOneTimePerHour, r.cfg.PrekeyOneTimeBurst),
		prekeys.WithOwnerRate(r.cfg.PrekeyOwnerOpsPerMinute, r.cfg.PrekeyOwnerBurst),
		prekeys.WithMaxAccounts(r.cfg.PrekeyMaxAccounts),
	)
	if err != nil {
		return fmt.Errorf("start prekey service: %w", err)
	}
	r.prekeys = svc
	return nil
}

// Prekeys returns the relay's prekey service (nil before Start).
func (r *Relay) Prekeys() *prekeys.Service { return r.prekeys }
