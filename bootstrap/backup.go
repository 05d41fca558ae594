package bootstrap

import (
	"fmt"

	"github.com/kinmesh/kinmesh/protocols/backup"
)

// Account recovery backups (/kinmesh/backup/1.0.0,
// docs/protocol/recovery.md): every relay keeps accounts' sealed backups
// under their verified phone numbers, in the "backup" namespace of its
// store, and hands one to a new device that proves the number again with
// a code from the discovery service. It needs the discovery service (the
// phone links): start it after, close it before.

// startBackup starts the backup service on the relay's host and store.
func (r *Relay) startBackup() error {
	svc, err := backup.NewService(r.host, r.store, r.discovery,
		backup.WithClock(r.cfg.Now),
		backup.WithLogger(r.log),
		backup.WithMetricsTracer(backup.NewMetricsTracer(r.cfg.Registry)),
	)
	if err != nil {
		return fmt.Errorf("start backup service: %w", err)
	}
	r.backup = svc
	return nil
}

// Backup returns the relay's backup service (nil before Start).
func (r *Relay) Backup() *backup.Service { return r.backup }
