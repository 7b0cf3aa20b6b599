package portal_test

import (
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"sort"
	"testing"
	"time"

	"github.com/vigilhealth/vigil/core"
)

// BenchmarkWardOverview measures the server time of GET / for a clinician whose ward has 50
// patients, each with the five tile vitals (and the diastolic pressure) stored a minute ago:
// the domain queries, the authorization of each tile, the audit of each tile's read
// (group-committed) and the rendering. It reports p50 and p99 (ms) and the page's bytes.
// docs/benchmarks.md has the figures and the command.
func BenchmarkWardOverview(b *testing.B) {
	s := newStack(b)
	ctx := s.Ctx
	now := s.Clock.Now()
	for len(s.patients) < 50 {
		p, err := s.Core.CreatePatient(ctx, admin, core.PatientPHI{MRN: fmt.Sprintf("MRN-B%03d", len(s.patients)), GivenName: "Bench",
			FamilyName: fmt.Sprintf("Patient %02d", len(s.patients))}, &s.ward.ID)
		if err != nil {
			b.Fatal(err)
		}
		s.patients = append(s.patients, p)
	}
	for i, p := range s.patients {
		var h [32]byte
		_, _ = rand.Read(h[:])
		at := now.Add(-time.Minute)
		if _, err := s.Core.Ingest(ctx, core.Batch{PatientID: p.ID, Samples: []core.Sample{
			{Code: core.LOINCHeartRate, Value: 70 + float64(i%20), Unit: "/min", Time: at},
			{Code: core.LOINCSpO2, Value: 96, Unit: "%", Time: at},
			{Code: core.LOINCRespiratoryRate, Value: 16, Unit: "/min", Time: at},
			{Code: core.LOINCSystolicBP, Value: 120, Unit: "mm[Hg]", Time: at},
			{Code: core.LOINCDiastolicBP, Value: 80, Unit: "mm[Hg]", Time: at},
			{Code: core.LOINCBodyTemperature, Value: 36.8, Unit: "Cel", Time: at},
		}, Provenance: core.Provenance{DeviceID: "bench", KeyID: "bench/v1", UploadHash: h, Sequence: uint64(i + 1), ReceivedAt: now, Transport: "http"}}); err != nil {
			b.Fatal(err)
		}
	}
	email, secret := s.clinician(b, "clinician", s.ward.ID)
	c := client(b)
	if res := s.signIn(b, c, email, password, s.code(b, secret)); res.StatusCode != http.StatusSeeOther {
		b.Fatalf("sign in = %d", res.StatusCode)
	}
	var times []time.Duration
	size := 0
	b.ResetTimer()
	for b.Loop() {
		start := time.Now()
		res, err := c.Get(s.ts.URL + "/")
		if err != nil {
			b.Fatal(err)
		}
		n, _ := io.Copy(io.Discard, res.Body)
		res.Body.Close()
		times = append(times, time.Since(start))
		if res.StatusCode != http.StatusOK {
			b.Fatalf("GET / = %d", res.StatusCode)
		}
		size = int(n)
	}
	b.StopTimer()
	sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
	q := func(p float64) float64 { return float64(times[int(p*float64(len(times)-1))].Microseconds()) / 1000 }
	b.ReportMetric(q(0.50), "p50-ms")
	b.ReportMetric(q(0.99), "p99-ms")
	b.ReportMetric(float64(size), "page-bytes")
	assets := 0
	for _, a := range s.portal.Assets().All() {
		res, err := http.Get(s.ts.URL + a.URL)
		if err != nil {
			b.Fatal(err)
		}
		n, _ := io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if a.Name != "uPlot.iife.min.js" && a.Name != "uPlot.min.css" { // not on the overview
			assets += int(n)
		}
	}
	b.ReportMetric(float64(assets), "asset-bytes")
}
