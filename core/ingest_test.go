package core_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/vigilhealth/vigil/core"
	"github.com/vigilhealth/vigil/core/obs"
)

// Bad samples are rejected with stable codes, the whole batch is refused (nothing stored), and
// the rejection is audited with its code.
// Verifies: REQ-CORE-001, REQ-CORE-002
func TestIngestRejectsBadSamples(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	p := e.patient(t)
	good := core.Sample{Code: core.LOINCHeartRate, Value: 72, Unit: "/min", Time: t0.Add(-time.Minute)}
	tests := []struct {
		name     string
		b        core.Batch
		code     string
		sentinel error
	}{
		{"unknown code", batch(p, good, core.Sample{Code: "1234-5", Value: 1, Unit: "/min", Time: t0}), core.CodeUnknownCode, core.ErrUnknownCode},
		{"wrong unit", batch(p, good, core.Sample{Code: core.LOINCHeartRate, Value: 72, Unit: "Hz", Time: t0}), core.CodeWrongUnit, core.ErrWrongUnit},
		{"unit of another code", batch(p, core.Sample{Code: core.LOINCBodyTemperature, Value: 37, Unit: "mm[Hg]", Time: t0}), core.CodeWrongUnit, core.ErrWrongUnit},
		{"impossible value", batch(p, good, core.Sample{Code: core.LOINCSpO2, Value: 140, Unit: "%", Time: t0}), core.CodeImpossibleValue, core.ErrImpossibleValue},
		{"negative heart rate", batch(p, core.Sample{Code: core.LOINCHeartRate, Value: -3, Unit: "/min", Time: t0}), core.CodeImpossibleValue, core.ErrImpossibleValue},
		{"NaN", batch(p, core.Sample{Code: core.LOINCHeartRate, Value: math.NaN(), Unit: "/min", Time: t0}), core.CodeImpossibleValue, core.ErrImpossibleValue},
		{"infinity", batch(p, core.Sample{Code: core.LOINCHeartRate, Value: math.Inf(1), Unit: "/min", Time: t0}), core.CodeImpossibleValue, core.ErrImpossibleValue},
		{"fractional ACVPU", batch(p, core.Sample{Code: core.LOINCConsciousness, Value: 1.5, Unit: "{score}", Time: t0}), core.CodeImpossibleValue, core.ErrImpossibleValue},
		{"no time", batch(p, core.Sample{Code: core.LOINCHeartRate, Value: 70, Unit: "/min"}), core.CodeInvalidTime, core.ErrInvalidTime},
		{"future", batch(p, core.Sample{Code: core.LOINCHeartRate, Value: 70, Unit: "/min", Time: t0.Add(time.Hour)}), core.CodeFutureTime, core.ErrFutureTime},
		{"too old", batch(p, core.Sample{Code: core.LOINCHeartRate, Value: 70, Unit: "/min", Time: t0.AddDate(0, 0, -91)}), core.CodeTooOld, core.ErrTooOld},
		{"conflicting duplicate", batch(p, good, core.Sample{Code: good.Code, Value: 90, Unit: "/min", Time: good.Time}), core.CodeConflictingDuplicate, core.ErrConflictingDuplicate},
		{"conflicting duplicate after conversion", batch(p,
			core.Sample{Code: core.LOINCBodyTemperature, Value: 37, Unit: "Cel", Time: t0},
			core.Sample{Code: core.LOINCBodyTemperature, Value: 100, Unit: "[degF]", Time: t0}), core.CodeConflictingDuplicate, core.ErrConflictingDuplicate},
		{"no provenance", core.Batch{PatientID: p, Samples: []core.Sample{good}}, core.CodeInvalidProvenance, core.ErrInvalidProvenance},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// Prepare, the device path's first step, refuses it the same way and writes nothing.
			if p, err := e.svc.Prepare(e.ctx, tc.b); p != nil || !errors.Is(err, tc.sentinel) {
				t.Fatalf("Prepare() = %v, %v; want nothing prepared and %v", p, err, tc.sentinel)
			}
			_, err := e.svc.Ingest(e.ctx, tc.b)
			if !errors.Is(err, core.ErrInvalidBatch) || !errors.Is(err, tc.sentinel) {
				t.Fatalf("Ingest() error = %v, want ErrInvalidBatch and %v", err, tc.sentinel)
			}
			var be *core.BatchError
			if !errors.As(err, &be) || be.ErrorCode() != tc.code {
				t.Fatalf("Ingest() error code = %v, want %s", err, tc.code)
			}
			if n := e.count(t, "SELECT count(*) FROM audit_events WHERE action = 'upload.rejected' AND reason = $1 AND object_id = $2",
				tc.code, hexHash(tc.b)); n != 1 {
				t.Errorf("upload.rejected events with reason %s = %d, want 1", tc.code, n)
			}
		})
	}
	if n := e.count(t, "SELECT count(*) FROM core_observations"); n != 0 {
		t.Errorf("observations stored after rejections = %d, want 0", n)
	}
	if n := e.count(t, "SELECT count(*) FROM core_uploads"); n != 0 {
		t.Errorf("uploads stored after rejections = %d, want 0", n)
	}
	if n := e.count(t, "SELECT count(*) FROM audit_events WHERE action = 'upload.accepted'"); n != 0 {
		t.Errorf("upload.accepted events = %d, want 0", n)
	}

	// Every bad sample is listed, in index order.
	_, err := e.svc.Ingest(e.ctx, batch(p, good,
		core.Sample{Code: "x", Value: 1, Unit: "/min", Time: t0},
		core.Sample{Code: core.LOINCSpO2, Value: 101, Unit: "%", Time: t0}))
	var be *core.BatchError
	if !errors.As(err, &be) || len(be.Samples) != 2 || be.Samples[0].Index != 1 || be.Samples[1].Index != 2 ||
		be.Samples[1].Code != core.CodeImpossibleValue {
		t.Errorf("Ingest(two bad samples) = %v, want samples 1 (unknown_code) and 2 (impossible_value)", err)
	}

	// An unknown patient.
	_, err = e.svc.Ingest(e.ctx, batch(uuid.New(), good))
	if !errors.Is(err, core.ErrUnknownPatient) {
		t.Errorf("Ingest(unknown patient) = %v, want ErrUnknownPatient", err)
	}
}

