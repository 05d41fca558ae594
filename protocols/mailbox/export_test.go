package mailbox

// Test hooks (see STYLE.md: never mutable package variables).

// withGroupCost overrides the estimated transaction size at which the
// committer stops adding requests to a group, so tests can make groups
// too large for one Badger transaction.
func withGroupCost(n int) Option {
	return func(c *config) error {
		c.groupCost = n
		return nil
	}
}
