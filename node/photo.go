package node

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	_ "image/jpeg" // image.DecodeConfig: JPEG photos
	_ "image/png"  // image.DecodeConfig: PNG photos
	"slices"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"

	"github.com/kinmesh/kinmesh/protocols/blobs"
	"github.com/kinmesh/kinmesh/protocols/contact"
	"github.com/kinmesh/kinmesh/protocols/e2ee"
	"github.com/kinmesh/kinmesh/storage"
)

// Profile photo. The photo is optional. SetPhoto checks it (JPEG or PNG,
// at most MaxPhotoSize bytes and MaxPhotoSide pixels a side), seals it
// under a fresh random key into an encrypted blob (protocols/blobs) and
// uploads it to every home relay; the signed contact record then carries
// a contact.PhotoRef (blob id, key, size, type), so anyone who has the
// record — a contact, the DHT — can fetch the blob from the account's
// home relays and open it, and no one else can (ContactPhoto). Relays see
// ciphertext only. The record goes out with every envelope from then on
// and into the DHT, like a change of home relays.
//
// Each blob is deletable with a key derived from the account identity
// (photoDeleteSecret), so a restored device can delete the photos of the
// lost one. Replacing or clearing the photo deletes the old blob from the
// relays; blobs a relay did not confirm deleting are kept in the
// "account" namespace (keyPhotoStale), retried at the next change, and
// handed to the account-deletion purge (delete.go), which deletes every
// blob the account still has.

// Photo limits.
const (
	// MaxPhotoSize caps a profile photo, in bytes.
	MaxPhotoSize = 512 << 10
	// MaxPhotoSide caps its width and height, in pixels.
	MaxPhotoSide = 4096
)

// Photo errors. The API maps each to its own code (docs/api.md,
// "Profile photo").
var (
	// ErrPhotoTooLarge: over MaxPhotoSize bytes or MaxPhotoSide pixels.
	ErrPhotoTooLarge = errors.New("node: profile photo too large: at most 512 KiB and 4096×4096 pixels")
	// ErrPhotoType: not a JPEG or PNG image.
	ErrPhotoType = errors.New("node: a profile photo must be a JPEG or PNG image")
	// ErrNoPhoto: the account (or contact) has no profile photo.
	ErrNoPhoto = errors.New("node: no profile photo")
	// ErrPhotoUnavailable: no relay served the photo (or what it served
	// does not open).
	ErrPhotoUnavailable = errors.New("node: the profile photo could not be fetched from any home relay; try again later")
)

// Keys in the "account" namespace for the photo.
const (
	keyPhotoData  = "photo"       // the current photo's bytes
	keyPhotoStale = "photo-stale" // JSON []staleBlob: old photos still on relays
)

// photoState serializes photo changes (Node.photo).
type photoState struct {
	mu sync.Mutex
}

// staleBlob is an old photo blob some relays may still hold.
type staleBlob struct {
	Blob   string   `json:"blob"`   // hex id
	Relays []string `json:"relays"` // full multiaddrs still to delete it from
}

// PhotoInfo is the profile photo's reference as the API shows it (in
// GET /v1/account and the export).
type PhotoInfo struct {
	// Blob is the encrypted blob's id on the home relays (hex).
	Blob string `json:"blob"`
	// Key is the blob's key (32 bytes, base64): it is in the signed
	// contact record, visible to whoever has the record.
	Key []byte `json:"key"`
	// Type is "image/jpeg" or "image/png"; Size the photo's bytes.
	Type string `json:"type"`
	Size int    `json:"size"`
}

func photoInfo(rec contact.Signed) *PhotoInfo {
	p, ok := rec.PhotoRef()
	if !ok {
		return nil
	}
	return &PhotoInfo{Blob: hex.EncodeToString(p.Blob[:]), Key: bytes.Clone(p.Key[:]), Type: p.Type, Size: int(p.Size)}
}

// checkPhoto returns data's media type, or why it is no profile photo.
func checkPhoto(data []byte) (string, error) {
	if len(data) > MaxPhotoSize {
		return "", fmt.Errorf("%w (%d bytes)", ErrPhotoTooLarge, len(data))
	}
	if len(data) == 0 {
		return "", fmt.Errorf("%w: empty", ErrPhotoType)
	}
	cfg, format, err := image.DecodeConfig(bytes.NewReader(data))
	if err != nil {
		return "", fmt.Errorf("%w (%v)", ErrPhotoType, err)
	}
	if cfg.Width <= 0 || cfg.Height <= 0 {
		return "", fmt.Errorf("%w: %d×%d pixels", ErrPhotoType, cfg.Width, cfg.Height)
	}
	if cfg.Width > MaxPhotoSide || cfg.Height > MaxPhotoSide {
		return "", fmt.Errorf("%w (%d×%d pixels)", ErrPhotoTooLarge, cfg.Width, cfg.Height)
	}
	return "image/" + format, nil
}

