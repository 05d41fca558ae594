package mailbox

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/kinmesh/kinmesh/protocols/mailbox/pb"
	"github.com/kinmesh/kinmesh/protocols/wire"
)

// TestGoldenFrames pins the wire encoding that docs/protocol/mailbox.md
// shows byte by byte.
func TestGoldenFrames(t *testing.T) {
	var mbox [idRawSize]byte
	for i := range mbox {
		mbox[i] = byte(i)
	}
	tests := []struct {
		name string
		msg  proto.Message
		want string
	}{
		{"hello", encodeRequest(request{id: 1, kind: reqHello}), "04" + "0801" + "1a00"},
		{"deposit", encodeRequest(request{id: 2, kind: reqDeposit, mbox: mbox, envelopes: [][]byte{[]byte("abc")}}),
			"2b" + "0802" + "1227" + "0a20" + "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f" + "1203616263"},
		{"deposit result", depositResponse(2, []Code{CodeOK, CodeMailboxFull}, 0), "08" + "0802" + "1a04" + "0a020004"},
		{"rate limited", depositResponse(3, []Code{CodeRateLimited}, 1500*time.Millisecond), "0a" + "0803" + "1a06" + "0a0105" + "10dc0b"},
		{"fetch", encodeRequest(request{id: 4, kind: reqFetch, after: 300, limit: 256}), "0a" + "0804" + "2a06" + "08ac02" + "1080" + "02"},
		{"ack", encodeRequest(request{id: 5, kind: reqAck, seqs: []uint64{1, 2}}), "08" + "0805" + "3204" + "0a020102"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := wire.Write(&buf, tt.msg, maxResponseFrame); err != nil {
				t.Fatal(err)
			}
			if got := hex.EncodeToString(buf.Bytes()); got != tt.want {
				t.Fatalf("frame\n got %s\nwant %s", got, tt.want)
			}
		})
	}
}

func TestCodesMatchWire(t *testing.T) {
	for c := CodeOK; c <= CodeUnknownMailbox; c++ {
		name, ok := pb.Code_name[int32(c)]
		if !ok || name != "CODE_"+strings.ToUpper(c.String()) {
			t.Errorf("code %d (%s): wire name %q", c, c, name)
		}
		if c != CodeOK && CodeOf(fmt.Errorf("wrapped: %w", c.Err())) != c {
			t.Errorf("CodeOf(%s.Err()) = %s", c, CodeOf(c.Err()))
		}
	}
	if len(pb.Code_name) != int(CodeUnknownMailbox)+1 {
		t.Errorf("wire has %d codes, Go %d", len(pb.Code_name), CodeUnknownMailbox+1)
	}
	if err := Code(200).Err(); !errors.Is(err, ErrProtocol) {
		t.Errorf("unknown code: %v", err)
	}
}
