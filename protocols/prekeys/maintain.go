package prekeys

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/kinmesh/kinmesh/protocols/e2ee"
)

// Owner-side upkeep: splitting one-time prekeys across home relays, and
// Maintain, which decides what to rotate, generate and publish.

// Split divides up's one-time prekeys disjointly into n uploads, one per
// home relay: sorted by id, the X25519 and the ML-KEM prekeys are each cut
// into n contiguous ranges of nearly equal size (the first ranges one
// larger when they don't divide evenly). Every part carries up's identity,
// signed and last-resort prekeys, so it is a complete upload.
//
// The one-time prekeys of one Split must be given out once, part i to
// relay i, and never split again differently: a key sent to two relays
// could be handed out twice. Splitting the same keys again over the same
// relays in the same order gives the same parts (relays ignore keys at or
// below their Status.MaxOneTimeID, so re-sending is harmless), but once
// keys are used up or the relay list changes the ranges move. Maintain
// avoids the question by distributing only keys it has just generated.
func Split(up *e2ee.Upload, n int) []*e2ee.Upload {
	if n <= 0 {
		return nil
	}
	x := slices.SortedFunc(slices.Values(up.OneTime), func(a, b e2ee.DHPrekey) int { return cmp.Compare(a.ID, b.ID) })
	q := slices.SortedFunc(slices.Values(up.PQOneTime), func(a, b e2ee.KEMPrekey) int { return cmp.Compare(a.ID, b.ID) })
	parts := make([]*e2ee.Upload, n)
	for i := range parts {
		xl, xh := rangeOf(len(x), n, i)
		ql, qh := rangeOf(len(q), n, i)
		parts[i] = &e2ee.Upload{
			Identity: up.Identity, SignedPrekey: up.SignedPrekey, LastResort: up.LastResort,
			OneTime:   slices.Clone(x[xl:xh]),
			PQOneTime: slices.Clone(q[ql:qh]),
		}
	}
	return parts
}

// rangeOf returns the i-th of n nearly equal contiguous ranges of
// [0, total), the first total%n of them one longer.
func rangeOf(total, n, i int) (lo, hi int) {
	base, extra := total/n, total%n
	lo = i*base + min(i, extra)
	hi = lo + base
	if i < extra {
		hi++
	}
	return lo, hi
}

// MaintainOptions tune Maintain. Zero fields take the defaults listed.
type MaintainOptions struct {
	// LowWater: a relay holding fewer one-time prekeys of a kind than this
	// is topped up (default DefaultLowWater).
	LowWater int
	// Target: how many one-time prekeys of each kind a topped-up relay
	// holds (default DefaultTarget; at most e2ee.MaxOneTimePrekeys divided
	// by the number of relays).
	Target int
	// Now is the clock (default time.Now); Rand the randomness for new
	// prekeys (default crypto/rand).
	Now  func() time.Time
	Rand io.Reader
}

// Defaults of MaintainOptions.
const (
	DefaultLowWater = 20
	DefaultTarget   = 50
)

// Plan is what Maintain decided. Persist Store (when Changed) before
// calling Publish: the relays must never hold a prekey the owner could
// lose in a crash.
type Plan struct {
	// Store is the owner's new prekey store.
	Store *e2ee.PrekeyStore
	// Changed reports whether Store differs from the store Maintain was
	// given (rotation, new one-time prekeys, evictions, pruning).
	Changed bool
	// Rotated reports whether the signed and last-resort prekeys were
	// rotated.
	Rotated bool
	// Generated and PQGenerated count the new one-time prekeys.
	Generated, PQGenerated int
	// Evicted are one-time prekeys dropped from the store to make room:
	// ones no relay holds any more (handed out and never used, or never
	// delivered), lowest ids first.
	Evicted []e2ee.PrekeyID
	// Statuses are what each relay reported (an empty Status for a relay
	// that holds nothing for the account).
	Statuses map[peer.ID]Status
	// Errors are the relays whose status could not be read; this plan
	// publishes nothing to them.
	Errors map[peer.ID]error
	// Uploads are what Publish sends, per relay. The one-time prekeys of
	// different relays are disjoint and all newly generated.
	Uploads map[peer.ID]*e2ee.Upload

	c      *Client
	id     *e2ee.Identity
	relays []peer.ID
}

