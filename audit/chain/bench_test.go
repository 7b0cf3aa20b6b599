// Verifies: REQ-AUD-004
package chain_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/audittest"
	"github.com/vigilhealth/vigil/audit/chain"
	"github.com/vigilhealth/vigil/internal/testdb"
)

// BenchmarkRecordToIntegrated measures the audit chain end to end on the real stack
// (PostgreSQL, embedded Trillian, shipper and checkpointer running): b.N events recorded
// with RecordMany in transactions of 100, timed until every one is integrated in the log.
// The load command `vigil audit bench` adds pacing and latency percentiles
// (docs/benchmarks.md#audit-chain).
func BenchmarkRecordToIntegrated(b *testing.B) {
	pool, url := testdb.NewWithURL(b)
	ctx := context.Background()
	rec := audittest.Recorder(b, pool, nil)
	svc, err := chain.Open(ctx, chain.Config{Pool: pool, Recorder: rec, DatabaseURL: url, Signer: newSigner(b), Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	defer svc.Close(ctx)
	const tx = 100
	evs := make([]audit.Event, tx)
	for i := range evs {
		evs[i] = testEvent()
		evs[i].Actor = audit.Actor{Kind: audit.ActorDevice, ID: fmt.Sprint("dev-", i), AuthMethod: "device-signature"}
		evs[i].Action = "upload.accepted"
	}
	b.ResetTimer()
	start := time.Now()
	for done := 0; done < b.N; done += tx {
		n := min(tx, b.N-done)
		if err := pgx.BeginFunc(ctx, pool, func(t pgx.Tx) error {
			_, err := rec.RecordMany(ctx, t, evs[:n])
			return err
		}); err != nil {
			b.Fatal(err)
		}
	}
	svc.Shipper().Kick()
	for {
		var left int
		if err := pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM audit_events WHERE batch_id IS NULL) +
			(SELECT count(*) FROM audit_batches WHERE leaf_index IS NULL)`).Scan(&left); err != nil {
			b.Fatal(err)
		}
		if left == 0 {
			break
		}
		time.Sleep(20 * time.Millisecond) // waiting for the shipper and Trillian's sequencer
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
}
