package discovery

import "github.com/cloudflare/circl/oprf"

// Test hooks (see STYLE.md: never mutable package variables).

// withRequestRecorder hands fn every frame the relay reads from a client,
// as received: the privacy tests check what a relay ever gets to see.
func withRequestRecorder(fn func(frame []byte)) Option {
	return func(c *config) error {
		c.recordRequest = fn
		return nil
	}
}

// withKey makes the relay use k (not stored) as its OPRF key.
func withKey(k *oprf.PrivateKey) Option {
	return func(c *config) error {
		c.key = k
		return nil
	}
}

// withEvaluationKey makes the relay evaluate with k while it advertises
// (and builds its directory with) its own key: a relay singling its
// requesters out, which clients must detect.
func withEvaluationKey(k *oprf.PrivateKey) Option {
	return func(c *config) error {
		c.evalKey = k
		return nil
	}
}
