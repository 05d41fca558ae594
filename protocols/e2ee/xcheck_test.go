package e2ee

// Cross-check of the Double Ratchet core against an implementation nobody
// here wrote: Debian's python3-doubleratchet 1.0.3 (MIT), configured with
// the same primitives by testdata/xcheck/xcheck.py. The library has no
// header encryption, so this drives the core (KDF chains, DH steps, AEAD
// with associated data, skipped keys) with plaintext headers, exactly as
// header.go does under its encryption layer. The same script also checks
// PQXDH's KDF and the ratchet's initial HKDF with OpenSSL's X25519 and HKDF.
//
// Needs Debian's /usr/bin/python3 with the packages python3-doubleratchet
// and python3-nacl (python3-cryptography comes with them); skipped
// otherwise.

import (
	"bufio"
	"bytes"
	"crypto/ecdh"
	"crypto/mlkem"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"testing"
	"time"
)

const xcheckPython = "/usr/bin/python3"

// xcheckPeer is the Python side, running as a subprocess.
type xcheckPeer struct {
	t   *testing.T
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Scanner
}

func xcheckStart(t *testing.T) *xcheckPeer {
	t.Helper()
	if _, err := os.Stat(xcheckPython); err != nil {
		t.Skipf("cross-check needs Debian's %s: %v", xcheckPython, err)
	}
	if out, err := exec.Command(xcheckPython, "-c", "import doubleratchet, nacl.bindings, cryptography").CombinedOutput(); err != nil {
		t.Skipf("cross-check needs python3-doubleratchet and python3-nacl (apt-get install -y python3-doubleratchet python3-nacl): %v: %s", err, out)
	}
	cmd := exec.Command(xcheckPython, "testdata/xcheck/xcheck.py")
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &xcheckPeer{t: t, cmd: cmd, in: in, out: bufio.NewScanner(out)}
	p.out.Buffer(make([]byte, 1<<20), 1<<20)
	t.Cleanup(func() {
		in.Close()
		if err := cmd.Wait(); err != nil {
			t.Errorf("xcheck.py: %v; stderr:\n%s", err, stderr.String())
		}
	})
	var ready struct {
		Ready         bool
		Doubleratchet string
	}
	p.read(&ready)
	if !ready.Ready {
		t.Fatalf("xcheck.py did not start; stderr:\n%s", stderr.String())
	}
	t.Logf("python3-doubleratchet %s", ready.Doubleratchet)
	return p
}

func (p *xcheckPeer) read(v any) {
	p.t.Helper()
	if !p.out.Scan() {
		p.t.Fatalf("xcheck.py: no reply: %v", p.out.Err())
	}
	if err := json.Unmarshal(p.out.Bytes(), v); err != nil {
		p.t.Fatalf("xcheck.py reply %q: %v", p.out.Bytes(), err)
	}
}

// xcheckReply is every field a reply may have.
type xcheckReply struct {
	DH, CT, PT, SK, OKM string
	PN, N               uint32
	Error, Detail       string
}

func (p *xcheckPeer) call(req map[string]any) xcheckReply {
	p.t.Helper()
	b, err := json.Marshal(req)
	if err != nil {
		p.t.Fatal(err)
	}
	if _, err := p.in.Write(append(b, '\n')); err != nil {
		p.t.Fatalf("xcheck.py: %v", err)
	}
	var r xcheckReply
	p.read(&r)
	return r
}

// xcheckMsg is a ratchet message with a plaintext header, as exchanged
// with the Python side.
type xcheckMsg struct {
	h    drHeader
	body []byte
	pt   string
	ad   []byte
}

func (m *xcheckMsg) fields() map[string]any {
	return map[string]any{"dh": hex.EncodeToString(m.h.dh[:]), "pn": m.h.pn, "n": m.h.n,
		"ct": hex.EncodeToString(m.body), "ad": hex.EncodeToString(m.ad)}
}

