package core_test

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/internal/testdb"
)

// testSealer is AES-256-GCM + HMAC-SHA-256 with random keys: a stand-in for the keys
// package's PHI helper with the same contract (aad-bound, tamper-evident).
type testSealer struct {
	aead cipher.AEAD
	mac  []byte
}

func newTestSealer(t testing.TB) *testSealer {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	b, _ := aes.NewCipher(k)
	a, _ := cipher.NewGCM(b)
	m := make([]byte, 32)
	_, _ = rand.Read(m)
	return &testSealer{aead: a, mac: m}
}

func (s *testSealer) Seal(_ context.Context, p, aad []byte) ([]byte, error) {
	n := make([]byte, s.aead.NonceSize())
	_, _ = rand.Read(n)
	return s.aead.Seal(n, n, p, aad), nil
}

func (s *testSealer) Open(_ context.Context, c, aad []byte) ([]byte, error) {
	ns := s.aead.NonceSize()
	if len(c) < ns {
		return nil, errors.New("short ciphertext")
	}
	return s.aead.Open(nil, c[:ns], c[ns:], aad)
}

func (s *testSealer) BlindIndex(_ context.Context, v []byte) ([]byte, error) {
	h := hmac.New(sha256.New, s.mac)
	h.Write(v)
	return h.Sum(nil), nil
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
