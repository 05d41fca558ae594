package e2ee

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func TestBatchRoundTripInEnvelope(t *testing.T) {
	mk := envTestMailbox(t, "batch")
	items := []BatchItem{
		{Type: ContentRatchet, Payload: []byte("first")},
		{Type: ContentSenderKey, Payload: []byte("second")},
		{Type: ContentReceipt, Payload: []byte("third")},
	}
	b, err := MarshalBatch(items)
	if err != nil {
		t.Fatal(err)
	}
	env := envTestSeal(t, mk.Public(), envTestContent(t, ContentBatch, b))
	c, err := mk.OpenEnvelope(env)
	if err != nil {
		t.Fatal(err)
	}
	if c.Type != ContentBatch {
		t.Fatalf("type %v, want batch", c.Type)
	}
	got, err := ParseBatch(c.Payload)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(items) {
		t.Fatalf("%d items, want %d", len(got), len(items))
	}
	for i := range items {
		if got[i].Type != items[i].Type || !bytes.Equal(got[i].Payload, items[i].Payload) {
			t.Fatalf("item %d: got %v %q, want %v %q", i, got[i].Type, got[i].Payload, items[i].Type, items[i].Payload)
		}
	}
}

func TestBatchRefusesBadItems(t *testing.T) {
	many := make([]BatchItem, MaxBatchItems+1)
	for i := range many {
		many[i] = BatchItem{Type: ContentRatchet, Payload: []byte("x")}
	}
	cases := map[string][]BatchItem{
		"none":          nil,
		"too many":      many,
		"empty payload": {{Type: ContentRatchet}},
		"type 0":        {{Type: 0, Payload: []byte("x")}},
		"nested batch":  {{Type: ContentBatch, Payload: []byte("x")}},
		"presence":      {{Type: ContentPresence, Payload: []byte("x")}},
	}
	for name, items := range cases {
		if _, err := MarshalBatch(items); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: MarshalBatch: %v, want ErrMalformed", name, err)
		}
	}
	big := []BatchItem{{Type: ContentRatchet, Payload: []byte(strings.Repeat("x", MaxEnvelopeBucket))}}
	if _, err := MarshalBatch(big); !errors.Is(err, ErrTooLarge) {
		t.Errorf("oversized batch: %v, want ErrTooLarge", err)
	}
	if _, err := ParseBatch(make([]byte, MaxEnvelopeBucket+1)); !errors.Is(err, ErrTooLarge) {
		t.Errorf("oversized payload: %v, want ErrTooLarge", err)
	}
	// A content type that only fits in the wire's uint32 must not wrap
	// around to a valid one.
	wrapped := []byte{0x0a, 0x06, 0x08, 0x82, 0x02, 0x12, 0x01, 'x'} // items { content_type: 258, payload: "x" }
	if _, err := ParseBatch(wrapped); !errors.Is(err, ErrMalformed) {
		t.Errorf("content type 258: %v, want ErrMalformed", err)
	}
}

func FuzzParseBatch(f *testing.F) {
	b, _ := MarshalBatch([]BatchItem{{Type: ContentRatchet, Payload: []byte("a")}, {Type: ContentReceipt, Payload: []byte("b")}})
	f.Add(b)
	f.Add([]byte{0x0a, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		items, err := ParseBatch(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrTooLarge) {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		again, err := MarshalBatch(items)
		if err != nil {
			t.Fatalf("re-marshal: %v", err)
		}
		back, err := ParseBatch(again)
		if err != nil || len(back) != len(items) {
			t.Fatalf("round trip: %v", err)
		}
	})
}
