package calls

import "github.com/pion/transport/v5"

// inLoop runs f in the call's loop (so it may touch the loop's state) and
// waits for it; false if the call has ended.
func (c *Call) inLoop(f func()) bool {
	done := make(chan struct{})
	if !c.post(event{kind: evTest, fn: func() { f(); close(done) }}) {
		return false
	}
	select {
	case <-done:
		return true
	case <-c.done:
		return false
	}
}

// restartICE makes the caller restart ICE now.
func (c *Call) restartICE() { c.inLoop(c.restart) }

// breakSignalling resets the call's signalling stream.
func (c *Call) breakSignalling() {
	c.inLoop(func() {
		if c.sig != nil {
			c.sig.reset()
		}
	})
}

// withNet makes the service's peer connections use n for their sockets
// (a network tests can cut).
func withNet(n transport.Net) Option {
	return func(c *config) error {
		c.net = n
		return nil
	}
}
