package presence

// withoutFirstRound keeps the loop from beaconing when it starts, so a
// test's devices don't dial each other at the same moment (TCP
// simultaneous open fails the Noise/TLS handshake on loopback).
func withoutFirstRound() Option {
	return func(c *config) error {
		c.skipFirst = true
		return nil
	}
}
