//go:build !linux

package storage

// canTrim: trimMappings does nothing here, so no trim loop runs.
const canTrim = false

// trimMappings does nothing outside Linux (see trim.go).
func trimMappings(dir string, sc *trimScratch, keep int64) (int64, error) { return 0, nil }

type trimScratch struct{}
