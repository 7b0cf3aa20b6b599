package server

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sort"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/audittest"
	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/internal/testdb"
	"github.com/vigilhealth/vigil/keys/keystest"
)

// fhirBench is what the FHIR search benchmarks share: a database with the core on it, the
// vital signs they store, and a signed-in client of a real server over HTTP.
type fhirBench struct {
	pool  *pgxpool.Pool
	rec   *audit.Outbox
	core  *core.Service
	by    audit.Event
	codes []core.Sample // heart rate, SpO2, respiratory rate, temperature: no panel grouping
	now   time.Time
}

func newFHIRBench(b *testing.B) *fhirBench {
	pool := testdb.New(b)
	rec := audittest.Recorder(b, pool, nil)
	cs, err := core.New(core.Config{Pool: pool, Recorder: rec, PHI: keystest.LocalRing(b, nil).PHI()})
	if err != nil {
		b.Fatal(err)
	}
	return &fhirBench{pool: pool, rec: rec, core: cs,
		by: audit.Event{Actor: audit.Actor{Kind: audit.ActorService, ID: "bench", AuthMethod: "internal"}, RequestID: "bench"},
		codes: []core.Sample{{Code: "8867-4", Value: 72, Unit: "/min"}, {Code: "59408-5", Value: 97, Unit: "%"},
			{Code: "9279-1", Value: 16, Unit: "/min"}, {Code: "8310-5", Value: 36.9, Unit: "Cel"}},
		now: time.Now().UTC().Truncate(time.Second)}
}

// batch is one upload of patient with n of the codes in turn, at the times at(i).
func (f *fhirBench) batch(patient uuid.UUID, seq uint64, n int, at func(i int) time.Time) core.Batch {
	var h [32]byte
	_, _ = rand.Read(h[:])
	bt := core.Batch{PatientID: patient, Provenance: core.Provenance{DeviceID: uuid.NewString(), KeyID: "d/1", UploadHash: h,
		Sequence: seq, Transport: "http", ReceivedAt: f.now}}
	for i := 0; i < n; i++ {
		s := f.codes[i%len(f.codes)]
		s.Time = at(i)
		bt.Samples = append(bt.Samples, s)
	}
	return bt
}

// search serves the FHIR API to a signed-in user who sees every patient, checks that path
// returns at least want resources, then times b.N requests of it and reports their p50 and
// p99 latency (wall time).
func (f *fhirBench) search(b *testing.B, path string, want int) {
	authSvc, cl := SignedIn(b, f.pool, f.rec)
	s, err := New(Config{Pool: f.pool, Recorder: f.rec, Core: f.core, Auth: authSvc, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		RejectedPerSource: Limit{Rate: -1}})
	if err != nil {
		b.Fatal(err)
	}
	ts := httptest.NewServer(s.Handler())
	defer ts.Close()
	url := ts.URL + path
	get := func() int {
		resp, err := cl.Get(url)
		if err != nil {
			b.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK || err != nil {
			b.Fatalf("GET %s = %d %v", url, resp.StatusCode, err)
		}
		return bytes.Count(body, []byte(`"fullUrl":`))
	}
	if n := get(); n < want {
		b.Fatalf("search returned %d resources, want at least %d", n, want)
	}
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		get()
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	pct := func(q float64) float64 { return float64(lat[int(q*float64(len(lat)-1))].Microseconds()) / 1000 }
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
}

// BenchmarkFHIRObservationSearch measures GET /fhir/R4/Observation?patient=…&_count=1000
// &_sort=-date over HTTP on a real server and database: one patient with 1,000 stored vital
// signs (heart rate, SpO2, respiratory rate, temperature: no panel grouping), a signed-in
// user, the policy decision and the access.phi.read audit event of every request, the SQL
// page, rendering and JSON. It reports the latency percentiles of one request and the
// resources rendered per second (docs/benchmarks.md).
func BenchmarkFHIRObservationSearch(b *testing.B) {
	f := newFHIRBench(b)
	ctx := context.Background()
	p, err := f.core.CreatePatient(ctx, f.by, core.PatientPHI{MRN: "BENCH-1", GivenName: "B", FamilyName: "Ench"}, nil)
	if err != nil {
		b.Fatal(err)
	}
	for u := 0; u < 10; u++ {
		bt := f.batch(p.ID, uint64(u+1), 100, func(i int) time.Time { return f.now.Add(-time.Duration(u*100+i) * 15 * time.Second) })
		if _, err := f.core.Ingest(ctx, bt); err != nil {
			b.Fatal(err)
		}
	}
	f.search(b, "/fhir/R4/Observation?patient="+p.ID.String()+"&_count=1000&_sort=-date", 1000)
	b.ReportMetric(float64(1000*b.N)/b.Elapsed().Seconds(), "resources/s")
}

// BenchmarkFHIRObservationSearchAllPatients measures GET /fhir/R4/Observation?_count=1000
// &_sort=-date — a search without a patient, by a user who sees every patient — over 200
// patients with 500 stored vital signs each (100,000 observations over four days): the page is
// the newest 1,000 of all of them (docs/benchmarks.md, "Observation searches without a
// patient"). Latency per request, in wall time.
func BenchmarkFHIRObservationSearchAllPatients(b *testing.B) {
	f := newFHIRBench(b)
	ctx := context.Background()
	var batches []core.Batch
	for p := 0; p < 200; p++ {
		pt, err := f.core.CreatePatient(ctx, f.by, core.PatientPHI{MRN: "BENCH-ALL-" + uuid.NewString(), GivenName: "B", FamilyName: "Ench"}, nil)
		if err != nil {
			b.Fatal(err)
		}
		batches = append(batches, f.batch(pt.ID, 1, 500, func(i int) time.Time {
			return f.now.Add(-time.Duration(i*691+p*13) * time.Second) // four days, interleaved
		}))
	}
	for i := 0; i < len(batches); i += 20 {
		if _, err := f.core.IngestMany(ctx, batches[i:i+20]); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := f.pool.Exec(ctx, "ANALYZE core_observations"); err != nil {
		b.Fatal(err)
	}
	f.search(b, "/fhir/R4/Observation?_count=1000&_sort=-date", 1000)
}
