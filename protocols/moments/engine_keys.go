package moments

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"

	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/protocols/moments/pb"
	"github.com/kinmesh/kinmesh/storage"
)

// Device store keys, in the "moments" namespace, with A = Opaque(account
// id) of a feed's author, D = Opaque(a reaction's delete key), R =
// Opaque(relay peer id, topic), and hex moment and item ids. Everything
// about a moment is keyed by its author, and a reaction by its delete key
// too, so no friend's frame can touch another's (engine_store.go):
//
//	"v"                             uvarint: the layout version (storeVersion)
//	"own"                           pb.Own: our sender key, epoch, audience members
//	"aud"                           JSON Audience setting
//	"f/" A                          pb.Following: a friend's sender-key state and epochs
//	"c/" R                          uvarint: backfill cursor of a relay's topic
//	"m/" %016x(^created) "/" id "/" A  pb.StoredPost, newest first
//	"mi/" id "/" A                  the moment's "m/" key
//	"mr/" id "/" A "/" item "/" D   pb.StoredReaction
//	"md/" A "/" id                  moment deleted (TTL MarkerTTL)
//	"mw/" A "/" id "/" item "/" D   reaction withdrawn (TTL MarkerTTL)
//	"q/" seq                        pb.Pending: a frame waiting for its key or moment (TTL 1 day)
//	"o/" seq                        pb.Outbox: a frame still to be kept on relays
//	"in/" seq                       pb.Inbox: a control received, not yet applied
const (
	dkVersion  = "v"
	dkOwn      = "own"
	dkAudience = "aud"
	dkFollow   = "f/"
	dkCursor   = "c/"
	dkPost     = "m/"
	dkPostIdx  = "mi/"
	dkReaction = "mr/"
	dkDeleted  = "md/"
	dkWithdraw = "mw/"
	dkPending  = "q/"
	dkOutbox   = "o/"
	dkInbox    = "in/"

	pendingTTL = 24 * time.Hour
	maxPending = 1000
)

// load reads the engine's state at start.
func (e *Engine) load(ctx context.Context) error {
	if err := e.migrate(ctx); err != nil {
		return err
	}
	if b, err := e.ns.Get(ctx, dkAudience); err == nil {
		if err := json.Unmarshal(b, &e.audience); err != nil {
			return fmt.Errorf("moments: load audience: %w", err)
		}
	} else if !errors.Is(err, storage.ErrNotFound) {
		return fmt.Errorf("moments: load audience: %w", err)
	}
	b, err := e.ns.Get(ctx, dkOwn)
	switch {
	case err == nil:
		if e.own, err = decodeOwn(b); err != nil {
			return err
		}
	case !errors.Is(err, storage.ErrNotFound):
		return fmt.Errorf("moments: load own feed: %w", err)
	}
	return e.ns.List(ctx, storage.ListOptions{Prefix: dkFollow}, func(_ string, v []byte) error {
		f, err := decodeFollow(v)
		if err != nil {
			e.log.Warn("skipping a malformed followed feed", "err", err)
			return nil
		}
		e.follows[f.author] = f
		return nil
	})
}

func (o *ownState) encode() []byte {
	m := &pb.Own{SenderKey: o.sk.Marshal(), Epoch: o.cur.epoch, EpochSecret: o.cur.secret[:], EpochStartedMs: o.started.UnixMilli(), TopicVersion: o.cur.topicVersion()}
	for id := range o.members {
		m.Members = append(m.Members, string(id))
	}
	slices.Sort(m.Members)
	for _, p := range o.previous {
		m.Previous = append(m.Previous, &pb.OldEpoch{Epoch: p.epoch, EpochSecret: p.secret[:], RetiredMs: p.retired.UnixMilli(), TopicVersion: p.topicVersion()})
	}
	for r := range o.registered {
		m.Registered = append(m.Registered, r.String())
	}
	slices.Sort(m.Registered)
	return marshal(m)
}

