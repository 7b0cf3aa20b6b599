package witness_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"

	"github.com/vigilhealth/vigil/audit/witness"
)

const origin = "vigil.audit/test"

// testLog is a tiny RFC 6962 log with a signing key: it makes checkpoints and proofs.
type testLog struct {
	t      *testing.T
	signer note.Signer
	vkey   string
	leaves [][]byte
}

func newTestLog(t *testing.T, seed byte) *testLog {
	t.Helper()
	priv := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seed}, 32))
	vkey, err := note.NewEd25519VerifierKey(origin, priv.Public().(ed25519.PublicKey))
	if err != nil {
		t.Fatal(err)
	}
	skey := fmt.Sprintf("PRIVATE+KEY+%s+%08x+%s", origin, keyHashOf(vkey), base64.StdEncoding.EncodeToString(append([]byte{1}, priv.Seed()...)))
	s, err := note.NewSigner(skey)
	if err != nil {
		t.Fatal(err)
	}
	return &testLog{t: t, signer: s, vkey: vkey}
}

func keyHashOf(vkey string) uint32 {
	v, _ := note.NewVerifier(vkey)
	return v.KeyHash()
}

func (l *testLog) add(n int, tag string) {
	for i := 0; i < n; i++ {
		l.leaves = append(l.leaves, []byte(fmt.Sprintf("%s-%d", tag, len(l.leaves))))
	}
}

func (l *testLog) root(size uint64) []byte {
	rf := compact.RangeFactory{Hash: rfc6962.DefaultHasher.HashChildren}
	r := rf.NewEmptyRange(0)
	for _, v := range l.leaves[:size] {
		_ = r.Append(rfc6962.DefaultHasher.HashLeaf(v), nil)
	}
	h, _ := r.GetRootHash(nil)
	return h
}

func (l *testLog) checkpoint(size uint64) []byte {
	body := fmt.Sprintf("%s\n%d\n%s\n", origin, size, base64.StdEncoding.EncodeToString(l.root(size)))
	b, err := note.Sign(&note.Note{Text: body}, l.signer)
	if err != nil {
		l.t.Fatal(err)
	}
	return b
}

// proof computes the RFC 6962 consistency proof by brute force from the leaves.
func (l *testLog) proof(from, to uint64) [][]byte {
	hashes := make([][]byte, to)
	for i := range hashes {
		hashes[i] = rfc6962.DefaultHasher.HashLeaf(l.leaves[i])
	}
	nodes, err := proof.Consistency(from, to)
	if err != nil {
		l.t.Fatal(err)
	}
	var out [][]byte
	for _, id := range nodes.IDs {
		out = append(out, subtreeRoot(hashes, id.Index<<id.Level, (id.Index+1)<<id.Level))
	}
	p, err := nodes.Rehash(out, rfc6962.DefaultHasher.HashChildren)
	if err != nil {
		l.t.Fatal(err)
	}
	return p
}

func subtreeRoot(h [][]byte, begin, end uint64) []byte {
	end = min(end, uint64(len(h)))
	if end-begin == 1 {
		return h[begin]
	}
	k := uint64(1)
	for k*2 < end-begin {
		k *= 2
	}
	return rfc6962.DefaultHasher.HashChildren(subtreeRoot(h, begin, begin+k), subtreeRoot(h, begin+k, end))
}

func newWitness(t *testing.T, logVkey, state string) (*witness.Witness, *witness.Cosigner) {
	t.Helper()
	priv := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{9}, 32))
	cs, err := witness.NewCosigner("witness.example", priv, func() time.Time { return time.Unix(1700000000, 0) })
	if err != nil {
		t.Fatal(err)
	}
	w, err := witness.New(witness.Config{Cosigner: cs, Logs: map[string]string{origin: logVkey}, StateFile: state})
	if err != nil {
		t.Fatal(err)
	}
	return w, cs
}

