//go:build !linux

package main

// trimStartupPages does nothing outside Linux.
func trimStartupPages() (int64, error) { return 0, nil }
