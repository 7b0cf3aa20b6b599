package outbound_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/internal/cpuacct"
	"github.com/vigilhealth/vigil/interop/hl7/outbound"
	"github.com/vigilhealth/vigil/interop/interoptest"
)

// BenchmarkFeedToLoopback measures the durable ORU feed: b.N uploads (5 heart-rate samples
// each, 1,000 patients) are stored while the feed is stopped; the figure is from the feed's
// start to the last message acknowledged and audited — reading the stored rows in commit
// order, their observations, opening each patient's PHI, building the ORU^R01, delivering it
// to a loopback MLLP server that parses it and answers AA, auditing the outcome and saving
// the cursor (docs/benchmarks.md).
func BenchmarkFeedToLoopback(b *testing.B) {
	pool, rec := auditedDB(b)
	ctx := context.Background()
	cs, pats := coreWithPatients(b, pool, rec, "BENCH-", 1000)
	addr := interoptest.ServeMLLP(b, ackAll())
	start := func() (*outbound.Sender, *outbound.Feed, func()) {
		s, err := outbound.New(outbound.Config{Name: "bench", Addr: addr, Pool: pool, Sealer: sealer(b), Audit: rec, KeepOnClose: true})
		if err != nil {
			b.Fatal(err)
		}
		f, err := outbound.NewFeed(outbound.FeedConfig{Core: cs, Pool: pool, Sender: s, PollInterval: 5 * time.Millisecond})
		if err != nil {
			b.Fatal(err)
		}
		fctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); _ = f.Run(fctx) }()
		return s, f, func() { cancel(); <-done; _ = s.Close(ctx) }
	}
	// The cursor is made by a first start; the uploads are stored after it, feed stopped.
	_, f, stop := start()
	<-f.Ready()
	stop()
	t0 := time.Now().Add(-time.Hour)
	for i := 0; i < b.N; i += 500 {
		var batch []core.Batch
		for k := i; k < min(i+500, b.N); k++ {
			var h [32]byte
			copy(h[:], fmt.Sprintf("bench-%d", k))
			bt := core.Batch{PatientID: pats[k%len(pats)], Provenance: core.Provenance{DeviceID: "dev-" + strconv.Itoa(k%len(pats)), KeyID: "d/1",
				UploadHash: h, Sequence: uint64(k + 1), Transport: "http"}}
			for j := 0; j < 5; j++ {
				bt.Samples = append(bt.Samples, core.Sample{Code: "8867-4", Value: float64(60 + j), Unit: "/min",
					Time: t0.Add(time.Duration(k*5+j) * time.Millisecond)})
			}
			batch = append(batch, bt)
		}
		if _, err := cs.IngestMany(ctx, batch); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	before := cpuacct.Take(ctx, pool)
	began := time.Now()
	s, _, stop := start()
	for s.Stats().Delivered < int64(b.N) {
		time.Sleep(2 * time.Millisecond)
	}
	if err := s.Drain(ctx); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/time.Since(began).Seconds(), "msgs/s")
	b.StopTimer()
	if b.N >= 1000 {
		cpuacct.Between(before, cpuacct.Take(ctx, pool)).Write(os.Stdout, int64(b.N), 2, "message")
	}
	stop()
	if st := s.Stats(); st.Delivered != int64(b.N) || st.AuditFailures != 0 {
		b.Fatalf("Stats = %+v, want %d delivered", st, b.N)
	}
}
