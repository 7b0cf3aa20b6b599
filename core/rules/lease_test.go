package rules_test

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/core/alarms"
	coreobs "github.com/vigilhealth/vigil/core/obs"
	"github.com/vigilhealth/vigil/core/rules"
)

// replica is one `vigil serve` process's rules engine on the shared database.
type replica struct {
	name   string
	leases *rules.Leases
	eng    *rules.Engine
}

func (e *env) replica(t *testing.T, name string) *replica {
	t.Helper()
	return e.replicaWith(t, name, nil)
}

// replicaWith is replica with its engine's configuration changed by set.
func (e *env) replicaWith(t *testing.T, name string, set func(*rules.Config)) *replica {
	t.Helper()
	svc, err := alarms.New(alarms.Config{Pool: e.pool, Recorder: e.rec, Now: e.clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	l, err := rules.NewLeases(rules.LeaseConfig{Pool: e.pool, Replica: name, TTL: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	cfg := rules.Config{Pool: e.pool, Recorder: e.rec, Alarms: svc, History: e.hist, Now: e.clk.Now, Leases: l}
	if set != nil {
		set(&cfg)
	}
	eng, err := rules.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &replica{name: name, leases: l, eng: eng}
}

func (r *replica) step(t *testing.T) {
	t.Helper()
	if err := r.leases.Step(context.Background()); err != nil {
		t.Fatalf("%s: Leases.Step() = %v", r.name, err)
	}
}

// patientOf returns a new patient id whose bucket r holds.
func (r *replica) patientOf(t *testing.T) uuid.UUID {
	t.Helper()
	for range 10000 {
		p := uuid.New()
		if r.eng.Owns(p) {
			return p
		}
	}
	t.Fatalf("%s owns no bucket", r.name)
	return uuid.Nil
}

// upload does what core does for an upload committed on r: the observations are stored (the
// test history), Forward runs inside the storing transaction, then the hand-off delivers them
// to r's engine (which evaluates them only if r owns the patient).
func (e *env) upload(t *testing.T, r *replica, p uuid.UUID, o ...rules.Observation) error {
	t.Helper()
	up := uuid.New()
	for i := range o {
		o[i].UploadID = up
	}
	e.hist.add(o...)
	e.clk.Set(o[len(o)-1].EffectiveAt)
	c := coreobs.Committed{PatientID: p, Observations: o}
	if err := pgx.BeginFunc(context.Background(), e.pool, func(tx pgx.Tx) error {
		return r.eng.Forward(context.Background(), tx, []coreobs.Committed{c})
	}); err != nil {
		t.Fatalf("Forward() = %v", err)
	}
	r.eng.Pace(context.Background(), []coreobs.Committed{c}) // after the commit, as core's Publish
	_, err := r.eng.Evaluate(context.Background(), p, o)
	return err
}

func hrRun(p uuid.UUID, v float64, from time.Time, n int) []rules.Observation {
	var out []rules.Observation
	for i := range n {
		out = append(out, obs(p, rules.CodeHeartRate, v, from.Add(time.Duration(i)*10*time.Second)))
	}
	return out
}

func (e *env) alarmsOf(t *testing.T, p uuid.UUID, rule string) int {
	t.Helper()
	return e.count(t, `SELECT count(*) FROM alarms WHERE patient_id=$1 AND rule_id=$2`, p, rule)
}

// Two replicas share the 64 buckets evenly; each patient is evaluated by exactly one of them.
// A patient's upload committed on the other replica reaches its owner through the inbox and
// raises one alarm there; the non-owner writes nothing. A setting changed and a discharge
// handled on the non-owner are carried out by the owner.
// Verifies: REQ-HA-001, REQ-HA-002
func TestLeasesShareAndForward(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	a, b := e.replica(t, "a"), e.replica(t, "b")
	a.step(t) // alone: takes every bucket
	if n := len(a.leases.Held()); n != rules.Buckets {
		t.Fatalf("a alone holds %d buckets, want %d", n, rules.Buckets)
	}
	b.step(t)            // sees two replicas, but every bucket is held
	a.step(t)            // gives back the excess
	b.step(t)            // takes it
	a.eng.WaitTakeOver() // (a take-over drains the inbox in the background: let it finish
	b.eng.WaitTakeOver() // before the drains this test counts)
	ha, hb := a.leases.Held(), b.leases.Held()
	if len(ha) != rules.Buckets/2 || len(hb) != rules.Buckets/2 {
		t.Fatalf("held = %d and %d buckets, want %d each", len(ha), len(hb), rules.Buckets/2)
	}
	seen := map[int]bool{}
	for _, x := range append(ha, hb...) {
		if seen[x] {
			t.Fatalf("bucket %d held by both replicas", x)
		}
		seen[x] = true
	}

	pb := b.patientOf(t)
	if a.eng.Owns(pb) {
		t.Fatalf("patient of b owned by a too")
	}
	// Heart rate 150 for 40 s, uploaded through replica a.
	err := e.upload(t, a, pb, hrRun(pb, 150, t0, 5)...)
	if !errors.Is(err, rules.ErrNotOwner) {
		t.Fatalf("a.Evaluate(b's patient) = %v, want ErrNotOwner", err)
	}
	if n := e.alarmsOf(t, pb, "hr-high"); n != 0 {
		t.Fatalf("alarms before b drains its inbox = %d, want 0 (a must not evaluate b's patient)", n)
	}
	if n := e.count(t, `SELECT count(*) FROM rules_inbox WHERE patient_id=$1`, pb); n != 1 {
		t.Fatalf("inbox rows for b's patient = %d, want 1", n)
	}
	if n, err := a.eng.DrainInbox(context.Background()); err != nil || n != 0 {
		t.Fatalf("a.DrainInbox() = %d, %v; want 0 rows (not its bucket)", n, err)
	}
	if n, err := b.eng.DrainInbox(context.Background()); err != nil || n != 1 {
		t.Fatalf("b.DrainInbox() = %d, %v; want 1 row", n, err)
	}
	if n := e.alarmsOf(t, pb, "hr-high"); n != 1 {
		t.Errorf("hr-high alarms of b's patient = %d, want 1", n)
	}
	// The evaluated row is deleted with b's next checkpoint.
	if err := b.eng.Checkpoint(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := e.count(t, `SELECT count(*) FROM rules_inbox`); n != 0 {
		t.Errorf("inbox rows left = %d, want 0", n)
	}
	// More of the same through either replica: still one alarm.
	_ = e.upload(t, a, pb, hrRun(pb, 155, t0.Add(50*time.Second), 2)...)
	if err := e.upload(t, b, pb, hrRun(pb, 156, t0.Add(70*time.Second), 2)...); err != nil {
		t.Fatalf("b.Evaluate(own patient) = %v", err)
	}
	if _, err := b.eng.DrainInbox(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := e.alarmsOf(t, pb, "hr-high"); n != 1 {
		t.Errorf("hr-high alarms after more uploads on both replicas = %d, want 1", n)
	}

	// A setting changed on replica a reaches the owner b's state at once (not at its next tick).
	by := audit.Event{Actor: audit.Actor{Kind: audit.ActorUser, ID: "nurse-1", AuthMethod: "password"}}
	if err := a.eng.SetSpO2Scale(context.Background(), by, pb, 2, "hypercapnic respiratory failure"); err != nil {
		t.Fatalf("a.SetSpO2Scale(b's patient) = %v", err)
	}
	if _, err := b.eng.DrainInbox(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := b.eng.Checkpoint(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := e.count(t, `SELECT count(*) FROM rules_patient_state WHERE patient_id=$1 AND (state->>'spo2_scale')::int = 2`, pb); n != 1 {
		t.Errorf("b's checkpointed state of its patient after a set SpO2 scale 2: %d rows with scale 2, want 1", n)
	}

	// A discharge handled on replica a is carried out by the owner b.
	if err := a.eng.ReleasePatient(context.Background(), by, pb, "discharged"); err != nil {
		t.Fatalf("a.ReleasePatient(b's patient) = %v", err)
	}
	if _, err := b.eng.DrainInbox(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := e.count(t, `SELECT count(*) FROM alarms WHERE patient_id=$1 AND state <> 'resolved'`, pb); n != 0 {
		t.Errorf("open alarms after the release = %d, want 0", n)
	}
}

// Replica a dies with observations of its patient committed but not evaluated; b takes a's
// buckets over once a's leases expire, rebuilds the patient's state from the database and
// evaluates those observations: one alarm. a, back from a pause without knowing it lost its
// leases, can write nothing: neither an alarm nor a checkpoint.
// Verifies: REQ-HA-003, REQ-HA-004
func TestLeasesTakeOverAndFencing(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	a, b := e.replica(t, "a"), e.replica(t, "b")
	a.step(t)
	b.step(t)
	a.step(t)
	b.step(t)
	pa := a.patientOf(t)
	// Normal heart rate, evaluated and checkpointed by a.
	if err := e.upload(t, a, pa, hrRun(pa, 80, t0, 3)...); err != nil {
		t.Fatal(err)
	}
	if err := a.eng.Checkpoint(context.Background()); err != nil {
		t.Fatal(err)
	}
	// 150/min for 40 s committed, then a dies before evaluating it.
	e.hist.add(hrRun(pa, 150, t0.Add(30*time.Second), 5)...)
	e.clk.Set(t0.Add(70 * time.Second))
	// a's leases run out (it stopped renewing): expire them, as time would.
	if _, err := e.pool.Exec(context.Background(), `UPDATE rules_leases SET expires_at = now() - interval '1 second' WHERE owner='a';
		UPDATE rules_replicas SET seen_at = now() - interval '1 hour' WHERE replica='a'`); err != nil {
		t.Fatal(err)
	}
	b.step(t) // alone now: takes a's buckets and rebuilds their patients at once
	b.eng.WaitTakeOver()
	if !b.eng.Owns(pa) {
		t.Fatalf("b does not own a's patient after the take-over")
	}
	if n := e.alarmsOf(t, pa, "hr-high"); n != 1 {
		t.Fatalf("hr-high alarms after the take-over = %d, want 1 (the unevaluated samples evaluated by b)", n)
	}
	var before []byte
	if err := e.pool.QueryRow(context.Background(), `SELECT state FROM rules_patient_state WHERE patient_id=$1`, pa).Scan(&before); err != nil {
		t.Fatal(err)
	}

	// a resumes, still believing it holds the bucket: its writes are refused by the fence.
	_, err := a.eng.Evaluate(context.Background(), pa, hrRun(pa, 150, t0.Add(30*time.Second), 5))
	if !errors.Is(err, rules.ErrNotOwner) {
		t.Errorf("zombie a.Evaluate = %v, want ErrNotOwner", err)
	}
	if err := a.eng.Checkpoint(context.Background()); err != nil {
		t.Errorf("zombie a.Checkpoint() = %v, want nil (its lost patients skipped)", err)
	}
	if _, err := a.eng.Tick(context.Background()); err != nil && !errors.Is(err, rules.ErrNotOwner) {
		t.Errorf("zombie a.Tick() = %v", err)
	}
	var after []byte
	if err := e.pool.QueryRow(context.Background(), `SELECT state FROM rules_patient_state WHERE patient_id=$1`, pa).Scan(&after); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, after) {
		t.Errorf("the zombie replica overwrote the new owner's checkpoint")
	}
	if n := e.alarmsOf(t, pa, "hr-high"); n != 1 {
		t.Errorf("hr-high alarms after the zombie's attempts = %d, want 1", n)
	}
	// a renews: notices the loss, forgets the patient, and rejoins with a fair share.
	a.step(t)
	if a.eng.Owns(pa) {
		t.Errorf("a still owns the patient after renewing")
	}
	b.step(t)
	a.step(t)
	if na, nb := len(a.leases.Held()), len(b.leases.Held()); na+nb != rules.Buckets || na == 0 {
		t.Errorf("after a rejoined: a holds %d, b holds %d buckets; want a fair share each", na, nb)
	}
}

// A replica that stops gives its buckets back at once; the other takes them at its next step.
// Verifies: REQ-HA-003
func TestLeasesRelease(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	a, b := e.replica(t, "a"), e.replica(t, "b")
	a.step(t)
	b.step(t)
	if err := a.leases.Release(context.Background()); err != nil {
		t.Fatal(err)
	}
	b.step(t)
	if n := len(b.leases.Held()); n != rules.Buckets {
		t.Errorf("b holds %d buckets after a released, want %d", n, rules.Buckets)
	}
	if n := e.count(t, `SELECT count(*) FROM rules_leases WHERE owner='a'`); n != 0 {
		t.Errorf("buckets still owned by a = %d", n)
	}
}

// A write fenced on a bucket (a patient's alarm or score being committed) does not hold back
// the lease's renewal, nor wait for it, while a take-over of the bucket (its token changes)
// still waits for the write to commit. (With FOR SHARE, the renewal every 2 s waited for every
// fenced write in flight and the writes that followed queued behind it.)
// Verifies: REQ-HA-049
func TestFenceDoesNotHoldBackRenewal(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	a := e.replica(t, "a")
	a.step(t)
	ctx := context.Background()
	const bucket = 7
	tok := a.leases.Token(bucket)
	if tok == 0 {
		t.Fatal("a holds no token for bucket 7")
	}
	tx, err := e.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if err := a.leases.Fence(ctx, tx, bucket, tok); err != nil {
		t.Fatalf("Fence() = %v", err)
	}
	if _, err := a.leases.FenceMany(ctx, tx, []int{3, bucket, 9}); err != nil {
		t.Fatalf("FenceMany() = %v", err)
	}
	rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if err := a.leases.Step(rctx); err != nil {
		t.Fatalf("renewal while a fenced write is open = %v, want it done at once", err)
	}
	if got := a.leases.Token(bucket); got != tok {
		t.Fatalf("token after the renewal = %d, want %d", got, tok)
	}
	takeOver := func() error {
		return pgx.BeginFunc(ctx, e.pool, func(o pgx.Tx) error {
			if _, err := o.Exec(ctx, `SET LOCAL lock_timeout = '300ms'`); err != nil {
				return err
			}
			_, err := o.Exec(ctx, `UPDATE rules_leases SET owner = 'b', token = token + 1 WHERE bucket = $1`, bucket)
			return err
		})
	}
	if err := takeOver(); err == nil {
		t.Fatal("a take-over of the bucket did not wait for the fenced write")
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := takeOver(); err != nil {
		t.Fatalf("take-over after the fenced write committed = %v", err)
	}
}
