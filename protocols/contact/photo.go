package contact

import (
	"encoding/binary"
	"fmt"
	"strings"
)

// PhotoRef is what a record's Photo field holds: where the account's
// profile photo is and how to open it. The photo itself is an encrypted
// blob (protocols/blobs) on the account's home relays; whoever has the
// record fetches it from them by Blob and opens it with Key, so the photo
// is exactly as visible as the record's name. Relays store only the
// ciphertext and learn nothing from it but its size rounded up to a
// chunk.
//
// Encoding (MarshalPhotoRef), 71 to 103 bytes:
//
//	version 1 (1) | blob id (32) | key (32) | size u32be (4)
//	| len(type) (1) | type (1..32 bytes, "image/…")
//
// Older readers treat Photo as opaque bytes and ignore it; a Photo that
// does not parse as a PhotoRef is "no photo" to newer ones.
type PhotoRef struct {
	// Blob is the blob's id (protocols/blobs.BlobID).
	Blob [32]byte
	// Key is the blob's sealing key (protocols/blobs.Seal), used for
	// this photo only.
	Key [32]byte
	// Size is the photo's size in bytes, before sealing.
	Size uint32
	// Type is its media type, "image/jpeg" or "image/png".
	Type string
}

const (
	photoRefVersion = 1
	maxPhotoType    = 32
)

// MarshalPhotoRef encodes p for Record.Photo.
func MarshalPhotoRef(p PhotoRef) ([]byte, error) {
	if err := p.validate(); err != nil {
		return nil, err
	}
	b := make([]byte, 0, 1+32+32+4+1+len(p.Type))
	b = append(b, photoRefVersion)
	b = append(b, p.Blob[:]...)
	b = append(b, p.Key[:]...)
	b = binary.BigEndian.AppendUint32(b, p.Size)
	b = append(b, byte(len(p.Type)))
	return append(b, p.Type...), nil
}

// ParsePhotoRef decodes a Record.Photo written by MarshalPhotoRef. It
// returns ErrMalformed for anything else, ErrVersion for a newer format.
func ParsePhotoRef(b []byte) (PhotoRef, error) {
	var p PhotoRef
	if len(b) == 0 {
		return p, fmt.Errorf("%w: no photo reference", ErrMalformed)
	}
	if b[0] != photoRefVersion {
		return p, fmt.Errorf("%w: photo reference version %d", ErrVersion, b[0])
	}
	const fixed = 1 + 32 + 32 + 4 + 1
	if len(b) < fixed || len(b) != fixed+int(b[fixed-1]) {
		return p, fmt.Errorf("%w: photo reference of %d bytes", ErrMalformed, len(b))
	}
	copy(p.Blob[:], b[1:33])
	copy(p.Key[:], b[33:65])
	p.Size = binary.BigEndian.Uint32(b[65:69])
	p.Type = string(b[fixed:])
	if err := p.validate(); err != nil {
		return PhotoRef{}, err
	}
	return p, nil
}

func (p PhotoRef) validate() error {
	switch {
	case p.Size == 0:
		return fmt.Errorf("%w: empty photo", ErrMalformed)
	case len(p.Type) == 0 || len(p.Type) > maxPhotoType || !strings.HasPrefix(p.Type, "image/"):
		return fmt.Errorf("%w: photo type %q", ErrMalformed, p.Type)
	}
	for _, c := range []byte(p.Type) {
		if c <= ' ' || c >= 0x7f {
			return fmt.Errorf("%w: photo type %q", ErrMalformed, p.Type)
		}
	}
	return nil
}

// PhotoRef returns the record's photo reference; ok is false when the
// record has no photo, or one this build can't read.
func (r Record) PhotoRef() (p PhotoRef, ok bool) {
	if len(r.Photo) == 0 {
		return p, false
	}
	p, err := ParsePhotoRef(r.Photo)
	return p, err == nil
}
