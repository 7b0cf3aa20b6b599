// Verifies: REQ-CORE-007, REQ-CORE-012, REQ-CORE-014
package server

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/audittest"
	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/core/alarms"
	"github.com/vigilhealth/vigil/core/obs"
	"github.com/vigilhealth/vigil/core/rules"
	"github.com/vigilhealth/vigil/internal/testdb"
)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// BenchmarkCoreIngestToSSE measures the clinical ingest path end to end: uploads of 10 vital
// signs go through core validation and normalization, storage (COPY, group commit of G
// uploads per transaction with their audit events) and every default rule plus a probe rule;
// one upload in PROBE carries a glucose value that opens an alarm at once (the next one of that
// patient resolves it). Reported: samples/s stored, and p50/p99 latency from the IngestMany
// call carrying the probe to its alarm.opened event read by an SSE client over HTTP.
//
//	go test ./server -run '^$' -bench CoreIngestToSSE -benchtime 20s
//
// Knobs (env): VIGIL_BENCH_GROUP (uploads per transaction, default 50), VIGIL_BENCH_PAR
// (goroutines per CPU, default 2), VIGIL_BENCH_PROBE (default 500). With VIGIL_BENCH_RATE
// (uploads/s) the load is open-loop instead: uploads arrive at that rate and adaptive group
// committers take what is queued (see openLoop); run it with -benchtime 1x.
func BenchmarkCoreIngestToSSE(b *testing.B) {
	ctx := context.Background()
	_, url := testdb.NewWithURL(b)
	// A pool larger than the ingest goroutines, so that an alarm's transaction never waits
	// for a connection held by an ingest transaction (VIGIL_DATABASE_URL: pool_max_conns=16).
	pool, err := pgxpool.New(ctx, url+"&pool_max_conns="+strconv.Itoa(envInt("VIGIL_BENCH_CONNS", 16)))
	if err != nil {
		b.Fatal(err)
	}
	defer pool.Close()
	hub := core.NewHub(core.HubConfig{Buffer: 1 << 16})
	rec := audittest.Recorder(b, pool, nil)
	asvc, err := alarms.New(alarms.Config{Pool: pool, Recorder: rec, Notifier: hub})
	if err != nil {
		b.Fatal(err)
	}
	handoff := obs.NewHandoff(obs.HandoffConfig{}) // core publishes to it, the engine drains it
	eng, err := rules.New(ctx, rules.Config{Pool: pool, Recorder: rec, Alarms: asvc, Handoff: handoff})
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = eng.Close(context.Background()) }()
	by := audit.Event{Actor: audit.Actor{Kind: audit.ActorUser, ID: "bench", AuthMethod: "none"}}
	if _, err := eng.CreateVersion(ctx, by, rules.Rule{ID: "bench-probe", Name: "Glucose very high (benchmark probe)",
		Kind: rules.KindThreshold, Enabled: true, Reason: "latency probe",
		Threshold: &rules.ThresholdParams{Code: core.LOINCGlucose, Direction: rules.Above,
			Levels: []rules.Level{{Limit: 400, Severity: alarms.SeverityHigh}}, Hysteresis: 10}}); err != nil {
		b.Fatal(err)
	}
	svc, err := core.New(core.Config{Pool: pool, Recorder: rec, PHI: newCoreTestSealer(b), Handoff: handoff, Hub: hub,
		MaxFutureSkew: 10 * time.Minute})
	if err != nil {
		b.Fatal(err)
	}
	if err := svc.MaintainPartitions(ctx); err != nil {
		b.Fatal(err)
	}
	authSvc, cl := SignedIn(b, pool, rec)
	s, err := New(Config{Pool: pool, Recorder: rec, Core: svc, RequestTimeout: time.Hour, Auth: authSvc})
	if err != nil {
		b.Fatal(err)
	}
	ts := httptest.NewServer(s.Handler())
	defer ts.Close()

	group, par, probeEvery := envInt("VIGIL_BENCH_GROUP", 50), envInt("VIGIL_BENCH_PAR", 2), envInt("VIGIL_BENCH_PROBE", 500)
	const npat = 2000
	patients := make([]uuid.UUID, npat)
	for i := range patients {
		p, err := svc.CreatePatient(ctx, by, core.PatientPHI{MRN: fmt.Sprintf("B%05d", i), GivenName: "B", FamilyName: "B"}, nil)
		if err != nil {
			b.Fatal(err)
		}
		patients[i] = p.ID
	}
	seqs := make([]atomic.Int64, npat)
	alarmed := make([]atomic.Bool, npat)
	base := time.Now().UTC().Add(-55 * time.Minute).Truncate(time.Second)
	var starts sync.Map // patient → time the probe upload was handed to core
	var latMu sync.Mutex
	var lats []time.Duration

	// The SSE client.
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	req, _ := http.NewRequestWithContext(sctx, "GET", ts.URL+"/api/v1/stream?type=alarm.opened", nil)
	resp, err := cl.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	var dump *os.File // VIGIL_BENCH_DUMP=file: one line per measured alarm (time, latency ms)
	if name := os.Getenv("VIGIL_BENCH_DUMP"); name != "" {
		if dump, err = os.Create(name); err != nil {
			b.Fatal(err)
		}
		defer dump.Close()
	}
	events := make(chan sseEvent, 1024)
	go readSSE(bufio.NewReader(resp.Body), events)
	go func() {
		for ev := range events {
			recv := time.Now()
			var e core.Event
			if json.Unmarshal([]byte(ev.data), &e) != nil {
				continue
			}
			if t0, ok := starts.LoadAndDelete(e.PatientID); ok {
				latMu.Lock()
				lats = append(lats, recv.Sub(t0.(time.Time)))
				if dump != nil {
					fmt.Fprintf(dump, "%s %d\n", recv.Format("15:04:05.000"), recv.Sub(t0.(time.Time)).Milliseconds())
				}
				latMu.Unlock()
			}
		}
	}()
	for hub.Subscribers() == 0 {
		time.Sleep(5 * time.Millisecond) // waiting for the SSE handler to subscribe
	}

	var next atomic.Int64
	var uploads atomic.Int64
	hash := func(i int64) (h [32]byte) {
		copy(h[:], fmt.Sprintf("%032d", i))
		return h
	}
	makeBatch := func(k int) (core.Batch, bool) {
		p := patients[k]
		n := seqs[k].Add(1)
		at := base.Add(time.Duration(n) * time.Second)
		u := uploads.Add(1)
		glucose, probe := 100.0, false
		switch {
		case alarmed[k].Load():
			alarmed[k].Store(false) // this upload resolves the probe alarm
		case u%int64(probeEvery) == 0:
			glucose, probe = 450, true
			alarmed[k].Store(true)
		}
		j := float64(n % 3)
		return core.Batch{PatientID: p, Provenance: core.Provenance{DeviceID: "bench-dev", KeyID: "bench-dev/v1",
			UploadHash: hash(u), Sequence: uint64(n), Transport: "http"},
			Samples: []core.Sample{
				{Code: core.LOINCHeartRate, Value: 72 + j, Unit: "/min", Time: at},
				{Code: core.LOINCRespiratoryRate, Value: 15 + j, Unit: "/min", Time: at},
				{Code: core.LOINCSpO2, Value: 97 + j, Unit: "%", Time: at},
				{Code: core.LOINCFiO2, Value: 21, Unit: "%", Time: at},
				{Code: core.LOINCSystolicBP, Value: 120 + j, Unit: "mm[Hg]", Time: at},
				{Code: core.LOINCDiastolicBP, Value: 80 + j, Unit: "mm[Hg]", Time: at},
				{Code: core.LOINCMeanBP, Value: 93 + j, Unit: "mm[Hg]", Time: at},
				{Code: core.LOINCBodyTemperature, Value: 98.2 + j/10, Unit: "[degF]", Time: at},
				{Code: core.LOINCConsciousness, Value: 0, Unit: "{score}", Time: at},
				{Code: core.LOINCGlucose, Value: glucose, Unit: "mg/dL", Time: at},
			}}, probe
	}
	ingestGroup := func() error {
		batches := make([]core.Batch, group)
		var probes []uuid.UUID
		for i := range batches {
			k := int(next.Add(1) % npat)
			var probe bool
			batches[i], probe = makeBatch(k)
			if probe {
				probes = append(probes, batches[i].PatientID)
			}
		}
		t := time.Now()
		for _, p := range probes {
			starts.Store(p, t)
		}
		_, err := svc.IngestMany(ctx, batches)
		return err
	}
	// Warm up: every patient's rule state loaded, connections open.
	for i := 0; i < npat/group; i++ {
		if err := ingestGroup(); err != nil {
			b.Fatal(err)
		}
	}
	time.Sleep(time.Second)
	latMu.Lock()
	lats = lats[:0]
	latMu.Unlock()
	before, hoBefore := svc.Stats(), handoff.Stats()
	b.ResetTimer()
	start := time.Now()
	if rate := envInt("VIGIL_BENCH_RATE", 0); rate > 0 {
		openLoop(b, rate, func() (core.Batch, bool) { return makeBatch(int(next.Add(1) % npat)) }, &starts,
			func(g []core.Batch) error { _, err := svc.IngestMany(ctx, g); return err })
	} else {
		b.SetParallelism(par)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if err := ingestGroup(); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	elapsed := time.Since(start)
	b.StopTimer()
	time.Sleep(2 * time.Second) // let the last alarm events arrive
	after := svc.Stats()
	stored := after.Stored - before.Stored
	b.ReportMetric(float64(stored)/elapsed.Seconds(), "samples/s")
	b.ReportMetric(float64(after.Batches-before.Batches)/elapsed.Seconds(), "uploads/s")
	latMu.Lock()
	defer latMu.Unlock()
	if len(lats) > 0 {
		slices.Sort(lats)
		b.ReportMetric(float64(lats[len(lats)/2].Microseconds())/1000, "p50-ms")
		b.ReportMetric(float64(lats[len(lats)*9/10].Microseconds())/1000, "p90-ms")
		b.ReportMetric(float64(lats[len(lats)*99/100].Microseconds())/1000, "p99-ms")
		b.ReportMetric(float64(lats[len(lats)-1].Microseconds())/1000, "max-ms")
		b.ReportMetric(float64(len(lats)), "alarms")
	}
	if failed := handoff.Stats().Failed - hoBefore.Failed; failed != 0 {
		b.Errorf("rule errors during the run: %d", failed)
	}
}

