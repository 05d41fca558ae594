package discovery

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cloudflare/circl/group"
	"github.com/cloudflare/circl/oprf"
	"github.com/libp2p/go-libp2p/core/network"

	"github.com/kinmesh/kinmesh/protocols/wire"
)

type (
	networkStream = network.Stream
	wireReader    = wire.Reader
)

func writeRequest(s network.Stream, r request) error {
	return wire.Write(s, encodeRequest(r), maxOwnerFrame)
}

// numberEncodings returns n in every form a careless implementation might
// send or store: the E.164 string, its digits, the national part, the
// number as big-endian and varint integers, packed BCD, and hex and
// base64 of the string.
func numberEncodings(n Number) [][]byte {
	digits := strings.TrimPrefix(string(n), "+")
	v, _ := strconv.ParseUint(digits, 10, 64)
	be := binary.BigEndian.AppendUint64(nil, v)
	be = bytes.TrimLeft(be, "\x00")
	var bcd []byte
	for i := 0; i+1 < len(digits); i += 2 {
		bcd = append(bcd, (digits[i]-'0')<<4|(digits[i+1]-'0'))
	}
	return [][]byte{
		[]byte(n),
		[]byte(digits),
		[]byte(digits[len(digits)-8:]), // the subscriber part, as stored without a country code
		be,
		binary.AppendUvarint(nil, v),
		bcd,
		[]byte(hex.EncodeToString([]byte(n))),
		[]byte(base64.StdEncoding.EncodeToString([]byte(n))),
		[]byte(base64.RawURLEncoding.EncodeToString([]byte(n))),
	}
}

