package calls

import (
	"sync"

	"github.com/pion/transport/v5"
	"github.com/pion/webrtc/v4"
)

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

// pauseLoop stops the call's loop (it is running a test event when
// pauseLoop returns) until release is called; events wait meanwhile, as
// they do when the loop is slow to get to them. ok is false if the call
// has ended.
func (c *Call) pauseLoop() (release func(), ok bool) {
	held, rel := make(chan struct{}), make(chan struct{})
	if !c.post(event{kind: evTest, fn: func() { close(held); <-rel }}) {
		return nil, false
	}
	var once sync.Once
	release = func() { once.Do(func() { close(rel) }) }
	select {
	case <-held:
		return release, true
	case <-c.done:
		release()
		return nil, false
	}
}

// peerState is the state of the call's peer connection (new before it
// has one).
func (c *Call) peerState() webrtc.PeerConnectionState {
	c.mu.Lock()
	pc := c.pcRef
	c.mu.Unlock()
	if pc == nil {
		return webrtc.PeerConnectionStateNew
	}
	return pc.ConnectionState()
}

// refreshedStats are the statistics of the loop's last refresh.
func (c *Call) refreshedStats() *Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.info.Stats
}

// withAfterInvite makes dial call f once an invite is written, before it
// hands the stream to the call's loop.
func withAfterInvite(f func()) Option {
	return func(c *config) error {
		c.afterInvite = f
		return nil
	}
}
