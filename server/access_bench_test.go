package server

import (
	"context"
	"crypto/rand"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/audittest"
	"github.com/vigilhealth/vigil/auth"
	"github.com/vigilhealth/vigil/auth/authtest"
	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/internal/testdb"
)

// BenchmarkObservationsReadAudit measures the cost of auditing reads of patient data: a ward
// clinician's GET /patients/:id/observations (60 heart rates, the hour's raw series) over real
// HTTP with a real session, sent at a fixed 500 requests/s (each in its own goroutine, so a
// slow answer does not slow the sender): without the access.phi.read event (unaudited), with
// it committed before the handler runs (audited-serial, the earlier design) and with it
// committed while the handler runs, the answer held until the commit (audited). It reports
// each request's latency p50 and p99.
//
//	go test ./server -run '^$' -bench 'BenchmarkObservationsReadAudit/500rps' -benchtime 2500x -count 3
//	go test ./server -run '^$' -bench 'BenchmarkObservationsReadAudit/seq' -benchtime 1000x -count 3
func BenchmarkObservationsReadAudit(b *testing.B) {
	_, dbURL := testdb.NewWithURL(b)
	ctx := context.Background()
	// The pool's size: pgxpool's default (4 on this 2-core machine), or BENCH_POOL_CONNS.
	pcfg, err := pgxpool.ParseConfig(dbURL)
	if err != nil {
		b.Fatal(err)
	}
	if n, err := strconv.Atoi(os.Getenv("BENCH_POOL_CONNS")); err == nil && n > 0 {
		pcfg.MaxConns = int32(n)
	}
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		b.Fatal(err)
	}
	defer pool.Close()
	b.Logf("pool of %d connections", pcfg.MaxConns)
	rec := audittest.Recorder(b, pool, nil)
	svc, err := core.New(core.Config{Pool: pool, Recorder: rec, PHI: newCoreTestSealer(b)})
	if err != nil {
		b.Fatal(err)
	}
	by := audit.Event{Actor: audit.Actor{Kind: audit.ActorService, ID: "bench", AuthMethod: "internal"}, RequestID: "bench"}
	site, err := svc.CreateSite(ctx, by, "S")
	if err != nil {
		b.Fatal(err)
	}
	ward, err := svc.CreateWard(ctx, by, site.ID, "W")
	if err != nil {
		b.Fatal(err)
	}
	p, err := svc.CreatePatient(ctx, by, core.PatientPHI{MRN: "BENCH-1", GivenName: "B", FamilyName: "B"}, &ward.ID)
	if err != nil {
		b.Fatal(err)
	}
	base := time.Now().UTC().Truncate(time.Hour).Add(-time.Hour)
	var h [32]byte
	_, _ = rand.Read(h[:])
	batch := core.Batch{PatientID: p.ID, Provenance: core.Provenance{DeviceID: "d", KeyID: "d/1", UploadHash: h, Transport: "http"}}
	for i := range 60 {
		batch.Samples = append(batch.Samples, core.Sample{Code: core.LOINCHeartRate, Value: float64(60 + i%10), Unit: "/min", Time: base.Add(time.Duration(i) * time.Minute)})
	}
	if _, err := svc.Ingest(ctx, batch); err != nil {
		b.Fatal(err)
	}
	authSvc, cl := SignedIn(b, pool, rec, authtest.Grant{Role: auth.RoleClinician, Domain: auth.WardDomain(ward.ID)})
	s, err := New(Config{Pool: pool, Recorder: rec, Core: svc, Auth: authSvc, RejectedPerSource: Limit{Rate: -1},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	ts := httptest.NewServer(s.Handler())
	defer ts.Close()
	cl.Transport.(*authtest.Transport).Base = &http.Transport{MaxIdleConnsPerHost: 200}
	url := ts.URL + "/api/v1/patients/" + p.ID.String() + "/observations?code=8867-4&from=" +
		base.Format(time.RFC3339) + "&to=" + base.Add(time.Hour).Format(time.RFC3339)
	// Two loads: 500 requests/s (open loop), and one request at a time ("seq", closed loop:
	// the latency a request adds without queueing behind others, which a loaded machine that
	// cannot sustain 500 requests/s still measures).
	for _, load := range []string{"500rps", "seq"} {
		for _, mode := range []string{"unaudited", "audited-serial", "audited"} {
			b.Run(load+"/"+mode, func(b *testing.B) {
				s.benchNoReadAudit = mode == "unaudited"
				s.benchSerialReadAudit = mode == "audited-serial"
				lat := make([]time.Duration, b.N)
				get := func(i int) {
					t0 := time.Now()
					resp, err := cl.Get(url)
					if err != nil {
						b.Error(err)
						return
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						b.Errorf("GET observations = %d", resp.StatusCode)
					}
					lat[i] = time.Since(t0)
				}
				var wg sync.WaitGroup
				tick := time.NewTicker(2 * time.Millisecond) // 500 requests/s
				defer tick.Stop()
				b.ResetTimer()
				for i := range b.N {
					if load == "seq" {
						get(i)
						continue
					}
					<-tick.C
					wg.Add(1)
					go func() { defer wg.Done(); get(i) }()
				}
				wg.Wait()
				b.StopTimer()
				slices.Sort(lat)
				b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
				b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
			})
		}
	}
}
