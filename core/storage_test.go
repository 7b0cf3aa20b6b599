package core_test

import (
	"math"
	"slices"
	"testing"
	"time"

	"github.com/vigilhealth/vigil/core"
)

func partitionNames(t *testing.T, e *env, class string) []string {
	t.Helper()
	parts, err := e.svc.Partitions(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, p := range parts {
		if p.Class == class {
			out = append(out, p.Name)
		}
	}
	return out
}

// Partitions are created from today through PartitionsAhead days ahead; a sample for a past
// day within retention gets its partition on demand.
// Verifies: REQ-CORE-008
func TestPartitionsCreatedAhead(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *core.Config) { c.PartitionsAhead = 3 })
	if err := e.svc.MaintainPartitions(e.ctx); err != nil {
		t.Fatal(err)
	}
	want := []string{"core_observations_p20260310", "core_observations_p20260311", "core_observations_p20260312", "core_observations_p20260313"}
	if got := partitionNames(t, e, core.ClassObservations); !slices.Equal(got, want) {
		t.Errorf("observation partitions = %v, want %v", got, want)
	}
	if got := partitionNames(t, e, core.ClassUploads); len(got) != 4 || got[0] != "core_uploads_p20260310" {
		t.Errorf("upload partitions = %v, want 4 from core_uploads_p20260310", got)
	}
	// Idempotent; the next day adds one more.
	e.clock.Add(24 * time.Hour)
	if err := e.svc.MaintainPartitions(e.ctx); err != nil {
		t.Fatal(err)
	}
	if got := partitionNames(t, e, core.ClassObservations); len(got) != 5 || got[4] != "core_observations_p20260314" {
		t.Errorf("observation partitions a day later = %v, want 5 ending with p20260314", got)
	}
	// On demand: a sample from 20 days ago.
	p := e.patient(t)
	b := batch(p, core.Sample{Code: core.LOINCHeartRate, Value: 60, Unit: "/min", Time: t0.AddDate(0, 0, -20)})
	if _, err := e.svc.Ingest(e.ctx, b); err != nil {
		t.Fatal(err)
	}
	if got := partitionNames(t, e, core.ClassObservations); got[0] != "core_observations_p20260218" {
		t.Errorf("oldest observation partition = %s, want core_observations_p20260218", got[0])
	}
}