func hexHash(b core.Batch) string {
	const digits = "0123456789abcdef"
	out := make([]byte, 64)
	for i, c := range b.Provenance.UploadHash {
		out[2*i], out[2*i+1] = digits[c>>4], digits[c&15]
	}
	return string(out)
}

// Values are converted to the canonical UCUM unit of their code; implausible but possible
// values are stored flagged as artifacts.
// Verifies: REQ-CORE-003, REQ-CORE-004
func TestIngestNormalizes(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	p := e.patient(t)
	at := t0.Add(-time.Hour)
	tests := []struct {
		in       core.Sample
		value    float64
		unit     string
		artifact bool
	}{
		{core.Sample{Code: core.LOINCBodyTemperature, Value: 98.6, Unit: "[degF]"}, 37, "Cel", false},
		{core.Sample{Code: core.LOINCBodyTemperature, Value: 310.15, Unit: "K"}, 37, "Cel", false},
		{core.Sample{Code: core.LOINCSystolicBP, Value: 16, Unit: "kPa"}, 120.009852, "mm[Hg]", false},
		{core.Sample{Code: core.LOINCDiastolicBP, Value: 80, Unit: "mm[Hg]"}, 80, "mm[Hg]", false},
		{core.Sample{Code: core.LOINCGlucose, Value: 5.5, Unit: "mmol/L"}, 99.0858, "mg/dL", false},
		{core.Sample{Code: core.LOINCSpO2, Value: 0.97, Unit: "1"}, 97, "%", false},
		{core.Sample{Code: core.LOINCBodyWeight, Value: 154, Unit: "[lb_av]"}, 69.853225, "kg", false},
		{core.Sample{Code: core.LOINCOxygenFlow, Value: 2000, Unit: "mL/min"}, 2, "L/min", false},
		{core.Sample{Code: core.LOINCHeartRate, Value: 72, Unit: "{beats}/min"}, 72, "/min", false},
		{core.Sample{Code: core.LOINCRespiratoryRate, Value: 1, Unit: "/min"}, 1, "/min", true}, // possible, implausible
		{core.Sample{Code: core.LOINCSpO2Arterial, Value: 30, Unit: "%"}, 30, "%", true},
	}
	var samples []core.Sample
	for i, tc := range tests {
		s := tc.in
		s.Time = at.Add(time.Duration(i) * time.Second)
		samples = append(samples, s)
	}
	res, err := e.svc.Ingest(e.ctx, batch(p, samples...))
	if err != nil {
		t.Fatal(err)
	}
	if res.Stored != len(tests) || res.Flagged != 2 || res.Duplicates != 0 {
		t.Errorf("Ingest() = %+v, want %d stored, 2 flagged", res, len(tests))
	}
	for i, tc := range tests {
		obs, err := e.svc.Observations(e.ctx, core.RangeQuery{PatientID: p, Code: tc.in.Code, Artifacts: true,
			From: at.Add(time.Duration(i) * time.Second), To: at.Add(time.Duration(i)*time.Second + time.Microsecond)})
		if err != nil || len(obs) != 1 {
			t.Fatalf("%s %v: %v, %v", tc.in.Code, tc.in.Unit, obs, err)
		}
		v, unit := obs[0].Value, obs[0].Unit
		var flags int16
		if obs[0].Artifact {
			flags = 1
		}
		if math.Abs(v-tc.value) > 1e-6 || unit != tc.unit || (flags&1 == 1) != tc.artifact {
			t.Errorf("stored %g %s = %g %s (artifact %v), want %g %s (artifact %v)", tc.in.Value, tc.in.Unit, v, unit, flags&1 == 1, tc.value, tc.unit, tc.artifact)
		}
	}
}

