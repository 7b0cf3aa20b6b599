package core_test

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vigilhealth/vigil/core"
)

// BenchmarkIngest measures validation + normalization + storage (COPY, provenance, audit
// events, commit) without rules, for uploads of 10 vital signs: one transaction per upload,
// and group commit of 50 and 200 uploads per transaction.
//
//	go test ./core -run '^$' -bench BenchmarkIngest -benchtime 5s
//
// Verifies: REQ-CORE-007
func BenchmarkIngest(b *testing.B) {
	e := newEnv(b, func(c *core.Config) { c.Now = time.Now })
	const npat = 1000
	patients := make([]core.Batch, npat)
	for i := range patients {
		patients[i] = batch(e.patient(b))
	}
	if err := e.svc.MaintainPartitions(e.ctx); err != nil {
		b.Fatal(err)
	}
	base := time.Now().UTC().Add(-80 * time.Minute).Truncate(time.Second)
	var next, seq atomic.Int64
	mk := func() core.Batch {
		k := next.Add(1)
		bt := patients[k%npat]
		n := seq.Add(1)
		at := base.Add(time.Duration(k/npat) * time.Second)
		bt.Provenance.Sequence = uint64(n)
		copy(bt.Provenance.UploadHash[:], fmt.Sprintf("%032d", n))
		bt.Provenance.ReceivedAt = time.Time{}
		j := float64(n % 3)
		bt.Samples = []core.Sample{
			{Code: core.LOINCHeartRate, Value: 72 + j, Unit: "/min", Time: at},
			{Code: core.LOINCRespiratoryRate, Value: 15 + j, Unit: "/min", Time: at},
			{Code: core.LOINCSpO2, Value: 97 + j, Unit: "%", Time: at},
			{Code: core.LOINCFiO2, Value: 21, Unit: "%", Time: at},
			{Code: core.LOINCSystolicBP, Value: 120 + j, Unit: "mm[Hg]", Time: at},
			{Code: core.LOINCDiastolicBP, Value: 80 + j, Unit: "mm[Hg]", Time: at},
			{Code: core.LOINCMeanBP, Value: 93 + j, Unit: "mm[Hg]", Time: at},
			{Code: core.LOINCBodyTemperature, Value: 98.2 + j/10, Unit: "[degF]", Time: at},
			{Code: core.LOINCConsciousness, Value: 0, Unit: "{score}", Time: at},
			{Code: core.LOINCGlucose, Value: 100 + j, Unit: "mg/dL", Time: at},
		}
		return bt
	}
	for _, group := range []int{1, 50, 200} {
		b.Run(fmt.Sprintf("group=%d", group), func(b *testing.B) {
			before := e.svc.Stats()
			start := time.Now()
			b.SetParallelism(2)
			b.RunParallel(func(pb *testing.PB) {
				bs := make([]core.Batch, group)
				for pb.Next() {
					for i := range bs {
						bs[i] = mk()
					}
					if _, err := e.svc.IngestMany(e.ctx, bs); err != nil {
						b.Error(err)
						return
					}
				}
			})
			el := time.Since(start)
			st := e.svc.Stats()
			b.ReportMetric(float64(st.Stored-before.Stored)/el.Seconds(), "samples/s")
			b.ReportMetric(float64(st.Batches-before.Batches)/el.Seconds(), "uploads/s")
		})
	}
}

// BenchmarkSeries measures a chart query: three days of one patient's heart rate at one sample
// every 5 s (51,840 observations, among 20 other patients' data), downsampled to 5-minute and
// 1-minute buckets, and read raw for one hour.
//
//	go test ./core -run '^$' -bench BenchmarkSeries -benchtime 3s
func BenchmarkSeries(b *testing.B) {
	e := newEnv(b, nil)
	end := t0
	start := end.Add(-72 * time.Hour)
	var target core.Batch
	var batches []core.Batch
	for k := 0; k < 21; k++ {
		bt := batch(e.patient(b))
		if k == 0 {
			target = bt
		}
		for at := start; at.Before(end); at = at.Add(5 * time.Second) {
			bt.Samples = append(bt.Samples, core.Sample{Code: core.LOINCHeartRate, Value: 60 + float64(at.Unix()%40), Unit: "/min", Time: at})
			if len(bt.Samples) == 5000 {
				batches = append(batches, bt)
				bt.Samples = nil
				copy(bt.Provenance.UploadHash[:], fmt.Sprintf("%032d", len(batches)))
			}
		}
		if len(bt.Samples) > 0 {
			batches = append(batches, bt)
			copy(bt.Provenance.UploadHash[:], fmt.Sprintf("%032d", len(batches)+100000))
		}
	}
	for _, bt := range batches {
		if _, err := e.svc.Ingest(e.ctx, bt); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := e.pool.Exec(e.ctx, "ANALYZE core_observations"); err != nil {
		b.Fatal(err)
	}
	q := core.RangeQuery{PatientID: target.PatientID, Code: core.LOINCHeartRate, From: start, To: end}
	for _, bucket := range []time.Duration{5 * time.Minute, time.Minute} {
		b.Run("3d/"+bucket.String(), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				s, err := e.svc.Series(e.ctx, q, bucket)
				if err != nil || len(s) != int(72*time.Hour/bucket) {
					b.Fatalf("Series() = %d buckets, %v", len(s), err)
				}
			}
		})
	}
	b.Run("raw-1h", func(b *testing.B) {
		rq := q
		rq.From = end.Add(-time.Hour)
		for i := 0; i < b.N; i++ {
			obs, err := e.svc.Observations(e.ctx, rq)
			if err != nil || len(obs) != 720 {
				b.Fatalf("Observations() = %d, %v", len(obs), err)
			}
		}
	})
}
