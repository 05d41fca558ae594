package moments

import (
	"crypto/cipher"
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/binary"
	"fmt"
	"strings"

	"golang.org/x/crypto/chacha20poly1305"

	"github.com/kinmesh/kinmesh/protocols/blobs"
	"github.com/kinmesh/kinmesh/protocols/e2ee"
)

// Domain-separation strings, each used for exactly one purpose.
const (
	ownerKeyLabel    = "kinmesh/moments/owner-key/v1"
	mediaSecretLabel = "kinmesh/moments/media-delete/v1"
	reactSecretLabel = "kinmesh/moments/reaction-delete/v1"
	topicLabel       = "kinmesh/moments/topic/v2"
	legacyTopicLabel = "kinmesh/moments/topic/v1"
	audienceLabel    = "kinmesh/moments/audience-key/v1"
	mediaKeyLabel    = "kinmesh/moments/media/v1"
	postBodyLabel    = "kinmesh/moments/post-body/v1"
	reactionLabel    = "kinmesh/moments/reaction-body/v1"
	reactionSigLabel = "kinmesh/moments/reaction/v1"
	withdrawLabel    = "kinmesh/moments/withdraw/v1"
	frameSigLabel    = "kinmesh/moments/frame/v1"
	registerLabel    = "kinmesh/moments/register/v1"
	backfillLabel    = "kinmesh/moments/backfill/v1"
	purgeLabel       = "kinmesh/moments/purge/v1"
)

var topicEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// topicIDLen is the length of a topic name after TopicPrefix: 160 bits in
// base32.
const topicIDLen = 32

// accountSecret derives a 32-byte secret of the account for one purpose:
// HKDF-SHA256 over the identity's (deterministic) Ed25519 signature of the
// label, info the label. Only the identity's holder can compute it, and it
// is never sent anywhere, so the keys below need no storage and survive a
// local wipe (account deletion purges relays with them).
func accountSecret(id *e2ee.Identity, label string) []byte {
	k, err := hkdf.Key(sha256.New, id.Sign([]byte(label)), nil, label, 32)
	if err != nil {
		panic("moments: hkdf: " + err.Error())
	}
	return k
}

// OwnerKey is the account's feed owner key: it signs its moments and
// tombstones and its requests to relays. Relays know its public half and
// nothing that links it to the account.
func OwnerKey(id *e2ee.Identity) ed25519.PrivateKey {
	return ed25519.NewKeyFromSeed(accountSecret(id, ownerKeyLabel))
}

// MediaSecret is the secret the account derives its media's blob delete
// keys from (blobs.DeleteKey).
func MediaSecret(id *e2ee.Identity) []byte { return accountSecret(id, mediaSecretLabel) }

// reactionDeleteKey is the Ed25519 key that can withdraw the account's
// reaction item.
func reactionDeleteKey(id *e2ee.Identity, item itemID) ed25519.PrivateKey {
	m := hmac.New(sha256.New, accountSecret(id, reactSecretLabel))
	m.Write(item[:])
	return ed25519.NewKeyFromSeed(m.Sum(nil))
}

// epochKeys are one epoch of a feed: the secret friends receive, the topic
// it names and the audience key it derives.
type epochKeys struct {
	epoch    uint64
	secret   [32]byte
	topic    string
	audience ed25519.PrivateKey
	// legacy marks an epoch whose topic is derived from the secret (topic
	// version 1, before topics were bound to the audience key): relays
	// refuse to register it, so an own current epoch of it is rotated
	// away when a relay does.
	legacy bool
}

// Topic versions: how an epoch's topic is derived (stored with each
// epoch; the key distribution's version).
const (
	topicVersionLegacy   = 1 // from the secret
	topicVersionAudience = 2 // from the audience public key (TopicOf)
)

func newEpochSecret() ([32]byte, error) {
	var s [32]byte
	_, err := rand.Read(s[:])
	return s, err
}

// deriveEpoch derives an epoch's audience key from its secret, and its
// topic from the audience public key:
//
//	audience = Ed25519 key from seed HKDF-SHA256(secret, info "kinmesh/moments/audience-key/v1")
//	topic    = TopicOf(audience's public key)
//
// The topic says nothing of whose feed it is; only holders of the secret
// (the author's friends) and the relays the author registered it with can
// tell which topic is which author's. Only a holder of the audience
// private key can register it with a relay (Register carries the
// audience key's signature, and the relay recomputes the topic).
func deriveEpoch(epoch uint64, secret [32]byte) epochKeys {
	return deriveEpochVersion(epoch, secret, topicVersionAudience)
}

