package e2ee

// Header encryption (Signal's Double Ratchet specification, §4) over the
// ratchet core, and the byte layout of a ratchet message:
//
//	offset  size  field
//	0       1     version (drVersion)
//	1       1     type (drTypeMessage)
//	2       24    header nonce, random
//	26      56    XChaCha20-Poly1305(HKs, header nonce, header(40), AD_h)
//	82      24    body nonce, random
//	106     n+16  XChaCha20-Poly1305(MK, body nonce, plaintext(n), AD_b)
//
// with AD_h = bytes 0..1 || session AD and AD_b = session AD || bytes
// 0..81 || caller's associated data. Every field before the caller's data
// has a fixed length, so the concatenations are unambiguous.

import (
	"crypto/cipher"
	"fmt"
	"io"
	"time"

	"golang.org/x/crypto/chacha20poly1305"
)

// Wire constants of ratchet messages.
const (
	// drVersion is the first byte of every session message. A later
	// post-quantum ratchet will use another value.
	drVersion = 0x01

	drTypeMessage = 0x01 // a ratchet message (layout above)
	drTypeInitial = 0x02 // PQXDH initial data wrapping a ratchet message (pqxdh.go)

	drPrefixSize    = 2
	drEncHeaderSize = drHeaderSize + drTagSize
	drHeaderEnd     = drPrefixSize + drNonceSize + drEncHeaderSize // 82
	drMessageMin    = drHeaderEnd + drBodyMin                      // 122
)

// drHeaderAD returns AD_h for a session AD.
func drHeaderAD(sessAD []byte) []byte {
	return append([]byte{drVersion, drTypeMessage}, sessAD...)
}

// encryptHE advances s and returns a ratchet message for plaintext. rand
// supplies the two nonces. The message, both nonces and the body's AD are
// laid out in one allocation.
func (s *drState) encryptHE(plaintext, sessAD, hdrAD, ad []byte, rand io.Reader) ([]byte, error) {
	if !s.hasHKs {
		return nil, fmt.Errorf("ratchet encrypt: no header key: %w", ErrMalformed)
	}
	size := drMessageMin + len(plaintext)
	buf := make([]byte, size+len(sessAD)+drHeaderEnd+len(ad))
	msg, adBuf := buf[:size:size], buf[size:]
	hn, bn := msg[drPrefixSize:drPrefixSize+drNonceSize], msg[drHeaderEnd:drHeaderEnd+drNonceSize]
	// Both nonces in one read (adBuf is scratch until the AD is built).
	if _, err := io.ReadFull(rand, adBuf[:2*drNonceSize]); err != nil {
		return nil, fmt.Errorf("ratchet encrypt: %w", err)
	}
	copy(hn, adBuf[:drNonceSize])
	copy(bn, adBuf[drNonceSize:2*drNonceSize])
	mk, h, err := s.nextSendKey()
	if err != nil {
		return nil, err
	}
	hb := h.encode()
	msg[0], msg[1] = drVersion, drTypeMessage
	s.sendHeaderAEAD().Seal(msg[:drPrefixSize+drNonceSize], hn, hb[:], hdrAD)
	bodyAD := drBodyAD(adBuf[:0], sessAD, msg[:drHeaderEnd], ad)
	drSeal(msg[:drHeaderEnd], &mk, bn, plaintext, bodyAD)
	return msg, nil
}

// drBodyAD appends AD_b = session AD || message bytes 0..81 || caller AD to dst.
func drBodyAD(dst, sessAD, head, ad []byte) []byte {
	return append(append(append(dst, sessAD...), head...), ad...)
}

func drHeaderAEAD(hk *drKey) cipher.AEAD {
	aead, err := chacha20poly1305.NewX(hk[:])
	if err != nil {
		panic("e2ee: xchacha20poly1305: " + err.Error())
	}
	return aead
}

// sendHeaderAEAD returns the AEAD of HKs, made once per sending chain.
func (s *drState) sendHeaderAEAD() cipher.AEAD {
	if s.hksAEAD == nil {
		s.hksAEAD = drHeaderAEAD(&s.hks)
	}
	return s.hksAEAD
}

// drOpenHeader tries to decrypt msg's encrypted header with aead, using
// scratch (drHeaderSize bytes) for the plaintext.
func drOpenHeader(aead cipher.AEAD, msg, hdrAD, scratch []byte) (drHeader, bool) {
	pt, err := aead.Open(scratch[:0], msg[drPrefixSize:drPrefixSize+drNonceSize],
		msg[drPrefixSize+drNonceSize:drHeaderEnd], hdrAD)
	if err != nil {
		return drHeader{}, false
	}
	h, err := drDecodeHeader(pt)
	return h, err == nil
}

