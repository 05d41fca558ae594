package message

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/kinmesh/kinmesh/protocols/contact"
	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/protocols/mailbox"
	"github.com/kinmesh/kinmesh/protocols/message/pb"
	"github.com/kinmesh/kinmesh/storage"
)

// maxLaneJobs is how many jobs a lane moves per round.
const maxLaneJobs = 256

// wake makes sure a lane runs for recipient to.
func (s *Service) wake(to e2ee.AccountID) {
	s.lanesMu.Lock()
	defer s.lanesMu.Unlock()
	if s.ctx.Err() != nil {
		return
	}
	if w, ok := s.lanes[to]; ok {
		select {
		case w <- struct{}{}:
		default:
		}
		return
	}
	w := make(chan struct{}, 1)
	s.lanes[to] = w
	s.wg.Go(func() { s.lane(to, w) })
}

// resumeLanes loads the job index and starts a lane for every recipient
// with jobs left.
func (s *Service) resumeLanes() error {
	for _, to := range s.jobIndex().recipients() {
		s.wake(to)
	}
	return nil
}

// lane moves the jobs of one recipient, in order, until none needs
// transport; between unsuccessful rounds it backs off.
func (s *Service) lane(to e2ee.AccountID, wake chan struct{}) {
	backoff := s.cfg.RetryMin
	for {
		busy, progress, err := s.laneRound(to)
		if err != nil && s.ctx.Err() == nil {
			s.log.Debug("delivery round failed", "err", err)
		}
		if !busy {
			s.lanesMu.Lock()
			// A wake that raced with the end of the round keeps the lane.
			select {
			case <-wake:
				s.lanesMu.Unlock()
				continue
			default:
			}
			delete(s.lanes, to)
			s.lanesMu.Unlock()
			return
		}
		if progress {
			backoff = s.cfg.RetryMin
			continue
		}
		t := time.NewTimer(time.Duration(float64(backoff) * (0.8 + 0.4*rand.Float64())))
		select {
		case <-s.ctx.Done():
			t.Stop()
			s.lanesMu.Lock()
			delete(s.lanes, to)
			s.lanesMu.Unlock()
			return
		case <-wake:
			backoff = s.cfg.RetryMin
		case <-t.C:
			backoff = min(2*backoff, s.cfg.RetryMax)
		}
		t.Stop()
	}
}

// loadJobs returns up to maxLaneJobs of the recipient's jobs that still
// need transport, in order: first the ones no relay or device holds yet,
// then the ones some relays hold but not all. So a relay that stays down
// can't keep the lane busy with the same jobs while new ones wait. They
// come from the job index; jobs it doesn't hold in memory are read by key.
func (s *Service) loadJobs(to e2ee.AccountID, relays int) ([]*job, error) {
	entries := s.jobIndex().pick(to, relays, maxLaneJobs)
	out := make([]*job, 0, len(entries))
	for _, e := range entries {
		j := &job{}
		if e.job != nil {
			*j = *e.job
		} else {
			v, err := s.ns.Get(s.ctx, e.key)
			if errors.Is(err, storage.ErrNotFound) {
				continue // delivered meanwhile
			}
			if err != nil {
				return out, err
			}
			if err := decodeJob(v, j); err != nil {
				return out, err
			}
		}
		j.Key, j.Relays, j.Sent, j.gen, j.leave = e.key, slices.Clone(e.relays), e.sent, e.gen, e.leave
		out = append(out, j)
	}
	return out, nil
}

