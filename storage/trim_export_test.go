package storage

// Test hooks for trimming (trim.go).

// TrimNow drops the store's mapped pages from the process now and returns
// the bytes of the mappings advised (0 outside Linux).
func TrimNow(s *Store) (int64, error) { return s.trim(0) }

// TrimKeeping is TrimNow leaving the last keep bytes written to the
// newest value log mapped, as the trim loop does while writes go on.
func TrimKeeping(s *Store, keep int64) (int64, error) { return s.trim(keep) }

// Trims returns how many trims the store's trim loop has done.
func Trims(s *Store) int64 { return s.trims.Load() }
