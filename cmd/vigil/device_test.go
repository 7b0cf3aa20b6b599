package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/audit/audittest"
	"github.com/vigilhealth/vigil/audit/chain"
	"github.com/vigilhealth/vigil/devices"
	"github.com/vigilhealth/vigil/devices/devicestest"
	"github.com/vigilhealth/vigil/devices/envelope"
	"github.com/vigilhealth/vigil/internal/testdb"
	"github.com/vigilhealth/vigil/keys"
	"github.com/vigilhealth/vigil/keys/keystest"
)

// The administrators' device commands work on the database and audit every change.
// Verifies: REQ-DEV-001, REQ-DEV-002, REQ-DEV-005, REQ-AUD-040
func TestDeviceCommands(t *testing.T) {
	t.Parallel()
	pool, url := testdb.NewWithURL(t)
	env, dir := commandRing(t, url)
	out, err := executeEnv(t, env, "device", "register", "--serial", "SN-CLI-1", "--model", "VM-100", "--firmware", "2.0", "--json", "--data-dir", dir)
	if err != nil {
		t.Fatalf("device register = %v: %s", err, out)
	}
	var d devices.Device
	if err := json.Unmarshal([]byte(out), &d); err != nil || d.Serial != "SN-CLI-1" || d.Status != "active" {
		t.Fatalf("device register output = %q (%v), want the active device", out, err)
	}
	id := d.ID.String()
	if out, err := executeEnv(t, env, "device", "token", id, "--data-dir", dir); err != nil || !strings.HasPrefix(out, "vet_") {
		t.Errorf("device token = %q, %v; want a vet_ token", out, err)
	}
	if out, err := executeEnv(t, env, "device", "suspend", id, "--reason", "reported lost", "--data-dir", dir); err != nil || !strings.Contains(out, "suspended") {
		t.Errorf("device suspend = %q, %v", out, err)
	}
	if out, err := executeEnv(t, env, "device", "list", "--status", "suspended", "--data-dir", dir); err != nil || !strings.Contains(out, id) {
		t.Errorf("device list --status suspended = %q, %v; want %s", out, err, id)
	}
	if out, err := executeEnv(t, env, "device", "show", id, "--data-dir", dir); err != nil || !strings.Contains(out, "patient assignments:") {
		t.Errorf("device show = %q, %v", out, err)
	}
	if _, err := executeEnv(t, env, "device", "assign", id, "--patient", uuid.NewString(), "--data-dir", dir); !errors.Is(err, devices.ErrInvalidInput) {
		t.Errorf("device assign (unknown patient) = %v, want ErrInvalidInput", err)
	}
	if _, err := executeEnv(t, env, "device", "assign", id, "--data-dir", dir); err == nil {
		t.Error("device assign without --patient or --none = nil error, want a usage error")
	}
	var n int
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM audit_events WHERE actor_id LIKE 'os:%'
		AND action IN ('device.registered','device.enrollment_token.issued','device.suspended','device.patient.assigned')`).Scan(&n); err != nil || n != 4 {
		t.Errorf("audited device commands = %d (%v), want 4", n, err)
	}
	// Authenticated with the installation's key ring: the shipper of a running server logs
	// them (an event without its tag would be refused and raise an incident).
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM audit_events WHERE actor_id LIKE 'os:%'
		AND (auth_mac IS NULL OR session_id IS NULL)`).Scan(&n); err != nil || n != 0 {
		t.Errorf("device commands' events without an authentication tag = %d (%v), want 0", n, err)
	}
	// Without the key ring the command refuses to run (and changes nothing).
	noRing := map[string]string{"VIGIL_DATABASE_URL": env["VIGIL_DATABASE_URL"], "VIGIL_VAULT_ADDR": "", "VIGIL_KEYRING_PASSPHRASE": ""}
	if _, err := executeEnv(t, noRing, "device", "register", "--serial", "SN-CLI-2", "--model", "VM-100", "--firmware", "2.0", "--data-dir", dir); err == nil {
		t.Error("device register without the key ring = nil error, want refused")
	}
}

