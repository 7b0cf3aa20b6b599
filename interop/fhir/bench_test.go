package fhir_test

import (
	"encoding/json"
	"net/url"
	"testing"

	"github.com/vigilhealth/vigil/interop/fhir"
)

// BenchmarkRenderObservation measures vital-sign Observations rendered and marshaled to
// JSON per second (docs/benchmarks.md).
func BenchmarkRenderObservation(b *testing.B) {
	ss := samples()
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		o, err := fhir.RenderObservation(ss[i%len(ss)])
		if err != nil {
			b.Fatal(err)
		}
		if _, err := json.Marshal(o); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "resources/s")
}

// BenchmarkRenderProvenance measures Provenance resources rendered and marshaled per second.
func BenchmarkRenderProvenance(b *testing.B) {
	leaf := int64(1)
	u := fhir.Upload{ID: "p", Targets: []string{"a", "b", "c", "d"}, DeviceID: "d", KeyID: "d/1", Signature: make([]byte, 64),
		SignedAt: t0, ReceivedAt: t0, Receipt: make([]byte, 200), ReceiptKeyID: "r/1", AuditEventID: "e", AuditLeafIndex: &leaf}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, err := json.Marshal(fhir.RenderProvenance(u)); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "resources/s")
}

// BenchmarkParseSearch measures the search parser on the Observation query.
func BenchmarkParseSearch(b *testing.B) {
	q, _ := url.ParseQuery("patient=Patient/p1&code=http://loinc.org|8867-4&date=ge2026-01-02&_count=1000&_sort=-date&_include=Observation:device")
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, err := fhir.ParseSearch("Observation", q, fhir.Strict); err != nil {
			b.Fatal(err)
		}
	}
}
