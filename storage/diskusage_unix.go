//go:build unix

package storage

import (
	"io/fs"
	"syscall"
)

// allocatedSize returns the bytes a file occupies on disk: Badger's
// preallocated, sparse log files are much larger than their data.
func allocatedSize(fi fs.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return uint64(st.Blocks) * 512
	}
	return uint64(fi.Size())
}
