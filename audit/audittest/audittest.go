// Package audittest gives tests of any package the real audit recorder on their database:
// the audit.Outbox every service receives in production, closed when the test ends. For the
// transparency-log side (embedded Trillian, shipper, checkpoints) see audit/chain/chaintest.
package audittest

import (
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/vigilhealth/vigil/audit"
)

// Recorder returns the audit recorder over pool (a test database from internal/testdb),
// with the clock now (nil: time.Now). It is closed when the test ends.
func Recorder(t testing.TB, pool *pgxpool.Pool, now func() time.Time) *audit.Outbox {
	t.Helper()
	o, err := audit.NewOutbox(audit.Config{Pool: pool, Now: now})
	if err != nil {
		t.Fatalf("audittest: %v", err)
	}
	t.Cleanup(o.Close)
	return o
}
