package backup

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base32"
	"fmt"
	"io"
	"strings"
)

// The recovery secret: 144 random bits the user writes down when they
// turn backups on. With the 16-bit check it makes 20 bytes, shown as 32
// characters of RFC 4648 base32 in 8 groups of 4:
//
//	secret  = 18 random bytes
//	check   = SHA-256("kinmesh/backup/secret/v1" || secret)[0:2]
//	display = base32(secret || check), grouped "ABCD-EFGH-…-WXYZ"
//
// The check catches typos before a verification code is spent on them
// (a random string passes it once in 65,536). Parsing ignores case,
// spaces and dashes, and reads 0, 1 and 8 as O, I and B, which base32
// does not use.

// SecretSize is the secret's random part, in bytes (144 bits).
const SecretSize = 18

const (
	checkSize     = 2
	secretChars   = (SecretSize + checkSize) * 8 / 5 // 32
	secretGroup   = 4
	secretContext = "kinmesh/backup/secret/v1"
)

var secretEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// Secret is a recovery secret. It is the only thing that unlocks the
// account's backups: it is shown to the user once and never stored,
// logged or sent anywhere.
type Secret struct {
	b [SecretSize]byte
}

// NewSecret returns a new random secret read from r (crypto/rand.Reader).
func NewSecret(r io.Reader) (Secret, error) {
	var s Secret
	if _, err := io.ReadFull(r, s.b[:]); err != nil {
		return Secret{}, fmt.Errorf("backup: new secret: %w", err)
	}
	return s, nil
}

func (s Secret) check() []byte {
	h := sha256.Sum256(append([]byte(secretContext), s.b[:]...))
	return h[:checkSize]
}

// String returns the secret as the user writes it down: 8 groups of 4
// characters, A–Z and 2–7, joined by dashes.
func (s Secret) String() string {
	raw := secretEncoding.EncodeToString(append(s.b[:], s.check()...))
	var b strings.Builder
	for i := 0; i < len(raw); i += secretGroup {
		if i > 0 {
			b.WriteByte('-')
		}
		b.WriteString(raw[i:min(i+secretGroup, len(raw))])
	}
	return b.String()
}

// ParseSecret reads a secret as the user typed it. Errors wrap
// ErrInvalidSecret.
func ParseSecret(str string) (Secret, error) {
	if len(str) > 4*secretChars {
		return Secret{}, fmt.Errorf("%w: too long", ErrInvalidSecret)
	}
	var b strings.Builder
	for _, r := range strings.ToUpper(str) {
		switch {
		case r == ' ' || r == '-' || r == '\t' || r == '\n' || r == '\r':
		case r == '0':
			b.WriteByte('O')
		case r == '1':
			b.WriteByte('I')
		case r == '8':
			b.WriteByte('B')
		case r >= 'A' && r <= 'Z', r >= '2' && r <= '7':
			b.WriteRune(r)
		default:
			return Secret{}, fmt.Errorf("%w: unexpected character %q", ErrInvalidSecret, r)
		}
	}
	if b.Len() != secretChars {
		return Secret{}, fmt.Errorf("%w: %d characters, want %d", ErrInvalidSecret, b.Len(), secretChars)
	}
	raw, err := secretEncoding.DecodeString(b.String())
	if err != nil || len(raw) != SecretSize+checkSize {
		return Secret{}, fmt.Errorf("%w: not base32", ErrInvalidSecret)
	}
	var s Secret
	copy(s.b[:], raw)
	if subtle.ConstantTimeCompare(s.check(), raw[SecretSize:]) != 1 {
		return Secret{}, fmt.Errorf("%w: check characters don't match", ErrInvalidSecret)
	}
	return s, nil
}

// Equal reports whether s and t are the same secret, in constant time.
func (s Secret) Equal(t Secret) bool {
	return subtle.ConstantTimeCompare(s.b[:], t.b[:]) == 1
}

// IsZero reports whether s is the zero Secret (not a secret).
func (s Secret) IsZero() bool { return s == Secret{} }