// photoDeleteSecret is the secret the account's photo blobs' delete keys
// derive from (blobs.DeleteKey): the identity's Ed25519 signature of a
// fixed string, deterministic, so every device of the account (a restored
// one too) derives the same keys and stores none.
func photoDeleteSecret(id *e2ee.Identity) []byte {
	return id.Sign([]byte("kinmesh/profile/photo/delete-secret/v1"))
}

func photoProof(id *e2ee.Identity, blob blobs.BlobID) []byte {
	return blobs.SignDelete(blobs.DeleteKey(photoDeleteSecret(id), blob), blob)
}

// SetPhoto makes data (a JPEG or PNG image) the account's profile photo:
// it uploads it, sealed, to the home relays and signs a new contact
// record referencing it. Nothing is stored or uploaded if the photo is
// refused (ErrPhotoTooLarge, ErrPhotoType); if no home relay takes it the
// error wraps ErrPhotoUnavailable and nothing changes.
func (n *Node) SetPhoto(ctx context.Context, data []byte) (*PhotoInfo, error) {
	typ, err := checkPhoto(data)
	if err != nil {
		return nil, err
	}
	return n.changePhoto(ctx, data, typ)
}

// ClearPhoto removes the profile photo: a new record without it, and the
// blob deleted from the relays.
func (n *Node) ClearPhoto(ctx context.Context) error {
	_, err := n.changePhoto(ctx, nil, "")
	return err
}

// changePhoto sets (data != nil) or clears the photo.
func (n *Node) changePhoto(ctx context.Context, data []byte, typ string) (*PhotoInfo, error) {
	if n.host == nil {
		return nil, ErrNotStarted
	}
	n.photo.mu.Lock()
	defer n.photo.mu.Unlock()
	n.acctMu.Lock()
	a := n.acct
	n.acctMu.Unlock()
	if a == nil {
		return nil, ErrNoAccount
	}
	c, err := blobs.NewClient(n.host, blobs.WithClientLogger(n.log))
	if err != nil {
		return nil, err
	}
	var ref []byte
	if data != nil {
		var key [32]byte
		if _, err := rand.Read(key[:]); err != nil {
			return nil, err
		}
		sealed, err := blobs.Seal(&key, data)
		if err != nil {
			return nil, err
		}
		if ref, err = contact.MarshalPhotoRef(contact.PhotoRef{Blob: sealed.ID, Key: key, Size: uint32(len(data)), Type: typ}); err != nil {
			return nil, err
		}
		if err := n.uploadPhoto(ctx, c, a, sealed); err != nil {
			return nil, err
		}
	}
	n.acctMu.Lock()
	if n.acct != a {
		n.acctMu.Unlock()
		return nil, ErrNoAccount
	}
	old, hadOld := a.record.PhotoRef()
	if data == nil && len(a.record.Photo) == 0 {
		n.acctMu.Unlock()
		return nil, nil // no photo to clear
	}
	next := *a
	next.record.Photo = ref
	rec, err := n.signRecord(&next, a.record.Seq+1)
	if err == nil {
		err = n.storePhoto(ctx, rec, data, hadOld, old, a.HomeRelays)
	}
	if err != nil {
		n.acctMu.Unlock()
		return nil, err
	}
	a.record = rec
	if n.msg != nil {
		n.msg.UpdateRecord(rec)
	}
	n.recordChanged()
	n.acctMu.Unlock()
	n.kickRecovery() // the backup holds the record
	n.deleteStalePhotos(ctx, c, a.identity)
	n.log.Info("profile photo changed", "set", data != nil)
	return photoInfo(rec), nil
}

