package e2ee

import (
	"bytes"
	"errors"
	"testing"
)

// TestStreamEnvelopes: envelopes sealed on a stream open with the
// stream's opener, in any order, at the sizes of single envelopes less
// the encapsulation; an envelope of another stream, to another mailbox,
// altered, truncated or with its sequence number changed doesn't open; a
// single envelope is no stream envelope and the other way round.
func TestStreamEnvelopes(t *testing.T) {
	mk := envTestMailbox(t, "stream")
	s, err := NewStreamSealer(mk.Public())
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Enc()) != StreamEncSize || s.To() != mk.ID() {
		t.Fatalf("enc of %d bytes to %s", len(s.Enc()), s.To())
	}
	o, err := mk.OpenStream(s.Enc())
	if err != nil {
		t.Fatal(err)
	}
	var envs [][]byte
	for i, payload := range [][]byte{[]byte("one"), bytes.Repeat([]byte("x"), 5000), []byte("three")} {
		c := envTestContent(t, ContentRatchet, payload)
		env, err := s.Seal(c)
		if err != nil {
			t.Fatal(err)
		}
		single := envTestSeal(t, mk.Public(), c)
		if len(env) != len(single)-EnvelopeOverhead+StreamEnvelopeOverhead {
			t.Fatalf("envelope %d: %d bytes, the single one %d", i, len(env), len(single))
		}
		if !IsStreamEnvelope(env) || IsStreamEnvelope(single) {
			t.Fatal("IsStreamEnvelope can't tell them apart")
		}
		if _, err := o.Open(single); !errors.Is(err, ErrVersion) {
			t.Fatalf("a single envelope on the stream: %v, want ErrVersion", err)
		}
		if _, err := mk.OpenEnvelope(env); !errors.Is(err, ErrVersion) {
			t.Fatalf("a stream envelope alone: %v, want ErrVersion", err)
		}
		envs = append(envs, env)
	}
	for _, i := range []int{2, 0, 1, 0} {
		c, err := o.Open(envs[i])
		if err != nil {
			t.Fatalf("envelope %d: %v", i, err)
		}
		if want := envTestContent(t, ContentRatchet, nil); c.Sender.AccountID() != want.Sender.AccountID() || !bytes.Equal(c.Certificate, want.Certificate) {
			t.Fatalf("envelope %d: sender %s", i, c.Sender.AccountID())
		}
	}

	other, err := NewStreamSealer(mk.Public())
	if err != nil {
		t.Fatal(err)
	}
	foreign, _ := other.Seal(envTestContent(t, ContentRatchet, []byte("one")))
	elsewhere, _ := NewStreamSealer(envTestMailbox(t, "elsewhere").Public())
	lost, _ := elsewhere.Seal(envTestContent(t, ContentRatchet, []byte("one")))
	altered := bytes.Clone(envs[0])
	altered[len(altered)-1] ^= 1
	reseq := bytes.Clone(envs[0])
	reseq[8] ^= 1
	for name, tc := range map[string]struct {
		b    []byte
		want error
	}{
		"another stream":    {foreign, ErrDecrypt},
		"another mailbox":   {lost, ErrDecrypt},
		"altered":           {altered, ErrDecrypt},
		"sequence changed":  {reseq, ErrDecrypt},
		"truncated":         {envs[0][:len(envs[0])-1], ErrMalformed},
		"header only":       {envs[0][:9], ErrMalformed},
		"empty":             {nil, ErrMalformed},
		"over the size cap": {make([]byte, MaxEnvelopeSize+1), ErrTooLarge},
	} {
		if _, err := o.Open(tc.b); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", name, err, tc.want)
		}
	}
	if _, err := mk.OpenStream(s.Enc()[1:]); !errors.Is(err, ErrMalformed) {
		t.Fatalf("a short enc: %v, want ErrMalformed", err)
	}
}

// FuzzStreamOpen: arbitrary bytes into a stream's opener give a typed
// error or a valid content, never a panic.
func FuzzStreamOpen(f *testing.F) {
	mk := envTestMailbox(f, "fuzz stream")
	s, err := NewStreamSealer(mk.Public())
	if err != nil {
		f.Fatal(err)
	}
	o, err := mk.OpenStream(s.Enc())
	if err != nil {
		f.Fatal(err)
	}
	env, err := s.Seal(envTestContent(f, ContentRatchet, []byte("hello")))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(env)
	f.Add(env[:20])
	f.Add([]byte{2})
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := o.Open(b)
		envTestOpened(t, c, err)
	})
}