// An accepted upload's proof comes from the real audit chain (embedded Trillian), and its
// receipt, asked again once the event is in the log, carries the leaf index.
// Verifies: REQ-DEV-030, REQ-DEV-031
func TestUploadProofFromAuditChain(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, url := testdb.NewWithURL(t)
	ring := keystest.LocalRing(t, nil)
	cps, err := ring.Signer(ctx, keys.AuditCheckpoint)
	if err != nil {
		t.Fatal(err)
	}
	rec := audittest.Recorder(t, pool, nil)
	au, err := chain.Open(ctx, chain.Config{Pool: pool, Recorder: rec, Backlog: rec, DatabaseURL: url, Signer: cps, Window: 50 * time.Millisecond,
		CheckpointInterval: 200 * time.Millisecond, SequencerInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatalf("chain.Open = %v", err)
	}
	t.Cleanup(func() { _ = au.Close(context.Background()) })
	e := devicestest.NewOn(t, pool, url, devicestest.NewClock(time.Now().UTC()), func(c *devices.Config) { c.Proofs = auditProofs{au} })
	d := e.NewDevice(t)
	rc, err := e.Devices.Accept(ctx, d.Upload(t, e.Clock.Now(), 5), devices.Meta{Transport: "http"})
	if err != nil {
		t.Fatalf("Accept = %v", err)
	}
	if rc.Body.LeafIndex != nil {
		t.Errorf("fresh receipt has a leaf index %d, want none yet", *rc.Body.LeafIndex)
	}
	var proof any
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, proof, err = e.Devices.UploadProof(ctx, rc.UploadHash)
		if err == nil || !errors.Is(err, devices.ErrProofPending) || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond) // waiting for the real shipper and sequencer
	}
	if err != nil {
		t.Fatalf("UploadProof = %v, want a proof", err)
	}
	ep, ok := proof.(chain.EventProof)
	if !ok || ep.Batch == nil || ep.Batch.LeafIndex == nil || ep.Event.Action != "upload.accepted" ||
		ep.Event.ObjectID == nil || *ep.Event.ObjectID != hex.EncodeToString(rc.UploadHash[:]) {
		t.Fatalf("UploadProof = %#v, want the upload.accepted event with its batch leaf", proof)
	}
	again, err := e.Devices.UploadReceipt(ctx, rc.UploadHash)
	if err != nil {
		t.Fatal(err)
	}
	if again.Body.LeafIndex == nil || *again.Body.LeafIndex != *ep.Batch.LeafIndex {
		t.Errorf("UploadReceipt leaf index = %v, want %d", again.Body.LeafIndex, *ep.Batch.LeafIndex)
	}
	if err := envelope.VerifyReceipt(e.Signer.Public(), &again.Signed); err != nil {
		t.Errorf("VerifyReceipt(re-issued) = %v", err)
	}
}

// An upload's proof is one documented behaviour: 404 proof_pending (ErrProofPending) until
// the event is proven under a signed checkpoint — also while its batch leaf is already in the
// log but after the latest checkpoint (no half answer with an empty inclusion proof).
// Verifies: REQ-DEV-132
func TestUploadProofPendingUntilProven(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, url := testdb.NewWithURL(t)
	ring := keystest.LocalRing(t, nil)
	cps, err := ring.Signer(ctx, keys.AuditCheckpoint)
	if err != nil {
		t.Fatal(err)
	}
	rec := audittest.Recorder(t, pool, nil)
	// No periodic checkpoint during the test: the test issues the one it needs.
	au, err := chain.Open(ctx, chain.Config{Pool: pool, Recorder: rec, Backlog: rec, DatabaseURL: url, Signer: cps, Window: 50 * time.Millisecond,
		CheckpointInterval: time.Hour, SequencerInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatalf("chain.Open = %v", err)
	}
	t.Cleanup(func() { _ = au.Close(context.Background()) })
	src := auditProofs{au}
	e := devicestest.NewOn(t, pool, url, devicestest.NewClock(time.Now().UTC()), func(c *devices.Config) { c.Proofs = src })
	d := e.NewDevice(t)
	rc, err := e.Devices.Accept(ctx, d.Upload(t, e.Clock.Now(), 5), devices.Meta{Transport: "http"})
	if err != nil {
		t.Fatalf("Accept = %v", err)
	}
	var evID uuid.UUID
	if err := pool.QueryRow(ctx, `SELECT audit_event_id FROM devices_uploads WHERE hash = $1`, rc.UploadHash[:]).Scan(&evID); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, ok, err := src.EventLeafIndex(ctx, evID)
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the upload's event never reached the log")
		}
		time.Sleep(50 * time.Millisecond) // waiting for the real shipper and sequencer
	}
	p, err := au.Event(ctx, evID)
	if err != nil {
		t.Fatal(err)
	}
	if p.Status != "integrated" {
		t.Skipf("event status %q after integration, want integrated (a checkpoint came first)", p.Status)
	}
	if _, proof, err := e.Devices.UploadProof(ctx, rc.UploadHash); !errors.Is(err, devices.ErrProofPending) {
		t.Fatalf("UploadProof(integrated, no checkpoint covering it) = a %T, %v; want ErrProofPending", proof, err)
	}
	if _, err := au.CheckpointNow(ctx); err != nil {
		t.Fatal(err)
	}
	_, proof, err := e.Devices.UploadProof(ctx, rc.UploadHash)
	if err != nil {
		t.Fatalf("UploadProof(after a checkpoint) = %v, want the proof", err)
	}
	ep, ok := proof.(chain.EventProof)
	if !ok {
		t.Fatalf("UploadProof = %T, want chain.EventProof", proof)
	}
	if _, err := chain.VerifyEventProof(ep, au.VerifierKey()); err != nil {
		t.Errorf("VerifyEventProof(UploadProof) = %v", err)
	}
}
