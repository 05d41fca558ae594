package node

import (
	"context"
	"time"

	"github.com/kinmesh/kinmesh/protocols/message"
)

// ShareLocation shares a position with contacts for d (0: 15 minutes), or
// stops sharing with them.
func (n *Node) ShareLocation(ctx context.Context, to []string, lat, lon, accuracy float64, d time.Duration, stop bool) error {
	m, err := n.messaging()
	if err != nil {
		return err
	}
	ids, err := parseAccounts(to)
	if err != nil {
		return err
	}
	return m.ShareLocation(ctx, ids, lat, lon, accuracy, d, stop)
}

// Locations returns the positions contacts share with this account now.
func (n *Node) Locations(ctx context.Context) ([]message.Location, error) {
	m, err := n.messaging()
	if err != nil {
		return nil, err
	}
	return m.Locations(ctx)
}