// uploadPhoto puts sealed on every home relay, in parallel; one is
// enough (the others get it at the next change), none is an error.
func (n *Node) uploadPhoto(ctx context.Context, c *blobs.Client, a *account, sealed *blobs.Sealed) error {
	dk := blobs.DeleteKey(photoDeleteSecret(a.identity), sealed.ID).Public().(ed25519.PublicKey)
	var (
		mu   sync.Mutex
		wg   sync.WaitGroup
		errs []error
		took int
	)
	uctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	for _, r := range a.HomeRelays {
		ai, err := peer.AddrInfoFromString(r)
		if err != nil {
			continue
		}
		n.host.Peerstore().AddAddrs(ai.ID, ai.Addrs, peerstore.TempAddrTTL)
		wg.Go(func() {
			_, err := c.Put(uctx, ai.ID, sealed, dk)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			took++
		})
	}
	wg.Wait()
	if took == 0 {
		errs = append(errs, errors.New("no home relay"))
		return fmt.Errorf("%w: %w", ErrPhotoUnavailable, errors.Join(errs...))
	}
	if len(errs) > 0 {
		n.log.Debug("profile photo: some home relays did not take it", "took", took, "err", errors.Join(errs...))
	}
	return nil
}

// storePhoto writes the new record and photo, and notes the old blob as
// stale, in one batch. Called with acctMu held.
func (n *Node) storePhoto(ctx context.Context, rec contact.Signed, data []byte, hadOld bool, old contact.PhotoRef, homes []string) error {
	ns := n.store.Namespace("account")
	stale, err := n.loadStalePhotos(ctx)
	if err != nil {
		return err
	}
	if hadOld {
		id := hex.EncodeToString(old.Blob[:])
		if !slices.ContainsFunc(stale, func(s staleBlob) bool { return s.Blob == id }) {
			stale = append(stale, staleBlob{Blob: id, Relays: slices.Clone(homes)})
		}
	}
	b := n.store.NewBatch()
	if err := b.Put(ns, keyRecord, rec.Raw); err != nil {
		return err
	}
	if data != nil {
		err = b.Put(ns, keyPhotoData, data)
	} else {
		err = b.Delete(ns, keyPhotoData)
	}
	if err != nil {
		return err
	}
	if len(stale) > 0 {
		v, err := json.Marshal(stale)
		if err != nil {
			return err
		}
		if err := b.Put(ns, keyPhotoStale, v); err != nil {
			return err
		}
	}
	if err := b.Commit(ctx); err != nil {
		return fmt.Errorf("store profile photo: %w", err)
	}
	return nil
}

func (n *Node) loadStalePhotos(ctx context.Context) ([]staleBlob, error) {
	v, err := n.store.Namespace("account").Get(ctx, keyPhotoStale)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []staleBlob
	return out, json.Unmarshal(v, &out)
}

// deleteStalePhotos deletes old photo blobs from the relays still holding
// them and forgets those every relay confirmed.
func (n *Node) deleteStalePhotos(ctx context.Context, c *blobs.Client, id *e2ee.Identity) {
	stale, err := n.loadStalePhotos(ctx)
	if err != nil || len(stale) == 0 {
		return
	}
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var keep []staleBlob
	for _, s := range stale {
		blob, err := blobs.ParseBlobID(s.Blob)
		if err != nil {
			continue
		}
		var left []string
		for _, r := range s.Relays {
			if err := n.deletePhotoBlob(dctx, c, r, id, blob); err != nil {
				left = append(left, r)
			}
		}
		if len(left) > 0 {
			keep = append(keep, staleBlob{Blob: s.Blob, Relays: left})
		}
	}
	ns := n.store.Namespace("account")
	if len(keep) == 0 {
		err = ns.Delete(ctx, keyPhotoStale)
	} else {
		var v []byte
		if v, err = json.Marshal(keep); err == nil {
			err = ns.Put(ctx, keyPhotoStale, v)
		}
	}
	if err != nil {
		n.log.Debug("profile photo: note stale blobs", "err", err)
	}
}

// deletePhotoBlob deletes one photo blob from one relay; a relay that no
// longer holds it, or holds no blobs at all, confirms.
func (n *Node) deletePhotoBlob(ctx context.Context, c *blobs.Client, relay string, id *e2ee.Identity, blob blobs.BlobID) error {
	ai, err := peer.AddrInfoFromString(relay)
	if err != nil {
		return nil // not an address: nothing to do there, ever
	}
	n.host.Peerstore().AddAddrs(ai.ID, ai.Addrs, peerstore.TempAddrTTL)
	err = c.Delete(ctx, ai.ID, blob, photoProof(id, blob))
	if err == nil || errors.Is(err, blobs.ErrNotFound) || unsupported(err) {
		return nil
	}
	return err
}

