//go:build !unix

package storage

import "io/fs"

// allocatedSize returns the file's size.
func allocatedSize(fi fs.FileInfo) uint64 { return uint64(fi.Size()) }
