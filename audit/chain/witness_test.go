package chain_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/audittest"
	"github.com/vigilhealth/vigil/audit/chain"
	"github.com/vigilhealth/vigil/audit/chain/chaintest"
	"github.com/vigilhealth/vigil/audit/witness"
	"github.com/vigilhealth/vigil/internal/testdb"
)

const testOrigin = "vigil.audit/witness-test"

// startWitness runs an in-repo C2SP witness for the test log over HTTP.
func startWitness(t *testing.T, signer chain.CheckpointSigner) chain.WitnessEndpoint {
	t.Helper()
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	cs, err := witness.NewCosigner("witness.compliance.example", priv, nil)
	if err != nil {
		t.Fatal(err)
	}
	vkey, err := chain.VerifierKey(testOrigin, signer.Public())
	if err != nil {
		t.Fatal(err)
	}
	w, err := witness.New(witness.Config{Cosigner: cs, Logs: map[string]string{testOrigin: vkey},
		StateFile: filepath.Join(t.TempDir(), "witness.json")})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(w)
	t.Cleanup(srv.Close)
	return chain.WitnessEndpoint{URL: srv.URL, VerifierKey: cs.VerifierKey()}
}

func openWitnessed(t *testing.T, c *rig, signer chain.CheckpointSigner, ws []chain.WitnessEndpoint) *chain.Service {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	svc, err := chain.OpenIdle(ctx, chain.Config{Pool: c.pool, Recorder: c.rec, EventKeys: c.rec.EventKeys(), DatabaseURL: c.url,
		Signer: signer, Origin: testOrigin, Witnesses: ws, SequencerInterval: 20 * time.Millisecond, Logger: quiet})
	if err != nil {
		t.Fatalf("OpenIdle() error = %v", err)
	}
	t.Cleanup(func() { _ = svc.Close(context.Background()) })
	c.log, c.shipper = svc.Log(), svc.Shipper()
	return svc
}

// Attack 5: cutting off the end of the log consistently — Trillian's heads and leaves,
// checkpoints, batches and events above a checkpoint — passes verify without a witness; the
// witness that cosigned the newer checkpoint names it (verify --witness), and the restarted
// system raises a rollback incident.
// It runs with our witness (audit/witness) and with the independent one (transparency-dev's
// omniwitness, REQ-AUD-053).
// Verifies: REQ-AUD-045, REQ-AUD-046, REQ-AUD-053
func TestTruncatedLogIsCaughtByTheWitness(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		start func(t *testing.T, signer chain.CheckpointSigner) chain.WitnessEndpoint
	}{
		{"vigil witness", startWitness},
		{"omniwitness", func(t *testing.T, signer chain.CheckpointSigner) chain.WitnessEndpoint {
			vkey, err := chain.VerifierKey(testOrigin, signer.Public())
			if err != nil {
				t.Fatal(err)
			}
			return startOmniwitness(t, vkey)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			truncationCaught(t, tc.start)
		})
	}
}

