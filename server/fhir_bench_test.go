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

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/audittest"
	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/internal/testdb"
	"github.com/vigilhealth/vigil/keys/keystest"
)

// BenchmarkFHIRObservationSearch measures GET /fhir/R4/Observation?patient=…&_count=1000
// &_sort=-date over HTTP on a real server and database: one patient with 1,000 stored vital
// signs (heart rate, SpO2, respiratory rate, temperature: no panel grouping), a signed-in
// user, the policy decision and the access.phi.read audit event of every request, the SQL
// page, rendering and JSON. It reports the latency percentiles of one request and the
// resources rendered per second (docs/benchmarks.md).
func BenchmarkFHIRObservationSearch(b *testing.B) {
	pool := testdb.New(b)
	ctx := context.Background()
	rec := audittest.Recorder(b, pool, nil)
	cs, err := core.New(core.Config{Pool: pool, Recorder: rec, PHI: keystest.LocalRing(b, nil).PHI()})
	if err != nil {
		b.Fatal(err)
	}
	p, err := cs.CreatePatient(ctx, audit.Event{Actor: audit.Actor{Kind: audit.ActorService, ID: "bench", AuthMethod: "internal"}, RequestID: "bench"}, core.PatientPHI{MRN: "BENCH-1", GivenName: "B", FamilyName: "Ench"}, nil)
	if err != nil {
		b.Fatal(err)
	}
	now := time.Now().UTC().Truncate(time.Second)
	codes := []core.Sample{{Code: "8867-4", Value: 72, Unit: "/min"}, {Code: "59408-5", Value: 97, Unit: "%"},
		{Code: "9279-1", Value: 16, Unit: "/min"}, {Code: "8310-5", Value: 36.9, Unit: "Cel"}}
	for u := 0; u < 10; u++ {
		var h [32]byte
		_, _ = rand.Read(h[:])
		batch := core.Batch{PatientID: p.ID, Provenance: core.Provenance{DeviceID: uuid.NewString(), KeyID: "d/1", UploadHash: h,
			Sequence: uint64(u + 1), Transport: "http", ReceivedAt: now}}
		for i := 0; i < 100; i++ {
			s := codes[i%4]
			s.Time = now.Add(-time.Duration(u*100+i) * 15 * time.Second)
			batch.Samples = append(batch.Samples, s)
		}
		if _, err := cs.Ingest(ctx, batch); err != nil {
			b.Fatal(err)
		}
	}
	authSvc, cl := SignedIn(b, pool, rec)
	s, err := New(Config{Pool: pool, Recorder: rec, Core: cs, Auth: authSvc, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		RejectedPerSource: Limit{Rate: -1}})
	if err != nil {
		b.Fatal(err)
	}
	ts := httptest.NewServer(s.Handler())
	defer ts.Close()
	url := ts.URL + "/fhir/R4/Observation?patient=" + p.ID.String() + "&_count=1000&_sort=-date"
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
	if n := get(); n != 1000 {
		b.Fatalf("search returned %d observations, want 1000", n)
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
	b.ReportMetric(float64(1000*b.N)/b.Elapsed().Seconds(), "resources/s")
}

// BenchmarkFHIRObservationSearchAllPatients measures GET /fhir/R4/Observation?_count=1000
// &_sort=-date — a search without a patient, by a user who sees every patient — over 200
// patients with 500 stored vital signs each (100,000 observations over four days): the page is
// the newest 1,000 of all of them (docs/benchmarks.md, "Observation searches without a
// patient"). Latency per request, in wall time.
func BenchmarkFHIRObservationSearchAllPatients(b *testing.B) {
	pool := testdb.New(b)
	ctx := context.Background()
	rec := audittest.Recorder(b, pool, nil)
	cs, err := core.New(core.Config{Pool: pool, Recorder: rec, PHI: keystest.LocalRing(b, nil).PHI()})
	if err != nil {
		b.Fatal(err)
	}
	by := audit.Event{Actor: audit.Actor{Kind: audit.ActorService, ID: "bench", AuthMethod: "internal"}, RequestID: "bench"}
	now := time.Now().UTC().Truncate(time.Second)
	codes := []core.Sample{{Code: "8867-4", Value: 72, Unit: "/min"}, {Code: "59408-5", Value: 97, Unit: "%"},
		{Code: "9279-1", Value: 16, Unit: "/min"}, {Code: "8310-5", Value: 36.9, Unit: "Cel"}}
	var batches []core.Batch
	for p := 0; p < 200; p++ {
		pt, err := cs.CreatePatient(ctx, by, core.PatientPHI{MRN: "BENCH-ALL-" + uuid.NewString(), GivenName: "B", FamilyName: "Ench"}, nil)
		if err != nil {
			b.Fatal(err)
		}
		var h [32]byte
		_, _ = rand.Read(h[:])
		batch := core.Batch{PatientID: pt.ID, Provenance: core.Provenance{DeviceID: uuid.NewString(), KeyID: "d/1", UploadHash: h,
			Sequence: 1, Transport: "http", ReceivedAt: now}}
		for i := 0; i < 500; i++ {
			s := codes[i%4]
			s.Time = now.Add(-time.Duration(i*691+p*13) * time.Second) // four days, interleaved
			batch.Samples = append(batch.Samples, s)
		}
		batches = append(batches, batch)
	}
	for i := 0; i < len(batches); i += 20 {
		if _, err := cs.IngestMany(ctx, batches[i:i+20]); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := pool.Exec(ctx, "ANALYZE core_observations"); err != nil {
		b.Fatal(err)
	}
	authSvc, cl := SignedIn(b, pool, rec)
	s, err := New(Config{Pool: pool, Recorder: rec, Core: cs, Auth: authSvc, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		RejectedPerSource: Limit{Rate: -1}})
	if err != nil {
		b.Fatal(err)
	}
	ts := httptest.NewServer(s.Handler())
	defer ts.Close()
	url := ts.URL + "/fhir/R4/Observation?_count=1000&_sort=-date"
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
	if n := get(); n < 1000 {
		b.Fatalf("search returned %d resources, want at least 1000", n)
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