// decryptHE is RatchetDecryptHE: it advances s (a copy the caller discards
// on error) and returns the plaintext of the ratchet message msg. now is
// the time skipped keys are stamped with; rand supplies the new ratchet key
// of a DH ratchet step.
func (s *drState) decryptHE(msg, sessAD, hdrAD, ad []byte, now time.Time, rand io.Reader) ([]byte, error) {
	if len(msg) < drMessageMin {
		return nil, fmt.Errorf("ratchet message: %w", ErrMalformed)
	}
	if msg[0] != drVersion {
		return nil, fmt.Errorf("ratchet message version %d: %w", msg[0], ErrVersion)
	}
	if msg[1] != drTypeMessage {
		return nil, fmt.Errorf("ratchet message type %d: %w", msg[1], ErrMalformed)
	}
	unix := now.Unix()
	s.skipped = s.skipped.expire(now.Add(-SkippedKeyMaxAge).Unix())

	// One allocation: plaintext, header scratch, body AD.
	ptLen := len(msg) - drMessageMin
	buf := make([]byte, ptLen+drHeaderSize+len(sessAD)+drHeaderEnd+len(ad))
	ptBuf, scratch, adBuf := buf[:0:ptLen], buf[ptLen:ptLen+drHeaderSize], buf[ptLen+drHeaderSize:]

	var (
		mk  drKey
		err error
	)
	switch h, which := s.findHeader(msg, hdrAD, scratch); which {
	case drHeaderCurrent:
		if h.dh != s.dhr {
			return nil, fmt.Errorf("ratchet header: %w", ErrDecrypt)
		}
		if k, ok := s.skipped.lookup(h.dh, h.n); ok {
			mk = k
			s.skipped = s.skipped.without(h.dh, h.n)
			break
		}
		if h.n < s.nr {
			return nil, fmt.Errorf("ratchet message %d: %w", h.n, ErrReplay)
		}
		if err = s.skipTo(h.n, unix); err != nil {
			return nil, err
		}
		mk = s.nextRecvKey()
	case drHeaderNext:
		if s.hasDHr && h.dh == s.dhr {
			return nil, fmt.Errorf("ratchet header: %w", ErrDecrypt)
		}
		s.closeChain(h.pn, unix)
		if err = s.ratchetStep(h.dh, rand); err != nil {
			return nil, err
		}
		if err = s.skipTo(h.n, unix); err != nil {
			return nil, err
		}
		mk = s.nextRecvKey()
	case drHeaderSkipped:
		k, ok := s.skipped.lookup(h.dh, h.n)
		if !ok {
			return nil, fmt.Errorf("ratchet message %d: %w", h.n, ErrReplay)
		}
		mk = k
		s.skipped = s.skipped.without(h.dh, h.n)
	default:
		return nil, fmt.Errorf("ratchet header: %w", ErrDecrypt)
	}
	return drOpenTo(ptBuf, &mk, msg[drHeaderEnd:], drBodyAD(adBuf[:0], sessAD, msg[:drHeaderEnd], ad))
}

// Which header key decrypted a header.
const (
	drHeaderNone    = iota
	drHeaderCurrent // HKr: the current receiving chain
	drHeaderNext    // NHKr: the sender has ratcheted; start a new chain
	drHeaderSkipped // an older chain's header key, kept with its skipped keys
)

// findHeader decrypts msg's header with the current receiving header key,
// then the next one, then those of older chains holding skipped keys.
func (s *drState) findHeader(msg, hdrAD, scratch []byte) (drHeader, int) {
	if s.hasHKr {
		if s.hkrAEAD == nil {
			s.hkrAEAD = drHeaderAEAD(&s.hkr)
		}
		if h, ok := drOpenHeader(s.hkrAEAD, msg, hdrAD, scratch); ok {
			return h, drHeaderCurrent
		}
	}
	if h, ok := drOpenHeader(drHeaderAEAD(&s.nhkr), msg, hdrAD, scratch); ok {
		return h, drHeaderNext
	}
	for i := len(s.skipped.chains) - 1; i >= 0; i-- { // newest first: likeliest
		c := &s.skipped.chains[i]
		if s.hasHKr && c.hk == s.hkr {
			continue
		}
		if h, ok := drOpenHeader(drHeaderAEAD(&c.hk), msg, hdrAD, scratch); ok && h.dh == c.dh {
			return h, drHeaderSkipped
		}
	}
	return drHeader{}, drHeaderNone
}