// deriveEpochVersion derives an epoch of a topic version; any version but
// topicVersionAudience (0 in records older than the version) is legacy:
//
//	topic = TopicPrefix || base32(HMAC-SHA256(secret, "kinmesh/moments/topic/v1")[:20])
func deriveEpochVersion(epoch uint64, secret [32]byte, version uint32) epochKeys {
	seed, err := hkdf.Key(sha256.New, secret[:], nil, audienceLabel, ed25519.SeedSize)
	if err != nil {
		panic("moments: hkdf: " + err.Error())
	}
	k := epochKeys{epoch: epoch, secret: secret, audience: ed25519.NewKeyFromSeed(seed)}
	if version == topicVersionAudience {
		k.topic = TopicOf(k.audience.Public().(ed25519.PublicKey))
		return k
	}
	m := hmac.New(sha256.New, secret[:])
	m.Write([]byte(legacyTopicLabel))
	k.topic = TopicPrefix + topicEncoding.EncodeToString(m.Sum(nil)[:20])
	k.legacy = true
	return k
}

// topicVersion is the version to store and distribute with k.
func (k epochKeys) topicVersion() uint32 {
	if k.legacy {
		return topicVersionLegacy
	}
	return topicVersionAudience
}

// TopicOf returns the topic an epoch's audience public key names:
//
//	TopicPrefix || base32-lower-nopad(SHA-256("kinmesh/moments/topic/v2" || audience)[:20])
//
// Relays register a topic only with this audience key's signature.
func TopicOf(audience ed25519.PublicKey) string {
	h := sha256.New()
	h.Write([]byte(topicLabel))
	h.Write(audience)
	return TopicPrefix + topicEncoding.EncodeToString(h.Sum(nil)[:20])
}

// TopicName returns the topic an epoch secret names (for tools and tests).
func TopicName(secret [32]byte) string { return deriveEpoch(0, secret).topic }

// validTopic reports whether t is a well-formed moments topic name.
func validTopic(t string) bool {
	rest, ok := strings.CutPrefix(t, TopicPrefix)
	if !ok || len(rest) != topicIDLen {
		return false
	}
	_, err := topicEncoding.DecodeString(rest)
	return err == nil
}

// mediaKey is the key medium index of a moment is sealed under.
func mediaKey(postKey *[32]byte, index uint32) *[32]byte {
	var info [len(mediaKeyLabel) + 4]byte
	copy(info[:], mediaKeyLabel)
	binary.BigEndian.PutUint32(info[len(mediaKeyLabel):], index)
	k, err := hkdf.Key(sha256.New, postKey[:], nil, string(info[:]), 32)
	if err != nil {
		panic("moments: hkdf: " + err.Error())
	}
	return (*[32]byte)(k)
}

// seal encrypts pt under a subkey of the post key for one purpose:
//
//	nonce (24, random) || XChaCha20-Poly1305(HKDF-SHA256(postKey, info label), nonce, pt, ad)
func seal(postKey *[32]byte, label string, ad, pt []byte) []byte {
	aead := bodyAEAD(postKey, label)
	out := make([]byte, chacha20poly1305.NonceSizeX, chacha20poly1305.NonceSizeX+len(pt)+chacha20poly1305.Overhead)
	if _, err := rand.Read(out); err != nil {
		panic("moments: read random: " + err.Error())
	}
	return aead.Seal(out, out, pt, ad)
}

func open(postKey *[32]byte, label string, ad, sealed []byte) ([]byte, error) {
	if len(sealed) < chacha20poly1305.NonceSizeX+chacha20poly1305.Overhead {
		return nil, fmt.Errorf("sealed body of %d bytes: %w", len(sealed), ErrMalformed)
	}
	pt, err := bodyAEAD(postKey, label).Open(nil, sealed[:chacha20poly1305.NonceSizeX], sealed[chacha20poly1305.NonceSizeX:], ad)
	if err != nil {
		return nil, fmt.Errorf("open body: %w", ErrSignature)
	}
	return pt, nil
}

func bodyAEAD(postKey *[32]byte, label string) cipher.AEAD {
	k, err := hkdf.Key(sha256.New, postKey[:], nil, label, chacha20poly1305.KeySize)
	if err != nil {
		panic("moments: hkdf: " + err.Error())
	}
	a, err := chacha20poly1305.NewX(k)
	if err != nil {
		panic("moments: aead: " + err.Error())
	}
	return a
}

// postAD and reactionAD bind a sealed body to its frame.
func postAD(post itemID) []byte {
	return append([]byte(postBodyLabel), post[:]...)
}

func reactionAD(post, item itemID, deleteKey ed25519.PublicKey) []byte {
	ad := append([]byte(reactionLabel), post[:]...)
	ad = append(ad, item[:]...)
	return append(ad, deleteKey...)
}

// withdrawMessage is what a reaction's delete key signs to take it back.
func withdrawMessage(post, item itemID) []byte {
	m := append([]byte(withdrawLabel), 0)
	m = append(m, post[:]...)
	return append(m, item[:]...)
}

// blobDeleteKey is the delete key of a moment's medium.
func blobDeleteKey(mediaSecret []byte, id blobs.BlobID) ed25519.PrivateKey {
	return blobs.DeleteKey(mediaSecret, id)
}