func xcheckFromReply(t *testing.T, r xcheckReply, pt string, ad []byte) xcheckMsg {
	t.Helper()
	if r.Error != "" {
		t.Fatalf("python: %s: %s", r.Error, r.Detail)
	}
	m := xcheckMsg{h: drHeader{pn: r.PN, n: r.N}, body: vecHex(t, r.CT), pt: pt, ad: ad}
	copy(m.h.dh[:], vecHex(t, r.DH))
	return m
}

// drPlain drives the ratchet core with plaintext headers (Double Ratchet
// §3), the way the Python library does: AD = ad || header.
type drPlain struct {
	st   drState
	rand io.Reader
}

func (p *drPlain) encrypt(pt, ad []byte) (xcheckMsg, error) {
	n := p.st
	mk, h, err := n.nextSendKey()
	if err != nil {
		return xcheckMsg{}, err
	}
	nonce := make([]byte, drNonceSize)
	if _, err := io.ReadFull(p.rand, nonce); err != nil {
		return xcheckMsg{}, err
	}
	hb := h.encode()
	body := drSeal(nil, &mk, nonce, pt, append(bytes.Clone(ad), hb[:]...))
	p.st = n
	return xcheckMsg{h: h, body: body, pt: string(pt), ad: ad}, nil
}

func (p *drPlain) decrypt(m xcheckMsg, now time.Time) ([]byte, error) {
	n := p.st
	hb := m.h.encode()
	ad := append(bytes.Clone(m.ad), hb[:]...)
	unix := now.Unix()
	if mk, ok := n.skipped.lookup(m.h.dh, m.h.n); ok {
		pt, err := drOpen(&mk, m.body, ad)
		if err != nil {
			return nil, err
		}
		n.skipped = n.skipped.without(m.h.dh, m.h.n)
		p.st = n
		return pt, nil
	}
	if !n.hasDHr || m.h.dh != n.dhr {
		n.closeChain(m.h.pn, unix)
		if err := n.ratchetStep(m.h.dh, p.rand); err != nil {
			return nil, err
		}
	}
	if m.h.n < n.nr {
		return nil, ErrReplay
	}
	if err := n.skipTo(m.h.n, unix); err != nil {
		return nil, err
	}
	mk := n.nextRecvKey()
	pt, err := drOpen(&mk, m.body, ad)
	if err != nil {
		return nil, err
	}
	p.st = n
	return pt, nil
}

// xcheckShuffle returns msgs in a random order, minus the indexes in lose.
func xcheckShuffle(rng *rand.Rand, msgs []xcheckMsg, lose map[int]bool) []xcheckMsg {
	var out []xcheckMsg
	for i, m := range msgs {
		if !lose[i] {
			out = append(out, m)
		}
	}
	rng.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	return out
}

func TestXCheckDoubleRatchet(t *testing.T) {
	py := xcheckStart(t)
	for _, tt := range []struct {
		name      string
		goIsAlice bool
		seed      uint64
	}{
		{name: "go initiates", goIsAlice: true, seed: 1},
		{name: "python initiates", goIsAlice: false, seed: 2},
		{name: "go initiates, other seed", goIsAlice: true, seed: 3},
	} {
		t.Run(tt.name, func(t *testing.T) {
			py.t = t
			xcheckConversation(t, py, tt.name, tt.goIsAlice, tt.seed)
		})
	}
}

