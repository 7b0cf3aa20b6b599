package chain_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/vigilhealth/vigil/audit/audittest"
	"github.com/vigilhealth/vigil/audit/chain"
	"github.com/vigilhealth/vigil/audit/chain/chaintest"
	"github.com/vigilhealth/vigil/audit/leaf"
	"github.com/vigilhealth/vigil/audit/witness"
	"github.com/vigilhealth/vigil/internal/testdb"
)

// omniwitnessBin finds the transparency-dev witness (cmd/omniwitness, built into bin/ by
// tools/omniwitness/build.sh): $VIGIL_OMNIWITNESS_BIN, else bin/omniwitness in the module
// root. Without it the test is skipped, unless VIGIL_REQUIRE_OMNIWITNESS is set (as `make
// test` does), when it fails.
func omniwitnessBin(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("VIGIL_OMNIWITNESS_BIN"); p != "" {
		return p
	}
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("module root not found")
		}
		dir = parent
	}
	p := filepath.Join(dir, "bin", "omniwitness")
	if _, err := os.Stat(p); err != nil {
		msg := "no " + p + ": run tools/omniwitness/build.sh (make tools) or set VIGIL_OMNIWITNESS_BIN"
		if os.Getenv("VIGIL_REQUIRE_OMNIWITNESS") != "" {
			t.Fatalf("VIGIL_REQUIRE_OMNIWITNESS is set but %s", msg)
		}
		t.Skip(msg)
	}
	return p
}

// startOmniwitness runs the independent witness (transparency-dev's omniwitness) as a
// process with its own key, its own SQLite state and Vigil's log as an extra log in its
// YAML, and returns it as the witness Vigil submits to. It is stopped when the test ends.
func startOmniwitness(t *testing.T, logVerifierKey string) chain.WitnessEndpoint {
	t.Helper()
	bin := omniwitnessBin(t)
	dir := t.TempDir()
	const name = "omniwitness.compliance.example"
	skey, vkey, err := note.GenerateKey(rand.Reader, name)
	if err != nil {
		t.Fatal(err)
	}
	// The witness's cosignature/v1 verifier key: same Ed25519 key, cosignature key hash.
	raw, err := base64.StdEncoding.DecodeString(strings.SplitN(vkey, "+", 3)[2])
	if err != nil || len(raw) != 1+ed25519.PublicKeySize {
		t.Fatalf("note key %q: %v", vkey, err)
	}
	cosigKey := witness.VerifierKey(name, ed25519.PublicKey(raw[1:]))
	keyFile := filepath.Join(dir, "witness.key")
	logs := filepath.Join(dir, "logs.yaml")
	if err := os.WriteFile(keyFile, []byte(skey), 0o600); err != nil {
		t.Fatal(err)
	}
	yaml := fmt.Sprintf("Logs:\n  - Origin: %q\n    PublicKey: %q\n    URL: http://127.0.0.1:1/unused\n", testOrigin, logVerifierKey)
	if err := os.WriteFile(logs, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	for attempt := 0; ; attempt++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		_ = l.Close()
		var out bytes.Buffer
		ctx, cancel := context.WithCancel(context.Background())
		cmd := exec.CommandContext(ctx, bin, "--listen", addr, "--metrics_listen", "", "--private_key_path", keyFile,
			"--db_file", filepath.Join(dir, "witness.db"), "--additional_logs", logs, "--logtostderr")
		cmd.Stdout, cmd.Stderr = &out, &out
		cmd.WaitDelay = 5 * time.Second
		if err := cmd.Start(); err != nil {
			cancel()
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		url := "http://" + addr
		if waitListening(addr, exited) {
			t.Cleanup(func() {
				cancel()
				<-exited
				if t.Failed() {
					t.Logf("omniwitness output:\n%s", tail(out.String(), 4000))
				}
			})
			return chain.WitnessEndpoint{URL: url, VerifierKey: cosigKey}
		}
		cancel()
		<-exited
		if attempt == 2 {
			t.Fatalf("omniwitness did not start:\n%s", tail(out.String(), 4000))
		}
	}
}

// waitListening waits for the witness's port to accept connections (false if the process
// exited first, e.g. because the port was taken meanwhile).
func waitListening(addr string, exited <-chan error) bool {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return false
		default:
		}
		if c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond); err == nil {
			_ = c.Close()
			return true
		}
		time.Sleep(50 * time.Millisecond) // waiting for a process to listen, not for logic
	}
	return false
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// signedCheckpoint signs a checkpoint body with the log's own key (what an attacker holding
// the checkpoint key could present to a witness).
func signedCheckpoint(t *testing.T, priv ed25519.PrivateKey, vkey string, size uint64, root leaf.Hash) []byte {
	t.Helper()
	parts := strings.SplitN(vkey, "+", 3)
	skey := "PRIVATE+KEY+" + parts[0] + "+" + parts[1] + "+" + base64.StdEncoding.EncodeToString(append([]byte{1}, priv.Seed()...))
	s, err := note.NewSigner(skey)
	if err != nil {
		t.Fatal(err)
	}
	msg, err := note.Sign(&note.Note{Text: chain.CheckpointBody(testOrigin, size, root)}, s)
	if err != nil {
		t.Fatal(err)
	}
	return msg
}

