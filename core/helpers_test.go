// Verifies: REQ-CORE-005
package core_test

import (
	"context"
	"crypto/rand"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/audittest"
	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/internal/testclock"
	"github.com/vigilhealth/vigil/internal/testdb"
	"github.com/vigilhealth/vigil/keys"
	"github.com/vigilhealth/vigil/keys/keystest"
)

// newTestSealer is the real PHI helper of a local key ring in a temporary directory.
func newTestSealer(t testing.TB) *keys.PHI {
	t.Helper()
	return keystest.LocalRing(t, nil).PHI()
}

var t0 = testclock.T0

type env struct {
	pool  *pgxpool.Pool
	rec   *audit.Outbox
	svc   *core.Service
	clock *testclock.Clock
	ctx   context.Context
}

func newEnv(t testing.TB, mod func(*core.Config)) *env {
	t.Helper()
	pool := testdb.New(t)
	c := testclock.New(t0)
	rec := audittest.Recorder(t, pool, nil)
	cfg := core.Config{Pool: pool, Recorder: rec, Now: c.Now, PHI: newTestSealer(t)}
	if mod != nil {
		mod(&cfg)
	}
	svc, err := core.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &env{pool: pool, rec: rec, svc: svc, clock: c, ctx: context.Background()}
}

var clinician = audit.Event{Actor: audit.Actor{Kind: audit.ActorUser, ID: "nurse-1", AuthMethod: "password+totp"}, RequestID: "req-1"}

func (e *env) patient(t testing.TB) uuid.UUID {
	t.Helper()
	p, err := e.svc.CreatePatient(e.ctx, clinician, core.PatientPHI{MRN: "MRN-" + uuid.NewString()[:8], GivenName: "Ada", FamilyName: "Lovelace"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return p.ID
}

func batch(patient uuid.UUID, samples ...core.Sample) core.Batch {
	var h [32]byte
	_, _ = rand.Read(h[:])
	return core.Batch{PatientID: patient, Samples: samples, Provenance: core.Provenance{
		DeviceID: "dev-1", KeyID: "dev-1/v1", UploadHash: h, Sequence: 1, ReceivedAt: t0, Transport: "http"}}
}

func (e *env) count(t testing.TB, q string, args ...any) int {
	t.Helper()
	var n int
	if err := e.pool.QueryRow(e.ctx, q, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return n
}