// The witness cosigns consistent checkpoints and refuses the rest with the C2SP status
// codes: a rollback or fork 409 (with its size), an unproven extension 422, an unknown log
// 404, a bad signature 403; its newest checkpoint survives a restart.
// Verifies: REQ-AUD-046
func TestWitnessProtocol(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	lg := newTestLog(t, 1)
	state := filepath.Join(t.TempDir(), "state.json")
	w, cs := newWitness(t, lg.vkey, state)
	srv := httptest.NewServer(w)
	defer srv.Close()
	c := &witness.Client{URL: srv.URL}

	lg.add(5, "a")
	sigs, err := c.AddCheckpoint(ctx, witness.Request{OldSize: 0, Checkpoint: lg.checkpoint(5)})
	if err != nil {
		t.Fatalf("AddCheckpoint(first) error = %v", err)
	}
	if at, ok := witness.Cosigned(append(lg.checkpoint(5), sigs...), cs.VerifierKey()); !ok || at.Unix() != 1700000000 {
		t.Fatalf("Cosigned() = %v, %v; want a valid cosignature at the witness's time", at, ok)
	}
	lg.add(7, "b")
	if _, err := c.AddCheckpoint(ctx, witness.Request{OldSize: 5, Proof: lg.proof(5, 12), Checkpoint: lg.checkpoint(12)}); err != nil {
		t.Fatalf("AddCheckpoint(5→12) error = %v", err)
	}

	var conflict *witness.ConflictError
	var status *witness.StatusError
	// A rollback: the log presents size 5 again.
	if _, err := c.AddCheckpoint(ctx, witness.Request{OldSize: 0, Checkpoint: lg.checkpoint(5)}); !errors.As(err, &conflict) || conflict.Size != 12 {
		t.Errorf("AddCheckpoint(rolled back to 5) error = %v, want 409 with size 12", err)
	}
	// A fork: another history of the same size signed by the log's key.
	fork := newTestLog(t, 1)
	fork.add(12, "x")
	if _, err := c.AddCheckpoint(ctx, witness.Request{OldSize: 12, Checkpoint: fork.checkpoint(12)}); !errors.As(err, &conflict) {
		t.Errorf("AddCheckpoint(fork at 12) error = %v, want 409", err)
	}
	fork.add(3, "y")
	if _, err := c.AddCheckpoint(ctx, witness.Request{OldSize: 12, Proof: fork.proof(12, 15), Checkpoint: fork.checkpoint(15)}); !errors.As(err, &status) || status.Code != http.StatusUnprocessableEntity {
		t.Errorf("AddCheckpoint(inconsistent 12→15) error = %v, want 422", err)
	}
	// Signed by someone else; an unknown log.
	other := newTestLog(t, 2)
	other.leaves = lg.leaves
	if _, err := c.AddCheckpoint(ctx, witness.Request{OldSize: 12, Checkpoint: other.checkpoint(12)}); !errors.As(err, &status) || status.Code != http.StatusForbidden {
		t.Errorf("AddCheckpoint(other key) error = %v, want 403", err)
	}
	unknown := strings.Replace(string(lg.checkpoint(12)), origin, "someone.else/log", 1)
	if _, err := c.AddCheckpoint(ctx, witness.Request{OldSize: 12, Checkpoint: []byte(unknown)}); !errors.As(err, &status) || status.Code != http.StatusNotFound {
		t.Errorf("AddCheckpoint(unknown origin) error = %v, want 404", err)
	}
	// Restarted from its state file, it still refuses the rollback.
	w2, _ := newWitness(t, lg.vkey, state)
	if st, ok := w2.Latest(origin); !ok || st.Size != 12 {
		t.Errorf("Latest() after restart = %+v, %v; want size 12", st, ok)
	}
	srv2 := httptest.NewServer(w2)
	defer srv2.Close()
	if _, err := (&witness.Client{URL: srv2.URL}).AddCheckpoint(ctx, witness.Request{OldSize: 0, Checkpoint: lg.checkpoint(5)}); !errors.As(err, &conflict) || conflict.Size != 12 {
		t.Errorf("AddCheckpoint(rollback) after restart error = %v, want 409 with size 12", err)
	}
}

// The cosignature is exactly C2SP tlog-cosignature v1: key id SHA-256(name "\n" 0x04 key)[:4],
// signature = 8-byte time || Ed25519("cosignature/v1\ntime T\n" || body), checked here
// without the package's verifier.
// Verifies: REQ-AUD-046
func TestCosignatureFormat(t *testing.T) {
	t.Parallel()
	priv := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{9}, 32))
	cs, err := witness.NewCosigner("witness.example", priv, func() time.Time { return time.Unix(1700000000, 0) })
	if err != nil {
		t.Fatal(err)
	}
	body := "vigil.audit/test\n3\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"
	signed, err := note.Sign(&note.Note{Text: body}, cs)
	if err != nil {
		t.Fatal(err)
	}
	lines := witness.SignatureLines(signed)
	if len(lines) != 1 || !strings.HasPrefix(lines[0], "— witness.example ") {
		t.Fatalf("signature lines = %q", lines)
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(strings.TrimPrefix(lines[0], "— witness.example ")))
	if err != nil || len(raw) != 4+8+64 {
		t.Fatalf("signature of %d bytes, %v", len(raw), err)
	}
	pub := priv.Public().(ed25519.PublicKey)
	id := sha256.Sum256(append([]byte("witness.example\n\x04"), pub...))
	if !bytes.Equal(raw[:4], id[:4]) {
		t.Errorf("key id = %x, want %x", raw[:4], id[:4])
	}
	if ts := binary.BigEndian.Uint64(raw[4:12]); ts != 1700000000 {
		t.Errorf("timestamp = %d", ts)
	}
	if !ed25519.Verify(pub, []byte("cosignature/v1\ntime 1700000000\n"+body), raw[12:]) {
		t.Error("signature does not verify over the cosignature/v1 message")
	}
	if !strings.HasPrefix(cs.VerifierKey(), "witness.example+") {
		t.Errorf("VerifierKey() = %q", cs.VerifierKey())
	}
}

func FuzzParseRequest(f *testing.F) {
	f.Add([]byte("old 3\nPlRNCrwHpqhGrupue0L7gxbjbMiKA9temvuZZDDpkaw=\n\norigin\n5\nAAAA\n"))
	f.Add([]byte("old 0\n\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		r, err := witness.ParseRequest(in)
		if err != nil {
			return
		}
		again, err := witness.ParseRequest(witness.EncodeRequest(r))
		if err != nil || again.OldSize != r.OldSize || len(again.Proof) != len(r.Proof) || !bytes.Equal(again.Checkpoint, r.Checkpoint) {
			t.Fatalf("ParseRequest(EncodeRequest(%+v)) = %+v, %v", r, again, err)
		}
	})
}
