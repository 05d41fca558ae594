package node

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/storage"
)

// Blocking is local: nothing is sent to the blocked account or its relays.
// Messages, group messages, calls, moments and presence from it are
// dropped on this device; nothing is sent to it (1:1 sends are refused,
// group sends skip it). The list is exported with the account.

// Block is one blocked account.
type Block struct {
	Contact   string    `json:"contact"`
	BlockedAt time.Time `json:"blocked_at"`
}

// blockList is kept with the contact book, in the "blocks" namespace.
type blockList struct {
	ns *storage.Namespace
	m  map[e2ee.AccountID]Block
}

func loadBlocks(ctx context.Context, ns *storage.Namespace) (*blockList, error) {
	l := &blockList{ns: ns, m: map[e2ee.AccountID]Block{}}
	err := ns.List(ctx, storage.ListOptions{}, func(_ string, v []byte) error {
		var b Block
		if err := json.Unmarshal(v, &b); err != nil {
			return err
		}
		l.m[e2ee.AccountID(b.Contact)] = b
		return nil
	})
	return l, err
}

// BlockContact blocks an account (a contact or anyone who wrote).
func (n *Node) BlockContact(ctx context.Context, id string) (*Block, error) {
	acct, err := e2ee.ParseAccountID(id)
	if err != nil {
		return nil, fmt.Errorf("%w: %q is not an account id", ErrUnknownContact, id)
	}
	book, err := n.contactBook()
	if err != nil {
		return nil, err
	}
	if acct == book.me {
		return nil, fmt.Errorf("%w: you can't block yourself", ErrUnknownContact)
	}
	b := Block{Contact: id, BlockedAt: n.cfg.Now()}
	v, err := json.Marshal(b)
	if err != nil {
		return nil, err
	}
	book.mu.Lock()
	defer book.mu.Unlock()
	if old, ok := book.blocks.m[acct]; ok {
		return &old, nil
	}
	if err := book.blocks.ns.Put(ctx, book.blocks.ns.Opaque([]byte(id)), v); err != nil {
		return nil, err
	}
	book.blocks.m[acct] = b
	n.momentsAudienceChanged() // out of the moments audience at once
	return &b, nil
}

// UnblockContact lifts a block.
func (n *Node) UnblockContact(ctx context.Context, id string) error {
	book, err := n.contactBook()
	if err != nil {
		return err
	}
	book.mu.Lock()
	defer book.mu.Unlock()
	if _, ok := book.blocks.m[e2ee.AccountID(id)]; !ok {
		return fmt.Errorf("%w: %s is not blocked", ErrUnknownContact, id)
	}
	if err := book.blocks.ns.Delete(ctx, book.blocks.ns.Opaque([]byte(id))); err != nil {
		return err
	}
	delete(book.blocks.m, e2ee.AccountID(id))
	n.momentsAudienceChanged()
	return nil
}

// Blocks lists blocked accounts, oldest first.
func (n *Node) Blocks() ([]Block, error) {
	book, err := n.contactBook()
	if err != nil {
		return nil, err
	}
	book.mu.RLock()
	defer book.mu.RUnlock()
	out := make([]Block, 0, len(book.blocks.m))
	for _, b := range book.blocks.m {
		out = append(out, b)
	}
	slices.SortFunc(out, func(x, y Block) int {
		if c := x.BlockedAt.Compare(y.BlockedAt); c != 0 {
			return c
		}
		return strings.Compare(x.Contact, y.Contact)
	})
	return out, nil
}
