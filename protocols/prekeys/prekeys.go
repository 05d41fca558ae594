package prekeys

import (
	"time"

	"github.com/kinmesh/kinmesh/protocols/e2ee"
)

// ID is the protocol id.
const ID = "/kinmesh/prekeys/1.0.0"

// ServiceName is the resource-manager service both sides' streams are
// attributed to.
const ServiceName = "kinmesh.prekeys"

// Namespace is the relay store namespace the service keeps prekeys in.
const Namespace = "prekeys"

// Size caps.
const (
	// MaxUploadSize caps an encoded e2ee upload (the same cap e2ee
	// applies): about 200 one-time ML-KEM-768 prekeys plus 200 X25519.
	MaxUploadSize = 512 << 10
	// MaxBundleSize caps an encoded e2ee bundle (the same cap e2ee
	// applies).
	MaxBundleSize = 4 << 10

	maxRequestFrame  = 128                  // fetch and hello frames
	maxOwnerFrame    = MaxUploadSize + 1024 // owner request: upload, identity, signature
	maxResponseFrame = 16 << 10             // bundle, or status with up to 2×200 ids
	nonceSize        = 32
)

// Status is what a relay holds for an account, as it reports after an
// owner operation. IDs are those of the owner's prekeys (e2ee.PrekeyID).
type Status struct {
	// SignedPrekey and LastResort are the ids of the current signed
	// X25519 prekey and last-resort ML-KEM prekey, with their creation
	// times; 0 when the relay holds none.
	SignedPrekey        e2ee.PrekeyID
	SignedPrekeyCreated time.Time
	LastResort          e2ee.PrekeyID
	LastResortCreated   time.Time
	// MaxOneTimeID is the highest one-time prekey id the relay ever
	// accepted for the account: it ignores one-time prekeys with lower or
	// equal ids, so none it handed out can come back.
	MaxOneTimeID e2ee.PrekeyID
	// OneTimeIDs and PQOneTimeIDs are the one-time X25519 and ML-KEM
	// prekeys the relay still holds, ascending (it hands them out lowest
	// first).
	OneTimeIDs   []e2ee.PrekeyID
	PQOneTimeIDs []e2ee.PrekeyID

	// After a publish: how many one-time prekeys of each kind it added,
	// and whether it replaced the signed and the last-resort prekey.
	AddedOneTime, AddedPQOneTime       int
	ReplacedSigned, ReplacedLastResort bool

	// After a purge: how many records it deleted.
	Purged int
}

// Counts returns how many one-time X25519 and ML-KEM prekeys the relay
// holds, like e2ee.PrekeyStore.Counts.
func (s Status) Counts() (oneTime, pqOneTime int) { return len(s.OneTimeIDs), len(s.PQOneTimeIDs) }
