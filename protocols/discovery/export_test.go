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

// withBeforePage has the relay call fn as it answers a list, after it
// read its floor and before it reads the page from its log: a test runs a
// compaction there.
func withBeforePage(fn func()) Option {
	return func(c *config) error {
		c.beforePage = fn
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

// withSyncPages makes Sync stop after n pages instead of MaxSyncPages.
func withSyncPages(n int) ClientOption {
	return func(c *clientConfig) error {
		c.syncPages = n
		return nil
	}
}

// withPageEntries makes Sync ask for pages of n entries instead of
// MaxPageEntries: a listing of a few entries takes several pages.
func withPageEntries(n int) ClientOption {
	return func(c *clientConfig) error {
		c.pageEntries = n
		return nil
	}
}

// newCappedDirectory returns an empty copy with caps of its own instead
// of MaxCopyEntries and MaxCopyBytes.
func newCappedDirectory(pk PublicKey, entries int, bytes int64) *Directory {
	d := NewDirectory(pk)
	d.maxEntries, d.maxBytes = entries, bytes
	return d
}
