package storage

// Test hooks for trimming (trim.go).

// TrimNow drops the store's mapped pages from the process now and returns
// the bytes of the mappings advised (0 outside Linux).
func TrimNow(s *Store) (int64, error) { return s.trim() }

// Trims returns how many trims the store's trim loop has done.
func Trims(s *Store) int64 { return s.trims.Load() }