func truncationCaught(t *testing.T, start func(t *testing.T, signer chain.CheckpointSigner) chain.WitnessEndpoint) {
	ctx := context.Background()
	c := &rig{}
	c.pool, c.url = testdb.NewWithURL(t)
	c.rec = audittest.Recorder(t, c.pool, nil)
	signer := chaintest.Signer(t)
	w := start(t, signer)
	svc := openWitnessed(t, c, signer, []chain.WitnessEndpoint{w})

	c.record(t, 5)
	cp1 := chaintest.ShipAll(t, svc)
	if _, err := svc.Witness(ctx); err != nil {
		t.Fatalf("Witness() error = %v", err)
	}
	c.record(t, 5)
	cp2 := chaintest.ShipAll(t, svc)
	if res, err := svc.Witness(ctx); err != nil || len(res) != 1 || res[0].Size != cp2.Size {
		t.Fatalf("Witness() = %+v, %v; want the witness at size %d", res, err, cp2.Size)
	}
	if r := verifyWith(t, c, svc, []chain.WitnessEndpoint{w}); !r.OK {
		t.Fatalf("Verify(--witness) before the attack: %s", findings(r))
	}
	if err := svc.Close(ctx); err != nil {
		t.Fatal(err)
	}

	// The insider cuts everything above checkpoint 1, consistently.
	for _, q := range []string{
		`DELETE FROM audit_cosignatures WHERE checkpoint_id > $1`,
		`DELETE FROM audit_checkpoints WHERE id > $1`,
	} {
		mustExec(t, c, q, cp1.ID)
	}
	for _, q := range []string{
		`DELETE FROM audit_events WHERE batch_id IN (SELECT id FROM audit_batches WHERE leaf_index >= $1)`,
		`DELETE FROM audit_batches WHERE leaf_index >= $1`,
		`DELETE FROM trillian.TreeHead WHERE TreeSize > $1`,
		`DELETE FROM trillian.SequencedLeafData WHERE SequenceNumber >= $1`,
	} {
		mustExec(t, c, q, int64(cp1.Size))
	}
	mustExec(t, c, `DELETE FROM trillian.LeafData l WHERE NOT EXISTS (SELECT 1 FROM trillian.SequencedLeafData s
		WHERE s.TreeId = l.TreeId AND s.LeafIdentityHash = l.LeafIdentityHash)`)

	// Without a witness the trail looks complete.
	plain := openWitnessed(t, c, signer, nil)
	if r := verifyWith(t, c, plain, nil); !r.OK || r.Checkpoint == nil || r.Checkpoint.Size != cp1.Size {
		t.Fatalf("Verify() without a witness after the truncation: %s (the attack should pass unwitnessed)", findings(r))
	}
	// With the witness it is named.
	if r := verifyWith(t, c, plain, []chain.WitnessEndpoint{w}); !hasFinding(r, chain.FindingWitness, "") {
		t.Errorf("Verify(--witness) after the truncation: findings %s, want witness", findings(r))
	}
	if err := plain.Close(ctx); err != nil {
		t.Fatal(err)
	}
	// The system restarted with its witness detects the rollback itself.
	again := openWitnessed(t, c, signer, []chain.WitnessEndpoint{w})
	if _, err := again.Ready(ctx); !errors.Is(err, chain.ErrNotReady) {
		t.Errorf("Ready() after restarting on a truncated log = %v, want not ready (rollback incident)", err)
	}
	if _, err := again.Witness(ctx); !errors.Is(err, chain.ErrRolledBack) {
		t.Errorf("Witness() on the truncated log = %v, want ErrRolledBack", err)
	}
}

func verifyWith(t *testing.T, c *rig, svc *chain.Service, ws []chain.WitnessEndpoint) *chain.Report {
	t.Helper()
	r, err := chain.Verify(context.Background(), chain.VerifyConfig{Pool: c.pool, Log: svc.Log(), VerifierKey: svc.VerifierKey(),
		Origin: svc.Origin(), Keys: audit.NewSessionKeys(c.rec.EventKeys()), Witnesses: ws})
	if err != nil {
		t.Fatalf("Verify() error = %v", err)
	}
	return r
}

// The consistency proof served between two checkpoints proves the newer one extends the
// older; sizes out of range are refused.
// Verifies: REQ-AUD-045
func TestConsistencyProofBetweenCheckpoints(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c, svc := newService(t)
	c.record(t, 8)
	c.shipAll(t)
	cp1, err := svc.CheckpointNow(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c.record(t, 20)
	c.shipAll(t)
	cp2, err := svc.CheckpointNow(ctx)
	if err != nil {
		t.Fatal(err)
	}
	p, err := svc.ConsistencyProof(ctx, cp1.Size, cp2.Size)
	if err != nil {
		t.Fatalf("ConsistencyProof(%d, %d) error = %v", cp1.Size, cp2.Size, err)
	}
	if err := proof.VerifyConsistency(rfc6962.DefaultHasher, cp1.Size, cp2.Size, p.Proof, cp1.Root[:], cp2.Root[:]); err != nil {
		t.Errorf("served proof does not verify: %v", err)
	}
	if p.Checkpoint != cp2.Note {
		t.Error("ConsistencyProof() does not carry the latest checkpoint")
	}
	for _, r := range [][2]uint64{{0, cp2.Size}, {cp2.Size, cp1.Size}, {cp1.Size, cp2.Size + 1}} {
		if _, err := svc.ConsistencyProof(ctx, r[0], r[1]); !errors.Is(err, chain.ErrBadRange) {
			t.Errorf("ConsistencyProof(%d, %d) error = %v, want ErrBadRange", r[0], r[1], err)
		}
	}
}