// openLoop offers uploads at a fixed rate for VIGIL_BENCH_SECONDS (default 15) to
// VIGIL_BENCH_COMMITTERS (default 3) adaptive group committers, each committing whatever is
// queued (up to VIGIL_BENCH_MAXGROUP, default 500) in one transaction: the way devices' batcher
// feeds core. A probe's latency then starts when its upload is queued, as after verification.
func openLoop(b *testing.B, rate int, mk func() (core.Batch, bool), starts *sync.Map, commit func([]core.Batch) error) {
	queue := make(chan core.Batch, 1<<17)
	maxGroup, committers := envInt("VIGIL_BENCH_MAXGROUP", 500), envInt("VIGIL_BENCH_COMMITTERS", 3)
	var wg sync.WaitGroup
	for c := 0; c < committers; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for first := range queue {
				group := []core.Batch{first}
			drain:
				for len(group) < maxGroup {
					select {
					case bt, ok := <-queue:
						if !ok {
							break drain
						}
						group = append(group, bt)
					default:
						break drain
					}
				}
				if err := commit(group); err != nil {
					b.Error(err)
				}
			}
		}()
	}
	dur := time.Duration(envInt("VIGIL_BENCH_SECONDS", 15)) * time.Second
	start := time.Now()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	sent := 0
	for time.Since(start) < dur {
		<-tick.C
		due := int(time.Since(start).Seconds()*float64(rate)) - sent
		for i := 0; i < due; i++ {
			bt, probe := mk()
			if probe {
				starts.Store(bt.PatientID, time.Now())
			}
			queue <- bt
			sent++
		}
	}
	close(queue)
	wg.Wait()
}
