package rules_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/core/alarms"
	"github.com/vigilhealth/vigil/core/rules"
)

// codeBodyWeight is a LOINC code that no default rule reads.
const codeBodyWeight = "29463-7"

// twoReplicas returns replicas a and b sharing the buckets evenly, their take-overs done.
func (e *env) twoReplicas(t *testing.T) (*replica, *replica) {
	t.Helper()
	a, b := e.replica(t, "a"), e.replica(t, "b")
	a.step(t)
	b.step(t)
	a.step(t)
	b.step(t)
	a.eng.WaitTakeOver() // (their take-overs drain the inbox in the background)
	b.eng.WaitTakeOver()
	return a, b
}

// The owner settles a drained batch of inbox rows, of several patients, in one transaction:
// every patient's state checkpoint and the deletion of all the batch's rows commit together
// (one xmin on every checkpoint row), not one transaction per patient. A patient whose bucket
// was taken meanwhile (the owner does not know yet) writes nothing and keeps its rows for the
// new owner, without stopping the others. (On the code before it, the checkpoints had one xmin
// per patient.)
// Verifies: REQ-HA-040, REQ-HA-041
func TestInboxSettlesBatchInOneTransaction(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	a, b := e.twoReplicas(t)

	var pids []uuid.UUID
	for range 6 {
		pids = append(pids, b.patientOf(t))
	}
	// A patient of b in a bucket b is about to lose without knowing it.
	lost := b.patientOf(t)
	for {
		bu := rules.BucketOf(lost)
		clash := false
		for _, p := range pids {
			clash = clash || rules.BucketOf(p) == bu
		}
		if !clash {
			break
		}
		lost = b.patientOf(t)
	}
	// Body weights (no rule reads them) uploaded through a, interleaved (one inbox row per
	// upload): no alarm, no derived score, so nothing but the settling writes the owner's
	// checkpoints.
	for i := range 3 {
		for _, p := range append(append([]uuid.UUID{}, pids...), lost) {
			at := t0.Add(time.Duration(i) * time.Minute)
			err := e.upload(t, a, p, obs(p, codeBodyWeight, 70, at), obs(p, codeBodyWeight, 70.5, at.Add(10*time.Second)))
			if !errors.Is(err, rules.ErrNotOwner) {
				t.Fatalf("a.Evaluate(b's patient) = %v, want ErrNotOwner", err)
			}
		}
	}
	if n := e.count(t, `SELECT count(*) FROM rules_inbox`); n != 3*(len(pids)+1) {
		t.Fatalf("inbox rows = %d, want %d", n, 3*(len(pids)+1))
	}
	// The lost patient's bucket goes to a in the database; b still believes it holds it.
	if _, err := e.pool.Exec(context.Background(), `UPDATE rules_leases SET owner='a', token=token+1 WHERE bucket=$1`, rules.BucketOf(lost)); err != nil {
		t.Fatal(err)
	}

	n, err := b.eng.DrainInbox(context.Background())
	if err != nil {
		t.Fatalf("b.DrainInbox() = %v", err)
	}
	if n != 3*len(pids) {
		t.Errorf("b.DrainInbox() settled %d rows, want %d (all but the lost patient's)", n, 3*len(pids))
	}
	if got := e.count(t, `SELECT count(*) FROM rules_inbox WHERE patient_id <> $1`, lost); got != 0 {
		t.Errorf("inbox rows of b's patients left = %d, want 0", got)
	}
	if got := e.count(t, `SELECT count(*) FROM rules_inbox WHERE patient_id = $1`, lost); got != 3 {
		t.Errorf("inbox rows of the lost patient = %d, want 3 (kept for the new owner)", got)
	}
	if got := e.count(t, `SELECT count(*) FROM rules_patient_state WHERE patient_id = ANY($1)`, pids); got != len(pids) {
		t.Fatalf("checkpoints of b's patients = %d, want %d", got, len(pids))
	}
	if got := e.count(t, `SELECT count(DISTINCT xmin::text) FROM rules_patient_state WHERE patient_id = ANY($1)`, pids); got != 1 {
		t.Errorf("transactions that wrote the %d checkpoints of the batch = %d, want 1", len(pids), got)
	}
	if got := e.count(t, `SELECT count(*) FROM rules_patient_state WHERE patient_id = $1`, lost); got != 0 {
		t.Errorf("checkpoints of the lost patient written by b = %d, want 0 (fenced)", got)
	}
}

// b evaluates its inbox and raises an alarm, then dies before settling the rows (its
// checkpoints and the deletion of the rows never commit, so the rows are still there). A new
// engine on the same leases drains them again: the observations are evaluated again, and no
// second alarm is raised.
// Verifies: REQ-HA-042
func TestInboxCrashBeforeSettleNoDuplicateAlarm(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	a, b := e.twoReplicas(t)
	pb := b.patientOf(t)
	run := hrRun(pb, 150, t0, 5)
	if err := e.upload(t, a, pb, run...); !errors.Is(err, rules.ErrNotOwner) {
		t.Fatalf("a.Evaluate(b's patient) = %v, want ErrNotOwner", err)
	}
	// What DrainInbox does before settling: evaluate the rows' observations. Then b "dies".
	if _, err := b.eng.Evaluate(context.Background(), pb, run); err != nil {
		t.Fatalf("b.Evaluate = %v", err)
	}
	if n := e.alarmsOf(t, pb, "hr-high"); n != 1 {
		t.Fatalf("hr-high alarms after b evaluated = %d, want 1", n)
	}
	triggers := e.count(t, `SELECT trigger_count FROM alarms WHERE patient_id=$1 AND rule_id='hr-high'`, pb)
	if n := e.count(t, `SELECT count(*) FROM rules_inbox WHERE patient_id=$1`, pb); n != 1 {
		t.Fatalf("inbox rows before the restart = %d, want 1 (not settled)", n)
	}
	// b restarts: a new engine (empty memory) on the same leases, rebuilding from the database.
	svc, err := alarms.New(alarms.Config{Pool: e.pool, Recorder: e.rec, Now: e.clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	b2, err := rules.New(context.Background(), rules.Config{Pool: e.pool, Recorder: e.rec, Alarms: svc, History: e.hist, Now: e.clk.Now, Leases: b.leases})
	if err != nil {
		t.Fatal(err)
	}
	if !b2.Owns(pb) {
		t.Fatalf("restarted b does not own its patient")
	}
	if _, err := b2.DrainInbox(context.Background()); err != nil {
		t.Fatalf("restarted b.DrainInbox() = %v", err)
	}
	if n := e.count(t, `SELECT count(*) FROM rules_inbox`); n != 0 {
		t.Errorf("inbox rows after the restart's drain = %d, want 0", n)
	}
	if n := e.alarmsOf(t, pb, "hr-high"); n != 1 {
		t.Errorf("hr-high alarms after re-evaluating the inbox = %d, want 1 (no duplicate)", n)
	}
	if n := e.count(t, `SELECT trigger_count FROM alarms WHERE patient_id=$1 AND rule_id='hr-high'`, pb); n != triggers {
		t.Errorf("alarm trigger count after re-evaluating the inbox = %d, want %d (the same samples are not counted twice)", n, triggers)
	}
}
