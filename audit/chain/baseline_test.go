package chain_test

import (
	"strings"
	"testing"

	"github.com/google/uuid"

	"github.com/vigilhealth/vigil/audit"
	"github.com/vigilhealth/vigil/audit/chain"
	"github.com/vigilhealth/vigil/audit/chain/chaintest"
	"github.com/vigilhealth/vigil/audit/rowdigest"
	"github.com/vigilhealth/vigil/auth"
)

var baselineBy = audit.Event{Actor: audit.Actor{Kind: audit.ActorUser, ID: "os:operator", AuthMethod: "database-credentials"}, RequestID: "cli-test"}

// hasFinding reports whether rep has a finding of kind whose detail contains s.
func foundNaming(rep *chain.Report, kind, s string) bool {
	for _, f := range rep.Findings {
		if f.Kind == kind && strings.Contains(f.Detail, s) {
			return true
		}
	}
	return false
}

// Rows written before their table carried their event (here: inserted in SQL, as the code
// before migration 00610 left them) are unaudited changes until the baseline adopts them,
// once, in audited events that commit to their digests; verify is then clean, and a change
// of an adopted row is found like any other. The baseline never adopts a row that carries a
// digest without its event, and a second run adopts nothing (a row slipped in after the
// baseline stays a finding), is recorded as a rejection and says so.
// Verifies: REQ-AUD-076, REQ-AUD-077
func TestBaselineAdoptsPreexistingRowsOnce(t *testing.T) {
	t.Parallel()
	r := newRowsRig(t)
	ctx := r.env.Ctx
	old := uuid.Must(uuid.NewV7())
	r.exec(t, `INSERT INTO auth_users (id, email_index, profile_sealed, status, created_at, updated_at)
		SELECT $2, sha256(email_index), profile_sealed, 'active', now(), now() FROM auth_users WHERE id = $1`, r.user, old)
	r.exec(t, `INSERT INTO auth_policy_rules (ptype, v0, v1, v2, source, version) VALUES ('g', $1, 'auditor', '*', 'admin', 1)`, auth.UserSubject(old))
	r.exec(t, `INSERT INTO devices_assignments (device_id, patient_id, started_at, ended_at, actor_id)
		VALUES ($1, $2, now() - interval '400 days', now() - interval '399 days', 'admin-1')`, r.dev.ID, r.other)
	// A row whose event id was removed (its digest is still there) is not "pre-existing".
	var devEvent uuid.UUID
	if err := r.env.Pool.QueryRow(ctx, `SELECT audit_event_id FROM devices_devices WHERE id = $1`, r.dev.ID).Scan(&devEvent); err != nil {
		t.Fatal(err)
	}
	r.exec(t, `UPDATE devices_devices SET audit_event_id = NULL WHERE id = $1`, r.dev.ID)
	chaintest.ShipAll(t, r.svc)
	rep := r.verify(t, false)
	for _, table := range []string{"auth_users " + old.String(), "auth_policy_rules g|user:" + old.String(), "devices_assignments ", "devices_devices " + r.dev.ID.String()} {
		if !foundNaming(rep, chain.FindingUnaudited, table) {
			t.Errorf("Verify() before the baseline: no unaudited_change naming %q; findings %s", table, findings(rep))
		}
	}

	dry, err := rowdigest.Baseline(ctx, r.env.Pool, r.env.Rec, baselineBy, true)
	if err != nil || dry.Adopted != 3 || !dry.DryRun {
		t.Fatalf("Baseline(dry run) = %+v, %v; want 3 rows to adopt", dry, err)
	}
	res, err := rowdigest.Baseline(ctx, r.env.Pool, r.env.Rec, baselineBy, false)
	if err != nil || res.Adopted != 3 || res.Already {
		t.Fatalf("Baseline() = %+v, %v; want 3 rows adopted", res, err)
	}
	for _, bt := range res.Tables {
		if len(bt.Events) == 0 {
			t.Errorf("table %s: no baseline event (a table with nothing to adopt is baselined too)", bt.Table)
		}
		if bt.Table == "devices_devices" && (bt.Adopted != 0 || bt.Unstamped != 1) {
			t.Errorf("devices_devices: %+v; want the row without its event left alone (1 unstamped, 0 adopted)", bt)
		}
	}
	chaintest.ShipAll(t, r.svc)
	rep = r.verify(t, false)
	if len(rep.Findings) != 1 || !foundNaming(rep, chain.FindingUnaudited, "devices_devices "+r.dev.ID.String()) {
		t.Fatalf("Verify() after the baseline: findings %s; want only the device row whose event id was removed", findings(rep))
	}
	r.exec(t, `UPDATE devices_devices SET audit_event_id = $2 WHERE id = $1`, r.dev.ID, devEvent)
	if rep = r.verify(t, false); !rep.OK {
		t.Fatalf("Verify() after the baseline: findings %s; want clean", findings(rep))
	}
	var n int
	if err := r.env.Pool.QueryRow(ctx, `SELECT count(*) FROM audit_events WHERE action = 'audit.baseline' AND outcome = 'success'
		AND payload::text LIKE '%pre-existing row adopted at baseline%'`).Scan(&n); err != nil || n < len(res.Tables) {
		t.Fatalf("baseline events = %d, %v; want one per table (%d)", n, err, len(res.Tables))
	}

	// A second run stamps nothing, even a row slipped in since, and is recorded as a rejection.
	r.exec(t, `INSERT INTO auth_policy_rules (ptype, v0, v1, v2, source, version) VALUES ('g', $1, 'admin', '*', 'admin', 1)`, auth.UserSubject(old))
	again, err := rowdigest.Baseline(ctx, r.env.Pool, r.env.Rec, baselineBy, false)
	if err != nil || !again.Already || again.Adopted != 0 {
		t.Fatalf("Baseline() again = %+v, %v; want nothing adopted, already baselined", again, err)
	}
	if err := r.env.Pool.QueryRow(ctx, `SELECT count(*) FROM audit_events WHERE action = 'audit.baseline' AND outcome = 'rejected'
		AND reason = 'already_baselined'`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("rejected baseline events = %d, %v; want 1", n, err)
	}
	// An adopted row changed behind the system's back is found.
	r.exec(t, `UPDATE auth_users SET status = 'disabled', disabled_at = now() WHERE id = $1`, old)
	chaintest.ShipAll(t, r.svc)
	rep = r.verify(t, false)
	if !foundNaming(rep, chain.FindingUnaudited, "auth_policy_rules g|user:"+old.String()+"|admin|*| names no event (written behind the system's back: the table was baselined by event") {
		t.Errorf("Verify() after the second baseline: findings %s; want the row slipped in after the baseline unaudited", findings(rep))
	}
	if !foundNaming(rep, chain.FindingDomainMismatch, "auth_users "+old.String()) {
		t.Errorf("Verify() after an adopted row changed: findings %s; want a domain_mismatch naming it", findings(rep))
	}
}
