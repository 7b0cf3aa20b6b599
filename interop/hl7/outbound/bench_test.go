package outbound_test

import (
	"context"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/vigilhealth/vigil/internal/cpuacct"
	"github.com/vigilhealth/vigil/interop/hl7/outbound"
	"github.com/vigilhealth/vigil/interop/interoptest"
)

// BenchmarkORUToLoopback measures ORU^R01 messages delivered per second to an MLLP receiver
// on loopback that parses each message and answers AA, with every outcome audited through
// the audit service's group commit (docs/benchmarks.md).
func BenchmarkORUToLoopback(b *testing.B) {
	pool, rec := auditedDB(b)
	addr := interoptest.ServeMLLP(b, ackAll())
	s, err := outbound.New(outbound.Config{Name: "bench", Addr: addr, Pool: pool, Sealer: sealer(b),
		Audit: rec})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close(context.Background())
	msgs := make([]outbound.Message, 1000)
	for i := range msgs {
		msgs[i] = oru(b, "W"+strconv.Itoa(i), "MRN-"+strconv.Itoa(i), 4)
	}
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	before := cpuacct.Take(ctx, pool)
	start := time.Now()
	for i := 0; i < b.N; i++ {
		m := msgs[i%len(msgs)]
		if err := s.Enqueue(ctx, m); err != nil {
			b.Fatal(err)
		}
	}
	if err := s.Drain(ctx); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
	b.StopTimer()
	if b.N >= 1000 {
		// CPU per message (sender, receiver and audit service in this process; PostgreSQL):
		// what the machine could do if the run had it to itself.
		cpuacct.Between(before, cpuacct.Take(ctx, pool)).Write(os.Stdout, int64(b.N), 2, "message")
	}
	if st := s.Stats(); st.Delivered != int64(b.N) || st.AuditFailures != 0 {
		b.Fatalf("Stats = %+v, want %d delivered", st, b.N)
	}
}
