package leaf_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"

	"github.com/vigilhealth/vigil/audit/leaf"
)

func sampleEvent() leaf.Event {
	salt := bytes.Repeat([]byte{7}, 32)
	return leaf.Event{
		ID:          [16]byte{0x01, 0x90, 1, 2, 3, 4, 0x70, 5, 0x80, 6, 7, 8, 9, 10, 11, 12},
		Time:        time.Date(2026, 11, 28, 3, 0, 0, 123456000, time.UTC),
		RecordedAt:  time.Date(2026, 11, 28, 3, 0, 0, 200000000, time.UTC),
		Session:     [16]byte{0x01, 0x90, 0xaa, 0x01, 0, 0, 0x70, 0, 0x80, 0, 0, 0, 0, 0, 0, 2},
		SessionSeq:  7,
		ActorKind:   "device",
		ActorID:     leaf.Commit(salt, leaf.LabelActorID, []byte("dev-42")),
		ActorAuth:   "device-signature",
		Action:      "upload.accepted",
		ObjectType:  "upload",
		ObjectID:    leaf.Commit(salt, leaf.LabelObjectID, []byte("u-1")),
		Outcome:     "success",
		RequestID:   leaf.Commit(salt, leaf.LabelRequestID, []byte("req-1")),
		SourceAddr:  leaf.Commit(salt, leaf.LabelSourceAddr, []byte("10.0.0.1")),
		PayloadHash: leaf.Commit(salt, leaf.LabelPayload, []byte(`{"n":1}`)),
	}
}

// The event encoding is canonical: it round-trips, and its hash is pinned (a change of the
// wire format without a new version breaks this test).
// Verifies: REQ-AUD-003
func TestEventEncodingCanonical(t *testing.T) {
	e := sampleEvent()
	b, err := e.Encode()
	if err != nil {
		t.Fatal(err)
	}
	got, err := leaf.DecodeEvent(b)
	if err != nil {
		t.Fatalf("DecodeEvent() error = %v", err)
	}
	b2, _ := got.Encode()
	if !bytes.Equal(b, b2) {
		t.Errorf("Encode(DecodeEvent(b)) = %x, want %x", b2, b)
	}
	h := leaf.LeafHash(b)
	const want = "91f6398916bb7f252fe21223b487230772818885d9aed2ed3c1803f029ded514"
	if hex.EncodeToString(h[:]) != want {
		t.Errorf("LeafHash(sample) = %x, want %s", h, want)
	}
	if len(b) != 1+16+8+8+16+8+5*32+2+6+2+16+2+15+2+6+2+7+2 {
		t.Errorf("len(Encode()) = %d", len(b))
	}
	// Commitments depend on salt and label.
	salt := bytes.Repeat([]byte{7}, 32)
	if leaf.Commit(salt, leaf.LabelActorID, []byte("x")) == leaf.Commit(salt, leaf.LabelObjectID, []byte("x")) {
		t.Error("Commit() equal across labels")
	}
	if leaf.Commit(salt, leaf.LabelActorID, []byte("x")) == leaf.Commit(bytes.Repeat([]byte{8}, 32), leaf.LabelActorID, []byte("x")) {
		t.Error("Commit() equal across salts")
	}
}

// Malformed encodings are refused, never panicked on.
// Verifies: REQ-AUD-003
func TestDecodeRejectsMalformed(t *testing.T) {
	e := sampleEvent()
	b, _ := e.Encode()
	for _, tc := range []struct {
		name string
		in   []byte
	}{
		{"empty", nil},
		{"version 1", append([]byte{1}, b[1:]...)},
		{"version 3", append([]byte{3}, b[1:]...)},
		{"truncated", b[:len(b)-1]},
		{"trailing", append(append([]byte{}, b...), 0)},
	} {
		if _, err := leaf.DecodeEvent(tc.in); !errors.Is(err, leaf.ErrMalformed) {
			t.Errorf("DecodeEvent(%s) error = %v, want ErrMalformed", tc.name, err)
		}
	}
	bl := leaf.Batch{ID: [16]byte{1}, Count: 3, Root: sha256.Sum256(nil)}
	enc := bl.Encode()
	if got, err := leaf.DecodeBatch(enc); err != nil || got != bl {
		t.Errorf("DecodeBatch(Encode()) = %v, %v, want %v", got, err, bl)
	}
	if _, err := leaf.DecodeBatch(enc[1:]); !errors.Is(err, leaf.ErrMalformed) {
		t.Errorf("DecodeBatch(short) error = %v, want ErrMalformed", err)
	}
	b2 := bl
	b2.Root[0] ^= 1
	if bl.IdentityHash() != b2.IdentityHash() {
		t.Error("IdentityHash() depends on more than the batch id")
	}
}

// The batch tree is RFC 6962: its root and proofs agree with transparency-dev/merkle.
// Verifies: REQ-AUD-004
func TestBatchTreeMatchesRFC6962(t *testing.T) {
	h := rfc6962.DefaultHasher
	for n := 1; n <= 33; n++ {
		leaves := make([]leaf.Hash, n)
		for i := range leaves {
			leaves[i] = leaf.LeafHash([]byte(fmt.Sprint(i)))
		}
		tr, err := leaf.NewTree(leaves)
		if err != nil {
			t.Fatal(err)
		}
		root := tr.Root()
		for i := 0; i < n; i++ {
			p, err := tr.InclusionProof(i)
			if err != nil {
				t.Fatal(err)
			}
			pp := make([][]byte, len(p))
			for k := range p {
				pp[k] = p[k][:]
			}
			if err := proof.VerifyInclusion(h, uint64(i), uint64(n), leaves[i][:], pp, root[:]); err != nil {
				t.Errorf("n=%d: VerifyInclusion(%d) = %v", n, i, err)
			}
		}
	}
}

