package discovery

import (
	"fmt"
	"strings"
)

// Number is a phone number in E.164 form: "+" and 8 to 15 digits, the
// first of them not 0. ParseNumber makes one; the zero Number is invalid.
//
// A Number is personal data: never log it (log Masked instead).
type Number string

// ParseNumber normalises s to E.164. It accepts a leading "+" or "00"
// (international prefix) followed by 8 to 15 digits, with spaces, dots,
// dashes, slashes and parentheses between them ignored. Numbers without a
// country code ("0912 345 678") are refused: the caller must know the
// country to complete them. Errors wrap ErrInvalidNumber.
func ParseNumber(s string) (Number, error) {
	if len(s) > maxNumberLen {
		return "", fmt.Errorf("%w: too long", ErrInvalidNumber)
	}
	s = strings.TrimSpace(s)
	switch {
	case strings.HasPrefix(s, "+"):
		s = s[1:]
	case strings.HasPrefix(s, "00"):
		s = s[2:]
	default:
		return "", fmt.Errorf("%w: start with + and the country code", ErrInvalidNumber)
	}
	var b strings.Builder
	b.Grow(16)
	b.WriteByte('+')
	digits := 0
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c >= '0' && c <= '9':
			if digits == 0 && c == '0' {
				return "", fmt.Errorf("%w: a country code never starts with 0", ErrInvalidNumber)
			}
			digits++
			if digits > 15 {
				return "", fmt.Errorf("%w: more than 15 digits", ErrInvalidNumber)
			}
			b.WriteByte(c)
		case c == ' ' || c == '.' || c == '-' || c == '/' || c == '(' || c == ')':
		default:
			return "", fmt.Errorf("%w: unexpected character", ErrInvalidNumber)
		}
	}
	if digits < 8 {
		return "", fmt.Errorf("%w: fewer than 8 digits", ErrInvalidNumber)
	}
	return Number(b.String()), nil
}

// Valid reports whether n is in the form ParseNumber produces.
func (n Number) Valid() bool {
	m, err := ParseNumber(string(n))
	return err == nil && m == n
}

// Masked returns n with every digit but the last two hidden ("…78"), for
// logs and consoles.
func (n Number) Masked() string {
	if len(n) < 3 {
		return "…"
	}
	return "…" + string(n[len(n)-2:])
}

// String returns the E.164 form. Don't log it.
func (n Number) String() string { return string(n) }

// input is the OPRF input of n: its E.164 form in ASCII.
func (n Number) input() []byte { return []byte(n) }
