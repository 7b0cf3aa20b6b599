package rules_test

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/audit/audittest"
	"github.com/vigilhealth/vigil/core/alarms"
	"github.com/vigilhealth/vigil/core/rules"
	"github.com/vigilhealth/vigil/internal/testdb"
)

// BenchmarkFencedTransition measures what the lease fence (a share-locked read of the
// patient's lease row in the engine's transaction) adds to an evaluation that makes an alarm
// transition, against the same engine without leases (one process). docs/benchmarks.md.
func BenchmarkFencedTransition(b *testing.B) {
	for _, fenced := range []bool{false, true} {
		name := "unfenced"
		if fenced {
			name = "fenced"
		}
		b.Run(name, func(b *testing.B) {
			ctx := context.Background()
			pool := testdb.New(b)
			start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
			now := start
			clk := func() time.Time { return now }
			rec := audittest.Recorder(b, pool, nil)
			svc, err := alarms.New(alarms.Config{Pool: pool, Recorder: rec, Now: clk})
			if err != nil {
				b.Fatal(err)
			}
			cfg := rules.Config{Pool: pool, Recorder: rec, Alarms: svc, Now: clk}
			if fenced {
				if cfg.Leases, err = rules.NewLeases(rules.LeaseConfig{Pool: pool, Replica: "bench"}); err != nil {
					b.Fatal(err)
				}
			}
			eng, err := rules.New(ctx, cfg)
			if err != nil {
				b.Fatal(err)
			}
			if fenced {
				if err := cfg.Leases.Step(ctx); err != nil {
					b.Fatal(err)
				}
			}
			ids := make([]uuid.UUID, 100)
			for i := range ids {
				ids[i] = uuid.New()
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				p := ids[i%len(ids)]
				round := i / len(ids)
				now = start.Add(time.Duration(round) * time.Second)
				v := 37.0
				if round%2 == 0 {
					v = 38.6
				}
				if _, err := eng.Evaluate(ctx, p, []rules.Observation{{PatientID: p, Code: rules.CodeBodyTemperature, Value: v, Unit: "Cel", EffectiveAt: now}}); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "transitions/s")
		})
	}
}