// Retention drops exactly the partitions wholly older than each class's retention, audits each
// drop in the same transaction, and leaves everything newer intact.
// Verifies: REQ-CORE-009
func TestRetentionDropsExactlyExpiredPartitions(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *core.Config) {
		c.PartitionsAhead = 1
		c.Retention = core.Retention{Observations: 10 * 24 * time.Hour, Uploads: 12 * 24 * time.Hour}
	})
	p := e.patient(t)
	// One sample per day from t0-9d to t0, each uploaded the same day.
	for d := -9; d <= 0; d++ {
		at := t0.AddDate(0, 0, d)
		b := batch(p, core.Sample{Code: core.LOINCHeartRate, Value: 60 + float64(d), Unit: "/min", Time: at})
		b.Provenance.ReceivedAt = at
		if _, err := e.svc.Ingest(e.ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	if dropped, err := e.svc.EnforceRetention(e.ctx); err != nil || len(dropped) != 0 {
		t.Fatalf("EnforceRetention() at t0 = %v, %v; want nothing dropped", dropped, err)
	}
	// 5 days later (t0+5d = 2026-03-15 12:00): observation cutoff 2026-03-05 12:00, so the
	// partitions of 03-01 … 03-04 (ending ≤ 03-05 00:00) go, 03-05 stays (it ends after the
	// cutoff). Upload cutoff 2026-03-03 12:00: 03-01 and 03-02 go.
	e.clock.Add(5 * 24 * time.Hour)
	dropped, err := e.svc.EnforceRetention(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, d := range dropped {
		names = append(names, d.Name)
	}
	want := []string{"core_observations_p20260301", "core_uploads_p20260301", "core_observations_p20260302",
		"core_uploads_p20260302", "core_observations_p20260303", "core_observations_p20260304"}
	if !slices.Equal(names, want) {
		t.Errorf("EnforceRetention() dropped %v, want %v", names, want)
	}
	if n := e.count(t, "SELECT count(*) FROM core_observations"); n != 6 {
		t.Errorf("observations left = %d, want 6 (03-05 … 03-10)", n)
	}
	if n := e.count(t, "SELECT count(*) FROM core_observations WHERE effective_at < '2026-03-05'"); n != 0 {
		t.Errorf("observations before 03-05 left = %d, want 0", n)
	}
	if n := e.count(t, "SELECT count(*) FROM core_uploads"); n != 8 {
		t.Errorf("uploads left = %d, want 8", n)
	}
	if n := e.count(t, `SELECT count(*) FROM audit_events WHERE action = 'retention.partition_dropped'
		AND object_type = 'partition' AND actor_kind = 'service' AND (payload->>'rows')::int = 1`); n != len(want) {
		t.Errorf("retention.partition_dropped events = %d, want %d", n, len(want))
	}
	if n := e.count(t, "SELECT count(*) FROM audit_events WHERE action = 'retention.partition_dropped' AND object_id = 'core_observations_p20260303'"); n != 1 {
		t.Errorf("audit of dropping core_observations_p20260303 = %d, want 1", n)
	}
	// Again: nothing more.
	if dropped, err := e.svc.EnforceRetention(e.ctx); err != nil || len(dropped) != 0 {
		t.Errorf("second EnforceRetention() = %v, %v; want nothing", dropped, err)
	}
}

// Downsampling returns min, max, mean and count per epoch-aligned bucket, equal to the values
// computed from the raw series; artifacts are excluded unless asked for.
// Verifies: REQ-CORE-010
func TestSeriesDownsampling(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	p := e.patient(t)
	start := t0.Add(-3 * time.Hour)
	var samples []core.Sample
	raw := map[time.Time][]float64{}
	bucket := 10 * time.Minute
	for i := 0; i < 180; i++ { // one per minute for 3 h, with seconds offsets
		at := start.Add(time.Duration(i)*time.Minute + 17*time.Second)
		v := 60 + math.Mod(float64(i*7), 23)
		samples = append(samples, core.Sample{Code: core.LOINCHeartRate, Value: v, Unit: "/min", Time: at})
		b := at.Truncate(bucket)
		raw[b] = append(raw[b], v)
	}
	samples = append(samples, core.Sample{Code: core.LOINCHeartRate, Value: 340, Unit: "/min", Time: start.Add(5 * time.Second)}) // artifact
	if _, err := e.svc.Ingest(e.ctx, batch(p, samples...)); err != nil {
		t.Fatal(err)
	}
	q := core.RangeQuery{PatientID: p, Code: core.LOINCHeartRate, From: start, To: t0}
	got, err := e.svc.Series(e.ctx, q, bucket)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 18 {
		t.Fatalf("Series() = %d buckets, want 18", len(got))
	}
	for _, b := range got {
		vals := raw[b.Start]
		mn, mx, sum := math.Inf(1), math.Inf(-1), 0.0
		for _, v := range vals {
			mn, mx, sum = math.Min(mn, v), math.Max(mx, v), sum+v
		}
		if b.Count != int64(len(vals)) || b.Min != mn || b.Max != mx || math.Abs(b.Mean-sum/float64(len(vals))) > 1e-9 {
			t.Errorf("bucket %s = %+v, want count %d min %g max %g mean %g", b.Start, b, len(vals), mn, mx, sum/float64(len(vals)))
		}
	}
	q.Artifacts = true
	withArt, err := e.svc.Series(e.ctx, q, bucket)
	if err != nil {
		t.Fatal(err)
	}
	if withArt[0].Max != 340 || withArt[0].Count != got[0].Count+1 {
		t.Errorf("Series(artifacts) first bucket = %+v, want max 340 and one more value", withArt[0])
	}
	// Bad requests.
	for _, bad := range []struct {
		q core.RangeQuery
		b time.Duration
	}{
		{core.RangeQuery{PatientID: p, Code: core.LOINCHeartRate, From: t0, To: start}, time.Minute},
		{core.RangeQuery{PatientID: p, Code: "nope", From: start, To: t0}, time.Minute},
		{core.RangeQuery{PatientID: p, Code: core.LOINCHeartRate, From: start, To: t0}, time.Millisecond},
		{core.RangeQuery{PatientID: p, Code: core.LOINCHeartRate, From: t0.AddDate(-1, 0, 0), To: t0}, time.Second},
	} {
		if _, err := e.svc.Series(e.ctx, bad.q, bad.b); err == nil {
			t.Errorf("Series(%+v, %s) succeeded, want ErrInvalidRequest", bad.q, bad.b)
		}
	}
	// History for the rules: strictly after since, ascending, artifacts flagged, device known.
	hist, err := e.svc.ObservationsSince(e.ctx, p, start.Add(5*time.Second), 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(hist) != 10 || !hist[9].EffectiveAt.Equal(start.Add(179*time.Minute+17*time.Second)) || hist[0].DeviceID != "dev-1" {
		t.Errorf("ObservationsSince() = %d, last %v, device %q; want the newest 10 ascending from dev-1", len(hist), hist[len(hist)-1].EffectiveAt, hist[0].DeviceID)
	}
	all, _ := e.svc.ObservationsSince(e.ctx, p, start, 0)
	if len(all) != 181 || !all[0].Artifact {
		t.Errorf("ObservationsSince(all) = %d (first artifact %v), want 181 with the artifact first", len(all), len(all) > 0 && all[0].Artifact)
	}
	// Latest: the newest value of each code, an artifact flagged (never replaced by an older
	// plausible value), nothing stamped after now.
	more := batch(p, core.Sample{Code: core.LOINCSpO2, Value: 95, Unit: "%", Time: t0.Add(-time.Minute)},
		core.Sample{Code: core.LOINCHeartRate, Value: 15, Unit: "/min", Time: t0.Add(-time.Second)}, // artifact (< 20)
		core.Sample{Code: core.LOINCSpO2, Value: 96, Unit: "%", Time: t0.Add(-2 * time.Minute)})
	if _, err := e.svc.Ingest(e.ctx, more); err != nil {
		t.Fatal(err)
	}
	latest, err := e.svc.Latest(e.ctx, p, time.Hour)
	if err != nil || len(latest) != 2 || latest[0].Code != core.LOINCSpO2 || latest[0].Value != 95 ||
		latest[1].Code != core.LOINCHeartRate || latest[1].Value != 15 || !latest[1].Artifact {
		t.Errorf("Latest() = %+v, %v; want SpO2 95 and the heart rate 15 flagged as an artifact", latest, err)
	}
}
