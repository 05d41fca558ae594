//go:build unix

package storage

import (
	"fmt"
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

// freeSpace returns the bytes available to unprivileged users on the file
// system holding dir.
func freeSpace(dir string) (uint64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, fmt.Errorf("storage: statfs %s: %w", dir, err)
	}
	return st.Bavail * uint64(st.Bsize), nil
}