// The independent witness (transparency-dev's omniwitness, not our code) cosigns Vigil's
// checkpoints as Vigil submits them (C2SP tlog-witness, with consistency proofs), verify
// --witness accepts its cosignatures, and it refuses a checkpoint that does not extend the
// one it cosigned (a fork at the same size; a larger tree with a proof that does not hold),
// even one signed with the log's own key.
// Verifies: REQ-AUD-053
func TestIndependentWitnessCosignsAndRefuses(t *testing.T) {
	t.Parallel()
	omniwitnessBin(t) // skip (or fail) before making a database
	ctx := context.Background()
	c := &rig{}
	c.pool, c.url = testdb.NewWithURL(t)
	c.rec = audittest.Recorder(t, c.pool, nil)
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	signer := chain.NewEd25519Signer("omni-test", priv)
	vkey, err := chain.VerifierKey(testOrigin, signer.Public())
	if err != nil {
		t.Fatal(err)
	}
	w := startOmniwitness(t, vkey)
	svc := openWitnessed(t, c, signer, []chain.WitnessEndpoint{w})

	c.record(t, 5)
	chaintest.ShipAll(t, svc)
	if res, err := svc.Witness(ctx); err != nil || len(res) != 1 {
		t.Fatalf("Witness() to the omniwitness = %+v, %v", res, err)
	}
	c.record(t, 7)
	cp2 := chaintest.ShipAll(t, svc)
	if res, err := svc.Witness(ctx); err != nil || res[0].Size != cp2.Size { // from the first size: with a consistency proof
		t.Fatalf("Witness() with a consistency proof = %+v, %v; want size %d", res, err, cp2.Size)
	}
	var stored int
	if err := c.pool.QueryRow(ctx, `SELECT count(*) FROM audit_cosignatures`).Scan(&stored); err != nil || stored != 2 {
		t.Fatalf("stored cosignatures = %d, %v; want 2", stored, err)
	}
	if r := verifyWith(t, c, svc, []chain.WitnessEndpoint{w}); !r.OK {
		t.Fatalf("Verify(--witness omniwitness): %s", findings(r))
	}

	client := &witness.Client{URL: w.URL, HTTP: &http.Client{Timeout: 10 * time.Second}}
	var other leaf.Hash
	other[0] = 1
	// A fork: same size, another root, signed by the log's key.
	_, err = client.AddCheckpoint(ctx, witness.Request{OldSize: cp2.Size, Checkpoint: signedCheckpoint(t, priv, vkey, cp2.Size, other)})
	var se *witness.StatusError
	var ce *witness.ConflictError
	if err == nil || (!errors.As(err, &se) && !errors.As(err, &ce)) {
		t.Errorf("AddCheckpoint(fork at size %d) = %v, want a refusal", cp2.Size, err)
	}
	// A larger tree whose proof does not hold.
	_, err = client.AddCheckpoint(ctx, witness.Request{OldSize: cp2.Size, Proof: [][]byte{other[:], other[:]},
		Checkpoint: signedCheckpoint(t, priv, vkey, cp2.Size+3, other)})
	if err == nil || (!errors.As(err, &se) && !errors.As(err, &ce)) {
		t.Errorf("AddCheckpoint(inconsistent size %d) = %v, want a refusal", cp2.Size+3, err)
	}
	// It still holds Vigil's checkpoint: the next genuine one is cosigned.
	c.record(t, 3)
	cp3 := chaintest.ShipAll(t, svc)
	if res, err := svc.Witness(ctx); err != nil || res[0].Size != cp3.Size {
		t.Errorf("Witness() after the refusals = %+v, %v; want size %d", res, err, cp3.Size)
	}
}