// scanDir reports a file under dir that contains any of needles.
func scanDir(t testing.TB, dir string, needles [][]byte) (string, bool) {
	t.Helper()
	var found string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || found != "" {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, n := range needles {
			if bytes.Contains(b, n) {
				found = path
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return found, found != ""
}

// TestDiscoveryFindsUsersOnly: numbers of verified users come back with
// their records; numbers of non-users don't.
func TestDiscoveryFindsUsersOnly(t *testing.T) {
	r := startRelay(t, nil)
	c := newClient(t, r)
	alice, bob := newAccount(t, "alice"), newAccount(t, "bob")
	na, nb := mustNumber(t, "+351912345678"), mustNumber(t, "+447700900001")
	verify(t, c, r, alice, na)
	verify(t, c, r, bob, nb)
	carol := discoverer(t, c, r)

	book := []Number{
		mustNumber(t, "+351912345679"), na, mustNumber(t, "+14155550100"),
		mustNumber(t, "+447700900002"), nb, mustNumber(t, "+33612345678"),
	}
	dir := NewDirectory(PublicKey{})
	ms, err := c.Discover(testCtx(t), r.ID(), carol.id, dir, book)
	if err != nil {
		t.Fatalf("Discover: %v", err)
	}
	if len(ms) != 2 {
		t.Fatalf("%d matches, want 2: %+v", len(ms), ms)
	}
	for i, want := range []*account{alice, bob} {
		if ms[i].Number != []Number{na, nb}[i] || !bytes.Equal(ms[i].Record.Raw, want.record.Raw) {
			t.Fatalf("match %d: %s → %s, want %s", i, ms[i].Number.Masked(), ms[i].Record.Name, want.record.Name)
		}
	}
	if !dir.PublicKey.Equal(r.svc.PublicKey()) || dir.Len() != 3 {
		t.Fatalf("directory copy: key %v, %d entries; want the relay's key, 3 entries", dir.PublicKey, dir.Len())
	}
	// The outputs are the relay's, computed obliviously: the same a
	// direct evaluation gives.
	outs, err := c.Evaluate(testCtx(t), r.ID(), carol.id, dir.PublicKey, []Number{na})
	if err != nil {
		t.Fatal(err)
	}
	direct, err := r.svc.output(na)
	if err != nil || outs[0] != direct {
		t.Fatalf("oblivious output differs from the relay's direct evaluation (%v)", err)
	}
	// Blinding is fresh each time: the same number never looks the same
	// to the relay.
	_, req1, _ := blindOne(t, dir.PublicKey, na)
	_, req2, _ := blindOne(t, dir.PublicKey, na)
	if bytes.Equal(req1, req2) {
		t.Fatal("two blindings of a number are equal")
	}
}

func blindOne(t testing.TB, pk PublicKey, n Number) (oprf.VerifiableClient, []byte, *oprf.FinalizeData) {
	t.Helper()
	vc, fin, req, err := blind(pk, []Number{n})
	if err != nil {
		t.Fatal(err)
	}
	b, err := req.Elements[0].MarshalBinaryCompress()
	if err != nil {
		t.Fatal(err)
	}
	return vc, b, fin
}

// TestRelaySeesNoAddressBook records every frame the relay receives during
// a discovery and checks that none of it holds an address-book number (in
// any encoding), the number's hashed-to-group point (unblinded input), its
// evaluated point before hashing, its OPRF output, directory id or entry
// key.
func TestRelaySeesNoAddressBook(t *testing.T) {
	var (
		mu        sync.Mutex
		recording bool
		frames    [][]byte
	)
	rec := withRequestRecorder(func(b []byte) {
		mu.Lock()
		defer mu.Unlock()
		if recording {
			frames = append(frames, bytes.Clone(b))
		}
	})
	r := startRelay(t, nil, rec)
	c := newClient(t, r)
	user := newAccount(t, "user")
	nu := mustNumber(t, "+351912340000")
	verify(t, c, r, user, nu)
	d := discoverer(t, c, r)

	book := []Number{nu}
	for i := range 40 {
		book = append(book, mustNumber(t, "+3519123"+strconv.Itoa(50000+i)))
	}
	mu.Lock()
	recording = true
	mu.Unlock()
	dir := NewDirectory(PublicKey{})
	ms, err := c.Discover(testCtx(t), r.ID(), d.id, dir, book)
	if err != nil {
		t.Fatal(err)
	}
	// And a second sync, as an app would do later.
	if _, err := c.Discover(testCtx(t), r.ID(), d.id, dir, book); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	recording = false
	got := frames
	mu.Unlock()
	if len(ms) != 1 || ms[0].Number != nu {
		t.Fatalf("matches %+v, want the user's number", ms)
	}
	if len(got) < 4 {
		t.Fatalf("recorded %d frames; the recorder is not seeing the requests", len(got))
	}

	// The relay's evaluation without the blind, for the secret parts.
	grp := group.Ristretto255
	dst := []byte("HashToGroup-OPRFV1-\x01-ristretto255-SHA512")
	for _, n := range book {
		var secrets [][]byte
		secrets = append(secrets, numberEncodings(n)...)
		p := grp.HashToElement(n.input(), dst)
		pb, _ := p.MarshalBinaryCompress()
		ev, err := r.svc.server.Evaluate(&oprf.EvaluationRequest{Elements: []oprf.Blinded{p}})
		if err != nil {
			t.Fatal(err)
		}
		kp, _ := ev.Elements[0].MarshalBinaryCompress()
		y, err := r.svc.output(n)
		if err != nil {
			t.Fatal(err)
		}
		id := y.ID()
		secrets = append(secrets, pb, kp, y[:], y[:16], id[:], y.key(), []byte(hex.EncodeToString(y[:])), []byte(id.String()))
		for i, f := range got {
			for _, s := range secrets {
				if bytes.Contains(f, s) {
					t.Fatalf("frame %d the relay received holds a value of address-book number %s (%x)", i, n.Masked(), s)
				}
			}
		}
	}
}

// TestBadProofDetected: a relay that evaluates with another key than the
// one it publishes is caught by the proof, and nothing it returned is
// used.
func TestBadProofDetected(t *testing.T) {
	other, err := oprf.GenerateKey(suite, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	t.Run("relay evaluates with a key it does not publish", func(t *testing.T) {
		r := startRelay(t, nil, withEvaluationKey(other), WithRequireVerified(false))
		c := newClient(t, r)
		a := newAccount(t, "a")
		_, err := c.Discover(testCtx(t), r.ID(), a.id, NewDirectory(PublicKey{}), []Number{mustNumber(t, "+351912345678")})
		wantCode(t, err, ErrBadProof)
	})
	t.Run("another relay answers for the pinned one", func(t *testing.T) {
		r1 := startRelay(t, nil, WithRequireVerified(false))
		r2 := startRelay(t, nil, WithRequireVerified(false))
		c := newClient(t, r1, r2)
		a := newAccount(t, "a")
		_, err := c.Evaluate(testCtx(t), r2.ID(), a.id, r1.svc.PublicKey(), []Number{mustNumber(t, "+351912345678")})
		wantCode(t, err, ErrBadProof)
		// A directory pinned to r1's key refuses r2's pages.
		dir := NewDirectory(r1.svc.PublicKey())
		_, err = c.Sync(testCtx(t), r2.ID(), dir)
		wantCode(t, err, ErrKeyChanged)
	})
}

// TestOPRFVector checks the relay's evaluation on the wire against RFC
// 9497's VOPRF ristretto255-SHA512 test vector 1.
func TestOPRFVector(t *testing.T) {
	hexd := func(s string) []byte {
		b, err := hex.DecodeString(s)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	seed := hexd("a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3")
	k, err := oprf.DeriveKey(suite, oprf.VerifiableMode, seed, []byte("test key"))
	if err != nil {
		t.Fatal(err)
	}
	r := startRelay(t, nil, withKey(k), WithRequireVerified(false))
	if got := hex.EncodeToString(r.svc.PublicKey().Bytes()); got != "c803e2cc6b05fc15064549b5920659ca4a77b2cca6f04f6b357009335476ad4e" {
		t.Fatalf("pkSm %s", got)
	}
	c := newClient(t, r)
	a := newAccount(t, "a")
	blinded := hexd("863f330cc1a1259ed5a5998a23acfd37fb4351a793a5b3c090b642ddc439b945")
	resp, err := rawOwner(t, c, r.ID(), signed(a.id, a.id.Public().Marshal(), ownerBody{op: opEvaluate, blinded: [][]byte{blinded}}))
	if err != nil || resp.code != CodeOK || resp.eval == nil {
		t.Fatalf("evaluate: %+v, %v", resp, err)
	}
	if got := hex.EncodeToString(resp.eval.elements[0]); got != "aa8fa048764d5623868679402ff6108d2521884fa138cd7f9c7669a9a014267e" {
		t.Fatalf("EvaluationElement %s", got)
	}
	// Finalize with the vector's blind: the vector's output.
	blind := grpScalar(t, hexd("64d37aed22a27f5191de1c1d69fadb899d8862b58eb4220029e036ec4c1f6706"))
	vc := oprf.NewVerifiableClient(suite, r.svc.PublicKey().k)
	fin, req, err := vc.DeterministicBlind([][]byte{{0}}, []oprf.Blind{blind})
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := req.Elements[0].MarshalBinaryCompress(); !bytes.Equal(b, blinded) {
		t.Fatalf("BlindedElement %x", b)
	}
	elems, err := parseElements(resp.eval.elements)
	if err != nil {
		t.Fatal(err)
	}
	proof, err := parseProof(resp.eval.proof)
	if err != nil {
		t.Fatal(err)
	}
	out, err := vc.Finalize(fin, &oprf.Evaluation{Elements: elems, Proof: proof})
	if err != nil {
		t.Fatalf("Finalize: %v", err)
	}
	if got := hex.EncodeToString(out[0]); got != "b58cfbe118e0cb94d79b5fd6a6dafb98764dff49c14e1770b566e42402da1a7da4d8527693914139caee5bd03903af43a491351d23b430948dd50cde10d32b3c" {
		t.Fatalf("Output %s", got)
	}
}

func grpScalar(t testing.TB, b []byte) group.Scalar {
	t.Helper()
	s := group.Ristretto255.NewScalar()
	if err := s.UnmarshalBinary(b); err != nil {
		t.Fatal(err)
	}
	return s
}

// TestEntryDerivation pins the id, key and box layout of doc.go, computed
// independently.
func TestEntryDerivation(t *testing.T) {
	var y Output
	for i := range y {
		y[i] = byte(i)
	}
	h := sha256Sum([]byte("kinmesh/discovery/id"), y[:])
	id := y.ID()
	if !bytes.Equal(id[:], h[:16]) {
		t.Fatalf("id %x, want %x", id, h[:16])
	}
	k := sha256Sum([]byte("kinmesh/discovery/key"), y[:])
	if !bytes.Equal(y.key(), k[:]) {
		t.Fatal("key derivation differs from doc.go")
	}
	a := newAccount(t, "a")
	box := y.seal(a.record.Raw)
	if len(box) != 24+len(a.record.Raw)+16 {
		t.Fatalf("box of %d bytes", len(box))
	}
	aead, _ := newXAEAD(k[:])
	pt, err := aead.Open(nil, box[:24], box[24:], append([]byte("kinmesh/discovery/entry/v1"), id[:]...))
	if err != nil || !bytes.Equal(pt, a.record.Raw) {
		t.Fatalf("box does not open as documented: %v", err)
	}
	rec, err := y.Open(box)
	if err != nil || rec.Name != "a" {
		t.Fatalf("Open: %v", err)
	}
	var z Output
	if _, err := z.Open(box); err == nil {
		t.Fatal("another output opened the box")
	}
	box[30] ^= 1
	if _, err := y.Open(box); err == nil {
		t.Fatal("a tampered box opened")
	}
}

func TestEvaluationLimits(t *testing.T) {
	clk := newClock()
	r := startRelay(t, clk, WithEvaluationRate(10, 10), WithRequireVerified(false))
	c := newClient(t, r)
	a := newAccount(t, "a")
	pk := r.svc.PublicKey()
	book := func(n int) []Number {
		var out []Number
		for i := range n {
			out = append(out, mustNumber(t, "+3519120"+strconv.Itoa(10000+i)))
		}
		return out
	}
	if _, err := c.Evaluate(testCtx(t), r.ID(), a.id, pk, book(8)); err != nil {
		t.Fatalf("8 of 10: %v", err)
	}
	_, err := c.Evaluate(testCtx(t), r.ID(), a.id, pk, book(5))
	wantCode(t, err, ErrRateLimited)
	if d := RetryAfter(err); d < 7*time.Hour || d > 8*time.Hour {
		t.Fatalf("retry after %v, want about 3 × 2.4 h", d)
	}
	_, err = c.Evaluate(testCtx(t), r.ID(), a.id, pk, book(11))
	wantCode(t, err, ErrTooLarge)
	st, err := c.Status(testCtx(t), r.ID(), a.id)
	if err != nil || st.EvaluationsLeft != 2 {
		t.Fatalf("status %+v, %v; want 2 evaluations left", st, err)
	}
	// Another account has its own budget.
	if _, err := c.Evaluate(testCtx(t), r.ID(), newAccount(t, "b").id, pk, book(10)); err != nil {
		t.Fatal(err)
	}
	clk.Advance(24 * time.Hour)
	if _, err := c.Evaluate(testCtx(t), r.ID(), a.id, pk, book(10)); err != nil {
		t.Fatalf("next day: %v", err)
	}
	// Batches over MaxBatch are refused on the wire.
	blinded := make([][]byte, MaxBatch+1)
	for i := range blinded {
		blinded[i] = make([]byte, 32)
	}
	resp, err := rawOwner(t, c, r.ID(), signed(a.id, a.id.Public().Marshal(), ownerBody{op: opEvaluate, blinded: blinded}))
	if err != nil || resp.code != CodeTooLarge {
		t.Fatalf("batch of %d: %v, %v; want TOO_LARGE", len(blinded), resp.code, err)
	}
	// Points that are not ristretto255 elements (or the identity) are
	// refused before any budget is spent.
	for _, bad := range [][]byte{make([]byte, 32), bytes.Repeat([]byte{0xff}, 32)} {
		resp, err := rawOwner(t, c, r.ID(), signed(a.id, a.id.Public().Marshal(), ownerBody{op: opEvaluate, blinded: [][]byte{bad}}))
		if err != nil || resp.code != CodeMalformed {
			t.Fatalf("element %x: %v, %v; want MALFORMED", bad, resp.code, err)
		}
	}
}

func TestEvaluateNeedsVerifiedNumber(t *testing.T) {
	r := startRelay(t, nil)
	c := newClient(t, r)
	a := newAccount(t, "a")
	book := []Number{mustNumber(t, "+351912345678")}
	_, err := c.Discover(testCtx(t), r.ID(), a.id, NewDirectory(PublicKey{}), book)
	wantCode(t, err, ErrNotVerified)
	verify(t, c, r, a, mustNumber(t, "+351912345600"))
	if _, err := c.Discover(testCtx(t), r.ID(), a.id, NewDirectory(PublicKey{}), book); err != nil {
		t.Fatalf("after verifying: %v", err)
	}
}

// TestDirectoryPaging: pages respect the limit, a sync applies every
// change, and a later sync fetches only what changed; deletions older
// than the tombstone TTL are forgotten and old cursors start over.
func TestDirectoryPaging(t *testing.T) {
	clk := newClock()
	r := startRelay(t, clk, relaxed...)
	c := newClient(t, r)
	ctx := testCtx(t)
	var accts []*account
	var nums []Number
	for i := range 23 {
		a := newAccount(t, "user"+strconv.Itoa(i))
		n := mustNumber(t, "+4420794"+strconv.Itoa(10000+i))
		verify(t, c, r, a, n)
		accts, nums = append(accts, a), append(nums, n)
	}
	var seen []Entry
	var at Listing
	for pages := 0; ; pages++ {
		p, err := c.List(ctx, r.ID(), at, 7)
		if err != nil {
			t.Fatal(err)
		}
		if len(p.Entries) > 7 || p.StartOver || p.Total != 23 {
			t.Fatalf("page %d: %d entries, start over %v, total %d", pages, len(p.Entries), p.StartOver, p.Total)
		}
		seen = append(seen, p.Entries...)
		if pages == 0 {
			at.Base = p.Version
		}
		at.Since = p.Next
		if !p.More {
			if pages != 3 || p.Next != p.Version {
				t.Fatalf("%d pages, next %d, version %d; want 4 pages ending at the version", pages+1, p.Next, p.Version)
			}
			break
		}
	}
	if len(seen) != 23 || !slices.IsSortedFunc(seen, func(a, b Entry) int { return int(a.Seq) - int(b.Seq) }) {
		t.Fatalf("saw %d entries (sorted: %v), want 23 in order", len(seen), slices.IsSortedFunc(seen, func(a, b Entry) int { return int(a.Seq) - int(b.Seq) }))
	}
	dir := NewDirectory(PublicKey{})
	if n, err := c.Sync(ctx, r.ID(), dir); err != nil || n != 23 || dir.Len() != 23 {
		t.Fatalf("Sync: %d changes, %d entries, %v", n, dir.Len(), err)
	}
	if n, err := c.Sync(ctx, r.ID(), dir); err != nil || n != 0 {
		t.Fatalf("Sync with nothing new: %d changes, %v; want 0", n, err)
	}
	// Changes: one leaves, one updates its record, one verifies.
	if _, err := c.Unenrol(ctx, r.ID(), accts[3].id); err != nil {
		t.Fatal(err)
	}
	if _, err := c.UpdateRecord(ctx, r.ID(), accts[5].id, accts[5].record); err != nil {
		t.Fatal(err)
	}
	newcomer := newAccount(t, "newcomer")
	verify(t, c, r, newcomer, mustNumber(t, "+442079499999"))
	if n, err := c.Sync(ctx, r.ID(), dir); err != nil || n != 3 || dir.Len() != 23 {
		t.Fatalf("delta Sync: %d changes, %d entries, %v; want 3 changes, 23 entries", n, dir.Len(), err)
	}
	y3, _ := r.svc.output(nums[3])
	if _, ok := dir.Box(y3.ID()); ok {
		t.Fatal("the unenrolled entry is still in the copy")
	}
	old := NewDirectory(PublicKey{})
	old.Cursor = dir.Cursor - 3 // a copy from before the deletion

	// A month later the deletion is forgotten: cursors before it start
	// over, newer ones don't.
	clk.Advance(DefaultTombstoneTTL + time.Hour)
	p, err := c.List(ctx, r.ID(), old.Listing(), 1)
	if err != nil || !p.StartOver {
		t.Fatalf("old cursor: %+v, %v; want start over", p, err)
	}
	if n, err := c.Sync(ctx, r.ID(), old); err != nil || old.Len() != 23 || n != 23 {
		t.Fatalf("Sync from an old cursor: %d changes, %d entries, %v; want a full copy of 23", n, old.Len(), err)
	}
	if n, err := c.Sync(ctx, r.ID(), dir); err != nil || n != 0 {
		t.Fatalf("Sync up to date: %d, %v", n, err)
	}
	// A cursor from the future (a relay that lost its data) starts over.
	p, err = c.List(ctx, r.ID(), Listing{Since: 1 << 40}, 1)
	if err != nil || !p.StartOver {
		t.Fatalf("future cursor: %+v, %v; want start over", p, err)
	}
	for k := range r.records(t) {
		if strings.HasPrefix(k, "t/") {
			t.Fatalf("deletion record %q outlived the TTL", k)
		}
	}
	// List limits are checked.
	if _, err := c.List(ctx, r.ID(), Listing{}, MaxPageEntries+1); err == nil {
		t.Fatal("client sent a list over the page cap")
	}
}

func TestListRateLimit(t *testing.T) {
	r := startRelay(t, nil, WithListRate(1, 2))
	c := newClient(t, r)
	for range 2 {
		if _, err := c.List(testCtx(t), r.ID(), Listing{}, 10); err != nil {
			t.Fatal(err)
		}
	}
	_, err := c.List(testCtx(t), r.ID(), Listing{}, 10)
	wantCode(t, err, ErrRateLimited)
}

// TestRestartKeepsKeyAndDirectory: the OPRF key and directory are the
// relay's for good.
func TestRestartKeepsKeyAndDirectory(t *testing.T) {
	r := startRelay(t, nil)
	c := newClient(t, r)
	a := newAccount(t, "a")
	n := mustNumber(t, "+351912345678")
	verify(t, c, r, a, n)
	pk := r.svc.PublicKey()
	r.Stop()
	r.Start()
	if !r.svc.PublicKey().Equal(pk) || r.svc.Entries() != 1 {
		t.Fatalf("after restart: key %v (was %v), %d entries", r.svc.PublicKey(), pk, r.svc.Entries())
	}
	d := discoverer(t, c, r)
	ms, err := c.Discover(testCtx(t), r.ID(), d.id, NewDirectory(pk), []Number{n})
	if err != nil || len(ms) != 1 {
		t.Fatalf("Discover after restart: %v, %v", ms, err)
	}
}

// TestCloseUnblocksStreams: Close resets streams in flight and returns;
// goleak (TestMain) checks nothing is left.
func TestCloseUnblocksStreams(t *testing.T) {
	r := startRelay(t, nil)
	c := newClient(t, r)
	st, err := c.h.NewStream(testCtx(t), r.ID(), ID)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Reset()
	if err := wire.Write(st, encodeRequest(request{kind: reqHello}), maxRequestFrame); err != nil {
		t.Fatal(err)
	}
	if _, err := readResponse(wire.NewReader(st)); err != nil {
		t.Fatal(err)
	}
	// The relay now waits for the signed request; Close must not.
	done := make(chan error, 1)
	go func() { done <- r.svc.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-testCtx(t).Done():
		t.Fatal("Close blocked on a stream in flight")
	}
	if _, err := c.List(testCtx(t), r.ID(), Listing{}, 0); err == nil {
		t.Fatal("a closed service answered")
	}
}