// laneRound does one round of delivery work. busy says jobs remain that
// need transport; progress that this round moved some.
func (s *Service) laneRound(to e2ee.AccountID) (busy, progress bool, err error) {
	rec, ok := s.cfg.Contacts.Contact(to)
	if !ok {
		return false, false, nil
	}
	roundStart := time.Now()
	jobs, err := s.loadJobs(to, len(rec.HomeRelays))
	if err != nil || len(jobs) == 0 {
		return false, false, err
	}
	defer func() {
		s.log.Debug("lane round", "to", to, "jobs", len(jobs), "busy", busy, "progress", progress, "took", time.Since(roundStart))
	}()
	if err := s.encryptJobs(rec, jobs); err != nil {
		return true, false, err
	}
	units, err := s.unitJobs(jobs)
	if err != nil {
		return true, false, err
	}
	if len(units) == 0 {
		return true, false, nil
	}
	var ready []*job
	for _, u := range units {
		ready = append(ready, u.jobs...)
	}
	// Nothing leaves before the session state that reserved its message
	// key is on disk (the commit that encrypted it, or an earlier one:
	// job.leave), and nothing is recorded as gone before the commit that
	// wrote it is (job.gen): so a lone message's own fsync runs while it
	// travels.
	var gen, leave uint64
	for _, j := range ready {
		gen, leave = max(gen, j.gen), max(leave, j.leave)
	}
	if err := s.eng.sync.wait(s.ctx, s.cfg.Store, leave); err != nil {
		return true, false, err
	}
	written := func() error { return s.eng.sync.wait(s.ctx, s.cfg.Store, gen) }
	var sent []bool
	var deposited map[int][]string
	var receipts []*pb.InlineReceipt
	if s.connected(rec) {
		// The fast path: hand everything to the device; the relays only
		// get what it did not take.
		var took []bool
		took, receipts = s.tryDirect(rec, units)
		var rest []unit
		var idx []int
		for i, u := range units {
			if !took[i] {
				rest, idx = append(rest, u), append(idx, i)
			}
		}
		if err := s.sealUnits(rec, rest); err != nil {
			return true, false, err
		}
		sent, deposited = spread(units, took, remap(s.depositAll(rec, rest), idx))
	} else {
		// Not connected: deposit on the relays now and try to reach the
		// device at the same time, so an offline recipient costs no dial
		// timeout and an online one still gets it directly.
		type direct struct {
			took     []bool
			receipts []*pb.InlineReceipt
		}
		if err := s.sealUnits(rec, units); err != nil {
			return true, false, err
		}
		res := make(chan direct, 1)
		go func() {
			took, receipts := s.tryDirect(rec, units)
			res <- direct{took, receipts}
		}()
		sent, deposited = spread(units, make([]bool, len(units)), s.depositAll(rec, units))
		if err := written(); err != nil {
			<-res
			return true, false, err
		}
		moved, err := s.recordTransport(rec, ready, sent, deposited, nil)
		if err != nil {
			<-res
			return true, false, err
		}
		progress = moved > 0
		d := <-res
		sent, deposited = spread(units, d.took, nil)
		receipts = d.receipts
	}
	if err := written(); err != nil {
		return true, false, err
	}
	moved, err := s.recordTransport(rec, ready, sent, deposited, receipts)
	if err != nil {
		return true, false, err
	}
	progress = progress || moved > 0
	busy = len(jobs) == maxLaneJobs
	for _, j := range ready {
		if !j.done(len(rec.HomeRelays)) {
			busy = true
		}
	}
	if len(ready) < len(jobs) {
		busy = true // some still wait for a session
	}
	return busy, progress, nil
}

