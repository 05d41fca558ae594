//go:build !linux

package storage

// canTrim: trimMappings does nothing here, so no trim loop runs.
const canTrim = false

// trimMappings does nothing outside Linux (see trim.go).
func trimMappings(dir string, buf []byte) (int64, []byte, error) { return 0, buf, nil }
