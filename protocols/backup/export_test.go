package backup

// Test hooks (see STYLE.md: never mutable package variables).

// withRequestRecorder hands fn every frame the relay reads from a client,
// as received: the privacy tests check what a relay ever gets to see.
func withRequestRecorder(fn func(frame []byte)) Option {
	return func(c *config) error {
		c.recordRequest = fn
		return nil
	}
}