// Maintain is the owner's upkeep of its prekeys on its home relays. It
// asks every relay for its Status, then decides:
//
//   - rotate the signed and last-resort prekeys when store.NeedsRotation
//     (weekly; the retired ones stay usable for e2ee.PrekeyGrace);
//   - for every relay holding fewer than LowWater one-time prekeys of a
//     kind, generate enough new ones to bring it to Target, evicting from
//     the store, when it is full, one-time prekeys that no relay holds any
//     more (only when every relay answered);
//   - give each relay its own share of the new one-time prekeys, and the
//     current signed and last-resort prekeys where the relay lacks them.
//
// It returns the Plan without publishing anything. The caller persists
// Plan.Store (when Plan.Changed), then calls Plan.Publish:
//
//	plan, err := client.Maintain(ctx, id, store, homeRelays, prekeys.MaintainOptions{})
//	if err != nil { … }
//	if plan.Changed {
//		persist(plan.Store) // sealed, synced: before any relay sees a new key
//	}
//	statuses, err := plan.Publish(ctx)
//
// New one-time prekeys are the only ones Maintain ever distributes, each to
// one relay, so no one-time prekey can end up on two relays, whatever the
// relay list, crashes or failed publishes (a share that was not delivered
// is never handed out, and is evicted later). Run it when the device
// comes online and periodically (daily); one maintainer per account.
func (c *Client) Maintain(ctx context.Context, id *e2ee.Identity, store *e2ee.PrekeyStore, relays []peer.ID, opts MaintainOptions) (*Plan, error) {
	if store == nil || !store.Owner().Equal(id.Public()) {
		return nil, fmt.Errorf("prekeys: maintain: the store is not %s's: %w", id.AccountID(), ErrMalformed)
	}
	relays = slices.Clone(relays)
	seen := map[peer.ID]bool{}
	relays = slices.DeleteFunc(relays, func(p peer.ID) bool { dup := seen[p]; seen[p] = true; return dup })
	if len(relays) == 0 {
		return nil, fmt.Errorf("prekeys: maintain: no relays: %w", ErrMalformed)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Rand == nil {
		opts.Rand = rand.Reader
	}
	if opts.Target <= 0 {
		opts.Target = DefaultTarget
	}
	opts.Target = max(1, min(opts.Target, e2ee.MaxOneTimePrekeys/len(relays)))
	if opts.LowWater <= 0 {
		opts.LowWater = DefaultLowWater
	}
	opts.LowWater = min(opts.LowWater, opts.Target)
	now := opts.Now()

	p := &Plan{c: c, id: id, relays: relays, Statuses: map[peer.ID]Status{}, Errors: map[peer.ID]error{}, Uploads: map[peer.ID]*e2ee.Upload{}}
	c.statuses(ctx, id, relays, p)
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}

	next := store.Prune(now)
	if next.NeedsRotation(now) {
		var err error
		if next, err = next.Rotate(id, now, opts.Rand); err != nil {
			return nil, fmt.Errorf("prekeys: maintain: rotate: %w", err)
		}
		p.Rotated = true
	}

	// What each answering relay lacks, per kind.
	var reachable []peer.ID
	for _, r := range relays {
		if _, ok := p.Statuses[r]; ok {
			reachable = append(reachable, r)
		}
	}
	need := func(held int) int {
		if held >= opts.LowWater {
			return 0
		}
		return opts.Target - held
	}
	needX, needQ := make([]int, len(reachable)), make([]int, len(reachable))
	totalX, totalQ := 0, 0
	for i, r := range reachable {
		x, q := p.Statuses[r].Counts()
		needX[i], needQ[i] = need(x), need(q)
		totalX += needX[i]
		totalQ += needQ[i]
	}

	// Make room: evict one-time prekeys no relay holds any more.
	haveX, haveQ := next.Counts()
	if len(p.Errors) == 0 && (haveX+totalX > e2ee.MaxOneTimePrekeys || haveQ+totalQ > e2ee.MaxOneTimePrekeys) {
		held := map[e2ee.PrekeyID]bool{}
		for _, st := range p.Statuses {
			for _, id := range st.OneTimeIDs {
				held[id] = true
			}
			for _, id := range st.PQOneTimeIDs {
				held[id] = true
			}
		}
		up := next.Upload()
		var freeX, freeQ []e2ee.PrekeyID
		for _, k := range up.OneTime {
			if !held[k.ID] {
				freeX = append(freeX, k.ID)
			}
		}
		for _, k := range up.PQOneTime {
			if !held[k.ID] {
				freeQ = append(freeQ, k.ID)
			}
		}
		slices.Sort(freeX)
		slices.Sort(freeQ)
		p.Evicted = append(p.Evicted, freeX[:min(len(freeX), max(0, haveX+totalX-e2ee.MaxOneTimePrekeys))]...)
		p.Evicted = append(p.Evicted, freeQ[:min(len(freeQ), max(0, haveQ+totalQ-e2ee.MaxOneTimePrekeys))]...)
		if len(p.Evicted) > 0 {
			next = next.Consume(p.Evicted...)
			haveX, haveQ = next.Counts()
		}
	}
	// Whatever room is left goes to the emptiest relays first.
	ration(needX, e2ee.MaxOneTimePrekeys-haveX, p.Statuses, reachable, true)
	ration(needQ, e2ee.MaxOneTimePrekeys-haveQ, p.Statuses, reachable, false)
	p.Generated, p.PQGenerated = sum(needX), sum(needQ)

	before := idSet(next.Upload())
	if p.Generated+p.PQGenerated > 0 {
		var err error
		if next, err = next.GenerateOneTime(id, p.Generated, p.PQGenerated, now, opts.Rand); err != nil {
			return nil, fmt.Errorf("prekeys: maintain: generate one-time prekeys: %w", err)
		}
	}
	all := next.Upload()
	var freshX []e2ee.DHPrekey
	for _, k := range all.OneTime {
		if !before[k.ID] {
			freshX = append(freshX, k)
		}
	}
	var freshQ []e2ee.KEMPrekey
	for _, k := range all.PQOneTime {
		if !before[k.ID] {
			freshQ = append(freshQ, k)
		}
	}
	slices.SortFunc(freshX, func(a, b e2ee.DHPrekey) int { return cmp.Compare(a.ID, b.ID) })
	slices.SortFunc(freshQ, func(a, b e2ee.KEMPrekey) int { return cmp.Compare(a.ID, b.ID) })

	for i, r := range reachable {
		st := p.Statuses[r]
		u := &e2ee.Upload{Identity: all.Identity, SignedPrekey: all.SignedPrekey, LastResort: all.LastResort}
		u.OneTime, freshX = freshX[:needX[i]], freshX[needX[i]:]
		u.PQOneTime, freshQ = freshQ[:needQ[i]], freshQ[needQ[i]:]
		if len(u.OneTime)+len(u.PQOneTime) > 0 || st.SignedPrekey != all.SignedPrekey.ID || st.LastResort != all.LastResort.ID {
			p.Uploads[r] = u
		}
	}
	p.Store = next
	p.Changed = !bytes.Equal(store.Marshal(), next.Marshal())
	return p, nil
}

