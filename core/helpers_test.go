// Verifies: REQ-CORE-005
package core_test

import (
	"context"
	"crypto/rand"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/internal/testdb"
	"github.com/vigilhealth/vigil/keys"
)

// newTestSealer is the real PHI helper of a local key ring in a temporary directory.
func newTestSealer(t testing.TB) *keys.PHI {
	t.Helper()
	return newTestRing(t).PHI()
}

func newTestRing(t testing.TB) *keys.Ring {
	t.Helper()
	local, err := keys.NewLocal(keys.LocalConfig{Dir: t.TempDir(), Passphrase: []byte("core test passphrase"), ScryptN: 1 << 10})
	if err != nil {
		t.Fatalf("keys.NewLocal = %v", err)
	}
	ring, err := keys.NewRing(keys.Config{Backend: local})
	if err != nil {
		t.Fatalf("keys.NewRing = %v", err)
	}
	t.Cleanup(func() { _ = ring.Close() })
	if _, err := ring.EnsureKeys(context.Background()); err != nil {
		t.Fatalf("EnsureKeys = %v", err)
	}
	return ring
}

// clock is a controlled clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}
func (c *clock) Add(d time.Duration) { c.mu.Lock(); defer c.mu.Unlock(); c.t = c.t.Add(d) }

var t0 = time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)

type env struct {
	pool  *pgxpool.Pool
	svc   *core.Service
	clock *clock
	ctx   context.Context
}

func newEnv(t testing.TB, mod func(*core.Config)) *env {
	t.Helper()
	pool := testdb.New(t)
	c := &clock{t: t0}
	cfg := core.Config{Pool: pool, Now: c.Now, PHI: newTestSealer(t)}
	if mod != nil {
		mod(&cfg)
	}
	svc, err := core.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &env{pool: pool, svc: svc, clock: c, ctx: context.Background()}
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