// photoBlobs returns every photo blob the account may still have on
// relays: the current one and the stale ones (hex ids), for the
// account-deletion purge.
func (n *Node) photoBlobs(ctx context.Context, a *account) []string {
	n.acctMu.Lock()
	rec := a.record
	n.acctMu.Unlock()
	var out []string
	if p, ok := rec.PhotoRef(); ok {
		out = append(out, hex.EncodeToString(p.Blob[:]))
	}
	stale, _ := n.loadStalePhotos(ctx)
	for _, s := range stale {
		if !slices.Contains(out, s.Blob) {
			out = append(out, s.Blob)
		}
	}
	return out
}

// purgePhotos is the account-deletion purge of the photo blobs on one
// relay (delete.go).
func (n *Node) purgePhotos(ctx context.Context, relay string, id *e2ee.Identity, ids []string) error {
	if len(ids) == 0 {
		return nil
	}
	c, err := blobs.NewClient(n.host, blobs.WithClientLogger(n.log))
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var errs []error
	for _, s := range ids {
		blob, err := blobs.ParseBlobID(s)
		if err != nil {
			continue
		}
		if err := n.deletePhotoBlob(ctx, c, relay, id, blob); err != nil {
			errs = append(errs, fmt.Errorf("photo: %w", err))
		}
	}
	return errors.Join(errs...)
}

// Photo returns the account's profile photo and its media type.
func (n *Node) Photo(ctx context.Context) ([]byte, string, error) {
	a, rec := n.accountRecord()
	if a == nil {
		return nil, "", ErrNoAccount
	}
	p, ok := rec.PhotoRef()
	if !ok {
		return nil, "", ErrNoPhoto
	}
	data, err := n.store.Namespace("account").Get(ctx, keyPhotoData)
	if err == nil {
		return data, p.Type, nil
	}
	if !errors.Is(err, storage.ErrNotFound) {
		return nil, "", err
	}
	// A restored device: the photo is on the relays only.
	data, err = n.fetchPhoto(ctx, rec)
	if err != nil {
		return nil, "", err
	}
	if err := n.store.Namespace("account").Put(ctx, keyPhotoData, data); err != nil {
		n.log.Debug("profile photo: keep a copy", "err", err)
	}
	return data, p.Type, nil
}

// ContactPhoto fetches a contact's profile photo from the contact's home
// relays and opens it with the key in the contact's record. If the record
// this node has names no photo, it looks for a newer record in the DHT
// first.
func (n *Node) ContactPhoto(ctx context.Context, id string) ([]byte, string, error) {
	book, err := n.contactBook()
	if err != nil {
		return nil, "", err
	}
	rec, ok := book.Contact(accountID(id))
	if !ok {
		return nil, "", ErrUnknownContact
	}
	if _, ok := rec.PhotoRef(); !ok && n.dht != nil {
		lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		if dr, err := n.LookupRecord(lctx, id); err == nil && dr.Newer(rec.Record) {
			book.Learn(dr)
			rec = dr
		}
		cancel()
	}
	p, ok := rec.PhotoRef()
	if !ok {
		return nil, "", ErrNoPhoto
	}
	data, err := n.fetchPhoto(ctx, rec)
	if err != nil {
		return nil, "", err
	}
	return data, p.Type, nil
}

// fetchPhoto gets the photo of rec from its home relays, in order, and
// opens it.
func (n *Node) fetchPhoto(ctx context.Context, rec contact.Signed) ([]byte, error) {
	p, ok := rec.PhotoRef()
	if !ok {
		return nil, ErrNoPhoto
	}
	if n.host == nil {
		return nil, ErrNotStarted
	}
	c, err := blobs.NewClient(n.host, blobs.WithClientLogger(n.log))
	if err != nil {
		return nil, err
	}
	blob := blobs.BlobID(p.Blob)
	var errs []error
	for _, r := range rec.Relays() {
		n.host.Peerstore().AddAddrs(r.ID, r.Addrs, peerstore.TempAddrTTL)
		gctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		chunks, err := c.Get(gctx, r.ID, blob)
		cancel()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		data, err := blobs.Open(&p.Key, chunks)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if typ, err := checkPhoto(data); err != nil || typ != p.Type || len(data) != int(p.Size) {
			errs = append(errs, fmt.Errorf("relay %s: the photo is not the record's (%v)", r.ID, err))
			continue
		}
		return data, nil
	}
	return nil, fmt.Errorf("%w: %w", ErrPhotoUnavailable, errors.Join(errs...))
}
