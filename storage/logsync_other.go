//go:build !unix

package storage

import (
	"os"
	"path/filepath"
)

// existsIn reports whether dir holds name.
func existsIn(dir *os.File, name string) (bool, error) {
	_, err := os.Lstat(filepath.Join(dir.Name(), name))
	if os.IsNotExist(err) {
		return false, nil
	}
	return err == nil, err
}
