package portal_test

import (
	"io"
	"net/http"
	"sort"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/chain/chaintest"
	"github.com/vigilhealth/vigil/auth"
)

// BenchmarkAuditSearch measures the server time of an audit-browser search answering a page
// of 50 events, each with its proof read from the chain (batch tree and log inclusion proof
// from Trillian) and verified against the latest signed checkpoint, plus the actor names and
// the search's own access.audit.read event. The trail holds 500 proven events in several
// batches. It reports p50 and p99 (ms) and the page's bytes. docs/benchmarks.md has the
// figures and the command.
func BenchmarkAuditSearch(b *testing.B) {
	s := newStack(b)
	nEmail, _ := s.clinician(b, auth.RoleClinician, s.ward.ID)
	nu, err := s.auth.UserByEmail(s.Ctx, nEmail)
	if err != nil {
		b.Fatal(err)
	}
	for i := range 500 {
		if _, err := s.Rec.RecordNow(s.Ctx, audit.Event{Actor: audit.Actor{Kind: audit.ActorUser, ID: nu.ID.String(), AuthMethod: "password+totp"},
			Action: "access.phi.read", Object: audit.Object{Type: "patient", ID: s.patients[i%len(s.patients)].ID.String()},
			Outcome: audit.OutcomeSuccess, RequestID: uuid.NewString(), Payload: map[string]any{"what": "bench"}}); err != nil {
			b.Fatal(err)
		}
		if i%100 == 99 {
			chaintest.ShipAll(b, s.chain) // several batches and checkpoints
		}
	}
	qEmail, qSecret, _ := s.staff(b, auth.RoleQuality)
	c := s.signedInAs(b, qEmail, qSecret)
	var times []time.Duration
	size := 0
	b.ResetTimer()
	for b.Loop() {
		start := time.Now()
		res, err := c.Get(s.ts.URL + "/audit?action=access.phi.read")
		if err != nil {
			b.Fatal(err)
		}
		n, _ := io.Copy(io.Discard, res.Body)
		res.Body.Close()
		times = append(times, time.Since(start))
		if res.StatusCode != http.StatusOK {
			b.Fatalf("GET /audit = %d", res.StatusCode)
		}
		size = int(n)
	}
	b.StopTimer()
	sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
	q := func(p float64) float64 { return float64(times[int(p*float64(len(times)-1))].Microseconds()) / 1000 }
	b.ReportMetric(q(0.50), "p50-ms")
	b.ReportMetric(q(0.99), "p99-ms")
	b.ReportMetric(float64(size), "page-bytes")
}