func decodeOwn(b []byte) (*ownState, error) {
	var m pb.Own
	if err := proto.Unmarshal(b, &m); err != nil || len(m.GetEpochSecret()) != 32 {
		return nil, fmt.Errorf("moments: own feed record: %w", ErrMalformed)
	}
	sk, err := e2ee.UnmarshalSenderKey(m.GetSenderKey())
	if err != nil {
		return nil, fmt.Errorf("moments: own sender key: %w", err)
	}
	o := &ownState{sk: sk, cur: deriveEpochVersion(m.GetEpoch(), [32]byte(m.GetEpochSecret()), m.GetTopicVersion()), members: map[e2ee.AccountID]bool{},
		registered: map[peer.ID]bool{}, started: time.UnixMilli(m.GetEpochStartedMs())}
	for _, id := range m.GetMembers() {
		o.members[e2ee.AccountID(id)] = true
	}
	for _, p := range m.GetPrevious() {
		if len(p.GetEpochSecret()) != 32 {
			continue
		}
		o.previous = append(o.previous, oldEpoch{deriveEpochVersion(p.GetEpoch(), [32]byte(p.GetEpochSecret()), p.GetTopicVersion()), time.UnixMilli(p.GetRetiredMs())})
	}
	for _, r := range m.GetRegistered() {
		if id, err := peer.Decode(r); err == nil {
			o.registered[id] = true
		}
	}
	return o, nil
}

func (f *follow) encode() []byte {
	m := &pb.Following{Author: string(f.author), State: f.state.Marshal(), OwnerKey: f.owner}
	for _, ep := range f.epochs {
		m.Epochs = append(m.Epochs, &pb.OldEpoch{Epoch: ep.epoch, EpochSecret: ep.secret[:], RetiredMs: ep.retired.UnixMilli(), TopicVersion: ep.topicVersion()})
	}
	return marshal(m)
}

func decodeFollow(b []byte) (*follow, error) {
	var m pb.Following
	if err := proto.Unmarshal(b, &m); err != nil || len(m.GetOwnerKey()) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("moments: followed feed record: %w", ErrMalformed)
	}
	author, err := e2ee.ParseAccountID(m.GetAuthor())
	if err != nil {
		return nil, err
	}
	st, err := e2ee.UnmarshalSenderKeyState(m.GetState())
	if err != nil {
		return nil, err
	}
	f := &follow{author: author, state: st, owner: m.GetOwnerKey()}
	for _, ep := range m.GetEpochs() {
		if len(ep.GetEpochSecret()) != 32 {
			continue
		}
		var retired time.Time
		if ep.GetRetiredMs() != 0 {
			retired = time.UnixMilli(ep.GetRetiredMs())
		}
		f.epochs = append(f.epochs, oldEpoch{deriveEpochVersion(ep.GetEpoch(), [32]byte(ep.GetEpochSecret()), ep.GetTopicVersion()), retired})
	}
	return f, nil
}

func (e *Engine) followKey(a e2ee.AccountID) string { return dkFollow + e.ns.Opaque([]byte(a)) }

// Audience returns who follows this account's moments.
func (e *Engine) Audience() Audience {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.audience
}

// SetAudience changes who follows this account's moments. Removing anyone
// rotates the feed's keys and topic at once: they can't read what follows.
func (e *Engine) SetAudience(ctx context.Context, a Audience) error {
	for _, s := range append(slices.Clone(a.Exclude), a.Members...) {
		if _, err := e2ee.ParseAccountID(s); err != nil {
			return fmt.Errorf("moments: audience: %q is not an account id: %w", s, ErrMalformed)
		}
	}
	b, err := json.Marshal(a)
	if err != nil {
		return err
	}
	e.mu.Lock()
	err = e.ns.Put(ctx, dkAudience, b)
	if err == nil {
		e.audience = a
	}
	e.mu.Unlock()
	if err != nil {
		return err
	}
	return e.syncAudience(ctx)
}

