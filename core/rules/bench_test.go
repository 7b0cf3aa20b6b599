package rules_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/audit/audittest"
	"github.com/vigilhealth/vigil/core/alarms"
	"github.com/vigilhealth/vigil/core/rules"
	"github.com/vigilhealth/vigil/internal/testdb"
)

// BenchmarkEvaluate measures evaluation throughput per sample through every default rule
// (6 thresholds, rate, anomaly, NEWS2, no-data) in the steady state: each call is one upload
// of the seven NEWS2 vital signs of one patient, with values that move but trigger nothing,
// so the figure is the in-memory cost (no transaction). 1,000 patients.
// Verifies: REQ-CORE-100
func BenchmarkEvaluate(b *testing.B) {
	ctx := context.Background()
	pool := testdb.New(b)
	var now atomic.Int64
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	now.Store(start.UnixNano())
	clk := func() time.Time { return time.Unix(0, now.Load()).UTC() }
	rec := audittest.Recorder(b, pool, nil)
	svc, err := alarms.New(alarms.Config{Pool: pool, Recorder: rec, Now: clk})
	if err != nil {
		b.Fatal(err)
	}
	eng, err := rules.New(ctx, rules.Config{Pool: pool, Recorder: rec, Alarms: svc, Now: clk})
	if err != nil {
		b.Fatal(err)
	}
	const patients = 1000
	ids := make([]uuid.UUID, patients)
	batch := func(p uuid.UUID, i int) []rules.Observation {
		at := start.Add(time.Duration(i) * time.Second)
		j := float64(i % 3)
		return []rules.Observation{
			{PatientID: p, Code: rules.CodeHeartRate, Value: 72 + j, Unit: "/min", EffectiveAt: at},
			{PatientID: p, Code: rules.CodeRespiratoryRate, Value: 15 + j, Unit: "/min", EffectiveAt: at},
			{PatientID: p, Code: rules.CodeSpO2, Value: 97 + j, Unit: "%", EffectiveAt: at},
			{PatientID: p, Code: rules.CodeInhaledO2Conc, Value: 21, Unit: "%", EffectiveAt: at},
			{PatientID: p, Code: rules.CodeSystolicBP, Value: 120 + j, Unit: "mm[Hg]", EffectiveAt: at},
			{PatientID: p, Code: rules.CodeConsciousness, Value: 0, Unit: "{score}", EffectiveAt: at},
			{PatientID: p, Code: rules.CodeBodyTemperature, Value: 36.8 + j/10, Unit: "Cel", EffectiveAt: at},
		}
	}
	for k := range ids {
		ids[k] = uuid.New()
		if _, err := eng.Evaluate(ctx, ids[k], batch(ids[k], 0)); err != nil { // load + first NEWS2 record
			b.Fatal(err)
		}
	}
	// seq numbers the uploads across every run of the sub-benchmarks, so that each patient's
	// times only move forward (older samples would be skipped, and measure nothing).
	var seq atomic.Int64
	seq.Store(patients)
	// The clock well ahead of every sample: a sample stamped ahead of the engine's clock is
	// evaluated at the clock's time (Config.FutureTolerance), which is not what is measured.
	now.Store(start.Add(1000 * time.Hour).UnixNano())
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			n := int(seq.Add(1))
			p := ids[n%patients]
			if _, err := eng.Evaluate(ctx, p, batch(p, n/patients)); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N*7)/b.Elapsed().Seconds(), "samples/s")
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				n := int(seq.Add(1))
				p := ids[n%patients]
				if _, err := eng.Evaluate(ctx, p, batch(p, n/patients)); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.ReportMetric(float64(b.N*7)/b.Elapsed().Seconds(), "samples/s")
	})
	// Every upload makes an alarm transition (temperature alternately above and below the
	// temp-high limit): the cost of the transaction (alarm row, audit event, checkpoint).
	b.Run("transition", func(b *testing.B) {
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			n := int(seq.Add(1))
			p := ids[n%patients]
			at := start.Add(time.Duration(n/patients) * time.Second)
			v := 37.0
			if (n/patients)%2 == 0 {
				v = 38.6
			}
			now.Store(at.UnixNano())
			res, err := eng.Evaluate(ctx, p, []rules.Observation{{PatientID: p, Code: rules.CodeBodyTemperature, Value: v, Unit: "Cel", EffectiveAt: at}})
			if err != nil {
				b.Fatal(err)
			}
			_ = res
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "transitions/s")
	})
}
