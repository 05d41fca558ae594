package turn

import (
	"crypto/hmac"
	"crypto/sha1" //nolint:gosec // the TURN REST API draft fixes HMAC-SHA1
	"crypto/sha256"
	"encoding/base32"
	"encoding/base64"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// ID is the credential protocol's id.
const ID = "/kinmesh/turn-creds/1.0.0"

// ServiceName is the resource-manager service both sides' credential
// streams are attributed to.
const ServiceName = "kinmesh.turn-creds"

// Realm is the TURN realm of every kinmesh relay.
const Realm = "kinmesh"

// Namespace is the relay store namespace the relay keeps its TURN secret
// in (bootstrap).
const Namespace = "turn"

// SecretSize is the size of a relay's TURN secret, in bytes.
const SecretSize = 32

// Size caps.
const (
	maxRequestFrame  = 256  // account key, time, signature: ~110 bytes
	maxResponseFrame = 2048 // username, password, a few URLs
	maxURLs          = 8
	maxURLLen        = 256
	tagLen           = 24 // base32 characters of the account tag (15 bytes)
	maxUsernameLen   = 64
)

// Credentials are short-lived TURN credentials, in the TURN REST API's
// format (draft-uberti-behave-turn-rest-00): the username is
// "<expiry>:<account tag>", the password base64(HMAC-SHA1(secret,
// username)). They open new allocations until Expires; an allocation made
// in time may be refreshed for a while longer (see WithRefreshGrace).
type Credentials struct {
	Username string
	Password string
	Expires  time.Time
	// URLs are the relay's STUN and TURN servers: "stun:IP:PORT" and
	// "turn:IP:PORT?transport=udp" / "…=tcp".
	URLs []string
}

// tagEncoding renders account tags: lower-case base32, no padding.
var tagEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// Tag parts: a username's tag is base32 of tagAccountLen bytes that stand
// for the account and tagPeerLen bytes that stand for the libp2p peer the
// credentials were issued to.
const (
	tagAccountLen = 9
	tagPeerLen    = 6
)

// accountTag is the opaque id credentials carry in their username: base32
// of
//
//	HMAC-SHA256(secret, "kinmesh/turn/account/v1" || Ed25519 key)[:9]
//	|| HMAC-SHA256(secret, "kinmesh/turn/peer/v1" || peer id)[:6]
//
// The first part is stable per account on one relay, the second per
// requesting peer, so quotas hold per account and per peer across
// credentials. It travels in the clear in every TURN request, so it is
// neither the account id nor the peer id: only the relay that issued it
// can tell whose it is.
func accountTag(secret, account []byte, device peer.ID) string {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte("kinmesh/turn/account/v1"))
	m.Write(account)
	b := m.Sum(nil)[:tagAccountLen]
	m = hmac.New(sha256.New, secret)
	m.Write([]byte("kinmesh/turn/peer/v1"))
	m.Write([]byte(device))
	b = append(b, m.Sum(nil)[:tagPeerLen]...)
	return tagEncoding.EncodeToString(b)
}

// splitTag returns the account and peer parts of a tag parseUsername
// accepted, as opaque map keys.
func splitTag(tag string) (account, device string, ok bool) {
	b, err := tagEncoding.DecodeString(tag)
	if err != nil || len(b) != tagAccountLen+tagPeerLen {
		return "", "", false
	}
	return string(b[:tagAccountLen]), string(b[tagAccountLen:]), true
}

// Password returns the TURN REST API password of username under secret:
// base64(HMAC-SHA1(secret, username)).
func Password(secret []byte, username string) string {
	m := hmac.New(sha1.New, secret)
	m.Write([]byte(username))
	return base64.StdEncoding.EncodeToString(m.Sum(nil))
}