// encryptJobs encrypts jobs that were queued before a session existed,
// fetching a bundle from the recipient's relays first if needed. The
// encrypted jobs are written without waiting for the disk: the lane waits
// for it before they leave.
func (s *Service) encryptJobs(rec contact.Signed, jobs []*job) error {
	need := slices.ContainsFunc(jobs, func(j *job) bool { return j.Envelope == nil && j.Payload == nil })
	if !need {
		return nil
	}
	var bundle *e2ee.Bundle
	s.mu.Lock()
	ss, err := s.begin().Sessions(rec.AccountID())
	s.mu.Unlock()
	if err != nil {
		return err
	}
	if len(ss) == 0 && s.cfg.Contacts.InviteBundle(rec.AccountID()) == nil {
		bundle, err = s.fetchBundle(rec)
		if err != nil {
			return err
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.begin()
	for _, j := range jobs {
		if j.Envelope != nil || j.Payload != nil {
			continue
		}
		typ, payload, err := t.ratchetPairwise(rec, j.Content, bundle)
		if err != nil {
			return err
		}
		j.Type, j.Payload, j.Content = typ, payload, nil
		t.updateJob(j)
	}
	if err := t.flush(); err != nil {
		return err
	}
	for _, j := range jobs {
		j.gen, j.leave = max(j.gen, t.gen), max(j.leave, t.gen)
	}
	return nil
}

// unit is one envelope a lane moves: the payload of one job alone, or
// the payloads of up to e2ee.MaxBatchItems consecutive jobs as one batch,
// so one KEM (the costly part of sealing and of opening) covers them all.
// Its jobs share its fate: taken by the device, or held by a relay,
// together. typ and payload are what the envelope carries: a device gets
// them sealed on its direct stream (deliver), relays get env, sealed to
// the recipient's mailbox key by sealUnits when they need it. A job
// sealed when it was queued (an older engine) has env and no typ.
type unit struct {
	typ     e2ee.ContentType
	payload []byte
	env     []byte
	jobs    []*job
}

// size bounds the envelope u becomes on a direct stream: its content, the
// certificate and the framing, before padding.
func (s *Service) unitSize(u unit) int {
	if u.typ == 0 {
		return len(u.env)
	}
	return len(u.payload) + len(s.record().Raw) + 1024
}

// batchBudget is what the items of one batch may add up to, framing
// included (e2ee.BatchItemOverhead each): the envelope then always fits.
const batchBudget = e2ee.MaxEnvelopePayload - 64

// unitJobs groups jobs into units. Consecutive jobs that went to the same
// places so far share a batch envelope. Envelopes are not stored: a job
// keeps its payload until it is done, and each round seals afresh
// whatever goes together then; the recipient recognises items it already
// has by their hash. Jobs without a session yet stay out.
func (s *Service) unitJobs(jobs []*job) ([]unit, error) {
	var units []unit
	size := 0
	for _, j := range jobs {
		switch {
		case j.Payload == nil && j.Envelope != nil:
			// Sealed when it was queued (an older engine): as it is.
			units = append(units, unit{env: j.Envelope, jobs: []*job{j}})
			continue
		case j.Payload == nil:
			continue
		}
		n := len(j.Payload) + e2ee.BatchItemOverhead
		if k := len(units) - 1; k >= 0 && units[k].typ != 0 && len(units[k].jobs) < e2ee.MaxBatchItems &&
			size+n <= batchBudget && sameTransport(units[k].jobs[0], j) {
			units[k].jobs = append(units[k].jobs, j)
			size += n
			continue
		}
		units = append(units, unit{typ: j.Type, jobs: []*job{j}})
		size = n
	}
	for i := range units {
		u := &units[i]
		if u.typ == 0 {
			continue
		}
		if len(u.jobs) == 1 {
			u.payload = u.jobs[0].Payload
			continue
		}
		items := make([]e2ee.BatchItem, len(u.jobs))
		for k, j := range u.jobs {
			items[k] = e2ee.BatchItem{Type: j.Type, Payload: j.Payload}
		}
		b, err := e2ee.MarshalBatch(items)
		if err != nil {
			return nil, err
		}
		u.typ, u.payload = e2ee.ContentBatch, b
	}
	return units, nil
}

// sealUnits seals the units without an envelope into sealed-sender
// envelopes to rec's mailbox key, for its relays, on every core, outside
// the engine's lock.
func (s *Service) sealUnits(rec contact.Signed, units []unit) error {
	return parallel(len(units), func(i int) error {
		u := &units[i]
		if u.env != nil {
			return nil
		}
		env, err := s.seal(rec, u.typ, u.payload)
		u.env = env
		return err
	})
}

// sameTransport reports whether a and b went to the same places so far:
// the same relays hold both, and neither was handed to the device.
func sameTransport(a, b *job) bool {
	if a.Sent != b.Sent || len(a.Relays) != len(b.Relays) {
		return false
	}
	for _, r := range a.Relays {
		if !slices.Contains(b.Relays, r) {
			return false
		}
	}
	return true
}

// spread turns what happened to units (taken by the device; relays that
// newly hold them, by unit index) into the same per job of the round, in
// the order the units list them.
func spread(units []unit, took []bool, deposited map[int][]string) ([]bool, map[int][]string) {
	var sent []bool
	out := map[int][]string{}
	for i, u := range units {
		for range u.jobs {
			if d, ok := deposited[i]; ok {
				out[len(sent)] = d
			}
			sent = append(sent, took[i])
		}
	}
	return sent, out
}

func (s *Service) fetchBundle(rec contact.Signed) (*e2ee.Bundle, error) {
	var errs []error
	for _, r := range rec.Relays() {
		ctx, cancel := context.WithTimeout(s.ctx, 10*time.Second)
		s.cfg.Host.Peerstore().AddAddrs(r.ID, r.Addrs, peerstore.TempAddrTTL)
		b, err := s.cfg.Prekeys.Fetch(ctx, r.ID, rec.AccountID())
		cancel()
		if err == nil {
			return b, nil
		}
		errs = append(errs, err)
	}
	return nil, fmt.Errorf("message: no prekey bundle for %s from its relays: %w", rec.AccountID(), errors.Join(errs...))
}

// tryDirect hands as many units as it can to one of the recipient's
// devices and reports which it took, and the delivery receipts it gave
// back with its answers.
func (s *Service) tryDirect(rec contact.Signed, units []unit) ([]bool, []*pb.InlineReceipt) {
	sent := make([]bool, len(units))
	dev, limited, ok := s.reach(rec)
	if !ok || s.limits.out.resting(dev) {
		return sent, nil
	}
	budget := len(units)
	if limited {
		// Over a relay circuit only signalling-sized batches go.
		total := 0
		for i, u := range units {
			total += s.unitSize(u)
			if total > maxCircuitBytes {
				budget = i
				break
			}
		}
	}
	// Up to maxDirectInFlight frames at once, each on its own stream: the
	// device works on them side by side (its fsyncs shared), and the
	// ratchet takes messages in any order. A frame the device answers
	// RATE_LIMITED (in part) ends the round's direct delivery, and the
	// device rests (directLimits): what it didn't take goes to the relays,
	// and comes to it again, directly, in a round after the rest.
	var (
		wg          sync.WaitGroup
		mu          sync.Mutex
		receipts    []*pb.InlineReceipt
		failed      atomic.Bool
		rateLimited atomic.Bool
		slots       = make(chan struct{}, maxDirectInFlight)
	)
	for start, end := 0, 0; start < budget && !failed.Load(); start = end {
		size := 0
		for end = start; end < budget && end-start < maxDirectBatch; end++ {
			if size += s.unitSize(units[end]) + 16; size > maxDirectFrame-(64<<10) && end > start {
				break
			}
		}
		frame := units[start:end]
		slots <- struct{}{}
		wg.Go(func() {
			defer func() { <-slots }()
			d, err := s.deliver(dev, rec, frame)
			if err != nil {
				s.log.Debug("direct delivery failed", "to", rec.AccountID(), "err", err)
				failed.Store(true)
				return
			}
			for i, o := range d.took {
				sent[start+i] = o
			}
			mu.Lock()
			receipts = append(receipts, d.receipts...)
			mu.Unlock()
			if d.limited {
				rateLimited.Store(true)
				failed.Store(true)
			}
		})
	}
	wg.Wait()
	if rateLimited.Load() {
		s.log.Debug("direct delivery rate limited by the device", "to", rec.AccountID(), "device", dev)
		s.limits.out.failed(dev, directRestMin, directRestMax)
	} else if !failed.Load() {
		s.limits.out.ok(dev)
	}
	return sent, receipts
}

// maxDirectInFlight is how many Deliver frames a lane has in flight.
const maxDirectInFlight = 4

// connected reports whether one of rec's devices is connected now.
func (s *Service) connected(rec contact.Signed) bool {
	for _, d := range rec.Devices {
		if s.cfg.Host.Network().Connectedness(d) == network.Connected {
			return true
		}
	}
	return false
}

// remap turns indexes into a sub-slice back into indexes of the whole.
func remap(m map[int][]string, idx []int) map[int][]string {
	out := make(map[int][]string, len(m))
	for i, v := range m {
		out[idx[i]] = v
	}
	return out
}

// reach returns a connected device of rec, dialing it through its home
// relays' circuits if needed. limited says the connection is a relay
// circuit.
func (s *Service) reach(rec contact.Signed) (peer.ID, bool, bool) {
	h := s.cfg.Host
	for _, d := range rec.Devices {
		if h.Network().Connectedness(d) == network.Connected {
			return d, allLimited(h.Network().ConnsToPeer(d)), true
		}
	}
	for _, d := range rec.Devices {
		// A device that didn't answer lately is most likely offline: don't
		// hold every round of the lane for a dial timeout.
		if s.eng.dials.resting(d) {
			continue
		}
		var addrs []ma.Multiaddr
		for _, r := range rec.HomeRelays {
			addrs = append(addrs, r.Encapsulate(ma.StringCast("/p2p-circuit")))
		}
		ctx, cancel := context.WithTimeout(s.ctx, s.cfg.DirectTimeout)
		err := h.Connect(ctx, peer.AddrInfo{ID: d, Addrs: addrs})
		cancel()
		if err == nil {
			s.eng.dials.ok(d)
			return d, allLimited(h.Network().ConnsToPeer(d)), true
		}
		s.eng.dials.failed(d, time.Second, time.Minute)
	}
	return "", false, false
}

func allLimited(conns []network.Conn) bool {
	for _, c := range conns {
		if !c.Stat().Limited {
			return false
		}
	}
	return true
}

// depositAll deposits units on every home relay of rec that doesn't hold
// all their jobs yet, one relay per goroutine. It returns, per unit index,
// the relays that newly took it.
func (s *Service) depositAll(rec contact.Signed, units []unit) map[int][]string {
	out := map[int][]string{}
	if len(units) == 0 {
		return out
	}
	mbox, err := mailbox.ParseMailboxID(rec.MailboxID)
	if err != nil {
		return out
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, r := range rec.Relays() {
		if s.relayResting(r.ID) {
			continue
		}
		rid := r.ID.String()
		var idx []int
		var envs [][]byte
		for i, u := range units {
			if slices.ContainsFunc(u.jobs, func(j *job) bool { return !slices.Contains(j.Relays, rid) }) {
				idx = append(idx, i)
				envs = append(envs, u.env)
			}
		}
		if len(envs) == 0 {
			continue
		}
		wg.Go(func() {
			s.cfg.Host.Peerstore().AddAddrs(r.ID, r.Addrs, peerstore.TempAddrTTL)
			for start, end := 0, 0; start < len(envs); start = end {
				end = depositChunk(envs, start)
				ctx, cancel := context.WithTimeout(s.ctx, 20*time.Second)
				res, err := s.cfg.Mailbox.Deposit(ctx, r.ID, mbox, envs[start:end])
				cancel()
				if err != nil {
					s.log.Debug("deposit failed", "relay", r.ID, "err", err)
					s.relayFailed(r.ID)
					return
				}
				s.relayOK(r.ID)
				mu.Lock()
				for k, dr := range res {
					if dr.Err == nil {
						out[idx[start+k]] = append(out[idx[start+k]], rid)
					}
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return out
}

// recordTransport stores what a round achieved and moves message states:
// sent when a device took it, queued(n) while relays hold it; then the
// delivery receipts the device gave back with its answer (decrypted with
// the session with rec, as any message from rec) move the messages they
// name on to delivered, their jobs done. It returns how many jobs moved.
func (s *Service) recordTransport(rec contact.Signed, jobs []*job, sent []bool, deposited map[int][]string, receipts []*pb.InlineReceipt) (int, error) {
	const per = maxTxOps / 4 // a job and its message: 3 writes
	moved := 0
	for start := 0; start < len(jobs) || start == 0; start += per {
		end := min(start+per, len(jobs))
		sub := map[int][]string{}
		for i := start; i < end; i++ {
			if d, ok := deposited[i]; ok {
				sub[i-start] = d
			}
		}
		var rs []*pb.InlineReceipt
		if end == len(jobs) {
			rs = receipts
		}
		n, err := s.recordTransportChunk(rec, jobs[start:end], sent[start:end], sub, rs)
		moved += n
		if err != nil {
			return moved, err
		}
	}
	return moved, nil
}

// recordTransportChunk records one chunk in two commits: the messages'
// new states, whose events go out at once, then the receipts with the
// jobs. A job goes in the second so that one whose receipt came with the
// answer is deleted without being written again as sent first: with the
// payload it carries until done, that rewrite was the largest single
// write of a message's way (about 0.7 KB of the 4 KB a message cost the
// two devices' stores).
func (s *Service) recordTransportChunk(rec contact.Signed, jobs []*job, sent []bool, deposited map[int][]string, receipts []*pb.InlineReceipt) (int, error) {
	s.mu.Lock()
	// Transport bookkeeping: if lost, the job is simply moved again and the
	// recipient drops the duplicate. Not even the write is waited for: the
	// state event goes out at once, and reads after it see the new state.
	t, jt := s.begin(), s.begin()
	t.lazy, t.async = true, true
	jt.lazy, jt.async = true, true
	var changed []*Message
	moved := 0
	for i, j := range jobs {
		newRelays := deposited[i]
		if (!sent[i] || j.Sent) && len(newRelays) == 0 {
			continue
		}
		moved++
		j.Sent = j.Sent || sent[i]
		for _, r := range newRelays {
			if !slices.Contains(j.Relays, r) {
				j.Relays = append(j.Relays, r)
			}
		}
		if j.Payload != nil {
			j.Envelope = nil // sealed afresh by the next round that moves it
		}
		if j.MsgID == "" {
			// Receipts and control messages need no state: once moved,
			// they are done.
			if j.done(len(rec.HomeRelays)) || j.Sent {
				jt.deleteJob(j.Key)
			} else {
				jt.updateJob(j)
			}
			continue
		}
		jt.updateJob(j)
		m, err := t.Message(j.MsgID)
		if err != nil || m == nil {
			continue
		}
		st, queued := StateQueued, len(j.Relays)
		if j.Sent {
			st, queued = StateSent, 0
		}
		if setState(m, string(j.To), st, queued) {
			t.putMessage(m)
			changed = append(changed, m)
		}
	}
	err := t.flush()
	if err == nil {
		err = t.durable() // lazy: no wait
	}
	if err != nil {
		s.mu.Unlock()
		return 0, err
	}
	for _, m := range changed {
		c := *m
		s.emit(Event{Type: "state", Message: &c})
	}
	jt.takeReceipts(rec, receipts)
	err = jt.flush()
	s.mu.Unlock()
	if err == nil {
		err = jt.durable()
	}
	if err != nil {
		return 0, err
	}
	for _, e := range jt.events {
		s.emit(e)
	}
	return moved, nil
}

// setState moves an outgoing message (or one member's copy of a group
// message) forward to st; it never moves back. It reports a change.
func setState(m *Message, member string, st State, queued int) bool {
	if m.Group != "" {
		if m.Recipients == nil {
			m.Recipients = map[string]State{}
		}
		if old, ok := m.Recipients[member]; ok && old.rank() >= st.rank() {
			return false
		}
		m.Recipients[member] = st
		agg := StateRead
		for _, r := range m.Recipients {
			if r.rank() < agg.rank() {
				agg = r
			}
		}
		if agg == m.State {
			return true
		}
		m.State = agg
		return true
	}
	if m.State.rank() > st.rank() || (m.State == st && m.Queued == queued) {
		return false
	}
	if m.State == st && st == StateQueued && queued < m.Queued {
		return false
	}
	m.State, m.Queued = st, queued
	if st != StateQueued {
		m.Queued = 0
	}
	return true
}

// depositChunk returns the end of the deposit batch starting at start,
// within the mailbox protocol's item and byte caps.
func depositChunk(envs [][]byte, start int) int {
	size, end := 0, start
	for end < len(envs) && end-start < mailbox.MaxBatchItems {
		size += len(envs[end]) + 16
		if size > mailbox.MaxBatchBytes-4<<10 && end > start {
			break
		}
		end++
	}
	return end
}

// relayRest is how long a relay that failed a deposit is skipped: it
// doubles per failure from 1s to 2m. Skipping it keeps every lane from
// waiting out a dead relay's dial timeout round after round.
type relayRest struct {
	until   time.Time
	backoff time.Duration
}

// rests are peers skipped for a while after failures (devices that didn't
// answer a dial: from 1s doubling to 1m).
type rests struct {
	mu sync.Mutex
	m  map[peer.ID]relayRest
}

func (r *rests) resting(p peer.ID) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	x, ok := r.m[p]
	return ok && time.Now().Before(x.until)
}

func (r *rests) failed(p peer.ID, first, most time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil {
		r.m = map[peer.ID]relayRest{}
	}
	x := r.m[p]
	x.backoff = min(max(2*x.backoff, first), most)
	x.until = time.Now().Add(x.backoff)
	r.m[p] = x
}

func (r *rests) ok(p peer.ID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.m, p)
}

func (s *Service) relayResting(p peer.ID) bool {
	s.restMu.Lock()
	defer s.restMu.Unlock()
	r, ok := s.rest[p]
	return ok && time.Now().Before(r.until)
}

func (s *Service) relayFailed(p peer.ID) {
	s.restMu.Lock()
	defer s.restMu.Unlock()
	r := s.rest[p]
	r.backoff = min(max(2*r.backoff, time.Second), 2*time.Minute)
	r.until = time.Now().Add(r.backoff)
	s.rest[p] = r
}

// peerConnected ends the rest of a relay that failed deposits once a
// connection to it comes up, and wakes every lane with jobs: without it a
// job that failed while the relay was away would wait out the lane's
// backoff (up to RetryMax) after the relay came back.
func (s *Service) peerConnected(p peer.ID) {
	s.restMu.Lock()
	_, resting := s.rest[p]
	delete(s.rest, p)
	s.restMu.Unlock()
	if !resting {
		return
	}
	// Not on the swarm's notification path: the job index may load.
	go func() {
		for _, to := range s.jobIndex().recipients() {
			s.wake(to)
		}
	}()
}

func (s *Service) relayOK(p peer.ID) {
	s.restMu.Lock()
	defer s.restMu.Unlock()
	delete(s.rest, p)
}
