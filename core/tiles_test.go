package core_test

import (
	"context"
	"errors"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/vigilhealth/vigil/audit/audittest"
	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/internal/testclock"
	"github.com/vigilhealth/vigil/internal/testdb"
)

// queryCounter counts the queries sent on a pool.
type queryCounter struct{ n atomic.Int64 }

func (q *queryCounter) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	q.n.Add(1)
	return ctx
}
func (q *queryCounter) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// The batched reads of a page of patients (core/tiles.go) answer what the per-patient reads
// answer — the latest value of each code in the window, a sample stamped after now left out,
// an artifact returned flagged; the care teams — in one query whatever the number of
// patients; an unknown code or too many patients is refused.
// Verifies: REQ-POR-029
func TestLatestOfAndCareTeams(t *testing.T) {
	t.Parallel()
	_, url := testdb.NewWithURL(t)
	pc, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	qc := &queryCounter{}
	pc.ConnConfig.Tracer = qc
	pool, err := pgxpool.NewWithConfig(context.Background(), pc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	clk := testclock.New(t0)
	svc, err := core.New(core.Config{Pool: pool, Recorder: audittest.Recorder(t, pool, nil), Now: clk.Now, PHI: newTestSealer(t)})
	if err != nil {
		t.Fatal(err)
	}
	e := &env{pool: pool, svc: svc, clock: clk, ctx: context.Background()}
	var ids []uuid.UUID
	for i := range 12 {
		p := e.patient(t)
		ids = append(ids, p)
		if i%4 == 3 {
			continue // no observations
		}
		s := []core.Sample{
			{Code: core.LOINCHeartRate, Value: 60 + float64(i), Unit: "/min", Time: t0.Add(-10 * time.Minute)},
			{Code: core.LOINCHeartRate, Value: 70 + float64(i), Unit: "/min", Time: t0.Add(-time.Minute)},
			{Code: core.LOINCHeartRate, Value: 99, Unit: "/min", Time: t0.Add(time.Minute)}, // not current yet
			{Code: core.LOINCSpO2, Value: 95, Unit: "%", Time: t0.Add(-2 * time.Minute)},
			{Code: core.LOINCBodyTemperature, Value: 37.1, Unit: "Cel", Time: t0.Add(-25 * time.Hour)}, // outside the window
		}
		if i%2 == 0 {
			s = append(s, core.Sample{Code: core.LOINCRespiratoryRate, Value: 16, Unit: "/min", Time: t0.Add(-30 * time.Second)})
		}
		if _, err := e.svc.Ingest(e.ctx, batch(p, s...)); err != nil {
			t.Fatal(err)
		}
		if _, err := e.svc.AddCareTeamMember(e.ctx, clinician, p, "user-"+uuid.NewString()[:6], "nurse"); err != nil {
			t.Fatal(err)
		}
	}
	codes := []string{core.LOINCHeartRate, core.LOINCSpO2, core.LOINCRespiratoryRate, core.LOINCBodyTemperature}
	before := qc.n.Load()
	got, err := e.svc.LatestOf(e.ctx, ids, codes, 0)
	if err != nil {
		t.Fatal(err)
	}
	if n := qc.n.Load() - before; n != 1 {
		t.Errorf("LatestOf of %d patients sent %d queries, want 1", len(ids), n)
	}
	for _, id := range ids {
		want, err := e.svc.Latest(e.ctx, id, 0)
		if err != nil {
			t.Fatal(err)
		}
		want = slices.DeleteFunc(want, func(o core.Observation) bool { return !slices.Contains(codes, o.Code) })
		if !slices.EqualFunc(got[id], want, func(a, b core.Observation) bool {
			return a.Code == b.Code && a.Value == b.Value && a.EffectiveAt.Equal(b.EffectiveAt) && a.Artifact == b.Artifact && a.Unit == b.Unit
		}) {
			t.Errorf("patient %s: LatestOf = %+v, Latest = %+v", id, got[id], want)
		}
		for _, o := range got[id] {
			if o.Value == 99 || o.Code == core.LOINCBodyTemperature {
				t.Errorf("patient %s: LatestOf returned %s %v (not current)", id, o.Code, o.Value)
			}
		}
	}
	before = qc.n.Load()
	teams, err := e.svc.CareTeams(e.ctx, ids)
	if err != nil {
		t.Fatal(err)
	}
	if n := qc.n.Load() - before; n != 1 {
		t.Errorf("CareTeams sent %d queries, want 1", n)
	}
	for _, id := range ids {
		want, err := e.svc.CareTeam(e.ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if len(teams[id]) != len(want) || (len(want) > 0 && teams[id][0].ClinicianID != want[0].ClinicianID) {
			t.Errorf("patient %s: CareTeams = %v, CareTeam = %v", id, teams[id], want)
		}
	}
	if _, err := e.svc.LatestOf(e.ctx, ids, []string{"0000-0"}, 0); !errors.Is(err, core.ErrInvalidRequest) {
		t.Errorf("LatestOf(unknown code) = %v, want ErrInvalidRequest", err)
	}
	if _, err := e.svc.LatestOf(e.ctx, make([]uuid.UUID, core.MaxBatchPatients+1), codes, 0); !errors.Is(err, core.ErrInvalidRequest) {
		t.Errorf("LatestOf(too many patients) = %v, want ErrInvalidRequest", err)
	}
	if m, err := e.svc.LatestOf(e.ctx, nil, codes, 0); err != nil || len(m) != 0 {
		t.Errorf("LatestOf(no patients) = %v, %v", m, err)
	}
}
