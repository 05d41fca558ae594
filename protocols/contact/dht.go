package contact

import (
	"errors"
	"fmt"
	"strings"

	"github.com/kinmesh/kinmesh/protocols/e2ee"
)

// DHTKey is the DHT key under which account's record is published.
func DHTKey(account e2ee.AccountID) string {
	return "/" + DHTNamespace + "/" + string(account)
}

// Validator checks contact records in the DHT: the value must be a
// validly signed record of the account the key names; among several, the
// highest seq wins. Register it under DHTNamespace on relays and devices.
type Validator struct{}

// Validate implements record.Validator.
func (Validator) Validate(key string, value []byte) error {
	account, ok := strings.CutPrefix(key, "/"+DHTNamespace+"/")
	if !ok {
		return fmt.Errorf("%w: key %q is not in /%s/", ErrMalformed, key, DHTNamespace)
	}
	r, err := Parse(value)
	if err != nil {
		return err
	}
	if string(r.AccountID()) != account {
		return fmt.Errorf("%w: record of %s published under %s", ErrSignature, r.AccountID(), account)
	}
	return nil
}

// Select implements record.Validator: the valid record with the highest
// seq (the first of equals).
func (v Validator) Select(key string, values [][]byte) (int, error) {
	best, bestSeq := -1, uint64(0)
	for i, b := range values {
		if v.Validate(key, b) != nil {
			continue
		}
		r, _ := Parse(b)
		if best == -1 || r.Seq > bestSeq {
			best, bestSeq = i, r.Seq
		}
	}
	if best == -1 {
		return 0, errors.New("contact: no valid record to select")
	}
	return best, nil
}
