package message

import (
	"maps"
	"slices"
	"sync"

	"github.com/kinmesh/kinmesh/protocols/e2ee"
)

// maxCachedMessages bounds the message cache (a few hundred bytes each).
const maxCachedMessages = 16384

// msgCache keeps the latest committed copy of recently written outgoing
// messages that may still get receipts, so applying a receipt costs no
// store reads: a burst's 10,000 delivery receipts would otherwise read
// 20,000 sealed values back (index and message). Every message write goes
// through tx.flush under the engine's lock, which keeps it current; the
// oldest entries go first when it is full.
type msgCache struct {
	mu    sync.Mutex
	m     map[string]*Message
	order []string // insertion order, for eviction; may hold stale ids
}

// get returns a copy of the cached message with id.
func (c *msgCache) get(id string) (*Message, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m, ok := c.m[id]
	if !ok {
		return nil, false
	}
	return cloneMessage(m), true
}

// put records committed messages: outgoing ones not yet read are kept
// (a copy), the rest dropped.
func (c *msgCache) put(msgs map[string]*Message) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string]*Message{}
	}
	for id, m := range msgs {
		if m.Incoming || m.State == StateRead {
			delete(c.m, id)
			continue
		}
		if _, ok := c.m[id]; !ok {
			c.order = append(c.order, id)
		}
		c.m[id] = cloneMessage(m)
	}
	for len(c.m) > maxCachedMessages {
		delete(c.m, c.order[0])
		c.order = c.order[1:]
	}
	if len(c.order) > 2*maxCachedMessages {
		// Drop ids that left the map.
		c.order = slices.DeleteFunc(c.order, func(id string) bool { _, ok := c.m[id]; return !ok })
	}
}

func cloneMessage(m *Message) *Message {
	c := *m
	c.Recipients = maps.Clone(m.Recipients)
	return &c
}

// maxCachedSessions bounds the session cache, in peers.
const maxCachedSessions = 1024

// sessionCache keeps the latest committed ratchet sessions of recent
// peers, decoded, so a transaction doesn't read, unseal and parse them
// again (parsing derives each ratchet's public key: a scalar
// multiplication). Sessions are immutable (Encrypt and Decrypt return the
// next one), so entries are shared, not copied. Like the message cache it
// is written under the engine's lock: by tx.flush once a batch is
// committed, and by tx.Sessions with what it read from the store.
//
// It also remembers, for each cached peer's sessions, the write generation
// (syncer) of the commit that last wrote each one (by session ID), so a
// message encrypted within a session's reservation (e2ee.SendReserve) can
// leave once that write is on disk.
type sessionCache struct {
	mu      sync.Mutex
	m       map[e2ee.AccountID][]*e2ee.Session
	written map[e2ee.AccountID]map[string]uint64
}

// wrote records that the commit of generation gen wrote a's session id.
func (c *sessionCache) wrote(a e2ee.AccountID, id string, gen uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.written == nil {
		c.written = map[e2ee.AccountID]map[string]uint64{}
	}
	if c.written[a] == nil {
		c.written[a] = map[string]uint64{}
	}
	c.written[a][id] = gen
}

// writtenAt returns the generation of the last write of a's session id
// that wrote() recorded.
func (c *sessionCache) writtenAt(a e2ee.AccountID, id string) (uint64, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	gen, ok := c.written[a][id]
	return gen, ok
}

func (c *sessionCache) get(a e2ee.AccountID) ([]*e2ee.Session, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ss, ok := c.m[a]
	return ss, ok
}

func (c *sessionCache) put(a e2ee.AccountID, ss []*e2ee.Session) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[e2ee.AccountID][]*e2ee.Session{}
	}
	if _, ok := c.m[a]; !ok && len(c.m) >= maxCachedSessions {
		for k := range c.m { // any one: peers are few on a family device
			delete(c.m, k)
			delete(c.written, k)
			break
		}
	}
	c.m[a] = slices.Clone(ss)
}