// issue returns credentials for account, asked for by device, valid until
// expires.
func issue(secret, account []byte, device peer.ID, expires time.Time, urls []string) Credentials {
	user := formatUsername(expires, accountTag(secret, account, device))
	return Credentials{Username: user, Password: Password(secret, user), Expires: time.Unix(expires.Unix(), 0), URLs: urls}
}

// parseUsername splits a REST username into its expiry and account tag.
func parseUsername(u string) (expires time.Time, tag string, err error) {
	if len(u) > maxUsernameLen {
		return time.Time{}, "", fmt.Errorf("username of %d bytes: %w", len(u), ErrMalformed)
	}
	ts, tag, ok := strings.Cut(u, ":")
	if !ok {
		return time.Time{}, "", fmt.Errorf("username without an account tag: %w", ErrMalformed)
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || sec <= 0 || ts[0] == '+' || ts[0] == '0' {
		return time.Time{}, "", fmt.Errorf("username expiry %q: %w", ts, ErrMalformed)
	}
	if len(tag) != tagLen {
		return time.Time{}, "", fmt.Errorf("account tag of %d characters: %w", len(tag), ErrMalformed)
	}
	for _, c := range tag {
		if !('a' <= c && c <= 'z' || '2' <= c && c <= '7') {
			return time.Time{}, "", fmt.Errorf("account tag %q: %w", tag, ErrMalformed)
		}
	}
	return time.Unix(sec, 0), tag, nil
}

// URL kinds.
const (
	schemeSTUN = "stun"
	schemeTURN = "turn"
)

// serverURLs returns the URLs a relay announces for its listeners:
// STUN and TURN over UDP on udp, TURN over TCP on tcp (either may be
// invalid: not served).
func serverURLs(udp, tcp netip.AddrPort) []string {
	var out []string
	if udp.IsValid() {
		out = append(out, "stun:"+udp.String(), "turn:"+udp.String()+"?transport=udp")
	}
	if tcp.IsValid() {
		out = append(out, "turn:"+tcp.String()+"?transport=tcp")
	}
	return out
}

// ParseURL checks a STUN or TURN URL as relays announce them: "stun:" or
// "turn:", an IP address and port ("[v6]:port" for IPv6), and for TURN
// "?transport=udp" or "?transport=tcp". Host names are refused: a relay
// announces addresses, so a device never resolves a name a relay chose.
func ParseURL(s string) (scheme string, addr netip.AddrPort, transport string, err error) {
	if len(s) > maxURLLen {
		return "", netip.AddrPort{}, "", fmt.Errorf("URL of %d bytes: %w", len(s), ErrMalformed)
	}
	scheme, rest, ok := strings.Cut(s, ":")
	if !ok || scheme != schemeSTUN && scheme != schemeTURN {
		return "", netip.AddrPort{}, "", fmt.Errorf("URL %q: want stun: or turn: %w", s, ErrMalformed)
	}
	hostport, query, hasQuery := strings.Cut(rest, "?")
	addr, err = netip.ParseAddrPort(hostport)
	if err != nil || addr.Port() == 0 || !addr.Addr().IsValid() || addr.Addr().Zone() != "" {
		return "", netip.AddrPort{}, "", fmt.Errorf("URL %q: want IP:port: %w", s, ErrMalformed)
	}
	switch {
	case scheme == schemeSTUN && hasQuery:
		return "", netip.AddrPort{}, "", fmt.Errorf("URL %q: a stun URL takes no query: %w", s, ErrMalformed)
	case scheme == schemeSTUN:
		transport = "udp"
	case query == "transport=udp" || query == "transport=tcp":
		transport = strings.TrimPrefix(query, "transport=")
	default:
		return "", netip.AddrPort{}, "", fmt.Errorf("URL %q: want ?transport=udp or tcp: %w", s, ErrMalformed)
	}
	return scheme, addr, transport, nil
}

// formatUsername is the inverse of parseUsername.
func formatUsername(expires time.Time, tag string) string {
	return strconv.FormatInt(expires.Unix(), 10) + ":" + tag
}