// An accepted upload's observations, provenance row and audit event commit together with
// what the caller writes in its transaction (devices: sequence numbers, receipts); a rollback
// of that transaction leaves nothing.
// Verifies: REQ-CORE-005
func TestIngestAtomicWithAuditAndHook(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	p := e.patient(t)
	if _, err := e.pool.Exec(e.ctx, "CREATE TABLE hook_marks (upload uuid PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	s := core.Sample{Code: core.LOINCHeartRate, Value: 80, Unit: "/min", Time: t0.Add(-time.Minute)}
	// store runs the device path's transaction: Store, the caller's own row, then commit or
	// (when the caller fails) rollback.
	store := func(b core.Batch, callerErr error) (core.Stored, error) {
		t.Helper()
		prep, err := e.svc.Prepare(e.ctx, b)
		if err != nil {
			t.Fatal(err)
		}
		var st []core.Stored
		err = pgx.BeginFunc(e.ctx, e.pool, func(tx pgx.Tx) error {
			var err error
			if st, err = e.svc.Store(e.ctx, tx, []*core.Prepared{prep}); err != nil {
				return err
			}
			if _, err := tx.Exec(e.ctx, "INSERT INTO hook_marks VALUES ($1)", st[0].AuditEventID); err != nil {
				return err
			}
			return callerErr
		})
		if err != nil {
			return core.Stored{}, err
		}
		if err := e.svc.Publish(e.ctx, st); err != nil {
			t.Fatal(err)
		}
		return st[0], nil
	}
	boom := errors.New("boom")
	if _, err := store(batch(p, s), boom); !errors.Is(err, boom) {
		t.Fatalf("transaction with a failing caller = %v, want boom", err)
	}
	for _, q := range []string{"SELECT count(*) FROM core_observations", "SELECT count(*) FROM core_uploads",
		"SELECT count(*) FROM hook_marks", "SELECT count(*) FROM audit_events WHERE action = 'upload.accepted'"} {
		if n := e.count(t, q); n != 0 {
			t.Errorf("%s = %d after a rolled-back transaction, want 0", q, n)
		}
	}

	b := batch(p, s)
	res, err := store(b, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Stored != 1 || res.AuditEventID == uuid.Nil || len(res.Observations) != 1 || res.Observations[0].UploadID != res.AuditEventID {
		t.Errorf("Store() = %+v, want 1 stored, pointing at its upload", res)
	}
	if n := e.count(t, "SELECT count(*) FROM audit_events WHERE id = $1 AND action = 'upload.accepted' AND actor_kind = 'device' AND actor_id = 'dev-1' AND object_id = $2",
		res.AuditEventID, hexHash(b)); n != 1 {
		t.Errorf("upload.accepted event %s = %d rows, want 1", res.AuditEventID, n)
	}
	if n := e.count(t, "SELECT count(*) FROM hook_marks WHERE upload = $1", res.AuditEventID); n != 1 {
		t.Errorf("caller's row = %d, want 1", n)
	}
	u, err := e.svc.UploadByID(e.ctx, res.AuditEventID)
	if err != nil || u.DeviceID != "dev-1" || u.KeyID != "dev-1/v1" || u.Stored != 1 || string(u.UploadHash) != string(b.Provenance.UploadHash[:]) {
		t.Errorf("UploadByID() = %+v, %v; want the provenance of the upload", u, err)
	}
	if n := e.count(t, "SELECT count(*) FROM core_observations WHERE upload_id = $1", res.AuditEventID); n != 1 {
		t.Errorf("observations pointing at the upload = %d, want 1", n)
	}
}

// Duplicates and out-of-order samples give the same stored state and counts whatever the
// order; the rules see each patient's new observations in time order, once.
// Verifies: REQ-CORE-006
func TestIngestDuplicatesAndOutOfOrder(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var evaluated []core.Observation
	handoff := obs.NewHandoff(obs.HandoffConfig{})
	if err := handoff.Start(func(_ context.Context, c obs.Committed) error {
		mu.Lock()
		defer mu.Unlock()
		evaluated = append(evaluated, c.Observations...)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = handoff.Stop(context.Background()) })
	e := newEnv(t, func(c *core.Config) { c.Handoff = handoff })
	p := e.patient(t)
	at := func(m int) time.Time { return t0.Add(time.Duration(m-60) * time.Minute) }
	hr := func(m int, v float64) core.Sample {
		return core.Sample{Code: core.LOINCHeartRate, Value: v, Unit: "/min", Time: at(m)}
	}
	// Out of order inside the batch, with an identical duplicate.
	r1, err := e.svc.Ingest(e.ctx, batch(p, hr(3, 73), hr(1, 71), hr(2, 72), hr(1, 71)))
	if err != nil {
		t.Fatal(err)
	}
	if r1.Stored != 3 || r1.Duplicates != 1 {
		t.Errorf("Ingest(first) = %+v, want 3 stored, 1 duplicate", r1)
	}
	// A later upload repeats minute 2 (with another value: first stored wins), adds minute 0
	// (older than everything stored) and minute 4.
	r2, err := e.svc.Ingest(e.ctx, batch(p, hr(4, 74), hr(2, 99), hr(0, 70)))
	if err != nil {
		t.Fatal(err)
	}
	if r2.Stored != 2 || r2.Duplicates != 1 {
		t.Errorf("Ingest(second) = %+v, want 2 stored, 1 duplicate", r2)
	}
	obs, err := e.svc.Observations(e.ctx, core.RangeQuery{PatientID: p, Code: core.LOINCHeartRate, From: at(-10), To: at(10)})
	if err != nil {
		t.Fatal(err)
	}
	want := []float64{70, 71, 72, 73, 74}
	if len(obs) != len(want) {
		t.Fatalf("Observations() = %d rows, want %d", len(obs), len(want))
	}
	for i, o := range obs {
		if o.Value != want[i] || !o.EffectiveAt.Equal(at(i)) {
			t.Errorf("Observations()[%d] = %g at %s, want %g at %s", i, o.Value, o.EffectiveAt, want[i], at(i))
		}
	}
	if got := obs[2].UploadID; got != r1.AuditEventID {
		t.Errorf("minute 2 comes from upload %s, want the first %s", got, r1.AuditEventID)
	}
	// Rules: first batch minutes 1,2,3 in order; second batch minutes 0,4 in order; 99 never.
	if err := handoff.Flush(e.ctx); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	wantEval := []float64{71, 72, 73, 70, 74}
	if len(evaluated) != len(wantEval) {
		t.Fatalf("evaluated %d observations, want %d", len(evaluated), len(wantEval))
	}
	for i, o := range evaluated {
		if o.Value != wantEval[i] {
			t.Errorf("evaluated[%d] = %g, want %g", i, o.Value, wantEval[i])
		}
	}

	// Group commit: the same patient in two batches of one group, overlapping.
	res, err := e.svc.IngestMany(e.ctx, []core.Batch{batch(p, hr(5, 75), hr(6, 76)), batch(p, hr(6, 60), hr(7, 77))})
	if err != nil {
		t.Fatal(err)
	}
	if res[0].Stored != 2 || res[1].Stored != 1 || res[1].Duplicates != 1 {
		t.Errorf("IngestMany() = %+v, want 2 stored then 1 stored + 1 duplicate", res)
	}
	var v float64
	if err := e.pool.QueryRow(e.ctx, "SELECT value FROM core_observations WHERE patient_id = $1 AND effective_at = $2", p, at(6)).Scan(&v); err != nil || v != 76 {
		t.Errorf("minute 6 = %g, %v; want 76 (the first batch of the group)", v, err)
	}
}

// Store writes many uploads in the caller's one transaction, each with its own audit event;
// a failure of the caller rolls back all of them. IngestMany does the same in a transaction of
// its own, and a bad batch in its group names its index and stores nothing.
// Verifies: REQ-CORE-005, REQ-CORE-007
func TestIngestManyGroupCommit(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	var batches []core.Batch
	var ps []*core.Prepared
	for i := 0; i < 20; i++ {
		p := e.patient(t)
		b := batch(p,
			core.Sample{Code: core.LOINCHeartRate, Value: 70, Unit: "/min", Time: t0.Add(-time.Minute)},
			core.Sample{Code: core.LOINCSpO2, Value: 97, Unit: "%", Time: t0.Add(-time.Minute)})
		batches = append(batches, b)
		prep, err := e.svc.Prepare(e.ctx, b)
		if err != nil {
			t.Fatal(err)
		}
		ps = append(ps, prep)
	}
	group := func(callerErr error) ([]core.Stored, error) {
		var st []core.Stored
		err := pgx.BeginFunc(e.ctx, e.pool, func(tx pgx.Tx) error {
			var err error
			if st, err = e.svc.Store(e.ctx, tx, ps); err != nil {
				return err
			}
			return callerErr
		})
		return st, err
	}
	if _, err := group(errors.New("sequence conflict")); err == nil {
		t.Fatal("group with a failing caller committed")
	}
	if n := e.count(t, "SELECT count(*) FROM core_observations"); n != 0 {
		t.Errorf("observations after a failed group = %d, want 0", n)
	}
	res, err := group(nil) // the same prepared batches again: Store did not change them
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 20 {
		t.Fatalf("Store() = %d results, want 20", len(res))
	}
	ids := map[uuid.UUID]bool{}
	for _, r := range res {
		ids[r.AuditEventID] = true
		if r.Stored != 2 {
			t.Errorf("result %+v, want 2 stored", r.IngestResult)
		}
	}
	if len(ids) != 20 {
		t.Errorf("distinct audit event ids = %d, want 20", len(ids))
	}
	if n := e.count(t, "SELECT count(*) FROM audit_events WHERE action = 'upload.accepted'"); n != 20 {
		t.Errorf("upload.accepted events = %d, want 20", n)
	}
	// A bad batch in a group names its index and stores nothing.
	bad := append([]core.Batch(nil), batches...)
	bad[4] = batch(batches[4].PatientID, core.Sample{Code: "nope", Unit: "/min", Time: t0})
	_, err = e.svc.IngestMany(e.ctx, bad)
	var me *core.IngestManyError
	if !errors.As(err, &me) || me.Index != 4 || !errors.Is(err, core.ErrUnknownCode) {
		t.Errorf("IngestMany(bad batch 4) = %v, want IngestManyError at 4 wrapping unknown_code", err)
	}
	if n := e.count(t, "SELECT count(*) FROM core_observations"); n != 40 {
		t.Errorf("observations = %d, want 40", n)
	}
}

// After commit the rules run on the stored observations, handed off by Publish; a failed
// evaluation is retried once, and a second failure is counted (the data stays committed).
// Verifies: REQ-CORE-014
func TestIngestRunsRulesAfterCommit(t *testing.T) {
	t.Parallel()
	var calls int
	var committed int
	var e *env
	handoff := obs.NewHandoff(obs.HandoffConfig{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	e = newEnv(t, func(c *core.Config) { c.Handoff = handoff })
	if err := handoff.Start(func(ctx context.Context, c obs.Committed) error {
		calls++
		committed = e.count(t, "SELECT count(*) FROM core_observations WHERE patient_id = $1", c.PatientID)
		if calls%3 != 0 { // fail, fail, succeed, fail, fail, …
			return errors.New("engine down")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = handoff.Stop(context.Background()) })
	p := e.patient(t)
	s := core.Sample{Code: core.LOINCHeartRate, Value: 75, Unit: "/min", Time: t0.Add(-time.Minute)}
	ctx, cancel := context.WithCancel(e.ctx)
	if _, err := e.svc.Ingest(ctx, batch(p, s)); err != nil {
		t.Fatal(err)
	}
	cancel() // the caller goes away: the committed data still reaches the rules
	if err := handoff.Flush(e.ctx); err != nil {
		t.Fatal(err)
	}
	if calls != 2 || committed != 1 || handoff.Stats().Failed != 1 {
		t.Errorf("after a failing engine: %d calls, %d rows visible to it, %d rule errors; want 2, 1, 1", calls, committed, handoff.Stats().Failed)
	}
	s.Time = s.Time.Add(time.Second)
	if _, err := e.svc.Ingest(e.ctx, batch(p, s)); err != nil {
		t.Fatal(err)
	}
	if err := handoff.Flush(e.ctx); err != nil {
		t.Fatal(err)
	}
	if calls != 3 || handoff.Stats().Failed != 1 {
		t.Errorf("after a retry that succeeds: %d calls, %d rule errors; want 3, 1", calls, handoff.Stats().Failed)
	}
}