// audienceSet computes the current audience from the setting and the
// contacts.
func (e *Engine) audienceSet() map[e2ee.AccountID]bool {
	a := e.Audience()
	out := map[e2ee.AccountID]bool{}
	if a.All {
		for _, id := range e.cfg.Contacts.Friends() {
			out[id] = true
		}
		for _, x := range a.Exclude {
			delete(out, e2ee.AccountID(x))
		}
	} else {
		for _, m := range a.Members {
			id := e2ee.AccountID(m)
			if _, ok := e.cfg.Contacts.Contact(id); ok {
				out[id] = true
			}
		}
	}
	for id := range out {
		if id == e.me || e.cfg.Contacts.Blocked(id) {
			delete(out, id)
		}
	}
	return out
}

// SyncAudience compares the audience with who holds the feed's key now:
// newcomers get the current key; if anyone left (removed from the
// audience, blocked) or the key is due (e2ee.SenderKeyRotateAfter), the
// feed moves to a new epoch (new sender key, topic and audience key), which
// only the remaining audience receives. It runs every AudienceInterval and
// before every post.
func (e *Engine) SyncAudience(ctx context.Context) error { return e.syncAudience(ctx) }

func (e *Engine) syncAudience(ctx context.Context) error {
	want := e.audienceSet()
	now := e.cfg.Now()
	e.mu.Lock()
	o := e.own
	rotated := false
	switch {
	case o == nil:
		sk, err := e2ee.NewSenderKey(rand.Reader, GroupID, e.me, now)
		if err != nil {
			e.mu.Unlock()
			return err
		}
		secret, err := newEpochSecret()
		if err != nil {
			e.mu.Unlock()
			return err
		}
		o = &ownState{sk: sk, cur: deriveEpoch(1, secret), members: map[e2ee.AccountID]bool{}, registered: map[peer.ID]bool{}, started: now}
		rotated = true
	case o.sk.NeedsRotation(now) || anyMissing(o.members, want) || o.refused:
		sk, err := o.sk.Rotate(rand.Reader, now)
		if err != nil {
			e.mu.Unlock()
			return err
		}
		secret, err := newEpochSecret()
		if err != nil {
			e.mu.Unlock()
			return err
		}
		prev := append([]oldEpoch{{o.cur, now}}, o.previous...)
		prev = slices.DeleteFunc(prev, func(p oldEpoch) bool { return now.Sub(p.retired) > EpochGrace })
		o = &ownState{sk: sk, cur: deriveEpoch(o.cur.epoch+1, secret), members: map[e2ee.AccountID]bool{},
			previous: prev, registered: map[peer.ID]bool{}, started: now}
		rotated = true
	}
	if rotated {
		if err := e.ns.Put(ctx, dkOwn, o.encode()); err != nil {
			e.mu.Unlock()
			return fmt.Errorf("moments: store own feed: %w", err)
		}
		e.own = o
	}
	var send []e2ee.AccountID
	for id := range want {
		if !o.members[id] {
			send = append(send, id)
		}
	}
	slices.Sort(send)
	dist := keyDistribution{senderKey: o.sk.Distribution().Marshal(), epoch: o.cur.epoch, secret: o.cur.secret, owner: e.owner.Public().(ed25519.PublicKey), legacy: o.cur.legacy}
	cur := o.cur
	e.mu.Unlock()
	if rotated {
		e.log.Info("moments feed keys rotated", "epoch", cur.epoch, "audience", len(want))
		e.joinAll()
		e.registerOwn(ctx)
	}
	if len(send) == 0 {
		return nil
	}
	if err := e.cfg.SendControl(ctx, send, ControlKey, dist.encode()); err != nil {
		return fmt.Errorf("moments: send the feed's key: %w", err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.own == nil || e.own.cur.epoch != cur.epoch {
		return nil // rotated meanwhile; the next sync sends the new key
	}
	for _, id := range send {
		e.own.members[id] = true
	}
	return e.ns.Put(ctx, dkOwn, e.own.encode())
}

func anyMissing(have, want map[e2ee.AccountID]bool) bool {
	for id := range have {
		if !want[id] {
			return true
		}
	}
	return false
}

// registerOwn registers the own feed's current topic on every home relay
// that has not yet; failures are retried with the outbox.
func (e *Engine) registerOwn(ctx context.Context) {
	for _, r := range e.cfg.HomeRelays() {
		if err := e.register(ctx, r); err != nil {
			e.log.Debug("register the moments topic", "relay", r.ID, "err", err)
			wake(e.wakeOutbox)
		}
	}
}

// register registers the current topic on relay r unless it has.
func (e *Engine) register(ctx context.Context, r peer.AddrInfo) error {
	e.mu.Lock()
	o := e.own
	if o == nil || o.registered[r.ID] {
		e.mu.Unlock()
		return nil
	}
	cur := o.cur
	e.mu.Unlock()
	e.cfg.Host.Peerstore().AddAddrs(r.ID, r.Addrs, time.Hour)
	if err := e.cfg.Relays.Register(ctx, r.ID, e.owner, cur.topic, cur.audience); err != nil {
		if cur.legacy && errors.Is(err, ErrUnauthorized) {
			// A relay refuses a legacy topic (one not bound to its
			// audience key): start a new epoch, whose topic it takes.
			e.mu.Lock()
			if e.own != nil && e.own.cur.epoch == cur.epoch {
				e.own.refused = true
			}
			e.mu.Unlock()
			wake(e.wakeAudience)
		}
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.own != nil && e.own.cur.epoch == cur.epoch {
		e.own.registered[r.ID] = true
		return e.ns.Put(ctx, dkOwn, e.own.encode())
	}
	return nil
}

// HandleControl takes a moments control from the messaging engine
// (message.Config.OnControl). It stores it before returning, so none is
// lost to a crash; it is applied in the background. It does nothing else:
// it is called under the messaging engine's lock.
func (e *Engine) HandleControl(from e2ee.AccountID, kind string, payload []byte) {
	if kind != ControlKey && kind != ControlKeyRequest {
		return
	}
	b := marshal(&pb.Inbox{From: string(from), Kind: kind, Payload: payload})
	if err := e.ns.Put(context.Background(), dkInbox+e.nextSeq(), b); err != nil {
		e.log.Warn("store a moments control", "err", err)
		return
	}
	wake(e.wakeInbox)
}

// StoreControl keeps a moments control received while no engine runs on
// st (the messaging engine started first, or the moments engine is
// stopping): the next New applies it. Other kinds are ignored.
func StoreControl(ctx context.Context, st *storage.Store, from e2ee.AccountID, kind string, payload []byte) error {
	if kind != ControlKey && kind != ControlKeyRequest {
		return nil
	}
	var r [4]byte
	_, _ = rand.Read(r[:])
	k := fmt.Sprintf("%s%020d%x", dkInbox, time.Now().UnixNano(), r)
	return st.Namespace(Namespace).Put(ctx, k, marshal(&pb.Inbox{From: string(from), Kind: kind, Payload: payload}))
}

func (e *Engine) inboxLoop() {
	for {
		e.drainInbox(e.ctx)
		select {
		case <-e.ctx.Done():
			return
		case <-e.wakeInbox:
		}
	}
}

func (e *Engine) drainInbox(ctx context.Context) {
	type item struct {
		key string
		in  *pb.Inbox
	}
	var items []item
	err := e.ns.List(ctx, storage.ListOptions{Prefix: dkInbox}, func(k string, v []byte) error {
		var in pb.Inbox
		if proto.Unmarshal(v, &in) == nil {
			items = append(items, item{k, &in})
		} else {
			items = append(items, item{k, nil})
		}
		return nil
	})
	if err != nil {
		return
	}
	for _, it := range items {
		if it.in != nil {
			if from, err := e2ee.ParseAccountID(it.in.GetFrom()); err == nil {
				e.applyControl(ctx, from, it.in.GetKind(), it.in.GetPayload())
			}
		}
		if err := e.ns.Delete(ctx, it.key); err != nil {
			return
		}
	}
}

func (e *Engine) applyControl(ctx context.Context, from e2ee.AccountID, kind string, payload []byte) {
	if e.cfg.Contacts.Blocked(from) {
		return
	}
	switch kind {
	case ControlKeyRequest:
		e.answerKeyRequest(ctx, from)
	case ControlKey:
		if err := e.applyDistribution(ctx, from, payload); err != nil {
			e.log.Debug("moments key from a contact refused", "err", err)
		}
	}
}

// applyDistribution follows (or keeps following) from's feed.
func (e *Engine) applyDistribution(ctx context.Context, from e2ee.AccountID, payload []byte) error {
	d, err := decodeDistribution(payload)
	if err != nil {
		return err
	}
	skd, err := e2ee.ParseSenderKeyDistribution(d.senderKey)
	if err != nil || skd.GroupID != GroupID {
		return fmt.Errorf("moments key: %w", ErrMalformed)
	}
	now := e.cfg.Now()
	e.mu.Lock()
	f := e.follows[from]
	var nf follow
	if f == nil {
		st, err := e2ee.NewSenderKeyState(skd, from, now)
		if err != nil {
			e.mu.Unlock()
			return err
		}
		nf = follow{author: from, state: st, owner: d.owner}
	} else {
		st, err := f.state.Apply(skd, now)
		if err != nil {
			e.mu.Unlock()
			return err
		}
		nf = follow{author: from, state: st, owner: d.owner, epochs: slices.Clone(f.epochs)}
	}
	known := slices.IndexFunc(nf.epochs, func(ep oldEpoch) bool { return ep.epoch == d.epoch })
	if known < 0 {
		newest := len(nf.epochs) == 0 || d.epoch > nf.epochs[0].epoch
		v := uint32(topicVersionAudience)
		if d.legacy {
			v = topicVersionLegacy
		}
		ep := oldEpoch{epochKeys: deriveEpochVersion(d.epoch, d.secret, v)}
		if newest {
			for i := range nf.epochs {
				if nf.epochs[i].retired.IsZero() {
					nf.epochs[i].retired = now
				}
			}
		} else {
			ep.retired = now
		}
		nf.epochs = append(nf.epochs, ep)
		slices.SortFunc(nf.epochs, func(a, b oldEpoch) int { return -cmpU64(a.epoch, b.epoch) })
		if len(nf.epochs) > maxFollowEpochs {
			nf.epochs = nf.epochs[:maxFollowEpochs]
		}
	}
	if err := e.ns.Put(ctx, e.followKey(from), nf.encode()); err != nil {
		e.mu.Unlock()
		return err
	}
	e.follows[from] = &nf
	e.mu.Unlock()
	e.joinAll()
	e.retryPending(ctx)
	wake(e.wakeBackfill)
	return nil
}

func cmpU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// requestKey asks author for its key again (at most once an hour).
func (e *Engine) requestKey(author e2ee.AccountID) {
	e.keyReqMu.Lock()
	last, ok := e.keyReqs[author]
	now := e.cfg.Now()
	if ok && now.Sub(last) < time.Hour {
		e.keyReqMu.Unlock()
		return
	}
	e.keyReqs[author] = now
	e.keyReqMu.Unlock()
	e.wg.Go(func() {
		if err := e.cfg.SendControl(e.ctx, []e2ee.AccountID{author}, ControlKeyRequest, []byte{1}); err != nil {
			e.log.Debug("ask for a moments key", "err", err)
		}
	})
}

// answerKeyRequest sends our current key to a member of the audience who
// lost it.
func (e *Engine) answerKeyRequest(ctx context.Context, from e2ee.AccountID) {
	if !e.audienceSet()[from] {
		return
	}
	e.mu.Lock()
	o := e.own
	if o == nil || !o.members[from] {
		e.mu.Unlock()
		return
	}
	dist := keyDistribution{senderKey: o.sk.Distribution().Marshal(), epoch: o.cur.epoch, secret: o.cur.secret, owner: e.owner.Public().(ed25519.PublicKey), legacy: o.cur.legacy}
	e.mu.Unlock()
	if err := e.cfg.SendControl(ctx, []e2ee.AccountID{from}, ControlKey, dist.encode()); err != nil {
		e.log.Debug("answer a moments key request", "err", err)
	}
}