func FuzzDecodeEvent(f *testing.F) {
	e := sampleEvent()
	b, _ := e.Encode()
	f.Add(b)
	f.Fuzz(func(t *testing.T, in []byte) {
		ev, err := leaf.DecodeEvent(in)
		if err != nil {
			return
		}
		out, err := ev.Encode()
		if err != nil || !bytes.Equal(out, in) {
			t.Fatalf("Encode(DecodeEvent(%x)) = %x, %v", in, out, err)
		}
	})
}

// The event authentication tag of docs/audit.md's test vector (session key 0b × 32).
// Verifies: REQ-AUD-040
func TestEventMACVector(t *testing.T) {
	e := sampleEvent()
	b, _ := e.Encode()
	key := bytes.Repeat([]byte{0x0b}, 32)
	m := leaf.EventMAC(key, b)
	if got, want := hex.EncodeToString(m[:]), "2fb99639089826688dc0c0531ec579c9"; got != want {
		t.Errorf("EventMAC(0b×32, sample) = %s, want %s", got, want)
	}
	if got := leaf.NewEventMACer(key).MAC(b); got != m {
		t.Errorf("EventMACer.MAC() = %x, want %x", got, m)
	}
	// The form v2 (whole HMAC, written before v3) is still checked; neither form is made
	// from the other (a v2 tag cut to 16 bytes is not a v3 tag).
	m2 := leaf.EventMACV2(key, b)
	if got, want := hex.EncodeToString(m2[:]), "a962cb8a2ad018cf0757fbef0d412eb88c7490ccc5b8c66e4a8eae6e6f54c1b5"; got != want {
		t.Errorf("EventMACV2(0b×32, sample) = %s, want %s", got, want)
	}
	if !leaf.CheckEventMAC(key, b, m[:]) || !leaf.CheckEventMAC(key, b, m2[:]) {
		t.Errorf("CheckEventMAC() refuses the v3 or the v2 tag")
	}
	if leaf.CheckEventMAC(key, b, m2[:leaf.MACSize]) || leaf.CheckEventMAC(key, b, m[:8]) || leaf.CheckEventMAC(key, b, nil) {
		t.Errorf("CheckEventMAC() accepts a truncated v2 tag, a shorter tag or none")
	}
	// Every field is under the tag: the record time and the counter too.
	for _, mut := range []func(*leaf.Event){
		func(e *leaf.Event) { e.RecordedAt = e.RecordedAt.Add(-time.Hour) },
		func(e *leaf.Event) { e.SessionSeq++ },
		func(e *leaf.Event) { e.Session[15] ^= 1 },
		func(e *leaf.Event) { e.Time = e.Time.Add(-time.Hour) },
	} {
		e2 := sampleEvent()
		mut(&e2)
		b2, _ := e2.Encode()
		if leaf.EventMAC(key, b2) == m || leaf.CheckEventMAC(key, b2, m2[:]) {
			t.Errorf("EventMAC() unchanged by a change of the event")
		}
	}
}

// The batch leaf of docs/audit.md's test vector: a change of the format without a new
// version breaks this test.
// Verifies: REQ-AUD-003
func TestBatchLeafVector(t *testing.T) {
	e := sampleEvent()
	b, _ := e.Encode()
	bl := leaf.Batch{ID: [16]byte{0x01, 0x90, 0xaa, 0, 0, 0, 0x70, 0, 0x80, 0, 0, 0, 0, 0, 0, 1}, Count: 1, Root: leaf.LeafHash(b)}
	h, id := leaf.LeafHash(bl.Encode()), bl.IdentityHash()
	for _, tc := range []struct{ name, got, want string }{
		{"batch leaf hash", hex.EncodeToString(h[:]), "28010cf90d4c72c67f751fabb3dafa5827656dcb0456a271b5934532244d8230"},
		{"identity hash", hex.EncodeToString(id[:]), "e45bf47665ed688786403c3bd5a89fe97fce067b69ccd78dcf88f3ffef631010"},
	} {
		if tc.got != tc.want {
			t.Errorf("%s = %s, want %s", tc.name, tc.got, tc.want)
		}
	}
}

// A Committer gives exactly Commit's values, field after field.
// Verifies: REQ-AUD-003
func TestCommitterMatchesCommit(t *testing.T) {
	salt := bytes.Repeat([]byte{7}, 32)
	c := leaf.NewCommitter(salt)
	for _, f := range []struct{ label, value string }{{leaf.LabelActorID, "dev-42"}, {leaf.LabelPayload, `{"n":1}`}, {leaf.LabelObjectID, ""}} {
		if got, want := c.Commit(f.label, []byte(f.value)), leaf.Commit(salt, f.label, []byte(f.value)); got != want {
			t.Errorf("Committer.Commit(%s) = %x, want %x", f.label, got, want)
		}
	}
}
