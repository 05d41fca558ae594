package contact

import (
	"bytes"
	"encoding/hex"
	"errors"
	"testing"
)

func testPhotoRef() PhotoRef {
	p := PhotoRef{Size: 1234, Type: "image/png"}
	for i := range p.Blob {
		p.Blob[i], p.Key[i] = byte(i), byte(0xff-i)
	}
	return p
}

// TestPhotoRefGolden pins the encoding byte by byte.
func TestPhotoRefGolden(t *testing.T) {
	b, err := MarshalPhotoRef(testPhotoRef())
	if err != nil {
		t.Fatal(err)
	}
	want := "01" +
		"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f" +
		"fffefdfcfbfaf9f8f7f6f5f4f3f2f1f0efeeedecebeae9e8e7e6e5e4e3e2e1e0" +
		"000004d2" + "09" + hex.EncodeToString([]byte("image/png"))
	if got := hex.EncodeToString(b); got != want {
		t.Fatalf("got %s, want %s", got, want)
	}
	p, err := ParsePhotoRef(b)
	if err != nil || p != testPhotoRef() {
		t.Fatalf("round trip: got %+v, %v", p, err)
	}
}

// TestPhotoRefInRecord: a signed record carries the reference, and a
// record with bytes that are no reference reads as "no photo".
func TestPhotoRefInRecord(t *testing.T) {
	id, r := testRecord(t)
	ref, _ := MarshalPhotoRef(testPhotoRef())
	r.Photo = ref
	s, err := r.Sign(id)
	if err != nil {
		t.Fatal(err)
	}
	back, err := Parse(s.Raw)
	if err != nil {
		t.Fatal(err)
	}
	if p, ok := back.PhotoRef(); !ok || p != testPhotoRef() {
		t.Fatalf("photo ref after a round trip: %+v, %v", p, ok)
	}
	r.Photo = []byte("an older opaque reference")
	if s, err = r.Sign(id); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.PhotoRef(); ok {
		t.Fatal("opaque bytes read as a photo reference")
	}
	r.Photo = nil
	if _, ok := r.PhotoRef(); ok {
		t.Fatal("no photo read as a photo")
	}
}

func TestPhotoRefBad(t *testing.T) {
	good, _ := MarshalPhotoRef(testPhotoRef())
	tests := []struct {
		name string
		b    []byte
		want error
	}{
		{"empty", nil, ErrMalformed},
		{"version", append([]byte{2}, good[1:]...), ErrVersion},
		{"short", good[:60], ErrMalformed},
		{"trailing", append(bytes.Clone(good), 'x'), ErrMalformed},
		{"not an image", func() []byte { p := testPhotoRef(); p.Type = "text/plain"; b, _ := marshalUnchecked(p); return b }(), ErrMalformed},
		{"zero size", func() []byte { p := testPhotoRef(); p.Size = 0; b, _ := marshalUnchecked(p); return b }(), ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := ParsePhotoRef(tt.b); !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
	if _, err := MarshalPhotoRef(PhotoRef{Size: 1, Type: "image/a b"}); !errors.Is(err, ErrMalformed) {
		t.Fatalf("a type with a space: got %v, want ErrMalformed", err)
	}
}

// marshalUnchecked encodes p without validating it.
func marshalUnchecked(p PhotoRef) ([]byte, error) {
	t := p.Type
	p.Type = "image/x"
	b, err := MarshalPhotoRef(PhotoRef{Blob: p.Blob, Key: p.Key, Size: 1, Type: p.Type})
	if err != nil {
		return nil, err
	}
	b = b[:65]
	b = append(b, byte(p.Size>>24), byte(p.Size>>16), byte(p.Size>>8), byte(p.Size))
	b = append(b, byte(len(t)))
	return append(b, t...), nil
}

func FuzzParsePhotoRef(f *testing.F) {
	good, _ := MarshalPhotoRef(testPhotoRef())
	f.Add(good)
	f.Add([]byte{1})
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := ParsePhotoRef(b)
		if err != nil {
			return
		}
		again, err := MarshalPhotoRef(p)
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("re-encoding %x: %x, %v", b, again, err)
		}
	})
}
