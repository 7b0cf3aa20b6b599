//go:build !unix

package keys

// lockDir is a no-op where flock is unavailable: one process per key-ring directory.
func lockDir(dir string) (func(), error) { return func() {}, nil }
