//go:build !unix

package storage

import (
	"errors"
	"io/fs"
)

// allocatedSize returns the file's size.
func allocatedSize(fi fs.FileInfo) uint64 { return uint64(fi.Size()) }

// freeSpace is unknown here.
func freeSpace(string) (uint64, error) {
	return 0, errors.New("storage: free space unknown on this platform")
}