func xcheckConversation(t *testing.T, py *xcheckPeer, session string, goIsAlice bool, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 7))
	r := drTestRand(fmt.Sprint("xcheck/", seed))
	now := drTestT0
	var sk drKey
	io.ReadFull(r, sk[:])
	bobPriv, err := drGenerate(r)
	if err != nil {
		t.Fatal(err)
	}
	var zero drKey
	goSide := &drPlain{rand: r}
	ad := func(i int) []byte { return []byte(fmt.Sprint("ad-", seed, "-", i)) }

	// pyDeliver hands Go's messages to Python; the first ever goes through
	// "bob" (Python as responder), the rest through "decrypt".
	pyStarted := false
	pyDeliver := func(m xcheckMsg) {
		t.Helper()
		req := m.fields()
		req["session"] = session
		if !pyStarted && goIsAlice {
			req["op"], req["sk"], req["bob_priv"] = "bob", hex.EncodeToString(sk[:]), hex.EncodeToString(bobPriv.Bytes())
			pyStarted = true
		} else {
			req["op"] = "decrypt"
		}
		rep := py.call(req)
		if rep.Error != "" {
			t.Fatalf("python could not decrypt %q (n=%d pn=%d): %s: %s", m.pt, m.h.n, m.h.pn, rep.Error, rep.Detail)
		}
		if got := string(vecHex(t, rep.PT)); got != m.pt {
			t.Fatalf("python decrypted %q, want %q", got, m.pt)
		}
	}
	pyEncrypt := func(text string, a []byte) xcheckMsg {
		t.Helper()
		req := map[string]any{"session": session, "pt": hex.EncodeToString([]byte(text)), "ad": hex.EncodeToString(a)}
		if !pyStarted {
			req["op"], req["sk"], req["bob_pub"] = "alice", hex.EncodeToString(sk[:]), hex.EncodeToString(bobPriv.PublicKey().Bytes())
			pyStarted = true
		} else {
			req["op"] = "encrypt"
		}
		return xcheckFromReply(t, py.call(req), text, a)
	}
	goDeliver := func(m xcheckMsg) {
		t.Helper()
		pt, err := goSide.decrypt(m, now)
		if err != nil {
			t.Fatalf("go could not decrypt %q (n=%d pn=%d): %v", m.pt, m.h.n, m.h.pn, err)
		}
		if string(pt) != m.pt {
			t.Fatalf("go decrypted %q, want %q", pt, m.pt)
		}
	}

	if goIsAlice {
		goSide.st, err = drInitAlice(sk, zero, zero, bobPriv.PublicKey(), r)
		if err != nil {
			t.Fatal(err)
		}
	} else {
		goSide.st = drInitBob(sk, zero, zero, bobPriv)
	}
	goTurn := goIsAlice
	var lostToGo, lostToPy []xcheckMsg
	count := 0
	for round := range 24 {
		n := 1 + rng.IntN(12)
		lose := map[int]bool{}
		if round > 1 && rng.IntN(3) == 0 {
			lose[rng.IntN(n)] = true
		}
		var msgs []xcheckMsg
		for i := range n {
			text := fmt.Sprintf("round %d message %d", round, i)
			count++
			if goTurn {
				m, err := goSide.encrypt([]byte(text), ad(count))
				if err != nil {
					t.Fatal(err)
				}
				msgs = append(msgs, m)
			} else {
				msgs = append(msgs, pyEncrypt(text, ad(count)))
			}
		}
		ordered := xcheckShuffle(rng, msgs, lose)
		if round == 0 {
			ordered = msgs // the responder's first message must start its session
		}
		// A tampered message is refused on both sides and changes nothing.
		if round == 5 {
			bad := msgs[0]
			bad.body = bytes.Clone(bad.body)
			bad.body[len(bad.body)-1] ^= 1
			if goTurn {
				req := bad.fields()
				req["op"], req["session"] = "decrypt", session
				if rep := py.call(req); rep.Error == "" {
					t.Errorf("python accepted a tampered message")
				}
			} else if _, err := goSide.decrypt(bad, now); !errors.Is(err, ErrDecrypt) {
				t.Errorf("go on a tampered message: got %v, want ErrDecrypt", err)
			}
		}
		for _, m := range ordered {
			if goTurn {
				pyDeliver(m)
			} else {
				goDeliver(m)
			}
		}
		for i := range lose {
			if goTurn {
				lostToPy = append(lostToPy, msgs[i])
			} else {
				lostToGo = append(lostToGo, msgs[i])
			}
		}
		// Late arrivals from earlier chains, now and then.
		if len(lostToGo) > 0 && rng.IntN(2) == 0 {
			goDeliver(lostToGo[0])
			lostToGo = lostToGo[1:]
		}
		if len(lostToPy) > 0 && rng.IntN(2) == 0 {
			pyDeliver(lostToPy[0])
			lostToPy = lostToPy[1:]
		}
		// So is a replayed one.
		if round == 6 && !lose[0] {
			if goTurn {
				req := msgs[0].fields()
				req["op"], req["session"] = "decrypt", session
				if rep := py.call(req); rep.Error == "" {
					t.Errorf("python accepted a replayed message")
				}
			} else if _, err := goSide.decrypt(msgs[0], now); !errors.Is(err, ErrReplay) {
				t.Errorf("go on a replayed message: got %v, want ErrReplay", err)
			}
		}
		goTurn = !goTurn
		now = now.Add(time.Minute)
	}
	for _, m := range lostToGo {
		goDeliver(m)
	}
	for _, m := range lostToPy {
		pyDeliver(m)
	}
}

