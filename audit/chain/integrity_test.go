package chain_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/audittest"
	"github.com/vigilhealth/vigil/audit/chain"
)

// The attacks of issue #13, each performed as an insider with the application's database
// credentials (but not the key ring) would, against a real PostgreSQL and embedded Trillian.

func mustExec(t *testing.T, c *rig, sql string, args ...any) {
	t.Helper()
	if _, err := c.pool.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func findings(r *chain.Report) string {
	j, _ := json.MarshalIndent(r.Findings, "", " ")
	return string(j)
}

// wantFinding fails the test unless rep is not OK and has a finding of kind whose detail
// contains names (after what was done to the data).
func wantFinding(t *testing.T, rep *chain.Report, what, kind, names string) {
	t.Helper()
	for _, f := range rep.Findings {
		if f.Kind == kind && strings.Contains(f.Detail, names) && !rep.OK {
			return
		}
	}
	t.Errorf("Verify() after %s: findings %s, want %s naming %q", what, findings(rep), kind, names)
}

// Attack 1: a forged, back-dated event inserted while the server runs is never logged and
// never "proven": the shipper refuses it (an incident) and verify names it unauthenticated,
// whether it copies a real row's commitments or back-dates only occurred_at.
// Verifies: REQ-AUD-040, REQ-AUD-041
func TestForgedBackdatedEventIsRefused(t *testing.T) {
	t.Parallel()
	c, svc := newService(t)
	ids := c.record(t, 5)
	c.shipAll(t)
	for _, forged := range []struct{ id, sql string }{
		{"01900000-0000-7000-8000-0000000000f1", `INSERT INTO audit_events (id, occurred_at, recorded_at, actor_kind, actor_id,
			actor_auth, action, object_type, object_id, outcome, reason, request_id, source_addr, payload, salt, actor_id_c,
			object_id_c, request_id_c, source_addr_c, payload_commitment, session_id, session_seq, auth_mac)
			SELECT $1, occurred_at - interval '3 days', recorded_at - interval '3 days', actor_kind, 'dr-mallory', actor_auth,
			'alarm.acknowledged', object_type, object_id, outcome, reason, request_id, source_addr, payload, NULL, actor_id_c,
			object_id_c, request_id_c, source_addr_c, payload_commitment, session_id, session_seq + 1000, auth_mac
			FROM audit_events WHERE id = $2`},
		// Back-dating only occurred_at, keeping a fresh recorded_at and no tag at all.
		{"01900000-0000-7000-8000-0000000000f2", `INSERT INTO audit_events (id, occurred_at, recorded_at, actor_kind, actor_id,
			actor_auth, action, object_type, object_id, outcome, reason, request_id, source_addr, payload, salt, actor_id_c,
			object_id_c, request_id_c, source_addr_c, payload_commitment)
			SELECT $1, occurred_at - interval '3 days', now(), actor_kind, actor_id, actor_auth, action, object_type,
			object_id, outcome, reason, request_id, source_addr, payload, salt, actor_id_c, object_id_c, request_id_c,
			source_addr_c, payload_commitment FROM audit_events WHERE id = $2`},
	} {
		mustExec(t, c, forged.sql, forged.id, ids[1])
	}
	c.shipAll(t)
	ctx := context.Background()
	if _, err := svc.CheckpointNow(ctx); err != nil {
		t.Fatal(err)
	}
	var logged int
	if err := c.pool.QueryRow(ctx, `SELECT count(*) FROM audit_events WHERE id::text LIKE '01900000-%' AND batch_id IS NOT NULL`).Scan(&logged); err != nil || logged != 0 {
		t.Errorf("forged events logged = %d, %v; want 0 (refused)", logged, err)
	}
	r := verify(t, svc)
	for _, id := range []string{"01900000-0000-7000-8000-0000000000f1", "01900000-0000-7000-8000-0000000000f2"} {
		if !hasFinding(r, chain.FindingUnauthenticated, id) {
			t.Errorf("Verify() findings = %s, want unauthenticated naming %s", findings(r), id)
		}
	}
	if !hasFinding(r, chain.FindingIncident, "") {
		t.Errorf("Verify() findings = %s, want the shipper's incident", findings(r))
	}
	if r.ProvenEvents != 5 {
		t.Errorf("Verify() proven = %d, want 5 (the real events only)", r.ProvenEvents)
	}
	if _, err := svc.Ready(ctx); err == nil {
		t.Error("Ready() after a refused forgery = nil, want not ready (incident)")
	}
}

// A real event whose record time is moved (to hide how long it waited, or to back-date it)
// no longer authenticates: the pending age verify uses is the one in the tag.
// Verifies: REQ-AUD-041
func TestRecordTimeIsAuthenticated(t *testing.T) {
	t.Parallel()
	c, svc := newService(t)
	ids := c.record(t, 3)
	mustExec(t, c, `UPDATE audit_events SET recorded_at = recorded_at + interval '1 hour' WHERE id = $1`, ids[0])
	mustExec(t, c, `UPDATE audit_events SET occurred_at = occurred_at - interval '1 day' WHERE id = $1`, ids[1])
	r := verify(t, svc)
	for _, id := range ids[:2] {
		if !hasFinding(r, chain.FindingUnauthenticated, id) {
			t.Errorf("Verify() findings = %s, want unauthenticated naming %s", findings(r), id)
		}
	}
	if hasFinding(r, chain.FindingUnauthenticated, ids[2]) {
		t.Errorf("Verify() findings = %s: the untouched event %s is reported", findings(r), ids[2])
	}
}

// Attack 2a: a trigger deletes the audit row inside the action's own transaction. The
// action commits without its event; the session's attestation (the transaction committed,
// says PostgreSQL's commit log) makes the missing number a finding.
// Verifies: REQ-AUD-042
func TestEventDeletedInsideTheTransactionIsAGap(t *testing.T) {
	t.Parallel()
	c, svc := newService(t)
	ctx := context.Background()
	c.record(t, 3)
	mustExec(t, c, `CREATE FUNCTION drop_site_events() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN IF NEW.object_type = 'site' THEN DELETE FROM audit_events WHERE id = NEW.id; END IF; RETURN NULL; END $$`)
	mustExec(t, c, `CREATE TRIGGER drop_site_events AFTER INSERT ON audit_events FOR EACH ROW EXECUTE FUNCTION drop_site_events()`)
	ev := testEvent()
	ev.Action, ev.Object = "site.created", audit.Object{Type: "site", ID: "site-9"}
	if err := pgx.BeginFunc(ctx, c.pool, func(tx pgx.Tx) error { _, err := c.rec.Record(ctx, tx, ev); return err }); err != nil {
		t.Fatal(err)
	}
	// A rolled-back action is not a gap: its event never existed.
	ev.Object.ID = "site-10"
	ev.Object.Type = "thing"
	_ = pgx.BeginFunc(ctx, c.pool, func(tx pgx.Tx) error {
		if _, err := c.rec.Record(ctx, tx, ev); err != nil {
			return err
		}
		return errRollback
	})
	c.record(t, 2)
	if err := c.rec.Attest(ctx); err != nil {
		t.Fatalf("Attest() error = %v", err)
	}
	c.shipAll(t)
	if _, err := svc.CheckpointNow(ctx); err != nil {
		t.Fatal(err)
	}
	r := verify(t, svc)
	n := 0
	for _, f := range r.Findings {
		if f.Kind == chain.FindingSequenceGap {
			n++
		}
	}
	if n != 1 {
		t.Errorf("Verify() findings = %s, want exactly one sequence_gap (the deleted site event, not the rollback)", findings(r))
	}
}

var errRollback = rollbackError{}

type rollbackError struct{}

func (rollbackError) Error() string { return "roll back" }

// Attack 2b: an action committed, the server stopped (its session attests on Close), and
// while it is down the insider deletes the event row before it was shipped.
// Verifies: REQ-AUD-042
func TestEventDeletedWhileServerDownIsAGap(t *testing.T) {
	t.Parallel()
	c, svc := newService(t)
	ctx := context.Background()
	// A second writer (the server that goes down) on the same key ring as the chain.
	srv := audittest.Unauthenticated(t, c.pool, nil)
	if err := srv.EnableAuthentication(ctx, c.rec.EventKeys()); err != nil {
		t.Fatal(err)
	}
	ev := testEvent()
	ev.Action, ev.Object = "device.suspended", audit.Object{Type: "device", ID: "dev-7"}
	var id string
	if err := pgx.BeginFunc(ctx, c.pool, func(tx pgx.Tx) error {
		u, err := srv.Record(ctx, tx, ev)
		id = u.String()
		return err
	}); err != nil {
		t.Fatal(err)
	}
	srv.Close() // orderly stop: the final attestation
	mustExec(t, c, `DELETE FROM audit_events WHERE id = $1`, id)
	c.shipAll(t)
	if _, err := svc.CheckpointNow(ctx); err != nil {
		t.Fatal(err)
	}
	r := verify(t, svc)
	if !hasFinding(r, chain.FindingSequenceGap, "") {
		t.Errorf("Verify() findings = %s, want a sequence_gap for the deleted device.suspended event", findings(r))
	}
}

// Attack 4: an event "erased" (identifiers, payload, salt set to NULL) minutes after it was
// recorded is not retention: verify names it erased_early.
// Verifies: REQ-AUD-043
func TestEarlyErasureIsFlagged(t *testing.T) {
	t.Parallel()
	c, svc := newService(t)
	ids := c.record(t, 4)
	c.shipAll(t)
	ctx := context.Background()
	if _, err := svc.CheckpointNow(ctx); err != nil {
		t.Fatal(err)
	}
	mustExec(t, c, `UPDATE audit_events SET actor_id = NULL, object_id = NULL, request_id = NULL, source_addr = NULL,
		payload = NULL, salt = NULL WHERE id = $1`, ids[2])
	r := verify(t, svc)
	if !hasFinding(r, chain.FindingErasedEarly, ids[2]) || len(r.Findings) != 1 {
		t.Errorf("Verify() findings = %s, want only erased_early naming %s", findings(r), ids[2])
	}
	_ = time.Second
}

// Events recorded before the writer had its key (the key ring's own events, recorded while
// the ring opens) are authenticated when it gets it, from what the writer prepared.
// Verifies: REQ-AUD-040
func TestEventsBeforeTheKeyAreAuthenticatedLater(t *testing.T) {
	t.Parallel()
	c, svc := newService(t)
	ctx := context.Background()
	w := audittest.Unauthenticated(t, c.pool, nil)
	ev := testEvent()
	early, err := w.RecordNow(ctx, ev)
	if err != nil {
		t.Fatal(err)
	}
	tampered, err := w.RecordNow(ctx, ev)
	if err != nil {
		t.Fatal(err)
	}
	mustExec(t, c, `UPDATE audit_events SET action = 'test.other' WHERE id = $1`, tampered)
	if err := w.EnableAuthentication(ctx, c.rec.EventKeys()); err != nil {
		t.Fatal(err)
	}
	r := verify(t, svc)
	if hasFinding(r, chain.FindingUnauthenticated, early.String()) {
		t.Errorf("Verify() findings = %s: the event recorded before the key is unauthenticated", findings(r))
	}
	if !hasFinding(r, chain.FindingUnauthenticated, tampered.String()) {
		t.Errorf("Verify() findings = %s, want unauthenticated naming the event changed before the key", findings(r))
	}
}

// Verify without the key ring says it could not check authentication.
// Verifies: REQ-AUD-040
func TestVerifyWithoutKeysSaysSo(t *testing.T) {
	t.Parallel()
	c, svc := newService(t)
	c.record(t, 2)
	r, err := chain.Verify(context.Background(), chain.VerifyConfig{Pool: c.pool, Log: svc.Log(), VerifierKey: svc.VerifierKey(), Origin: svc.Origin()})
	if err != nil {
		t.Fatal(err)
	}
	if !hasFinding(r, chain.FindingAuthUnchecked, "") {
		t.Errorf("Verify(no keys) findings = %s, want authentication_unchecked", findings(r))
	}
}
