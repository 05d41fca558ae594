//go:build !linux

package storage

import "os"

// datasync flushes f to the disk (fsync where fdatasync isn't at hand).
func datasync(f *os.File) error { return f.Sync() }
