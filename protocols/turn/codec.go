package turn

import (
	"crypto/ed25519"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"

	"github.com/kinmesh/kinmesh/protocols/turn/pb"
	"github.com/kinmesh/kinmesh/protocols/wire"
)

// Native forms of the wire messages: pb types stop at this file.

// request is a decoded, validated credential request.
type request struct {
	account [ed25519.PublicKeySize]byte
	time    int64 // unix seconds, the device's clock
	sig     []byte
}

// authContext starts the message a credential request signs.
const authContext = "kinmesh/turn-creds/v1/auth"

// authMessage is what the account signs:
//
//	"kinmesh/turn-creds/v1/auth" || 0x00
//	|| uvarint(len(relay)) || relay peer id || uvarint(len(device)) || device peer id
//	|| uint64be(time)
//
// binding the relay and the requesting connection's peer, so a signature
// is good from that peer to that relay only, around that time.
func authMessage(relay, device peer.ID, t int64) []byte {
	b := append([]byte(authContext), 0)
	b = binary.AppendUvarint(b, uint64(len(relay)))
	b = append(b, relay...)
	b = binary.AppendUvarint(b, uint64(len(device)))
	b = append(b, device...)
	return binary.BigEndian.AppendUint64(b, uint64(t))
}

// decodeRequest decodes and validates a request frame; on failure it
// returns the code to answer with.
func decodeRequest(b []byte) (request, Code) {
	var m pb.Request
	if err := proto.Unmarshal(b, &m); err != nil {
		return request{}, CodeMalformed
	}
	var r request
	if len(m.GetAccount()) != ed25519.PublicKeySize || len(m.GetSignature()) != ed25519.SignatureSize || m.GetTimeUnix() <= 0 {
		return r, CodeMalformed
	}
	copy(r.account[:], m.GetAccount())
	r.time, r.sig = m.GetTimeUnix(), m.GetSignature()
	return r, CodeOK
}

func encodeRequest(r request) *pb.Request {
	return &pb.Request{Account: r.account[:], TimeUnix: r.time, Signature: r.sig}
}

// response is a decoded relay answer.
type response struct {
	code       Code
	retryAfter time.Duration
	creds      *Credentials
	ttl        time.Duration
}

func encodeResponse(r response) *pb.Response {
	m := &pb.Response{Code: pb.Code(r.code)}
	m.RetryAfterMs = wire.RetryAfterMs(r.retryAfter)
	if r.creds != nil {
		m.Username, m.Password, m.Urls = r.creds.Username, r.creds.Password, r.creds.URLs
		m.TtlSeconds = uint32(min(max(r.ttl, 0)/time.Second, 1<<31))
	}
	return m
}

// decodeResponse decodes and validates a relay answer. now dates the
// credentials' expiry (the client's clock: the relay's may be off).
func decodeResponse(b []byte, now time.Time) (response, error) {
	var m pb.Response
	if err := proto.Unmarshal(b, &m); err != nil {
		return response{}, fmt.Errorf("decode response: %w", ErrProtocol)
	}
	r := response{code: codeFromWire(m.GetCode()), retryAfter: wire.RetryAfter(m.GetRetryAfterMs())}
	if r.code != CodeOK {
		return r, nil
	}
	if m.GetTtlSeconds() == 0 || len(m.GetUrls()) == 0 || len(m.GetUrls()) > maxURLs || m.GetPassword() == "" || len(m.GetPassword()) > 64 {
		return r, fmt.Errorf("credentials without a lifetime, URLs or password: %w", ErrProtocol)
	}
	if _, _, err := parseUsername(m.GetUsername()); err != nil {
		return r, fmt.Errorf("relay's username: %w: %w", ErrProtocol, err)
	}
	for _, u := range m.GetUrls() {
		if _, _, _, err := ParseURL(u); err != nil {
			return r, fmt.Errorf("relay's URL: %w: %w", ErrProtocol, err)
		}
	}
	r.ttl = time.Duration(m.GetTtlSeconds()) * time.Second
	r.creds = &Credentials{
		Username: m.GetUsername(), Password: m.GetPassword(),
		Expires: now.Add(r.ttl), URLs: m.GetUrls(),
	}
	return r, nil
}
