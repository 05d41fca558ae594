package e2ee

import (
	"encoding/binary"
	"fmt"
	"math/bits"
)

// Envelope size buckets. An envelope's plaintext is padded to the smallest
// bucket that holds it before encryption, so a relay sees only which of
// these eight sizes an envelope has, never its content's length.
const (
	// MinEnvelopeBucket is the smallest padded plaintext size.
	MinEnvelopeBucket = 512
	// MaxEnvelopeBucket is the largest padded plaintext size. Bigger
	// content (photos, videos) travels as separately encrypted media,
	// referenced from a message.
	MaxEnvelopeBucket = 64 << 10

	// envLenPrefix is the length prefix inside the padded plaintext.
	envLenPrefix = 4
)

// envBucket returns the bucket for n bytes of unpadded content (length
// prefix included): the smallest power of two from MinEnvelopeBucket to
// MaxEnvelopeBucket that is at least n.
func envBucket(n int) (int, error) {
	if n > MaxEnvelopeBucket {
		return 0, fmt.Errorf("envelope content of %d bytes: %w", n, ErrTooLarge)
	}
	if n <= MinEnvelopeBucket {
		return MinEnvelopeBucket, nil
	}
	return 1 << bits.Len(uint(n-1)), nil
}

// envIsBucket reports whether n is one of the bucket sizes.
func envIsBucket(n int) bool {
	return n >= MinEnvelopeBucket && n <= MaxEnvelopeBucket && n&(n-1) == 0
}

// envPadded allocates the padded plaintext for content of size n and
// returns it with length 4 (the prefix written) and capacity the bucket;
// the caller appends the content and reslices to the full capacity. Go
// zeroes the allocation, so the padding is zero bytes.
//
// Layout: length of content (4 bytes, big endian) || content || zeros.
func envPadded(n int) ([]byte, error) {
	bucket, err := envBucket(envLenPrefix + n)
	if err != nil {
		return nil, err
	}
	buf := make([]byte, envLenPrefix, bucket)
	binary.BigEndian.PutUint32(buf, uint32(n))
	return buf, nil
}

// envUnpad checks and strips the padding: the length must be a bucket
// size, the prefix must fit, and every padding byte must be zero, so each
// content has exactly one padded form.
func envUnpad(padded []byte) ([]byte, error) {
	if !envIsBucket(len(padded)) {
		return nil, fmt.Errorf("envelope padding: %d bytes is no bucket: %w", len(padded), ErrMalformed)
	}
	n := binary.BigEndian.Uint32(padded)
	if uint64(n) > uint64(len(padded)-envLenPrefix) {
		return nil, fmt.Errorf("envelope padding: length %d: %w", n, ErrMalformed)
	}
	content := padded[envLenPrefix : envLenPrefix+int(n)]
	var acc byte
	for _, b := range padded[envLenPrefix+int(n):] {
		acc |= b
	}
	if acc != 0 {
		return nil, fmt.Errorf("envelope padding: nonzero padding: %w", ErrMalformed)
	}
	if bucket, _ := envBucket(envLenPrefix + int(n)); bucket != len(padded) {
		return nil, fmt.Errorf("envelope padding: content of %d bytes in a %d-byte bucket: %w", n, len(padded), ErrMalformed)
	}
	return content, nil
}