// TestXCheckKDFs checks PQXDH's KDF and the ratchet's initial derivation
// against OpenSSL (through Python's cryptography package).
func TestXCheckKDFs(t *testing.T) {
	py := xcheckStart(t)
	r := drTestRand("xcheck/pqxdh")
	keys := make([]*ecdh.PrivateKey, 5)
	for i := range keys {
		k, err := drGenerate(r)
		if err != nil {
			t.Fatal(err)
		}
		keys[i] = k
	}
	ikA, ekA, ikB, spkB, opkB := keys[0], keys[1], keys[2], keys[3], keys[4]
	ss := make([]byte, mlkem.SharedKeySize)
	io.ReadFull(r, ss)
	for _, withOPK := range []bool{true, false} {
		km := [][]byte{}
		for _, pair := range [][2]any{{ikA, spkB}, {ekA, ikB}, {ekA, spkB}, {ekA, opkB}} {
			if pair[1] == opkB && !withOPK {
				continue
			}
			out, err := pair[0].(*ecdh.PrivateKey).ECDH(pair[1].(*ecdh.PrivateKey).PublicKey())
			if err != nil {
				t.Fatal(err)
			}
			km = append(km, out)
		}
		km = append(km, ss)
		got := hex.EncodeToString(pxKDF(bytes.Join(km, nil)))
		req := map[string]any{"op": "pqxdh", "ik_a": hex.EncodeToString(ikA.Bytes()), "ek_a": hex.EncodeToString(ekA.Bytes()),
			"ik_b": hex.EncodeToString(ikB.PublicKey().Bytes()), "spk_b": hex.EncodeToString(spkB.PublicKey().Bytes()),
			"ss": hex.EncodeToString(ss)}
		if withOPK {
			req["opk_b"] = hex.EncodeToString(opkB.PublicKey().Bytes())
		}
		if rep := py.call(req); rep.SK != got {
			t.Errorf("PQXDH SK (one-time prekey %v): go %s, python %s %s", withOPK, got, rep.SK, rep.Error)
		}
	}

	sk := sha256.Sum256([]byte("sk"))
	rk, hka, nhkb := drDeriveInit(sk[:])
	rep := py.call(map[string]any{"op": "hkdf", "ikm": hex.EncodeToString(sk[:]), "salt": hex.EncodeToString(make([]byte, 32)),
		"info": hex.EncodeToString([]byte(drInitInfo)), "length": 96})
	if got := hex.EncodeToString(bytes.Join([][]byte{rk[:], hka[:], nhkb[:]}, nil)); rep.OKM != got {
		t.Errorf("ratchet init: go %s, python %s %s", got, rep.OKM, rep.Error)
	}
	var root drKey
	copy(root[:], sk[:])
	dh := sha256.Sum256([]byte("dh"))
	nrk, ck, nhk := drKDFRoot(&root, dh[:])
	rep = py.call(map[string]any{"op": "hkdf", "ikm": hex.EncodeToString(dh[:]), "salt": hex.EncodeToString(root[:]),
		"info": hex.EncodeToString([]byte(drRootInfo)), "length": 96})
	if got := hex.EncodeToString(bytes.Join([][]byte{nrk[:], ck[:], nhk[:]}, nil)); rep.OKM != got {
		t.Errorf("root KDF with next header key: go %s, python %s %s", got, rep.OKM, rep.Error)
	}
}
