package rules_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/vigilhealth/vigil/core/alarms"
	coreobs "github.com/vigilhealth/vigil/core/obs"
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

// The owner settles the inbox rows it evaluated, of several patients, in one transaction:
// every patient's state checkpoint and the deletion of all the rows commit together (one xmin
// on every checkpoint row), not one transaction per patient, and not at the drain: the rows
// wait, not read again, for the checkpoint that covers them. A patient whose bucket was taken
// meanwhile (the owner does not know yet) writes nothing and keeps its rows for the new owner,
// without stopping the others. (On the code before the batched settle, the checkpoints had
// one xmin per patient.)
// Verifies: REQ-HA-040, REQ-HA-041, REQ-HA-043
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
	if n != 3*(len(pids)+1) {
		t.Errorf("b.DrainInbox() evaluated %d rows, want %d", n, 3*(len(pids)+1))
	}
	// Evaluated, the rows wait for the checkpoint of the states that hold their effect.
	if got := e.count(t, `SELECT count(*) FROM rules_inbox`); got != 3*(len(pids)+1) {
		t.Errorf("inbox rows after the drain = %d, want %d (deleted with the checkpoint)", got, 3*(len(pids)+1))
	}
	if got := e.count(t, `SELECT count(*) FROM rules_patient_state WHERE patient_id = ANY($1)`, pids); got != 0 {
		t.Errorf("checkpoints after the drain = %d, want 0", got)
	}
	// Drained again: nothing new (the rows evaluated are not read twice).
	if n, err := b.eng.DrainInbox(context.Background()); err != nil || n != 0 {
		t.Errorf("b.DrainInbox() again = %d, %v; want 0", n, err)
	}
	if err := b.eng.Checkpoint(context.Background()); err != nil {
		t.Fatalf("b.Checkpoint() = %v", err)
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
	if err := b2.Checkpoint(context.Background()); err != nil {
		t.Fatalf("restarted b.Checkpoint() = %v", err)
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

// The owner evaluates forwarded rows and "dies" before the checkpoint that would delete them:
// one row raised an alarm (its state was written with it), the other carried a sample older
// than what the patient's state had evaluated of another code (so a replay of the stored
// observations after the checkpoint would not bring it back). A new engine on the same
// leases reads both rows again: the alarm is not raised twice, and the older sample is
// evaluated (its code's mark in the checkpoint written afterwards).
// Verifies: REQ-HA-043
func TestInboxRowsDeletedOnlyWithTheirCheckpoint(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	a, b := e.twoReplicas(t)
	pb := b.patientOf(t)
	if err := e.upload(t, a, pb, hrRun(pb, 150, t0, 5)...); !errors.Is(err, rules.ErrNotOwner) {
		t.Fatalf("a.Evaluate(b's patient) = %v, want ErrNotOwner", err)
	}
	weighed := t0.Add(15 * time.Second) // before the heart rates' last (t0+40 s)
	if err := e.upload(t, a, pb, obs(pb, codeBodyWeight, 71, weighed)); !errors.Is(err, rules.ErrNotOwner) {
		t.Fatalf("a.Evaluate(b's patient) = %v, want ErrNotOwner", err)
	}
	e.clk.Set(t0.Add(40 * time.Second)) // (upload set the clock to the weighing)
	if n, err := b.eng.DrainInbox(context.Background()); err != nil || n != 2 {
		t.Fatalf("b.DrainInbox() = %d, %v; want 2 rows", n, err)
	}
	if n := e.alarmsOf(t, pb, "hr-high"); n != 1 {
		t.Fatalf("hr-high alarms = %d, want 1", n)
	}
	triggers := e.count(t, `SELECT trigger_count FROM alarms WHERE patient_id=$1 AND rule_id='hr-high'`, pb)
	if n := e.count(t, `SELECT count(*) FROM rules_inbox WHERE patient_id=$1`, pb); n != 2 {
		t.Fatalf("inbox rows before the checkpoint = %d, want 2", n)
	}
	if st := b.eng.InboxStats(); st.Pending != 2 {
		t.Fatalf("rows evaluated and pending = %d, want 2", st.Pending)
	}
	// b dies (no checkpoint); a new engine on the same leases.
	svc, err := alarms.New(alarms.Config{Pool: e.pool, Recorder: e.rec, Now: e.clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	b2, err := rules.New(context.Background(), rules.Config{Pool: e.pool, Recorder: e.rec, Alarms: svc, History: e.hist, Now: e.clk.Now, Leases: b.leases})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := b2.DrainInbox(context.Background()); err != nil || n != 2 {
		t.Fatalf("restarted b.DrainInbox() = %d, %v; want the 2 rows again", n, err)
	}
	if err := b2.Checkpoint(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := e.count(t, `SELECT count(*) FROM rules_inbox`); n != 0 {
		t.Errorf("inbox rows after the checkpoint = %d, want 0", n)
	}
	if n := e.alarmsOf(t, pb, "hr-high"); n != 1 {
		t.Errorf("hr-high alarms = %d, want 1 (no duplicate)", n)
	}
	if n := e.count(t, `SELECT trigger_count FROM alarms WHERE patient_id=$1 AND rule_id='hr-high'`, pb); n != triggers {
		t.Errorf("trigger count = %d, want %d", n, triggers)
	}
	var mark time.Time
	if err := e.pool.QueryRow(context.Background(), `SELECT (state->'codes'->>$2)::timestamptz FROM rules_patient_state WHERE patient_id=$1`, pb, codeBodyWeight).Scan(&mark); err != nil {
		t.Fatalf("checkpoint's mark of the weighed code: %v", err)
	}
	if !mark.Equal(weighed) {
		t.Errorf("checkpoint's mark of the weighed code = %v, want %v (the older sample evaluated)", mark, weighed)
	}
}

// A flood of uploads committed on replica a for replica b's patients: while b does not
// evaluate, a's Publish (Pace) holds its uploads once b's inbox has InboxLimit of a's rows
// left, instead of filling it; once b drains, they proceed with the depth kept near the limit;
// at the end every forwarded observation was evaluated by b and its row deleted.
// Verifies: REQ-HA-044
func TestInboxBackPressure(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const limit, workers, each = 40, 8, 30
	a := e.replicaWith(t, "a", func(c *rules.Config) { c.InboxLimit, c.InboxWait = limit, time.Minute })
	b := e.replica(t, "b")
	a.step(t)
	b.step(t)
	a.step(t)
	b.step(t)
	a.eng.WaitTakeOver()
	b.eng.WaitTakeOver()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go a.eng.RunInbox(ctx, 100*time.Millisecond) // a listens: b's progress reaches it
	e.clk.Set(t0.Add(each * time.Second))
	var pids []uuid.UUID
	for range workers {
		pids = append(pids, b.patientOf(t))
	}
	for deadline := time.Now().Add(10 * time.Second); !a.eng.KnowsOwner(rules.BucketOf(pids[0])); {
		if time.Now().After(deadline) {
			t.Fatal("a never heard b's announcement")
		}
		b.eng.AnnounceNow(context.Background())
		time.Sleep(50 * time.Millisecond)
	}
	depth := func() int { // rows b has not evaluated
		return e.count(t, `SELECT count(*) FROM rules_inbox`) - b.eng.InboxStats().Pending
	}
	var sent atomic.Int64
	done := make(chan error, workers)
	for w := range workers {
		go func() {
			p := pids[w]
			for i := range each {
				o := []rules.Observation{obs(p, codeBodyWeight, 70+float64(i)/10, t0.Add(time.Duration(i)*time.Second))}
				o[0].UploadID = uuid.New()
				e.hist.add(o...)
				c := coreobs.Committed{PatientID: p, Observations: o}
				if err := pgx.BeginFunc(ctx, e.pool, func(tx pgx.Tx) error { return a.eng.Forward(ctx, tx, []coreobs.Committed{c}) }); err != nil {
					done <- err
					return
				}
				sent.Add(1)
				a.eng.Pace(ctx, []coreobs.Committed{c}) // what core's Publish does after the commit
			}
			done <- nil
		}()
	}
	// b does not evaluate yet: the flood stops near the limit.
	time.Sleep(1500 * time.Millisecond)
	if d := depth(); d > limit+workers {
		t.Fatalf("inbox depth with the owner not evaluating = %d, want at most %d (limit + one upload per worker)", d, limit+workers)
	}
	if st := a.eng.InboxStats(); st.PaceWaits == 0 {
		t.Errorf("Pace never waited")
	}
	if n := sent.Load(); n >= workers*each {
		t.Fatalf("all %d uploads went through while the owner did not evaluate", n)
	}
	// b evaluates now: the uploads proceed, the depth stays bounded.
	go b.eng.RunInbox(ctx, 100*time.Millisecond)
	most := 0
	for finished := 0; finished < workers; {
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
			finished++
		case <-time.After(20 * time.Millisecond):
			most = max(most, depth())
		}
	}
	t.Logf("deepest inbox while b evaluated: %d rows (limit %d)", most, limit)
	if most > 2*limit+workers {
		t.Errorf("inbox depth while b evaluated reached %d, want at most %d", most, 2*limit+workers)
	}
	for deadline := time.Now().Add(20 * time.Second); depth() > 0; {
		if time.Now().After(deadline) {
			t.Fatalf("b did not evaluate its inbox: %d rows left", depth())
		}
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	if err := b.eng.Checkpoint(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := e.count(t, `SELECT count(*) FROM rules_inbox`); n != 0 {
		t.Errorf("inbox rows after b's checkpoint = %d, want 0", n)
	}
	// Nothing lost: every patient's last weight was evaluated by b.
	last := t0.Add((each - 1) * time.Second)
	for _, p := range pids {
		var mark time.Time
		if err := e.pool.QueryRow(context.Background(), `SELECT (state->'codes'->>$2)::timestamptz FROM rules_patient_state WHERE patient_id=$1`, p, codeBodyWeight).Scan(&mark); err != nil {
			t.Fatalf("checkpoint of patient %s: %v", p, err)
		}
		if !mark.Equal(last) {
			t.Errorf("patient %s evaluated through %v, want %v", p, mark, last)
		}
	}
}

// Under a stream of forwarded uploads, each committing with its own notification, the owner
// does not run one drain per notification (each a query over the rows evaluated in the last
// seconds: PostgreSQL's largest cost with two replicas): drains woken by notifications run at
// most every 200 ms, the rows notified within the gap drained together at its end, and every
// forwarded observation is still evaluated. The poll is an hour here, so every drain after the
// first is one woken by a notification. (With a drain per notification, ≈ 60 drains.)
// Verifies: REQ-HA-043
func TestInboxDrainsCoalesceNotifications(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	a, b := e.twoReplicas(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go b.eng.RunInbox(ctx, time.Hour)
	e.clk.Set(t0.Add(time.Minute))
	p := b.patientOf(t)
	waitDrains := func(n int64) { // b's first drain (LISTEN in place) has run
		for deadline := time.Now().Add(10 * time.Second); b.eng.InboxStats().Drains < n; {
			if time.Now().After(deadline) {
				t.Fatalf("b ran %d drains, want at least %d", b.eng.InboxStats().Drains, n)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitDrains(1)
	before := b.eng.InboxStats().Drains
	const uploads = 60
	start := time.Now()
	for i := range uploads {
		o := []rules.Observation{obs(p, codeBodyWeight, 70+float64(i)/10, t0.Add(time.Duration(i)*time.Second))}
		o[0].UploadID = uuid.New()
		e.hist.add(o...)
		c := coreobs.Committed{PatientID: p, Observations: o}
		e.forward(t, a, c)
		a.eng.Pace(ctx, []coreobs.Committed{c}) // as core's Publish does after the commit: it notifies
		time.Sleep(5 * time.Millisecond)        // a stream of commits, each notified on its own
	}
	sent := time.Since(start)
	// Every row evaluated (pending for b's checkpoint), none left to evaluate.
	for deadline := time.Now().Add(20 * time.Second); ; {
		left := e.count(t, `SELECT count(*) FROM rules_inbox`) - b.eng.InboxStats().Pending
		if left == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("b did not evaluate its inbox: %d rows left", left)
		}
		time.Sleep(20 * time.Millisecond)
	}
	elapsed := time.Since(start)
	drains := b.eng.InboxStats().Drains - before
	// At most one drain per 200 ms gap while the notifications came and until the last was
	// drained, and one more at each end.
	most := int64(elapsed/(200*time.Millisecond)) + 2
	t.Logf("%d notified commits in %v: %d drains in %v (at most %d allowed)", uploads, sent, drains, elapsed, most)
	if drains > most {
		t.Errorf("%d drains for %d notifications in %v, want at most %d (one per 200 ms)", drains, uploads, elapsed, most)
	}
	if drains == 0 {
		t.Errorf("no drain ran for the notifications")
	}
	cancel()
	if err := b.eng.Checkpoint(context.Background()); err != nil {
		t.Fatal(err)
	}
	var mark time.Time
	if err := e.pool.QueryRow(context.Background(), `SELECT (state->'codes'->>$2)::timestamptz FROM rules_patient_state WHERE patient_id=$1`, p, codeBodyWeight).Scan(&mark); err != nil {
		t.Fatal(err)
	}
	if want := t0.Add((uploads - 1) * time.Second); !mark.Equal(want) {
		t.Errorf("patient evaluated through %v, want %v", mark, want)
	}
}

// A drain reads exactly what committed since the one before, by transaction visibility, not by
// row id: a forwarding transaction that took its row id first and commits after a later one was
// drained — here 2.1 s later, beyond any "recent ids" window — is read by the next drain, and
// rows already evaluated (waiting for their checkpoint) are not read again. (A drain that read
// only ids above the highest it had read would miss the late row.)
// Verifies: REQ-HA-045
func TestInboxDrainReadsTransactionsCommittedLate(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	a, b := e.twoReplicas(t)
	ctx := context.Background()
	p := b.patientOf(t)
	if _, err := b.eng.DrainNew(ctx); err != nil { // the snapshot the next drains start from
		t.Fatal(err)
	}

	late, err := e.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = late.Rollback(ctx) }()
	first := obs(p, codeBodyWeight, 70, t0)
	first.UploadID = uuid.New()
	e.hist.add(first)
	if err := a.eng.Forward(ctx, late, []coreobs.Committed{{PatientID: p, Observations: []rules.Observation{first}}}); err != nil {
		t.Fatal(err)
	}
	if err := e.upload(t, a, p, obs(p, codeBodyWeight, 71, t0.Add(time.Minute))); !errors.Is(err, rules.ErrNotOwner) {
		t.Fatalf("a.Evaluate(b's patient) = %v, want ErrNotOwner", err)
	}
	if n, err := b.eng.DrainNew(ctx); err != nil || n != 1 {
		t.Fatalf("drain with the first row not committed = %d, %v; want 1 (the later row)", n, err)
	}
	if got := e.count(t, `SELECT count(*) FROM rules_inbox WHERE id < (SELECT max(id) FROM rules_inbox)`); got != 0 {
		t.Fatalf("rows below the one drained, visible = %d, want 0 (not committed yet)", got)
	}
	time.Sleep(2100 * time.Millisecond)
	if err := late.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if n, err := b.eng.DrainNew(ctx); err != nil || n != 1 {
		t.Fatalf("drain after the late commit = %d, %v; want 1 (the row committed late)", n, err)
	}
	if n, err := b.eng.DrainNew(ctx); err != nil || n != 0 {
		t.Fatalf("drain again = %d, %v; want 0", n, err)
	}
	if st := b.eng.InboxStats(); st.Pending != 2 {
		t.Fatalf("rows evaluated, waiting for the checkpoint = %d, want 2", st.Pending)
	}
	// Both are in the patient's state: the checkpoint settles (deletes) both.
	if err := b.eng.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	if got := e.count(t, `SELECT count(*) FROM rules_inbox`); got != 0 {
		t.Fatalf("inbox rows after the checkpoint = %d, want 0", got)
	}
}

// An owner evaluates the patients of a drained batch at once (Config.InboxWorkers), as the
// hand-off evaluates its own uploads, instead of one patient after the other: with reads of
// the history slowed to 100 ms, 8 patients' first evaluations overlap with 4 workers and never
// with 1.
// Verifies: REQ-HA-046
func TestInboxEvaluatesPatientsAtOnce(t *testing.T) {
	t.Parallel()
	for _, workers := range []int{1, 4} {
		e := newEnv(t)
		a := e.replicaWith(t, "a", nil)
		b := e.replicaWith(t, "b", func(c *rules.Config) { c.InboxWorkers = workers })
		a.step(t)
		b.step(t)
		a.step(t)
		b.step(t)
		a.eng.WaitTakeOver()
		b.eng.WaitTakeOver()
		for range 8 {
			p := b.patientOf(t)
			if err := e.upload(t, a, p, obs(p, codeBodyWeight, 70, t0)); !errors.Is(err, rules.ErrNotOwner) {
				t.Fatalf("a.Evaluate(b's patient) = %v, want ErrNotOwner", err)
			}
		}
		e.hist.delay.Store(int64(100 * time.Millisecond))
		if n, err := b.eng.DrainInbox(context.Background()); err != nil || n != 8 {
			t.Fatalf("workers %d: DrainInbox() = %d, %v; want 8", workers, n, err)
		}
		peak := e.hist.peak.Load()
		if workers == 1 && peak != 1 || workers > 1 && peak < 2 {
			t.Errorf("workers %d: patients evaluated at once, at most = %d", workers, peak)
		}
	}
}

// The transaction that stores an upload and forwards its observations sends no notification
// (a notifying transaction holds PostgreSQL's notification queue lock through its commit and
// disk flush, so every forwarding group commit would commit one at a time): the owners are
// woken by Pace, which core's Publish calls after the commit.
// Verifies: REQ-HA-047
func TestForwardWakesOwnersAfterCommit(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	a, b := e.twoReplicas(t)
	ctx := context.Background()
	conn, err := pgx.ConnectConfig(ctx, e.pool.Config().ConnConfig.Copy())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "LISTEN vigil_rules_inbox"); err != nil {
		t.Fatal(err)
	}
	p := b.patientOf(t)
	o := []rules.Observation{obs(p, codeBodyWeight, 70, t0)}
	o[0].UploadID = uuid.New()
	c := coreobs.Committed{PatientID: p, Observations: o}
	e.forward(t, a, c)
	wctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	n, err := conn.WaitForNotification(wctx)
	cancel()
	if err == nil {
		t.Fatalf("notified by the forwarding transaction itself (%q), want no notification before Pace", n.Payload)
	}
	a.eng.Pace(ctx, []coreobs.Committed{c})
	wctx, cancel = context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for {
		n, err := conn.WaitForNotification(wctx)
		if err != nil {
			t.Fatalf("no notification after Pace: %v", err)
		}
		if n.Payload == "w:a" { // (owners' progress announcements carry "p:…")
			break
		}
	}
	if got := e.count(t, `SELECT count(*) FROM rules_inbox WHERE patient_id=$1`, p); got != 1 {
		t.Fatalf("inbox rows = %d, want 1", got)
	}

	// Wake-ups are sent at most every 50 ms: 40 forwarding commits in a burst make a few, and
	// the last commit is followed by one.
	start := time.Now()
	for i := range 40 {
		o := []rules.Observation{obs(p, codeBodyWeight, 70, t0.Add(time.Duration(i+1)*time.Second))}
		o[0].UploadID = uuid.New()
		c := coreobs.Committed{PatientID: p, Observations: o}
		e.forward(t, a, c)
		a.eng.Pace(ctx, []coreobs.Committed{c})
	}
	lastCommit := time.Now()
	wakes := 0
	var lastWake time.Time
	for {
		wctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		n, err := conn.WaitForNotification(wctx)
		cancel()
		if err != nil {
			break
		}
		if n.Payload == "w:a" {
			wakes++
			lastWake = time.Now()
		}
	}
	most := int(lastCommit.Sub(start)/(50*time.Millisecond)) + 2
	t.Logf("40 forwarding commits in %v: %d wake-ups (at most %d)", lastCommit.Sub(start), wakes, most)
	if wakes == 0 || wakes > most {
		t.Errorf("wake-ups for 40 commits = %d, want 1 to %d (one per 50 ms)", wakes, most)
	}
	if lastWake.Before(lastCommit) {
		t.Errorf("no wake-up after the last commit")
	}
}

// forward commits c's observations to the inbox as the upload's transaction on r does (Forward),
// without the hand-off after it.
func (e *env) forward(t *testing.T, r *replica, c coreobs.Committed) {
	t.Helper()
	ctx := context.Background()
	if err := pgx.BeginFunc(ctx, e.pool, func(tx pgx.Tx) error { return r.eng.Forward(ctx, tx, []coreobs.Committed{c}) }); err != nil {
		t.Fatalf("%s: Forward() = %v", r.name, err)
	}
}
