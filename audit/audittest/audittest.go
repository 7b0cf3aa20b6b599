// Package audittest gives tests of any package the real audit recorder on their database:
// the audit.Outbox every service receives in production, with event authentication on (its
// session key wrapped by a real local key ring), closed when the test ends. For the
// transparency-log side (embedded Trillian, shipper, checkpoints) see audit/chain/chaintest.
package audittest

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/keys"
	"github.com/vigilhealth/vigil/keys/keystest"
)

// Recorder returns the audit recorder over pool (a test database from internal/testdb),
// with the clock now (nil: time.Now), its events authenticated under a key wrapped by a
// fresh local key ring (keystest.LocalRing). The session attests its counters only when the
// test calls Attest, and at Close. It is closed when the test ends.
func Recorder(t testing.TB, pool *pgxpool.Pool, now func() time.Time) *audit.Outbox {
	t.Helper()
	o := Unauthenticated(t, pool, now)
	env, err := keystest.LocalRing(t, nil).Envelope(keys.PHIEncryption)
	if err != nil {
		t.Fatalf("audittest: %v", err)
	}
	if err := o.EnableAuthentication(context.Background(), env); err != nil {
		t.Fatalf("audittest: %v", err)
	}
	return o
}

// Unauthenticated returns the audit recorder without event authentication (a writer that
// never got a key: what the shipper refuses and verify reports).
func Unauthenticated(t testing.TB, pool *pgxpool.Pool, now func() time.Time) *audit.Outbox {
	t.Helper()
	// Attestations only when the test asks (Outbox.Attest) and at Close, so that tests
	// counting their events see only their own.
	o, err := audit.NewOutbox(audit.Config{Pool: pool, Now: now, AttestInterval: time.Hour})
	if err != nil {
		t.Fatalf("audittest: %v", err)
	}
	t.Cleanup(o.Close)
	return o
}
