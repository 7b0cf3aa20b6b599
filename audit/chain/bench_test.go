// Verifies: REQ-AUD-004
package chain_test

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/audittest"
	"github.com/vigilhealth/vigil/audit/chain"
	"github.com/vigilhealth/vigil/internal/cpuacct"
	"github.com/vigilhealth/vigil/internal/testdb"
)

// BenchmarkRecordToIntegrated measures the audit chain end to end on the real stack
// (PostgreSQL, embedded Trillian, shipper and checkpointer running): b.N events recorded
// with RecordMany in transactions of 100, timed until every one is integrated in the log.
// The load command `vigil audit bench` adds pacing and latency percentiles
// (docs/benchmarks.md#audit-chain).
// It runs with event authentication off (an unauthenticated writer, a chain that does not
// check tags) and on, side by side.
func BenchmarkRecordToIntegrated(b *testing.B) {
	for _, auth := range []bool{false, true} {
		b.Run(fmt.Sprint("auth=", auth), func(b *testing.B) { benchRecordToIntegrated(b, auth) })
	}
}

// benchRecorder is the recorder of a benchmark: authenticated or not.
func benchRecorder(b *testing.B, pool *pgxpool.Pool, auth bool) *audit.Outbox {
	if auth {
		return audittest.Recorder(b, pool, nil)
	}
	return audittest.Unauthenticated(b, pool, nil)
}

func benchRecordToIntegrated(b *testing.B, auth bool) {
	pool, url := testdb.NewWithURL(b)
	ctx := context.Background()
	rec := benchRecorder(b, pool, auth)
	svc, err := chain.Open(ctx, chain.Config{Pool: pool, Recorder: rec, EventKeys: rec.EventKeys(), DatabaseURL: url, Signer: newSigner(b), Logger: quiet})
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

// BenchmarkRecordMany measures recording alone (the upload path's share of the audit: one
// COPY of 100 events per transaction), with event authentication off and on.
func BenchmarkRecordMany(b *testing.B) {
	for _, auth := range []bool{false, true} {
		b.Run(fmt.Sprint("auth=", auth), func(b *testing.B) {
			pool := testdb.New(b)
			ctx := context.Background()
			rec := benchRecorder(b, pool, auth)
			const tx = 100
			evs := make([]audit.Event, tx)
			for i := range evs {
				evs[i] = testEvent()
				evs[i].Action = "upload.accepted"
			}
			runtime.GC() // the key ring's set-up (scrypt) is not collected inside the measured window
			b.ResetTimer()
			start := time.Now()
			cpu0 := cpuacct.Take(ctx, pool)
			for done := 0; done < b.N; done += tx {
				n := min(tx, b.N-done)
				if err := pgx.BeginFunc(ctx, pool, func(t pgx.Tx) error {
					_, err := rec.RecordMany(ctx, t, evs[:n])
					return err
				}); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
			// CPU per event (this process and the database's own backends) is steadier than the
			// rate on a shared machine: other load delays the run, it does not add to this.
			if cpu := cpuacct.Between(cpu0, cpuacct.Take(ctx, pool)); cpu.PGOK {
				b.ReportMetric(float64(cpu.Self.Microseconds())/float64(b.N), "self-cpu-µs/event")
				b.ReportMetric(float64(cpu.DB.Microseconds())/float64(b.N), "db-cpu-µs/event")
			}
		})
	}
}

// BenchmarkVerify measures a full verify (authentication, numbering, domain cross-check)
// of a trail of 50,000 events, all proven under a checkpoint.
func BenchmarkVerify(b *testing.B) {
	pool, url := testdb.NewWithURL(b)
	ctx := context.Background()
	rec := audittest.Recorder(b, pool, nil)
	svc, err := chain.OpenIdle(ctx, chain.Config{Pool: pool, Recorder: rec, EventKeys: rec.EventKeys(), DatabaseURL: url,
		Signer: newSigner(b), SequencerInterval: 20 * time.Millisecond, Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	defer svc.Close(ctx)
	const total, tx = 50000, 1000
	evs := make([]audit.Event, tx)
	for i := range evs {
		evs[i] = testEvent()
	}
	for done := 0; done < total; done += tx {
		if err := pgx.BeginFunc(ctx, pool, func(t pgx.Tx) error {
			_, err := rec.RecordMany(ctx, t, evs)
			return err
		}); err != nil {
			b.Fatal(err)
		}
	}
	if err := rec.Attest(ctx); err != nil {
		b.Fatal(err)
	}
	c := &rig{pool: pool, url: url, rec: rec, log: svc.Log(), shipper: svc.Shipper()}
	c.shipAll(b)
	if _, err := svc.CheckpointNow(ctx); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		r, err := svc.Verify(ctx)
		if err != nil || !r.OK {
			b.Fatalf("Verify() = %v, %v", r, err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N*total)/time.Since(start).Seconds(), "events/s")
}