// statuses asks every relay for its status, at once.
func (c *Client) statuses(ctx context.Context, id *e2ee.Identity, relays []peer.ID, p *Plan) {
	var (
		mu sync.Mutex
		wg sync.WaitGroup
	)
	for _, r := range relays {
		wg.Go(func() {
			st, err := c.Status(ctx, r, id)
			if errors.Is(err, ErrNotFound) {
				st, err = Status{}, nil
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				p.Errors[r] = err
			} else {
				p.Statuses[r] = st
			}
		})
	}
	wg.Wait()
}

// ration cuts needs down to room, serving the relays that hold the
// fewest one-time prekeys of the kind first.
func ration(needs []int, room int, statuses map[peer.ID]Status, relays []peer.ID, x bool) {
	if sum(needs) <= room {
		return
	}
	held := func(i int) int {
		a, b := statuses[relays[i]].Counts()
		if x {
			return a
		}
		return b
	}
	order := make([]int, len(needs))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int { return cmp.Compare(held(a), held(b)) })
	room = max(room, 0)
	for _, i := range order {
		needs[i] = min(needs[i], room)
		room -= needs[i]
	}
}

func sum(xs []int) (n int) {
	for _, x := range xs {
		n += x
	}
	return n
}

func idSet(up *e2ee.Upload) map[e2ee.PrekeyID]bool {
	m := make(map[e2ee.PrekeyID]bool, len(up.OneTime)+len(up.PQOneTime))
	for _, k := range up.OneTime {
		m[k.ID] = true
	}
	for _, k := range up.PQOneTime {
		m[k.ID] = true
	}
	return m
}

// Publish sends the plan's uploads, one relay after the other, and returns
// what each relay reported. Call it only after persisting Plan.Store. An
// error names every relay that failed (errors.Join); the others were
// updated. Running Maintain again later retries: it sees what each relay
// holds.
func (p *Plan) Publish(ctx context.Context) (map[peer.ID]Status, error) {
	out := make(map[peer.ID]Status, len(p.Uploads))
	var errs []error
	for _, r := range p.relays {
		up, ok := p.Uploads[r]
		if !ok {
			continue
		}
		st, err := p.c.Publish(ctx, r, p.id, up)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out[r] = st
	}
	return out, errors.Join(errs...)
}
