// Package wire frames protobuf messages on byte streams, the way every
// kinmesh protocol sends them: an unsigned varint length, then that many bytes
// of protobuf.
//
//	+----------------+---------------------------+
//	| uvarint length | protobuf message (length) |
//	+----------------+---------------------------+
//
// Every read takes a hard cap: a frame whose announced length exceeds it is
// refused before any of it is read (ErrTooLarge), so a hostile peer can't make
// us allocate more than the cap. Decoding errors are ErrMalformed. Callers set
// deadlines on the stream; this package only frames.
package wire

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"

	"google.golang.org/protobuf/proto"
)

var (
	// ErrTooLarge means a frame announced (or a message encoded to) more
	// bytes than the cap allowed for it. The peer is misbehaving or speaks
	// a newer protocol; close the stream.
	ErrTooLarge = errors.New("wire: frame exceeds size cap")

	// ErrMalformed means a frame's bytes are not a valid message.
	ErrMalformed = errors.New("wire: malformed frame")
)

// Write encodes m and writes it as one frame. It refuses messages larger
// than max so a sender never emits what the receiver would refuse.
func Write(w io.Writer, m proto.Message, max int) error {
	size := proto.Size(m)
	if size > max {
		return fmt.Errorf("wire: write %d bytes (cap %d): %w", size, max, ErrTooLarge)
	}
	// Encoded straight behind its length prefix: one buffer, one copy of
	// the message's bytes fields. A large frame's buffer is reused (an
	// io.Writer must not keep what it was given).
	var buf []byte
	if size >= pooledFrame {
		p := frames.Get().(*[]byte)
		defer frames.Put(p)
		buf = (*p)[:0]
		defer func() { *p = buf[:0] }()
	}
	buf = binary.AppendUvarint(slices.Grow(buf, binary.MaxVarintLen64+size), uint64(size))
	prefix := len(buf)
	buf, err := proto.MarshalOptions{UseCachedSize: true}.MarshalAppend(buf, m)
	if err != nil {
		return fmt.Errorf("wire: marshal %T: %w", m, err)
	}
	if len(buf)-prefix != size { // m changed while being written
		return fmt.Errorf("wire: marshal %T: %d bytes, sized %d", m, len(buf)-prefix, size)
	}
	if _, err := w.Write(buf); err != nil {
		return fmt.Errorf("wire: write frame: %w", err)
	}
	return nil
}

// Frames of pooledFrame bytes or more are encoded into buffers from
// frames: a depositor's requests are batches of up to 1 MiB each, and a
// fresh buffer of that size costs more to allocate and fault in than to
// fill.
const pooledFrame = 64 << 10

var frames = sync.Pool{New: func() any { return new([]byte) }}

// WriteBytes writes b as one frame.
func WriteBytes(w io.Writer, b []byte, max int) error {
	if len(b) > max {
		return fmt.Errorf("wire: write %d bytes (cap %d): %w", len(b), max, ErrTooLarge)
	}
	buf := make([]byte, binary.MaxVarintLen64+len(b))
	n := binary.PutUvarint(buf, uint64(len(b)))
	n += copy(buf[n:], b)
	if _, err := w.Write(buf[:n]); err != nil {
		return fmt.Errorf("wire: write frame: %w", err)
	}
	return nil
}

// Reader reads frames from a stream. It buffers, so use one Reader per
// stream for its whole life.
type Reader struct {
	r *bufio.Reader
}

// NewReader returns a frame reader over r.
func NewReader(r io.Reader) *Reader {
	if br, ok := r.(*bufio.Reader); ok {
		return &Reader{r: br}
	}
	return &Reader{r: bufio.NewReaderSize(r, 512)}
}

// ReadBytes reads one frame of at most max bytes.
func (r *Reader) ReadBytes(max int) ([]byte, error) {
	n, err := binary.ReadUvarint(r.r)
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, io.EOF
		}
		return nil, fmt.Errorf("wire: read length: %w", err)
	}
	if n > uint64(max) {
		return nil, fmt.Errorf("wire: frame of %d bytes (cap %d): %w", n, max, ErrTooLarge)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r.r, b); err != nil {
		return nil, fmt.Errorf("wire: read frame: %w", err)
	}
	return b, nil
}

// Read reads one frame of at most max bytes and decodes it into m.
func (r *Reader) Read(m proto.Message, max int) error {
	b, err := r.ReadBytes(max)
	if err != nil {
		return err
	}
	if err := proto.Unmarshal(b, m); err != nil {
		return fmt.Errorf("wire: decode %T: %w", m, ErrMalformed)
	}
	return nil
}
