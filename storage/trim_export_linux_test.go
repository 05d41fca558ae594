package storage

// SharedMappingIn exports sharedMappingIn (trim_linux.go).
func SharedMappingIn(line, dir string) (start, end uintptr, ok bool) {
	return sharedMappingIn([]byte(line), dir)
}
