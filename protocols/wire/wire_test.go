package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/wrapperspb"
)

func TestRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	msgs := []string{"", "a", string(bytes.Repeat([]byte("x"), 1000)),
		// Pooled buffers, the second reusing the first's.
		string(bytes.Repeat([]byte("y"), pooledFrame)), string(bytes.Repeat([]byte("z"), pooledFrame+7)), "b"}
	for _, s := range msgs {
		if err := Write(&buf, wrapperspb.String(s), 2*pooledFrame); err != nil {
			t.Fatalf("Write(%d bytes): %v", len(s), err)
		}
	}
	r := NewReader(&buf)
	for _, want := range msgs {
		var got wrapperspb.StringValue
		if err := r.Read(&got, 2*pooledFrame); err != nil {
			t.Fatalf("Read: %v", err)
		}
		if got.Value != want {
			t.Fatalf("got %d bytes, want %d", len(got.Value), len(want))
		}
	}
	if _, err := r.ReadBytes(10); !errors.Is(err, io.EOF) {
		t.Fatalf("read past end: got %v, want io.EOF", err)
	}
}

func TestCaps(t *testing.T) {
	tests := []struct {
		name  string
		frame []byte
		max   int
		want  error
	}{
		{"announced length over cap", binary.AppendUvarint(nil, 1<<40), 1024, ErrTooLarge},
		{"just over cap", append(binary.AppendUvarint(nil, 11), make([]byte, 11)...), 10, ErrTooLarge},
		{"truncated body", append(binary.AppendUvarint(nil, 5), 1, 2), 10, io.ErrUnexpectedEOF},
		{"garbage protobuf", append(binary.AppendUvarint(nil, 2), 0xff, 0xff), 10, ErrMalformed},
		{"overlong varint", bytes.Repeat([]byte{0xff}, 11), 10, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var m wrapperspb.StringValue
			err := NewReader(bytes.NewReader(tt.frame)).Read(&m, tt.max)
			if err == nil {
				t.Fatal("got nil error, want one")
			}
			if tt.want != nil && !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
	if err := WriteBytes(io.Discard, make([]byte, 11), 10); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("WriteBytes over cap: got %v, want ErrTooLarge", err)
	}
	w := &countWriter{}
	if err := Write(w, wrapperspb.String("0123456789"), 11); !errors.Is(err, ErrTooLarge) || w.writes != 0 {
		t.Fatalf("Write of 12 bytes over a cap of 11: got %v after %d writes, want ErrTooLarge and none", err, w.writes)
	}
}

// countWriter counts Write calls.
type countWriter struct {
	bytes.Buffer
	writes int
}

func (w *countWriter) Write(p []byte) (int, error) {
	w.writes++
	return w.Buffer.Write(p)
}

// TestWriteOneCall: a frame goes to the stream in one Write, so that a
// yamux stream sends it in as few frames as it can (and a frame's prefix
// never goes alone).
func TestWriteOneCall(t *testing.T) {
	w := &countWriter{}
	m := wrapperspb.Bytes(bytes.Repeat([]byte{7}, 300))
	if err := Write(w, m, 1024); err != nil {
		t.Fatal(err)
	}
	if w.writes != 1 {
		t.Fatalf("Write made %d calls, want 1", w.writes)
	}
	var got wrapperspb.BytesValue
	if err := NewReader(&w.Buffer).Read(&got, 1024); err != nil || !bytes.Equal(got.Value, m.Value) {
		t.Fatalf("read back %d bytes, %v; want the 300 written", len(got.Value), err)
	}
}

func FuzzRead(f *testing.F) {
	var seed bytes.Buffer
	_ = Write(&seed, wrapperspb.String("hello"), 64)
	f.Add(seed.Bytes())
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, b []byte) {
		r := NewReader(bytes.NewReader(b))
		for range 4 {
			var m wrapperspb.StringValue
			if err := r.Read(&m, 256); err != nil {
				return
			}
			var out bytes.Buffer
			if err := Write(&out, &m, 256); err != nil {
				t.Fatalf("re-encode of a decoded frame failed: %v", err)
			}
		}
	})
}

func TestRetryAfter(t *testing.T) {
	day := uint32(MaxRetryAfter / time.Millisecond)
	for _, c := range []struct {
		d  time.Duration
		ms uint32
	}{
		{-time.Second, 0}, {0, 0}, {1, 1}, {time.Millisecond, 1}, {1500 * time.Microsecond, 2},
		{time.Minute, 60_000}, {MaxRetryAfter, day}, {MaxRetryAfter + 1, day}, {1 << 62, day},
	} {
		if got := RetryAfterMs(c.d); got != c.ms {
			t.Errorf("RetryAfterMs(%v) = %d, want %d", c.d, got, c.ms)
		}
	}
	for _, ms := range []uint64{0, 1, 60_000, uint64(day), uint64(day) + 1, 1<<32 - 1, 1<<64 - 1} {
		d := RetryAfter(ms)
		if d < 0 || d > MaxRetryAfter {
			t.Errorf("RetryAfter(%d) = %v: want within [0, %v]", ms, d, MaxRetryAfter)
		}
		if back := RetryAfterMs(d); uint64(back) != min(ms, uint64(day)) {
			t.Errorf("RetryAfterMs(RetryAfter(%d)) = %d: want %d", ms, back, min(ms, uint64(day)))
		}
	}
}
