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
			if err := jsonUnmarshal(v, j); err != nil {
				return out, err
			}
		}
		j.Key, j.Relays, j.Sent, j.gen = e.key, slices.Clone(e.relays), e.sent, e.gen
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
	if err := s.sealJobs(rec, jobs); err != nil {
		return true, false, err
	}
	ready := slices.DeleteFunc(slices.Clone(jobs), func(j *job) bool { return j.Envelope == nil })
	if len(ready) == 0 {
		return true, false, nil
	}
	// Nothing leaves before the commit that encrypted it is on disk.
	var gen uint64
	for _, j := range ready {
		gen = max(gen, j.gen)
	}
	if err := s.eng.sync.wait(s.ctx, s.cfg.Store, gen); err != nil {
		return true, false, err
	}
	var sent []bool
	var deposited map[int][]string
	if s.connected(rec) {
		// The fast path: hand everything to the device; the relays only
		// get what it did not take.
		sent = s.tryDirect(rec, ready)
		var rest []*job
		var idx []int
		for i, j := range ready {
			if !sent[i] {
				rest, idx = append(rest, j), append(idx, i)
			}
		}
		deposited = remap(s.depositAll(rec, rest), idx)
	} else {
		// Not connected: deposit on the relays now and try to reach the
		// device at the same time, so an offline recipient costs no dial
		// timeout and an online one still gets it directly.
		direct := make(chan []bool, 1)
		go func() { direct <- s.tryDirect(rec, ready) }()
		deposited = s.depositAll(rec, ready)
		moved, err := s.recordTransport(rec, ready, make([]bool, len(ready)), deposited)
		if err != nil {
			<-direct
			return true, false, err
		}
		progress = moved > 0
		sent, deposited = <-direct, nil
	}
	moved, err := s.recordTransport(rec, ready, sent, deposited)
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
	for _, j := range jobs {
		if j.Envelope == nil {
			busy = true
		}
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
		j.gen = max(j.gen, t.gen)
	}
	return nil
}

// sealJobs seals the envelopes of jobs that have their payload only, on
// every core, outside the engine's lock.
func (s *Service) sealJobs(rec contact.Signed, jobs []*job) error {
	var todo []*job
	for _, j := range jobs {
		if j.Envelope == nil && j.Payload != nil {
			todo = append(todo, j)
		}
	}
	err := parallel(len(todo), func(i int) error {
		env, err := s.seal(rec, todo[i].Type, todo[i].Payload)
		todo[i].Envelope = env
		return err
	})
	if err != nil {
		return err
	}
	idx := s.jobIndex()
	for _, j := range todo {
		idx.sealed(j)
	}
	return nil
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

// tryDirect hands as many jobs as it can to one of the recipient's devices.
func (s *Service) tryDirect(rec contact.Signed, jobs []*job) []bool {
	sent := make([]bool, len(jobs))
	dev, limited, ok := s.reach(rec)
	if !ok {
		return sent
	}
	budget := len(jobs)
	if limited {
		// Over a relay circuit only signalling-sized batches go.
		total := 0
		for i, j := range jobs {
			total += len(j.Envelope)
			if total > maxCircuitBytes {
				budget = i
				break
			}
		}
	}
	// Up to maxDirectInFlight frames at once, each on its own stream: the
	// device works on them side by side (its fsyncs shared), and the
	// ratchet takes messages in any order.
	var (
		wg     sync.WaitGroup
		failed atomic.Bool
		slots  = make(chan struct{}, maxDirectInFlight)
	)
	for start := 0; start < budget && !failed.Load(); start += maxDirectBatch {
		end := min(start+maxDirectBatch, budget)
		envs := make([][]byte, 0, end-start)
		for _, j := range jobs[start:end] {
			envs = append(envs, j.Envelope)
		}
		slots <- struct{}{}
		wg.Go(func() {
			defer func() { <-slots }()
			ok, err := s.deliver(dev, envs)
			if err != nil {
				s.log.Debug("direct delivery failed", "to", rec.AccountID(), "err", err)
				failed.Store(true)
				return
			}
			for i, o := range ok {
				sent[start+i] = o
			}
		})
	}
	wg.Wait()
	return sent
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

// depositAll deposits jobs on every home relay of rec that doesn't hold
// them yet, one relay per goroutine. It returns, per job index, the relays
// that newly took it.
func (s *Service) depositAll(rec contact.Signed, jobs []*job) map[int][]string {
	out := map[int][]string{}
	if len(jobs) == 0 {
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
		for i, j := range jobs {
			if !slices.Contains(j.Relays, rid) {
				idx = append(idx, i)
				envs = append(envs, j.Envelope)
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
// sent when a device took it, queued(n) while relays hold it. It returns
// how many jobs moved.
func (s *Service) recordTransport(rec contact.Signed, jobs []*job, sent []bool, deposited map[int][]string) (int, error) {
	const per = maxTxOps / 4 // a job and its message: 3 writes
	moved := 0
	for start := 0; start < len(jobs); start += per {
		end := min(start+per, len(jobs))
		sub := map[int][]string{}
		for i := start; i < end; i++ {
			if d, ok := deposited[i]; ok {
				sub[i-start] = d
			}
		}
		n, err := s.recordTransportChunk(rec, jobs[start:end], sent[start:end], sub)
		moved += n
		if err != nil {
			return moved, err
		}
	}
	return moved, nil
}

func (s *Service) recordTransportChunk(rec contact.Signed, jobs []*job, sent []bool, deposited map[int][]string) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.begin()
	// Transport bookkeeping: if lost, the job is simply moved again and the
	// recipient drops the duplicate.
	t.lazy = true
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
		j.Payload = nil // the envelope is stored from now on
		if j.MsgID == "" {
			// Receipts and control messages need no state: once moved,
			// they are done.
			if j.done(len(rec.HomeRelays)) || j.Sent {
				t.deleteJob(j.Key)
			} else {
				t.updateJob(j)
			}
			continue
		}
		t.updateJob(j)
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
	if err := t.commit(); err != nil {
		return 0, err
	}
	for _, m := range changed {
		c := *m
		s.emit(Event{Type: "state", Message: &c})
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

func (s *Service) relayOK(p peer.ID) {
	s.restMu.Lock()
	defer s.restMu.Unlock()
	delete(s.rest, p)
}
