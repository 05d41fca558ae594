//go:build linux

package storage

import (
	"os"

	"golang.org/x/sys/unix"
)

// datasync flushes f's data to the disk, and its metadata only as far as
// reading the data back needs it (fdatasync: not the times Badger's
// writes through a mapping touch).
func datasync(f *os.File) error {
	for {
		err := unix.Fdatasync(int(f.Fd()))
		if err != unix.EINTR {
			return err
		}
	}
}
